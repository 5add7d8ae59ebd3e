"""Training: TrainState, the jitted data-parallel steps, and train_and_evaluate(config, workdir).

One global batch per step, sharded over the 'data' mesh axis; parameters replicated. XLA
reduces gradients and BatchNorm statistics over the whole global batch, so a run gives the
same result on 1 or N devices.
"""

import contextlib
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import parameter_overview
from flax import struct
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import evaluation, models, optim, parallel, profiling, tasks
from labjax import workdir as workdir_lib
from labjax.errors import ConfigError, TrainingDiverged, TrainingInterrupted, TrainingPruned  # noqa: F401
from labjax.run_record import RunRecord, StopRequests, process_age_s
from labjax.weights import pretrained


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # dropout key; each step folds in its step number, so nothing to save
    # Module paths (model.freeze) the optimizer leaves alone; the step also takes no gradient through them.
    frozen: frozenset = struct.field(pytree_node=False, default=frozenset())


def create_train_state(
    config,
    model,
    mesh,
    image_shape: tuple[int, ...],
    frozen=frozenset(),
    steps_per_epoch: int = 1,
    total_steps: int | None = None,
) -> TrainState:
    """Initialises parameters and optimizer state, replicated over the mesh; `frozen` modules get no updates.

    The learning-rate schedule counts epochs in optimizer steps, hence `steps_per_epoch`
    (and `total_steps` for schedules that end somewhere, such as cosine).
    """
    tx = optim.create_optimizer(config, frozen, steps_per_epoch, total_steps=total_steps)

    def init() -> TrainState:
        key = jax.random.key(config.seed)
        variables = model.init({"params": key}, jnp.zeros((1, *image_shape)), train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables.get("batch_stats", {}),
            rng=jax.random.fold_in(key, 1),
            frozen=frozenset(frozen),
        ).replace(step=jnp.zeros((), jnp.int32))  # a fixed type: resumed steps reuse the compiled step

    return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def train_step_fn(
    num_classes: int,
    class_weights: np.ndarray | None = None,
    *,
    label_smoothing: float | jax.Array = 0.0,
    penalty=None,
    compute_dtype: str = "float32",
):
    """The pure (un-jitted) step: forward, backward, update; returns (new state, TrainMetrics).

    make_train_step jits it; labjax/vectorize.py vmaps it over a sweep's stacked members, where
    `label_smoothing` may be a traced per-member value.

    `class_weights` (balance=weights) scale each label's loss, normalised by the summed
    weights as PyTorch's weighted cross-entropy does. A mixed batch (mixup/cutmix) carries
    a second label and its share: the loss is mix * CE(label) + (1 - mix) * CE(label_b).
    `penalty(params)` (L2 weight decay) is added to the objective the gradients come from;
    the logged loss is the data loss alone, so runs with and without it compare.
    With compute_dtype bfloat16 the forward and backward pass run on bfloat16 copies of
    params and images; params, optimizer state and BatchNorm statistics stay float32.
    """
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    dtype = jnp.dtype(compute_dtype)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, tasks.TrainMetrics]:
        labels = batch["label"]
        mask = tasks.label_mask(labels, jnp.ones(labels.shape[:1], bool), num_classes)

        def objective(logits):
            losses = tasks.per_label_loss(logits, labels, mask, label_smoothing)
            if "mix" in batch:
                mix = batch["mix"].reshape(batch["mix"].shape + (1,) * (labels.ndim - 1))
                second = tasks.per_label_loss(logits, batch["label_b"], mask, label_smoothing)
                losses = mix * losses + (1 - mix) * second
            if weights is None:
                return losses.sum() / jnp.maximum(mask.sum(), 1), losses
            per_label = jnp.where(mask, weights[jnp.clip(labels, 0, num_classes - 1)], 0.0)
            return (per_label * losses).sum() / jnp.maximum(per_label.sum(), 1e-12), losses

        def loss_fn(params):
            params = _without_frozen_gradients(params, state.frozen)
            images, compute_params = batch["image"], params
            if dtype != jnp.float32:
                images = images.astype(dtype)
                compute_params = jax.tree.map(lambda x: x.astype(dtype), params)
            logits, updates = state.apply_fn(
                {"params": compute_params, "batch_stats": state.batch_stats},
                images,
                train=True,
                rngs={"dropout": jax.random.fold_in(state.rng, state.step)},
                mutable=["batch_stats"],
            )
            loss, losses = objective(logits)
            if penalty is not None:
                loss = loss + penalty(params)
            return loss, (logits, losses, updates)

        grads, (logits, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
        # Running statistics keep their own dtype (float32) whatever the compute dtype.
        batch_stats = jax.tree.map(
            lambda new, old: new.astype(old.dtype), updates.get("batch_stats", {}), state.batch_stats
        )
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        metrics = tasks.TrainMetrics.single_from_model_output(loss=losses, logits=logits, labels=labels, mask=mask)
        return state, metrics

    return train_step


def make_train_step(
    mesh,
    num_classes: int,
    class_weights: np.ndarray | None = None,
    *,
    label_smoothing: float = 0.0,
    penalty=None,
    compute_dtype: str = "float32",
):
    """The jitted data-parallel step of train_step_fn: batch sharded over 'data', state replicated."""
    train_step = train_step_fn(
        num_classes, class_weights, label_smoothing=label_smoothing, penalty=penalty, compute_dtype=compute_dtype
    )
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        train_step,
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_multi_step(
    mesh,
    steps: int,
    num_classes: int,
    class_weights: np.ndarray | None = None,
    *,
    label_smoothing: float = 0.0,
    penalty=None,
    compute_dtype: str = "float32",
):
    """Up to `steps` train steps in one dispatch (Keras' steps_per_execution): a lax.scan of
    train_step_fn over a chunk of batches stacked on a new leading axis, (steps, B, ...).

    Called as multi_step(state, epoch_metrics, chunk, count): the first `count` batches of the
    chunk are trained on, the rest (padding) skipped, so a short chunk at an epoch's end reuses
    the one compiled program. Returns (state, epoch_metrics merged with each step's metrics in
    turn, the last step's metrics): the same sums in the same order as merging one step at a
    time, so epoch metrics match steps_per_execution=1. At batch 1 (S4) the host's work per step
    (a tf.data element, Python, dispatch, the metric merge) costs about twice the step's own
    computation; a chunk pays it once.
    """
    train_step = train_step_fn(
        num_classes, class_weights, label_smoothing=label_smoothing, penalty=penalty, compute_dtype=compute_dtype
    )

    def multi_step(state: TrainState, epoch_metrics: tasks.TrainMetrics, chunk: dict, count: jax.Array):
        def run(carry, batch):
            state, total, _ = carry
            state, metrics = train_step(state, batch)
            return state, total.merge(metrics), metrics

        def skip(carry, batch):  # padding
            return carry

        def body(carry, index_and_batch):
            index, batch = index_and_batch
            return jax.lax.cond(index < count, run, skip, carry, batch), None

        carry = (state, epoch_metrics, epoch_metrics)  # the last step's metrics start as any value of their type
        (state, epoch_metrics, last), _ = jax.lax.scan(body, carry, (jnp.arange(steps), chunk))
        return state, epoch_metrics, last

    replicated = parallel.replicated(mesh)
    return jax.jit(
        multi_step,
        in_shardings=(replicated, replicated, _chunk_sharded(mesh), replicated),
        out_shardings=replicated,
        donate_argnums=0,
    )


def _chunk_sharded(mesh) -> NamedSharding:
    """A chunk of batches (steps, B, ...): the batch axis over 'data', every device holding every step."""
    return NamedSharding(mesh, PartitionSpec(None, "data"))


def chunk_to_global(chunk: dict[str, np.ndarray], count: int, steps: int, mesh) -> dict[str, jax.Array]:
    """The first `count` batches of this process's chunk (m, B, ...) as global arrays of `steps` batches;
    zeros pad a short chunk (the padding is never trained on)."""
    sharding = _chunk_sharded(mesh)
    placed = {}
    for key, value in chunk.items():
        if len(value) != steps or count != steps:
            padded = np.zeros((steps, *value.shape[1:]), value.dtype)
            padded[:count] = value[:count]
            value = padded
        placed[key] = jax.make_array_from_process_local_data(sharding, value)
    return placed


def check_input_fits_model(config, input_shape: tuple[int, int, int]) -> None:
    """The model's smallest input and size divisor, checked on the real input after preprocessing."""
    smallest, divisor = models.input_rule(config.model)
    height, width = input_shape[:2]
    if min(height, width) < smallest or height % divisor or width % divisor:
        raise ConfigError(
            f"the model input is {height}x{width} (config.data.image_size={config.data.image_size}, "
            f"config.data.preprocess={config.data.preprocess!r}), but model {config.model.name!r} needs sides of at "
            f"least {smallest} that are multiples of {divisor}; resize with data.image_size or a resize op."
        )


def _format_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def notebook_display():
    """show(text, handle=None) -> handle when this process is a Jupyter kernel (a notebook), else None.

    show displays `text` as a new output, or updates the output `handle` in place.
    """
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    if type(shell).__name__ != "ZMQInteractiveShell":
        return None
    from IPython.display import Pretty, display

    def show(text: str, handle=None):
        if handle is None:
            return display(Pretty(text), display_id=True)
        handle.update(Pretty(text))
        return handle

    return show


class Progress:
    """A progress line with loss, images/s, steps/s and ETA (compile time excluded).

    In a notebook each epoch's line is one live bar updated in place; in a terminal, a log file
    or a pipe, plain lines.
    """

    def __init__(self, total_steps: int, global_batch: int):
        self.total, self.batch = total_steps, global_batch
        self.mark_step, self.mark_time, self.excluded = None, None, 0.0
        self.display, self.bar, self.bar_epoch = notebook_display(), None, None

    def _show(self, line: str, step: int, epoch: int) -> None:
        if self.display is None:
            print(line, flush=True)
            return
        done = int(20 * step / max(self.total, 1))
        text = f"[{'#' * done}{'.' * (20 - done)}] {line}"
        new = self.bar is None or self.bar_epoch != epoch  # a new bar for each epoch, under the last epoch's lines
        self.bar, self.bar_epoch = self.display(text, None if new else self.bar), epoch

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on something else than training out of the rate."""
        self.excluded += seconds

    def update(self, step: int, epoch: int, num_epochs: int, loss: float) -> None:
        now = time.perf_counter()
        if self.mark_step is None:  # the first step compiled; time from here on
            self.mark_step, self.mark_time = step, now
            line = f"epoch {epoch + 1}/{num_epochs} step {step}/{self.total} loss {loss:.4f} (compiled)"
            self._show(line, step, epoch)
            return
        rate = (step - self.mark_step) / max(now - self.mark_time - self.excluded, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        self._show(
            f"epoch {epoch + 1}/{num_epochs} step {step}/{self.total} loss {loss:.4f} | "
            f"{rate:.2f} steps/s {rate * self.batch:.1f} img/s | ETA {_format_time(eta)}",
            step,
            epoch,
        )


@dataclasses.dataclass
class _Steps:
    """The compiled steps of a run and how many train steps one dispatch runs."""

    train_step: Any
    multi_step: Any  # None when steps_per_execution is 1
    eval_step: Any
    per_dispatch: int
    no_metrics: Any = None  # an epoch's start for multi_step, placed as its outputs are


def _make_steps(config, data, model, mesh) -> _Steps:
    options = {
        "label_smoothing": config.label_smoothing,
        "penalty": l2_penalty(config.optimizer),
        "compute_dtype": config.compute_dtype,
    }
    train_step = make_train_step(mesh, data.num_classes, data.class_weights, **options)
    eval_step = evaluation.make_eval_step(mesh, model, data.num_classes)
    per_dispatch = config.steps_per_execution
    if per_dispatch == 1:
        return _Steps(train_step, None, eval_step, 1)
    multi_step = make_multi_step(mesh, per_dispatch, data.num_classes, data.class_weights, **options)
    # An input typed otherwise than the step's outputs would compile again.
    no_metrics = jax.device_put(tasks.TrainMetrics.empty(), parallel.replicated(mesh))
    return _Steps(train_step, multi_step, eval_step, per_dispatch, no_metrics)


def count_params(params, frozen) -> tuple[int, int]:
    """(all parameters, trainable ones): frozen modules' parameters are not trainable."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    total = sum(x.size for _, x in flat)
    return int(total), int(total - sum(x.size for path, x in flat if module_path(path) in frozen))


class _Loop:
    """One process's training of one run: dispatches steps, times them, and asks its RunRecord what next."""

    def __init__(self, config, data, mesh, steps: _Steps, record: RunRecord, stop_after_step: int | None):
        self.config, self.data, self.mesh, self.steps, self.record = config, data, mesh, steps, record
        self.stop_after_step = stop_after_step
        self.progress = Progress(record.total_steps, config.batch_size)
        self.profiler = profiling.StepProfiler(record.workdir / "profile", config.profile_steps)
        # This session's timing (a resumed run's rate counts its own steps); the first dispatch compiles.
        self.session_start, self.session_time = record.step, 0.0
        self.first_step_s, self.first_steps = 0.0, 1
        record.seconds["startup"] = process_age_s()  # imports, data, model, restore

    def run(self, state: TrainState) -> TrainState:
        record, next_batches = self.record, None  # the next epoch's iterator is built while this one computes
        with StopRequests() as stop:
            self.stop = stop
            if record.pending_epoch:  # a stop came after the epoch's steps, before its end was recorded
                state = self._end_epoch(state, record.pending_epoch, (record.step - 1) // record.steps_per_epoch)
            while record.step < record.total_steps and not record.stopped_early:
                epoch = record.step // record.steps_per_epoch
                tic = time.perf_counter()
                batches = (
                    self._batches(epoch, record.step % record.steps_per_epoch) if next_batches is None else next_batches
                )
                state, epoch_metrics, tic = self._train_epoch(state, batches, epoch, tic, stop)
                if record.step < record.total_steps:  # tf.data's set-up of an epoch overlaps the queued steps
                    next_batches = self._batches(epoch + 1)
                # Computing the metrics waits for the last dispatch, so the epoch's time is its computation's.
                train = {f"train_{k}": float(v) for k, v in epoch_metrics.compute().items()}
                elapsed = time.perf_counter() - tic
                record.train_time, self.session_time = record.train_time + elapsed, self.session_time + elapsed
                self._check_finite(train["train_loss"])
                state = self._end_epoch(state, train, epoch)
        self.profiler.finish()
        record.seconds["compile"] = self.first_step_s  # the first dispatch: compile and run it
        record.seconds["train_steps"] = self.session_time - self.first_step_s
        return state

    def _batches(self, epoch: int, first_step: int = 0):
        from labjax.data import pipeline

        process = (jax.process_index(), jax.process_count())
        return pipeline.train_batches(
            self.data, self.config, epoch, first_step, *process, steps_per_chunk=self.steps.per_dispatch
        )

    def _train_epoch(self, state, batches, epoch: int, tic: float, stop):
        """Dispatches the epoch's steps; returns (state, the epoch's metrics, its start time less profiling)."""
        record, steps, epoch_metrics = self.record, self.steps, self._partial_metrics()
        # A dispatch never crosses the epoch's end, total_steps or stop_after_step.
        end = epoch_end = min((epoch + 1) * record.steps_per_epoch, record.total_steps)
        if self.stop_after_step is not None:
            end = min(end, max(self.stop_after_step, record.step + 1))
        while record.step < end:
            count = min(steps.per_dispatch, end - record.step)
            if steps.multi_step is None:
                batch = parallel.to_global(next(batches), self.mesh)
                args = (state, batch)
                state, metrics = steps.train_step(*args)
                epoch_metrics = metrics if epoch_metrics is None else epoch_metrics.merge(metrics)
            else:
                chunk = chunk_to_global(next(batches), count, steps.per_dispatch, self.mesh)
                merged = steps.no_metrics if epoch_metrics is None else epoch_metrics
                args = (state, merged, chunk, np.int32(count))
                state, epoch_metrics, metrics = steps.multi_step(*args)
            record.step += count
            first = record.step - count == self.session_start
            if self.profiler.pending:  # config.profile_steps; nothing is added to the loop once it is done
                step_fn = steps.train_step if steps.multi_step is None else steps.multi_step
                lower = functools.partial(step_fn.lower, *args)
                # Summarising a trace takes seconds that are no training: rates and times leave them out.
                summarising = self.profiler.after_dispatch(record.step, first, record.step >= end, state, lower)
                tic += summarising
                self.progress.exclude(summarising)
            self._log(metrics, epoch, first, count)
            if first:  # the loss above waited for it: compile + the first dispatch
                self.first_step_s, self.first_steps = time.perf_counter() - tic, count
            if self.stop_after_step is not None and record.step >= self.stop_after_step:
                stop.signal = "stop_after_step"
            if stop.signal:
                record.train_time += time.perf_counter() - tic
                pending, partial = None, None
                if record.step == epoch_end:  # every step of the epoch ran: the resumed run records its end first
                    pending = {f"train_{k}": float(v) for k, v in epoch_metrics.compute().items()}
                else:  # part-way: the resumed epoch's metrics go on from these sums
                    partial = [np.asarray(leaf).item() for leaf in jax.device_get(jax.tree.leaves(epoch_metrics))]
                raise TrainingInterrupted(record.interrupt(state, stop.signal, pending, partial))
        return state, epoch_metrics, tic

    def _partial_metrics(self):
        """The metric sums of the epoch a stop cut short (saved with its checkpoint), once; else None."""
        leaves, self.record.partial_epoch = self.record.partial_epoch, None
        if not leaves:
            return None
        empty = tasks.TrainMetrics.empty()
        values = [np.asarray(value, np.asarray(e).dtype) for value, e in zip(leaves, jax.tree.leaves(empty))]
        return jax.device_put(jax.tree.unflatten(jax.tree.structure(empty), values), parallel.replicated(self.mesh))

    def _log(self, metrics, epoch: int, first: bool, count: int) -> None:
        step, every = self.record.step, self.config.log_every_steps
        if first or step // every > (step - count) // every:
            loss = float(metrics.loss.compute())
            self._check_finite(loss)
            self.progress.update(step, epoch, self.record.num_epochs, loss)

    def _check_finite(self, loss: float) -> None:
        if not np.isfinite(loss):
            raise TrainingDiverged(self.record.diverge(loss, self.record.step))

    def _validate(self, variables, stoppable: bool = False) -> tuple[dict, dict]:
        """The validation split's metrics; `stoppable`: a SIGTERM stops the pass between batches."""
        summary, computed, _ = evaluation.evaluate_split(
            self.steps.eval_step,
            variables,
            self.data,
            "validation",
            self.config,
            self.mesh,
            should_stop=(lambda: self.stop.signal is not None) if stoppable else None,
        )
        return summary, computed

    def _end_epoch(self, state, train: dict, epoch: int) -> TrainState:
        try:
            with self.record.timed("validation"):
                summary, computed = self._validate({"params": state.params, "batch_stats": state.batch_stats}, True)
        except evaluation.EvaluationStopped:
            raise TrainingInterrupted(self.record.interrupt(state, self.stop.signal, pending_epoch=train)) from None
        learning_rate = optim.current_learning_rate(state.opt_state)
        shown = {**train, **{f"val_{k}": v for k, v in summary.items()}}
        print(
            f"epoch {epoch + 1}/{self.record.num_epochs} done: "
            + " ".join(f"{k} {v:.4f}" for k, v in shown.items())
            + f" lr {learning_rate:.3g}",
            flush=True,
        )
        end = self.record.end_epoch(state, train, summary, computed, learning_rate, self._validate)
        state = end.state
        if end.lr_scale is not None:
            state = state.replace(opt_state=optim.set_lr_scale(state.opt_state, end.lr_scale))
        return state

    def steps_per_s(self) -> float:
        """This session's rate after its first (compiling) dispatch."""
        steps = self.record.step - self.session_start - self.first_steps
        return steps / max(self.session_time - self.first_step_s, 1e-9)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    stop_after_step: int | None = None,
    epoch_hook=None,
) -> dict:
    """Trains (or resumes) the configured run in `workdir`; returns the final validation summary.

    `stop_after_step` behaves like a SIGTERM after that step (tests use it to interrupt).
    """
    # TensorFlow (tf.data) loads here, where a run reads data: building a model, its state and
    # step (benchmarks, notebooks, the GPU image without TensorFlow) do not need it.
    from labjax.data import pipeline

    config_lib.validate(config)
    info = models.model_info(config.model.name)
    data = pipeline.load(config, info.preprocessing)  # bad data fails here, before the workdir is touched
    check_input_fits_model(config, data.input_shape)
    workdir = Path(workdir)
    # One process trains in a folder at a time; process 0 holds the lock for a multi-process run.
    lock = workdir_lib.FolderLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_in(config, workdir, data, info, overwrite, stop_after_step, epoch_hook)


def _train_in(config, workdir: Path, data, info, overwrite: bool, stop_after_step: int | None, epoch_hook) -> dict:
    """train_and_evaluate's run, with the data loaded and the workdir locked."""
    from labjax.data import pipeline
    from labjax.data.input_spec import InputSpec

    resuming = workdir_lib.check_workdir(config, workdir, overwrite)
    mesh = parallel.make_mesh()
    steps_per_epoch = pipeline.steps_per_epoch(data, config.batch_size)
    total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    model, frozen = models.build(config.model, data.num_classes, data.input_shape)
    state = create_train_state(config, model, mesh, data.input_shape, frozen, steps_per_epoch, total_steps)
    if not resuming:  # a missing or mismatched weights file fails here, before anything is written
        state = starting_weights(config, info, model, state, mesh, data.input_shape)
    workdir_lib.claim_workdir(config, workdir, overwrite)
    record = RunRecord(
        config,
        workdir,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        class_names=data.class_names,
        input_spec=InputSpec.from_data(data, config).to_dict(),  # predict needs no data set with it
        epoch_hook=epoch_hook,  # a search trial's pruning (labjax/search.py)
    )
    state, done = record.restore(state)
    num_params, trainable = count_params(state.params, frozen)
    if done:
        return _record_end(record, state, data, model, mesh, num_params=num_params, trainable_params=trainable)
    table = record.write_parameter_table(parameter_overview.get_parameter_overview(state.params))
    print(
        f"{config.model.name}: {num_params:,} parameters ({trainable:,} trainable); {data.num_train()} train / "
        f"{len(data.splits['validation'])} validation examples of {data.num_classes} classes, input "
        f"{'x'.join(map(str, data.input_shape))}; {steps_per_epoch} steps/epoch on {jax.device_count()} device(s); "
        f"parameter table in {table}.",
        flush=True,
    )
    record.write_status("running", step=record.step)
    loop = _Loop(config, data, mesh, _make_steps(config, data, model, mesh), record, stop_after_step)
    try:
        loop.run(state)
        record.finish(loop.steps_per_s(), num_params=num_params, trainable_params=trainable)
    except (TrainingDiverged, TrainingInterrupted, TrainingPruned):
        record.close()  # waits for a checkpoint being written; the status says what happened
        raise
    except BaseException as error:
        record.fail(error)  # no status stays 'running' after a crash, nor after a failing end
        record.close()
        raise
    print(f"Finished in {_format_time(record.train_time)} of training; workdir {workdir}.", flush=True)
    return dict(record.summary)


def _record_end(record: RunRecord, state: TrainState, data, model, mesh, **facts) -> dict:
    """The summary of a run that had already ended. A kill after its last checkpoint but before its
    'finished' status left no final metrics: they are computed again from that checkpoint."""
    status = workdir_lib.read_status(record.workdir)
    if status.get("status") == "finished" and "final" in status:
        record.close()
        return workdir_lib.final_summary(record.workdir)
    eval_step = evaluation.make_eval_step(mesh, model, data.num_classes)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    record.summary, record.computed, _ = evaluation.evaluate_split(
        eval_step, variables, data, "validation", record.config, mesh
    )
    record.finish(status.get("steps_per_s"), **facts)
    return dict(record.summary)


def l2_penalty(opt):
    """The L2 term for the objective when weight decay means l2 (else None: nothing added)."""
    if opt.weight_decay > 0 and optim.weight_decay_type(opt) == "l2":
        return functools.partial(optim.l2_penalty, opt=opt)
    return None


def module_path(path) -> tuple[str, ...]:
    """The module of a parameter's tree path (its keys without the parameter's own name)."""
    return tuple(p.key for p in path[:-1])


def _without_frozen_gradients(params, frozen: frozenset):
    """Frozen modules' params as constants of the differentiation, not only of the update.

    Their gradient was discarded anyway (the optimizer's set_to_zero); what this changes is
    the forward: layers whose inputs carry no tangent run their inference formulation, not the
    one made for the backward pass (on the CPU a frozen base's strided convolutions skip im2col,
    its max pools keep XLA's pool).
    """
    if not frozen:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.lax.stop_gradient(x) if module_path(path) in frozen else x, params
    )


def starting_weights(config, info, model, state: TrainState, mesh, input_shape) -> TrainState:
    """A new run starts from model.init_from (another run), else model.pretrained (Keras), else scratch."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    host = jax.device_get(variables)
    if config.model.init_from:
        checkpoints, step = ckpt.resolve_init_from(config.model.init_from)
        restored = checkpoints.restore_arrays(step)
        checkpoints.close()
        head = models.module_order(model, input_shape, ("params",))[-1]  # the output layer
        host = pretrained.merge_from_run(host, restored, head, config.model.init_head, config.model.init_from)
        print(f"Starting from {config.model.init_from} (step {step}).", flush=True)
    elif config.model.pretrained != "none":
        host = pretrained.from_keras(config.model, info, host, input_shape[0])
        print(f"Starting from the Keras weights {config.model.pretrained}.", flush=True)
    else:
        return state
    placed = jax.device_put(host, parallel.replicated(mesh))
    return state.replace(params=placed["params"], batch_stats=placed["batch_stats"])
