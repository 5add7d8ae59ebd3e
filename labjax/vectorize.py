"""Vectorized sweeps: members that share one program structure train in one compiled program.

Members whose configs differ only in VECTOR_KEYS form a group. Each member is initialised as
its own run would be (its seed, its starting weights), then params, BatchNorm statistics and
optimizer states are stacked on a leading member axis and train_step_fn is `jax.vmap`ped over
them: the numbers of the optimizer live in `opt_state.hyperparams` (optim.create_optimizer's
`inject_hyperparams`), the base learning rate, the L2 weight and label smoothing are passed as
per-member arrays. The member axis is replicated; the batch stays sharded over 'data'.

Members with the same seed and fold see the same batches (broadcast); a seed or fold of its own
gives a member its own stream of batches (stacked): the batches of its own run, so every
member's metrics equal those of the member trained alone, folds included (a member whose fold
leaves fewer steps per epoch waits, its state untouched, while the others finish the epoch).

Each member keeps its own workdir (config.json, metrics.jsonl, status.json, checkpoints with
the config in their metadata, so `--mode=eval` works; plots at its end), early stopping,
plateau scale and divergence: a member whose loss turns NaN is frozen at its last finite
state (a sticky flag on the device, no host sync per step) and recorded 'diverged'.

model.dropout stays structural: flax's nn.Dropout branches in Python on its rate, which a
traced rate cannot do. An interrupted group restarts its unfinished members from scratch.
"""

import dataclasses
import json
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import models, optim, parallel, plots, tasks, train, writers
from labjax.data import pipeline

# Keys whose values may differ inside a group: numbers that can be arrays.
VECTOR_KEYS = (
    "optimizer.learning_rate",
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.eps",
    "optimizer.momentum",
    "optimizer.rho",
    "optimizer.weight_decay",
    "label_smoothing",
    "seed",
    "data.fold",
)
STREAM_KEYS = ("seed", "data.fold")  # what decides the data a member sees


def structure_key(config: ml_collections.ConfigDict) -> str:
    """Everything that shapes the compiled program: the config without VECTOR_KEYS' values.

    Momentum is present in the optimizer state only when > 0 (optim._injected_numbers), so
    0 and > 0 are different structures.
    """
    flat = config_lib.flatten(config_lib.to_dict(config))
    for key in VECTOR_KEYS:
        flat.pop(key, None)
    flat["momentum>0"] = config.optimizer.momentum > 0
    return json.dumps(flat, sort_keys=True, default=str)


def group_members(members: list) -> list[list]:
    """Members (anything with a .config) grouped by structure_key, in their sweep order."""
    groups: dict[str, list] = {}
    for member in members:
        groups.setdefault(structure_key(member.config), []).append(member)
    return list(groups.values())


def why_not_vectorized(members: list) -> str:
    """Which structural keys differ between the first two members (for the fall-back message)."""
    if len(members) < 2:
        return "the sweep has fewer than two members to train"
    first, second = (config_lib.flatten(config_lib.to_dict(m.config)) for m in members[:2])
    keys = [k for k in sorted(set(first) | set(second)) if k not in VECTOR_KEYS and first.get(k) != second.get(k)]
    if not keys:
        return "momentum is 0 for some members and > 0 for others"
    return "members differ in " + ", ".join(f"{k} ({first.get(k)!r} vs {second.get(k)!r})" for k in keys[:4])


def _stream_key(config) -> tuple:
    flat = config_lib.flatten(config_lib.to_dict(config))
    return tuple(flat.get(key) for key in STREAM_KEYS)


@dataclasses.dataclass
class _Stream:
    """The data of the members sharing a seed and a fold."""

    config: ml_collections.ConfigDict
    data: pipeline.Data
    steps_per_epoch: int


class _Member:
    """One member's host side: its workdir, writers, checkpoints, early stopping and plateau."""

    def __init__(self, name: str, config, workdir: Path, stream: int, streams: list[_Stream]):
        self.name, self.config, self.workdir, self.stream = name, config, workdir, stream
        data = streams[stream].data
        self.data, self.steps_per_epoch = data, streams[stream].steps_per_epoch
        steps = config.num_train_steps
        self.total_steps = steps if steps > 0 else config.num_epochs * self.steps_per_epoch
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        self.stopper = train.EarlyStopping(config.early_stopping) if config.early_stopping.patience > 0 else None
        self.plateau = None
        if config.optimizer.schedule == "plateau":
            self.plateau = optim.ReduceOnPlateau(config.optimizer.plateau, config.optimizer.learning_rate)
        self.step, self.status, self.error, self.stopped_early = 0, "running", None, False
        self.summary, self.computed, self.checkpoints, self.writer = None, None, None, None

    @property
    def active(self) -> bool:
        return self.status == "running"

    def open(self) -> None:
        train.claim_workdir(self.config, self.workdir, overwrite=True)
        self.checkpoints = ckpt.Checkpoints(self.workdir, train._checkpoint_config(self.config))
        self.writer = writers.create_writer(self.workdir, jax.process_index() == 0)
        train._write_status(self.workdir, "running", step=0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.checkpoints.close()
            self.writer = None
        if jax.process_index() == 0 and (self.workdir / "metrics.jsonl").exists():
            plots.plot_curves(writers.read_rows(self.workdir / "metrics.jsonl"), self.workdir / "plots")

    def save(self, state, metrics: dict, train_time: float, **extra) -> None:
        """A checkpoint of this member's own (unstacked) state, with the metadata train_and_evaluate writes."""
        metadata = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "train_time_s": train_time,
            "config": config_lib.to_dict(self.config),
            "class_names": self.data.class_names,
            "early_stopping": self.stopper.state_dict() if self.stopper else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
            **extra,
        }
        self.checkpoints.save(state, metadata, metrics)

    def diverge(self, loss: str) -> None:
        self.status = "diverged"
        self.error = (
            f"the training loss is {loss} at step {self.step}: the run diverged (try a lower "
            "config.optimizer.learning_rate). Checkpoints of earlier epochs are kept."
        )
        train._write_status(self.workdir, "diverged", step=self.step, loss=loss)
        print(f"[vectorize] {self.name}: diverged at step {self.step}; frozen, the others go on.", flush=True)


def _stack(trees: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, index: int):
    return jax.tree.map(lambda x: x[index], tree)


def _initial_state(members: list[_Member], model, frozen, mesh, input_shape, info) -> train.TrainState:
    """Every member's state as its own run starts it (its seed, its numbers), stacked.

    From scratch, one vmapped and jitted init makes them all (one compilation); starting
    weights from another run or Keras go member by member through train_and_evaluate's code.
    """
    first, spe, total = members[0].config, members[0].steps_per_epoch, members[0].total_steps
    if first.model.init_from or first.model.pretrained != "none":
        states = []
        for member in members:
            state = train.create_train_state(member.config, model, mesh, input_shape, frozen, spe, member.total_steps)
            states.append(train._starting_weights(member.config, info, model, state, mesh, input_shape))
        return jax.device_put(_stack([s.replace(tx=states[0].tx) for s in states]), parallel.replicated(mesh))
    names = ["learning_rate", *optim._injected_numbers(first.optimizer)]
    numbers = {key: np.array([m.config.optimizer[key] for m in members], np.float32) for key in names}
    seeds = np.array([m.config.seed for m in members], np.int32)

    def init(seed, values):
        config = ml_collections.ConfigDict(config_lib.to_dict(first), type_safe=False)
        for key, value in values.items():
            config.optimizer[key] = value
        tx = optim.create_optimizer(config, frozen, spe, total_steps=total)
        key = jax.random.key(seed)  # as create_train_state
        variables = model.init({"params": key}, jnp.zeros((1, *input_shape)), train=False)
        params = variables["params"]
        return params, variables.get("batch_stats", {}), tx.init(params), jax.random.fold_in(key, 1)

    params, batch_stats, opt_state, rng = jax.jit(jax.vmap(init), out_shardings=parallel.replicated(mesh))(
        seeds, numbers
    )
    return train.TrainState(
        step=jax.device_put(np.zeros(len(members), np.int32), parallel.replicated(mesh)),
        apply_fn=model.apply,
        params=params,
        tx=optim.create_optimizer(first, frozen, spe, total_steps=total),
        opt_state=opt_state,
        batch_stats=batch_stats,
        rng=rng,
        frozen=frozenset(frozen),
    )


def _l2_penalty_fn(opt, weight):
    """optim.l2_penalty with a per-member (traced) weight."""

    def penalty(params):
        mask = optim.decay_mask(params, opt.decay_params)
        leaves = zip(jax.tree.leaves(params), jax.tree.leaves(mask))
        squares = [jnp.sum(jnp.square(w)) for w, decayed in leaves if decayed]
        return weight * sum(squares, jnp.zeros((), jnp.float32))

    return penalty


def _make_group_step(config, num_classes, frozen, steps_per_epoch, total_steps, mesh, stacked_batch, vary_smoothing):
    """The jitted, vmapped step over (state, epoch's metric sums, batch, per-member numbers, active, alive).

    Returns (state, sums, alive): a member that is not active (done, waiting) or not alive
    (its loss was NaN once) keeps its state; an inactive member adds nothing to its sums.
    """
    opt = config.optimizer
    l2 = optim.weight_decay_type(opt) == "l2"

    def member_step(state, totals, batch, numbers, active, alive):
        traced = ml_collections.ConfigDict(config_lib.to_dict(config), type_safe=False)
        traced.optimizer.learning_rate = numbers["learning_rate"]  # the schedule's base, per member
        tx = optim.create_optimizer(traced, frozen, steps_per_epoch, total_steps=total_steps)
        step = train.train_step_fn(
            num_classes,
            numbers.get("class_weights"),
            label_smoothing=numbers["label_smoothing"] if vary_smoothing else config.label_smoothing,
            penalty=_l2_penalty_fn(opt, numbers["weight_decay"]) if l2 else None,
            compute_dtype=config.compute_dtype,
        )
        new, metrics = step(state.replace(tx=tx), batch)
        alive = alive & (~active | jnp.isfinite(metrics.loss.compute()))  # sticky: a NaN once freezes for good
        keep = active & alive
        fields = ("step", "params", "batch_stats", "opt_state")
        updated = {
            f: jax.tree.map(lambda n, o: jnp.where(keep, n, o), getattr(new, f), getattr(state, f)) for f in fields
        }
        # The epoch's sums (Average's total and count) add up here: no dispatch per step for them.
        totals = jax.tree.map(lambda t, x: t + jnp.where(active, x, jnp.zeros_like(x)), totals, metrics)
        return state.replace(**updated), totals, alive

    replicated = parallel.replicated(mesh)
    batch_axis = 0 if stacked_batch else None
    spec = PartitionSpec(None, "data") if stacked_batch else PartitionSpec("data")
    return jax.jit(
        jax.vmap(member_step, in_axes=(0, 0, batch_axis, 0, 0, 0)),
        in_shardings=(replicated, replicated, NamedSharding(mesh, spec), replicated, replicated, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )


def _global(batch: dict, mesh, stacked: bool) -> dict:
    sharding = NamedSharding(mesh, PartitionSpec(None, "data") if stacked else PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _member_batch(stream_batches: list[dict], members: list[_Member], stacked: bool) -> dict:
    if not stacked:
        return stream_batches[0]
    return {k: np.stack([stream_batches[m.stream][k] for m in members]) for k in stream_batches[0]}


def train_group(names: list[str], configs: list, workdirs: list[Path], *, stop_after_step: int | None = None) -> dict:
    """Trains the members of one group together; returns {name: (status, error)}.

    Every member starts from scratch in its workdir (an interrupted group restarts). Raises
    TrainingInterrupted after SIGINT/SIGTERM (or `stop_after_step`, for tests), with every
    unfinished member's status.json saying 'interrupted'.
    """
    for config in configs:
        config_lib.validate(config)
    first = configs[0]
    info = models.model_info(first.model.name)
    mesh = parallel.make_mesh()
    streams, stream_of = [], {}
    for config in configs:
        key = _stream_key(config)
        if key not in stream_of:
            data = pipeline.load(config, info.preprocessing)
            train.check_input_fits_model(config, data.input_shape)
            stream_of[key] = len(streams)
            streams.append(_Stream(config, data, pipeline.steps_per_epoch(data, config.batch_size)))
    members = [
        _Member(
            name,
            config,
            Path(workdir),
            stream_of[_stream_key(config)],
            streams,
        )
        for name, config, workdir in zip(names, configs, workdirs)
    ]
    data0 = streams[0].data
    if any(s.data.num_classes != data0.num_classes or s.data.input_shape != data0.input_shape for s in streams):
        raise config_lib.ConfigError(
            f"vectorized members {names} see data of different classes or input shapes; run them without --vectorize."
        )
    schedule_counts_steps = first.optimizer.schedule not in ("constant", "plateau") or first.optimizer.warmup_epochs
    if schedule_counts_steps and len({(m.steps_per_epoch, m.total_steps) for m in members}) > 1:
        raise config_lib.ConfigError(
            f"vectorized members {names} have different steps per epoch (folds of unequal size) and "
            f"optimizer.schedule={first.optimizer.schedule!r} (or warmup) counts steps per epoch; use a constant "
            "or plateau schedule without warmup, or run them without --vectorize."
        )
    model, frozen = models.build(first.model, data0.num_classes, data0.input_shape)
    state = _initial_state(members, model, frozen, mesh, data0.input_shape, info)
    params = _member(state.params, 0)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    num_frozen = sum(x.size for path, x in flat_params if train._module(path) in frozen)
    facts = {"num_params": int(num_params), "trainable_params": int(num_params - num_frozen), "group": len(configs)}
    for member in members:
        member.open()

    stacked = len(streams) > 1
    weights = [streams[m.stream].data.class_weights for m in members]
    numbers = {
        "learning_rate": np.array([m.config.optimizer.learning_rate for m in members], np.float32),
        "weight_decay": np.array([m.config.optimizer.weight_decay for m in members], np.float32),
        "label_smoothing": np.array([m.config.label_smoothing for m in members], np.float32),
    }
    if weights[0] is not None:
        numbers["class_weights"] = np.stack(weights).astype(np.float32)
    vary_smoothing = len(set(numbers["label_smoothing"].tolist())) > 1
    numbers = jax.device_put(numbers, parallel.replicated(mesh))  # once, not with every step
    train_step = _make_group_step(
        first,
        data0.num_classes,
        frozen,
        members[0].steps_per_epoch,
        members[0].total_steps,
        mesh,
        stacked,
        vary_smoothing,
    )
    eval_step = jax.jit(jax.vmap(train.eval_step_fn(model, data0.num_classes), in_axes=(0, 0 if stacked else None)))
    single_eval = train.make_eval_step(mesh, model, data0.num_classes)
    alive = jnp.ones(len(members), bool)
    print(
        f"[vectorize] {len(members)} members in one program ({len(streams)} data stream(s)): "
        + ", ".join(m.name for m in members),
        flush=True,
    )
    train_time, started = 0.0, time.perf_counter()
    compiled_at = None
    process = (jax.process_index(), jax.process_count())
    try:
        with train._StopRequests() as stop:
            epoch = 0
            while any(m.active for m in members):
                tic = time.perf_counter()
                iterators = [pipeline.train_batches(s.data, s.config, epoch, 0, *process) for s in streams]
                longest = max(m.steps_per_epoch for m in members if m.active)
                epoch_metrics, last_batches = None, [None] * len(streams)
                for position in range(longest):
                    active = [m.active and position < m.steps_per_epoch and m.step < m.total_steps for m in members]
                    if not any(active):
                        break
                    for index, (iterator, s) in enumerate(zip(iterators, streams)):
                        if position < s.steps_per_epoch:
                            last_batches[index] = next(iterator)
                    batch = _global(_member_batch(last_batches, members, stacked), mesh, stacked)
                    if epoch_metrics is None:
                        epoch_metrics = _zero_metrics(len(members), mesh)
                    state, epoch_metrics, alive = train_step(
                        state, epoch_metrics, batch, numbers, np.array(active), alive
                    )
                    for member, on in zip(members, active):
                        member.step += on
                    if compiled_at is None:
                        jax.block_until_ready(alive)
                        compiled_at = time.perf_counter() - started
                        print(f"[vectorize] compiled and ran the first step in {compiled_at:.1f}s", flush=True)
                    if (position + 1) % first.log_every_steps == 0:
                        _check_alive(members, alive)
                    if stop_after_step is not None and max(m.step for m in members) >= stop_after_step:
                        stop.signal = "stop_after_step"
                    if stop.signal:
                        raise train.TrainingInterrupted(
                            f"{stop.signal}: the vectorized group {names} stopped at step "
                            f"{max(m.step for m in members)}; the same command restarts its unfinished members."
                        )
                train_time += time.perf_counter() - tic
                _check_alive(members, alive)
                computed = _evaluate(eval_step, state, streams, members, mesh, stacked)
                timing = {"train_time_s": train_time, "steps_per_s": _rate(members, train_time, compiled_at)}
                state = _end_epoch(members, state, epoch_metrics, computed, timing, facts, single_eval, mesh)
                epoch += 1
    except train.TrainingInterrupted:
        for member in members:
            if member.active:
                member.status, member.error = "interrupted", "interrupted; restarts from scratch with --vectorize"
                train._write_status(member.workdir, "interrupted", step=member.step, reason="vectorized group stopped")
        raise
    finally:
        for member in members:
            member.close()
    return {m.name: (m.status, m.error) for m in members}


def _zero_metrics(num_members: int, mesh) -> tasks.TrainMetrics:
    """Each member's empty TrainMetrics (zero sums), stacked, to add an epoch's steps to."""
    empty = tasks.TrainMetrics.empty()
    zeros = jax.tree.map(lambda x: jnp.zeros((num_members, *jnp.shape(x)), jnp.asarray(x).dtype), empty)
    return jax.device_put(zeros, parallel.replicated(mesh))


def _rate(members: list[_Member], train_time: float, compiled_at: float | None) -> float:
    """The group's steps per second after its first (compiling) step."""
    return (max(m.step for m in members) - 1) / max(train_time - (compiled_at or 0.0), 1e-9)


def _check_alive(members: list[_Member], alive) -> None:
    """Records members whose loss turned NaN (the device flag is sticky; one host read)."""
    flags = np.asarray(alive)
    for member, ok in zip(members, flags):
        if member.active and not ok:
            member.diverge("nan")


def _evaluate(eval_step, state, streams, members, mesh, stacked) -> list[dict | None]:
    """Each active member's computed metrics over its own validation split (None for the others)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    iterators = [
        pipeline.eval_batches(s.data, "validation", s.config, None, jax.process_index(), jax.process_count())
        for s in streams
    ]
    collected = None
    while True:
        batches = [next(iterator, None) for iterator in iterators]
        if all(b is None for b in batches):
            break
        template = next(b for b in batches if b is not None)
        batches = [b if b is not None else {**template, "valid": np.zeros_like(template["valid"])} for b in batches]
        metrics, _ = eval_step(variables, _global(_member_batch(batches, members, stacked), mesh, stacked))
        collected = metrics if collected is None else collected.merge(metrics)
    host = jax.device_get(collected)
    return [_member(host, i).compute() if m.active else None for i, m in enumerate(members)]


def _end_epoch(members, state, epoch_metrics, computed, timing, facts, single_eval, mesh):
    """Each active member's epoch end as train_and_evaluate has it: metrics, plateau, early stopping, checkpoints."""
    train_time = timing["train_time_s"]
    host_metrics = jax.device_get(epoch_metrics)
    hyperparams = jax.device_get(optim._hyperparams(state.opt_state))
    scales = np.asarray(hyperparams["lr_scale"]).copy()
    for index, member in enumerate(members):
        if not member.active:
            continue
        config = member.config
        train_scalars = {f"train_{k}": float(v) for k, v in _member(host_metrics, index).compute().items()}
        if not np.isfinite(train_scalars["train_loss"]):
            member.diverge(str(train_scalars["train_loss"]))
            continue
        member.summary = tasks.eval_summary(config.task, jax.device_get(computed[index]))
        member.computed = computed[index]
        scalars = {
            "epoch": member.step / member.steps_per_epoch,
            **train_scalars,
            **{f"val_{k}": v for k, v in member.summary.items()},
            "learning_rate": float(hyperparams["learning_rate"][index]) * float(hyperparams["lr_scale"][index]),
            "training_time_s": train_time,
        }
        member.writer.write_scalars(member.step, scalars)
        member.writer.flush()
        if member.plateau:
            scales[index] = member.plateau.update(scalars)
        stopper = member.stopper
        improved = stopper.update(scalars, member.step, member.step // member.steps_per_epoch) if stopper else False
        member.stopped_early = bool(stopper and stopper.should_stop and member.step < member.total_steps)
        last = member.step >= member.total_steps or member.stopped_early
        metrics = {k: v for k, v in scalars.items() if k.startswith(("train_", "val_"))}
        if stopper:
            metrics[train.RANK] = float(stopper.improvements if improved else -1)
        own = _member(state, index)

        if last and stopper and config.early_stopping.restore_best and stopper.best_step != member.step:
            best = member.checkpoints.restore(stopper.best_step, own, items=("params", "batch_stats"))
            own = own.replace(params=best["params"], batch_stats=best["batch_stats"])
            metrics = {k: v for k, v in stopper.best_scalars.items() if k.startswith(("train_", "val_"))}
            metrics[train.RANK] = float(stopper.improvements)
            variables = {"params": own.params, "batch_stats": own.batch_stats}
            member.summary, member.computed, _ = train.evaluate_split(
                single_eval, variables, member.data, "validation", config, mesh
            )
            member.save(
                own, metrics, train_time, stopped_early=member.stopped_early, restored_best_step=stopper.best_step
            )
        elif last or improved or (member.step // member.steps_per_epoch) % config.checkpoint.every_epochs == 0:
            member.save(own, metrics, train_time, stopped_early=member.stopped_early)
        if last:
            member.status = "finished"
            _finish(member, timing, facts)
    if any(m.plateau for m in members):
        state = state.replace(opt_state=optim.set_lr_scale(state.opt_state, scales))
    return state


def _finish(member: _Member, timing: dict, facts: dict) -> None:
    """status.json as train_and_evaluate writes it; the times are the group's (its members trained together)."""
    stopper, spe = member.stopper, member.steps_per_epoch
    stopping = {}
    if stopper:
        stopping = {
            "stopped_early": member.stopped_early,
            "stopped_epoch": member.step // spe if member.stopped_early else None,
            "best_epoch": stopper.best_epoch,
            "best_value": stopper.best,
            "monitor": stopper.monitor,
        }
    checkpoints = ckpt.Checkpoints(member.workdir, train._checkpoint_config(member.config), read_only=True)
    best = checkpoints.best_step()
    checkpoints.close()
    train._write_status(
        member.workdir,
        "finished",
        step=member.step,
        epochs=-(-member.step // spe),
        **timing,
        peak_memory_mb=train._peak_memory_mb(),
        best_step=best,
        final={f"val_{k}": v for k, v in member.summary.items()},
        class_names=member.data.class_names,
        confusion_matrix=np.asarray(member.computed["confusion"]).tolist(),
        num_params=facts["num_params"],
        trainable_params=facts["trainable_params"],
        vectorized_group=facts["group"],
        **stopping,
    )


def run_groups(groups: list[list], workdir: Path, on_start, on_end) -> bool:
    """Trains each group (members with .name and .config) into workdir/<name>; False when interrupted.

    on_start(member) and on_end(member, status, error) keep sweep.json up to date.
    """
    for group in groups:
        for member in group:
            on_start(member)
        try:
            results = train_group([m.name for m in group], [m.config for m in group], [workdir / m.name for m in group])
        except (train.TrainingInterrupted, KeyboardInterrupt) as error:
            for member in group:
                on_end(member, "interrupted", str(error) or "KeyboardInterrupt")
            return False
        except Exception as error:  # noqa: BLE001 - a failing group is recorded and the sweep goes on
            tail = "".join(traceback.format_exc().splitlines(keepends=True)[-15:])
            message = str(error) if isinstance(error, ValueError | FileNotFoundError) else tail
            for member in group:
                on_end(member, "failed", message.strip())
            continue
        for member in group:
            on_end(member, *results[member.name])
    return True
