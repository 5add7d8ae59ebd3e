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

Members whose augmentation or added copies differ (data.augment, copy_fraction, copy_augment)
read their own streams too. model.dropout is a per-member number for the models that take it
traced (DROPOUT_AS_NUMBER: S4's ConvNN); for the others it stays structural, as flax's
nn.Dropout branches in Python on its rate. An interrupted group restarts its unfinished members
from scratch.
"""

import dataclasses
import functools
import json
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from labjax import config as config_lib
from labjax import evaluation, models, optim, parallel, tasks, train
from labjax import workdir as workdir_lib
from labjax.data import pipeline
from labjax.data.input_spec import InputSpec
from labjax.errors import ConfigError, TrainingInterrupted, UserError
from labjax.run_record import RunRecord, StopRequests, process_age_s

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
    "data.augment",
    "data.copy_fraction",
    "data.copy_augment",
)
# What decides the data a member sees: members that differ here read their own stream of batches.
STREAM_KEYS = ("seed", "data.fold", "data.augment", "data.copy_fraction", "data.copy_augment")
# Models whose model.dropout is a number the step can take per member (small_nets.Dropout); for
# the others flax's nn.Dropout branches in Python on the rate, so it shapes the program.
DROPOUT_AS_NUMBER = ("convnn1", "convnn2")


def structure_key(config: ml_collections.ConfigDict) -> str:
    """Everything that shapes the compiled program: the config without VECTOR_KEYS' values.

    Momentum is present in the optimizer state only when > 0 (optim.injected_numbers), so
    0 and > 0 are different structures.
    """
    return json.dumps(_structure(config), sort_keys=True, default=str)


def _structure(config: ml_collections.ConfigDict) -> dict:
    flat = config_lib.flatten(config_lib.to_dict(config))
    for key in VECTOR_KEYS:
        flat.pop(key, None)
    if config.model.name in DROPOUT_AS_NUMBER:
        flat.pop("model.dropout", None)
    flat["momentum>0"] = config.optimizer.momentum > 0
    return flat


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
    first, second = (_structure(m.config) for m in members[:2])
    keys = [k for k in sorted(set(first) | set(second)) if first.get(k) != second.get(k)]
    if keys == ["momentum>0"]:
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
    """One member of a group: its data stream, its status, and the RunRecord that owns its run folder."""

    def __init__(self, name: str, config, workdir: Path, stream: int, streams: list[_Stream]):
        self.name, self.config, self.workdir, self.stream = name, config, workdir, stream
        data = streams[stream].data
        self.data, self.steps_per_epoch = data, streams[stream].steps_per_epoch
        steps = config.num_train_steps
        self.total_steps = steps if steps > 0 else config.num_epochs * self.steps_per_epoch
        self.status, self.error = "running", None
        self.record: RunRecord | None = None
        self.lock: workdir_lib.FolderLock | None = None

    @property
    def active(self) -> bool:
        return self.status == "running"

    @property
    def step(self) -> int:
        return self.record.step

    def open(self) -> None:
        self.lock = workdir_lib.FolderLock(self.workdir).acquire()
        workdir_lib.claim_workdir(self.config, self.workdir, overwrite=True)
        self.record = RunRecord(
            self.config,
            self.workdir,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            class_names=self.data.class_names,
            input_spec=InputSpec.from_data(self.data, self.config).to_dict(),
            plot_while_training=False,  # drawn once, at the member's end
        )
        self.record.write_status("running", step=0)

    def close(self) -> None:
        if self.record is not None:
            self.record.close()
        if self.lock is not None:
            self.lock.release()

    def diverge(self, loss: str) -> None:
        self.status = "diverged"
        self.error = self.record.diverge(loss, self.step)
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
            states.append(train.starting_weights(member.config, info, model, state, mesh, input_shape))
        return jax.device_put(_stack([s.replace(tx=states[0].tx) for s in states]), parallel.replicated(mesh))
    names = ["learning_rate", *optim.injected_numbers(first.optimizer)]
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


def _make_group_step(
    config,
    num_classes,
    frozen,
    steps_per_epoch,
    total_steps,
    mesh,
    stacked_batch,
    vary_smoothing,
    steps_per_dispatch,
    dropout_model=None,
):
    """The jitted, vmapped step over (state, epoch's metric sums, batch, per-member numbers, active, alive).

    Returns (state, sums, alive): a member that is not active (done, waiting) or not alive
    (its loss was NaN once) keeps its state; an inactive member adds nothing to its sums.
    With steps_per_dispatch k > 1 it takes a chunk of k batches and (k, members) active flags.
    `dropout_model`: the model, cloned in each member's step with its own dropout rate.
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
        stepping = state.replace(tx=tx)  # the returned state keeps the group's tx and apply_fn
        if dropout_model is not None:
            stepping = stepping.replace(apply_fn=dropout_model.clone(dropout=numbers["dropout"]).apply)
        new, metrics = step(stepping, batch)
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
    group_step = jax.vmap(member_step, in_axes=(0, 0, 0 if stacked_batch else None, 0, 0, 0))
    if steps_per_dispatch > 1:
        group_step = _chunked(group_step)
    return jax.jit(
        group_step,
        in_shardings=(
            replicated,
            replicated,
            _batch_sharding(mesh, stacked_batch, steps_per_dispatch),
            *[replicated] * 3,
        ),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )


def _chunked(group_step):
    """The group's step over a chunk of k batches (a lax.scan; config.steps_per_execution): `active`
    is (k, members), False where a member has no step (its epoch or run ended, the chunk's padding)."""

    def chunk_step(state, totals, chunk, numbers, active, alive):
        def body(carry, step_inputs):
            batch, active_now = step_inputs
            return group_step(*carry[:2], batch, numbers, active_now, carry[2]), None

        (state, totals, alive), _ = jax.lax.scan(body, (state, totals, alive), (chunk, active))
        return state, totals, alive

    return chunk_step


def _batch_sharding(mesh, stacked: bool, steps_per_dispatch: int) -> NamedSharding:
    """A batch (B, ...), stacked over members (M, B, ...), and either in a chunk (k, ...): B over 'data'."""
    leading = (None,) * (int(stacked) + int(steps_per_dispatch > 1))
    return NamedSharding(mesh, PartitionSpec(*leading, "data"))


def _global(batch: dict, mesh, stacked: bool, steps_per_dispatch: int = 1) -> dict:
    sharding = _batch_sharding(mesh, stacked, steps_per_dispatch)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _member_batch(stream_batches: list[dict], members: list[_Member], stacked: bool, axis: int = 0) -> dict:
    """The batch each member trains on: the one stream's, or the members' streams' stacked on `axis`."""
    if not stacked:
        return stream_batches[0]
    return {k: np.stack([stream_batches[m.stream][k] for m in members], axis) for k in stream_batches[0]}


def _padded_chunk(chunk: dict | None, template: dict, steps: int) -> dict:
    """A stream's chunk of `steps` batches: a short one (its epoch's end) or none padded with zeros."""
    padded = {}
    for key, value in template.items():
        have = chunk[key] if chunk is not None else value[:0]
        if len(have) == steps:
            padded[key] = have
            continue
        padded[key] = np.zeros((steps, *value.shape[1:]), value.dtype)
        padded[key][: len(have)] = have
    return padded


def train_group(names: list[str], configs: list, workdirs: list[Path], *, stop_after_step: int | None = None) -> dict:
    """Trains the members of one group together; returns {name: (status, error)}.

    Every member starts from scratch in its workdir (an interrupted group restarts). Raises
    TrainingInterrupted after SIGINT/SIGTERM (or `stop_after_step`, for tests), with every
    unfinished member's status.json saying 'interrupted'.
    """
    for config in configs:
        config_lib.validate(config)
    info = models.model_info(configs[0].model.name)
    streams, members = _load_streams(names, configs, workdirs, info)
    group = _Group(members, streams, info)
    print(
        f"[vectorize] {len(members)} members in one program ({len(streams)} data stream(s)): "
        + ", ".join(m.name for m in members),
        flush=True,
    )
    try:
        for member in members:
            member.open()
        group.run(stop_after_step)
    except TrainingInterrupted:
        for member in members:
            if member.active:
                member.status, member.error = "interrupted", "interrupted; restarts from scratch with --vectorize"
                member.record.write_status("interrupted", step=member.step, reason="vectorized group stopped")
        raise
    except Exception as error:
        for member in members:  # no status stays 'running' after a crash
            if member.active and member.record is not None:
                member.record.fail(error)
        raise
    finally:
        for member in members:
            member.close()
    return {m.name: (m.status, m.error) for m in members}


def _load_streams(names, configs, workdirs, info) -> tuple[list[_Stream], list[_Member]]:
    """The data of each (seed, fold) once, and the members reading it; refuses members that cannot share."""
    streams, stream_of = [], {}
    for config in configs:
        key = _stream_key(config)
        if key not in stream_of:
            data = pipeline.load(config, info.preprocessing)
            train.check_input_fits_model(config, data.input_shape)
            stream_of[key] = len(streams)
            streams.append(_Stream(config, data, pipeline.steps_per_epoch(data, config.batch_size)))
    members = [
        _Member(name, config, Path(workdir), stream_of[_stream_key(config)], streams)
        for name, config, workdir in zip(names, configs, workdirs)
    ]
    data0, first = streams[0].data, configs[0]
    if any(s.data.num_classes != data0.num_classes or s.data.input_shape != data0.input_shape for s in streams):
        raise ConfigError(
            f"vectorized members {names} see data of different classes or input shapes; run them without --vectorize."
        )
    schedule_counts_steps = first.optimizer.schedule not in ("constant", "plateau") or first.optimizer.warmup_epochs
    if schedule_counts_steps and len({(m.steps_per_epoch, m.total_steps) for m in members}) > 1:
        raise ConfigError(
            f"vectorized members {names} have different steps per epoch (folds of unequal size) and "
            f"optimizer.schedule={first.optimizer.schedule!r} (or warmup) counts steps per epoch; use a constant "
            "or plateau schedule without warmup, or run them without --vectorize."
        )
    return streams, members


class _Group:
    """The device side of a group: the stacked state, the vmapped steps, and the epochs' loop."""

    def __init__(self, members: list[_Member], streams: list[_Stream], info):
        self.members, self.streams, self.mesh = members, streams, parallel.make_mesh()
        first, data0 = members[0].config, streams[0].data
        model, frozen = models.build(first.model, data0.num_classes, data0.input_shape)
        self.state = _initial_state(members, model, frozen, self.mesh, data0.input_shape, info)
        num_params, trainable = train.count_params(_member(self.state.params, 0), frozen)
        self.facts = {"num_params": num_params, "trainable_params": trainable, "vectorized_group": len(members)}
        self.stacked = len(streams) > 1
        self.numbers, vary_smoothing = _member_numbers(members, streams, self.mesh)
        self.per_dispatch = first.steps_per_execution
        self.train_step = _make_group_step(
            first,
            data0.num_classes,
            frozen,
            members[0].steps_per_epoch,
            members[0].total_steps,
            self.mesh,
            self.stacked,
            vary_smoothing,
            self.per_dispatch,
            model if "dropout" in self.numbers else None,
        )
        eval_fn = evaluation.eval_step_fn(model, data0.num_classes)
        self.eval_step = jax.jit(jax.vmap(eval_fn, in_axes=(0, 0 if self.stacked else None)))
        self.single_eval = evaluation.make_eval_step(self.mesh, model, data0.num_classes)
        self.alive = jnp.ones(len(members), bool)
        self.train_time, self.compiled_at = 0.0, None
        # The group's own times, shared by its members (status.json's time_s names the group).
        self.seconds = {"group": members[0].name, "startup": process_age_s(), "validation": 0.0}

    def run(self, stop_after_step: int | None) -> None:
        members, epoch, started = self.members, 0, time.perf_counter()
        with StopRequests() as stop:
            while any(m.active for m in members):
                tic = time.perf_counter()
                epoch_metrics = self._train_epoch(epoch, started, stop, stop_after_step)
                self.train_time += time.perf_counter() - tic
                _check_alive(members, self.alive)
                tic = time.perf_counter()
                computed = _evaluate(self.eval_step, self.state, self.streams, members, self.mesh, self.stacked)
                self.seconds["validation"] += time.perf_counter() - tic
                self._end_epoch(epoch_metrics, computed)
                epoch += 1

    def _train_epoch(self, epoch: int, started: float, stop, stop_after_step: int | None):
        """One epoch of every active member, k steps a dispatch; returns the members' stacked metric sums."""
        members, streams, process, k = (
            self.members,
            self.streams,
            (jax.process_index(), jax.process_count()),
            self.per_dispatch,
        )
        iterators = [pipeline.train_batches(s.data, s.config, epoch, 0, *process, steps_per_chunk=k) for s in streams]
        longest = max(m.steps_per_epoch for m in members if m.active)
        epoch_metrics, last_batches = _zero_metrics(len(members), self.mesh), [None] * len(streams)
        for position in range(0, longest, k):
            # Each member's steps in this dispatch: none once its epoch or its run has ended.
            counts = [min(k, m.steps_per_epoch - position, m.total_steps - m.step) if m.active else 0 for m in members]
            if not any(count > 0 for count in counts):
                break
            for index, (iterator, s) in enumerate(zip(iterators, streams)):
                if position < s.steps_per_epoch:
                    last_batches[index] = next(iterator)
            self.state, epoch_metrics, self.alive = self.train_step(
                self.state,
                epoch_metrics,
                self._batch(last_batches, position),
                self.numbers,
                _active(counts, k),
                self.alive,
            )
            for member, count in zip(members, counts):
                member.record.step += max(count, 0)
            if self.compiled_at is None:
                jax.block_until_ready(self.alive)
                self.compiled_at = time.perf_counter() - started
                print(f"[vectorize] compiled and ran the first dispatch in {self.compiled_at:.1f}s", flush=True)
            every = members[0].config.log_every_steps
            if (position + k) // every > position // every:
                _check_alive(members, self.alive)
            if stop_after_step is not None and max(m.step for m in members) >= stop_after_step:
                stop.signal = "stop_after_step"
            if stop.signal:
                raise TrainingInterrupted(
                    f"{stop.signal}: the vectorized group {[m.name for m in members]} stopped at step "
                    f"{max(m.step for m in members)}; the same command restarts its unfinished members."
                )
        return epoch_metrics

    def _batch(self, stream_batches: list[dict], position: int) -> dict:
        """The dispatch's global batch (or chunk of k): a stream whose epoch ended gives zeros it never trains on."""
        k = self.per_dispatch
        if k > 1:
            template = next(b for b in stream_batches if b is not None)
            ended = [s.steps_per_epoch <= position for s in self.streams]
            stream_batches = [_padded_chunk(None if done else b, template, k) for b, done in zip(stream_batches, ended)]
        return _global(
            _member_batch(stream_batches, self.members, self.stacked, int(k > 1)), self.mesh, self.stacked, k
        )

    def _end_epoch(self, epoch_metrics, computed: list[dict | None]) -> None:
        """Each active member's epoch end, by its RunRecord: metrics, plateau, early stopping, checkpoints."""
        steps_per_s = _rate(self.members, self.train_time, self.compiled_at)
        host_metrics = jax.device_get(epoch_metrics)
        hyperparams = jax.device_get(optim.injected_hyperparams(self.state.opt_state))
        scales = np.asarray(hyperparams["lr_scale"]).copy()
        for index, member in enumerate(self.members):
            if not member.active:
                continue
            record = member.record
            record.train_time = self.train_time  # the group's: its members trained together
            train_scalars = {f"train_{k}": float(v) for k, v in _member(host_metrics, index).compute().items()}
            if not np.isfinite(train_scalars["train_loss"]):
                member.diverge(str(train_scalars["train_loss"]))
                continue
            summary = tasks.eval_summary(member.config.task, jax.device_get(computed[index]))
            learning_rate = float(hyperparams["learning_rate"][index]) * float(hyperparams["lr_scale"][index])
            end = record.end_epoch(
                _member(self.state, index),
                train_scalars,
                summary,
                computed[index],
                learning_rate,
                functools.partial(self._validate, member),
            )
            if end.lr_scale is not None:
                scales[index] = end.lr_scale
            if end.last:
                member.status = "finished"
                compile_s = self.compiled_at or 0.0
                record.seconds.update(self.seconds, compile=compile_s, train_steps=self.train_time - compile_s)
                record.finish(steps_per_s, **self.facts)
        if any(m.record.plateau for m in self.members):
            self.state = self.state.replace(opt_state=optim.set_lr_scale(self.state.opt_state, scales))

    def _validate(self, member: _Member, variables) -> tuple[dict, dict]:
        """One member's own weights on its validation split (the best epoch's, restored at its end)."""
        summary, computed, _ = evaluation.evaluate_split(
            self.single_eval, variables, member.data, "validation", member.config, self.mesh
        )
        return summary, computed


def _member_numbers(members: list[_Member], streams: list[_Stream], mesh) -> tuple[dict, bool]:
    """The per-member numbers the step takes as arrays, placed once; whether label smoothing varies."""
    weights = [streams[m.stream].data.class_weights for m in members]
    numbers = {
        "learning_rate": np.array([m.config.optimizer.learning_rate for m in members], np.float32),
        "weight_decay": np.array([m.config.optimizer.weight_decay for m in members], np.float32),
        "label_smoothing": np.array([m.config.label_smoothing for m in members], np.float32),
    }
    if weights[0] is not None:
        numbers["class_weights"] = np.stack(weights).astype(np.float32)
    rates = [m.config.model.dropout for m in members]
    if len(set(rates)) > 1:  # structure_key let them differ: DROPOUT_AS_NUMBER
        numbers["dropout"] = np.array(rates, np.float32)
    vary_smoothing = len(set(numbers["label_smoothing"].tolist())) > 1
    return jax.device_put(numbers, parallel.replicated(mesh)), vary_smoothing


def _active(counts: list[int], steps_per_dispatch: int) -> np.ndarray:
    """Which members step: (members,) for one step a dispatch, else (k, members) from each one's count."""
    if steps_per_dispatch == 1:
        return np.array([count > 0 for count in counts])
    return np.arange(steps_per_dispatch)[:, None] < np.array(counts)[None, :]


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


def run_groups(groups: list[list], workdir: Path, on_start, on_end) -> bool:
    """Trains each group (members with .name and .config) into workdir/<name>; False when interrupted.

    on_start(member) and on_end(member, status, error) keep sweep.json up to date.
    """
    for group in groups:
        for member in group:
            on_start(member)
        try:
            results = train_group([m.name for m in group], [m.config for m in group], [workdir / m.name for m in group])
        except (TrainingInterrupted, KeyboardInterrupt) as error:
            for member in group:  # members that ended before the stop keep their outcome
                status = workdir_lib.read_status(workdir / member.name)
                if status.get("status") in ("finished", "diverged"):
                    on_end(member, status["status"], None)
                else:
                    on_end(member, "interrupted", str(error) or "KeyboardInterrupt")
            return False
        except Exception as error:  # noqa: BLE001 - a failing group is recorded and the sweep goes on
            tail = "".join(traceback.format_exc().splitlines(keepends=True)[-15:])
            message = str(error) if isinstance(error, UserError) else tail
            for member in group:
                on_end(member, "failed", message.strip())
            continue
        for member in group:
            on_end(member, *results[member.name])
    return True
