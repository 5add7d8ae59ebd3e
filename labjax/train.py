"""Training: TrainState, the jitted data-parallel steps, and train_and_evaluate(config, workdir).

One global batch per step, sharded over the 'data' mesh axis; parameters replicated. XLA
reduces gradients and BatchNorm statistics over the whole global batch, so a run gives the
same result on 1 or N devices.
"""

import functools
import json
import resource
import shutil
import signal
import threading
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
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import models, optim, parallel, plots, profiling, tasks
from labjax.weights import pretrained

OWN_FILES = (
    "checkpoints",
    "tensorboard",
    "plots",
    "eval",
    "predict",
    "data",
    "metrics.jsonl",
    "status.json",
    "config.json",
)


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # dropout key; each step folds in its step number, so nothing to save
    # Module paths (model.freeze) the optimizer leaves alone; the step also takes no gradient through them.
    frozen: frozenset = struct.field(pytree_node=False, default=frozenset())


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; status.json says 'diverged'."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM (or a test's stop_after_step): a checkpoint was saved first."""


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


def _chunk_to_global(chunk: dict[str, np.ndarray], count: int, steps: int, mesh) -> dict[str, jax.Array]:
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


def make_eval_step(mesh, model, num_classes: int):
    """The jitted evaluation step of eval_step_fn over a padded batch, sharded over 'data'.

    Metrics come back replicated, so every process can read them; outputs stay sharded.
    """
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        eval_step_fn(model, num_classes), in_shardings=(replicated, sharded), out_shardings=(replicated, sharded)
    )


def eval_step_fn(model, num_classes: int):
    """The pure evaluation step over a padded batch; returns (EvalMetrics, outputs).

    outputs: 'prediction' (arg-max class ids), 'label' and 'valid' as given, and for
    classification 'probability' (softmax, (B, classes)), which ROC AUC needs per example.
    """

    def eval_step(variables: dict, batch: dict):
        logits = model.apply(variables, batch["image"], train=False)
        mask = tasks.label_mask(batch["label"], batch["valid"], num_classes)
        metrics = tasks.EvalMetrics.single_from_model_output(
            loss=tasks.per_label_loss(logits, batch["label"], mask),
            logits=logits,
            labels=batch["label"],
            mask=mask,
        )
        outputs = {"prediction": jnp.argmax(logits, -1), "label": batch["label"], "valid": batch["valid"]}
        if logits.ndim == 2:
            outputs["probability"] = jax.nn.softmax(logits.astype(jnp.float32), -1)
        return metrics, outputs

    return eval_step


def evaluate_split(
    eval_step, variables, data, split: str, config, mesh, keep_predictions: int = 0, keep_scores: bool = False
):
    """Exact metrics over a whole split, and the first `keep_predictions` predictions.

    With `keep_scores` (classification), `computed` also holds every real example's class
    probabilities and label ('probabilities', 'labels', in split order) for ROC AUC.
    """
    from labjax.data import pipeline  # TensorFlow loads where data is read, not where a step is built

    collected, predictions, scores, labels = None, [], [], []
    batches = pipeline.eval_batches(data, split, config, None, jax.process_index(), jax.process_count())
    for batch in batches:
        metrics, outputs = eval_step(variables, parallel.to_global(batch, mesh))
        collected = metrics if collected is None else collected.merge(metrics)
        if sum(len(p) for p in predictions) < keep_predictions:
            predictions.append(multihost_utils.process_allgather(outputs["prediction"], tiled=True))
        if keep_scores:
            host = multihost_utils.process_allgather(
                {k: outputs[k] for k in ("probability", "label", "valid")}, tiled=True
            )
            scores.append(host["probability"][host["valid"]])
            labels.append(host["label"][host["valid"]])
    computed = jax.device_get(collected.compute())
    if keep_scores:
        computed["probabilities"], computed["labels"] = np.concatenate(scores), np.concatenate(labels)
    preds = np.concatenate(predictions)[:keep_predictions] if predictions else None
    return tasks.eval_summary(config.task, computed), computed, preds


def check_input_fits_model(config, input_shape: tuple[int, int, int]) -> None:
    """The model's smallest input and size divisor, checked on the real input after preprocessing."""
    smallest, divisor = models.input_rule(config.model)
    height, width = input_shape[:2]
    if min(height, width) < smallest or height % divisor or width % divisor:
        raise config_lib.ConfigError(
            f"the model input is {height}x{width} (config.data.image_size={config.data.image_size}, "
            f"config.data.preprocess={config.data.preprocess!r}), but model {config.model.name!r} needs sides of at "
            f"least {smallest} that are multiples of {divisor}; resize with data.image_size or a resize op."
        )


def _format_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A progress line with loss, images/s, steps/s and ETA (compile time excluded)."""

    def __init__(self, total_steps: int, global_batch: int):
        self.total, self.batch = total_steps, global_batch
        self.mark_step, self.mark_time, self.excluded = None, None, 0.0

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on something else than training out of the rate."""
        self.excluded += seconds

    def update(self, step: int, epoch: int, num_epochs: int, loss: float) -> None:
        now = time.perf_counter()
        if self.mark_step is None:  # the first step compiled; time from here on
            self.mark_step, self.mark_time = step, now
            print(f"epoch {epoch + 1}/{num_epochs} step {step}/{self.total} loss {loss:.4f} (compiled)", flush=True)
            return
        rate = (step - self.mark_step) / max(now - self.mark_time - self.excluded, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        print(
            f"epoch {epoch + 1}/{num_epochs} step {step}/{self.total} loss {loss:.4f} | "
            f"{rate:.2f} steps/s {rate * self.batch:.1f} img/s | ETA {_format_time(eta)}",
            flush=True,
        )


class _StopRequests:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_workdir(config, workdir: Path, overwrite: bool) -> bool:
    """Whether the workdir holds checkpoints to resume; refuses a different run in it (lists differing keys).

    Reads only: nothing is written or deleted until the run is known to start (claim_workdir).
    """
    if overwrite:
        return False
    saved_path = workdir / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else _config_in_checkpoints(workdir)
    if saved is not None:
        differing = config_lib.differing_keys(saved, config_lib.to_dict(config))
        if differing:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with a different config:\n  "
                + "\n  ".join(differing)
                + "\nUse a new --workdir, or --overwrite to delete that run and start again."
            )
    checkpoints = workdir / "checkpoints"
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


def claim_workdir(config, workdir: Path, overwrite: bool) -> None:
    """Creates the workdir (deleting the old run's files with --overwrite) and writes config.json.

    Process 0 alone deletes and writes; the others wait for it before they look for checkpoints.
    """
    if jax.process_index() == 0:
        if overwrite:
            for name in OWN_FILES:
                path = workdir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(workdir / "config.json", config_lib.to_dict(config))
    parallel.sync("claim_workdir")


def _config_in_checkpoints(workdir: Path) -> dict | None:
    """The config saved with the latest checkpoint, for a workdir whose config.json is gone."""
    if not (workdir / "checkpoints").is_dir():
        return None
    checkpoints = ckpt.Checkpoints(workdir, read_only=True)
    step = checkpoints.latest_step()
    config = None if step is None else checkpoints.metadata(step)["config"]
    checkpoints.close()
    return config


def _write_status(workdir: Path, status: str, **fields) -> None:
    if jax.process_index() == 0:
        ckpt.write_json(workdir / "status.json", {"status": status, "time": time.time(), **fields})


RANK = "early_stopping_rank"  # checkpoint metric of runs with early stopping


class EarlyStopping:
    """Keras' EarlyStopping: stop when `monitor` has not improved by more than min_delta for `patience` epochs.

    Its state (best value, epoch and step, epochs waited) travels in checkpoint metadata,
    so a resumed run stops where an uninterrupted one would.
    """

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.patience, self.min_delta = cfg.patience, abs(cfg.min_delta)
        self.best, self.best_step, self.best_epoch, self.best_scalars, self.wait = None, None, None, {}, 0
        self.improvements = 0  # ranks checkpoints: the latest improvement is the best (min_delta included)

    def update(self, scalars: dict, step: int, epoch: int) -> bool:
        """Records an epoch's scalars; True when the monitored value improved."""
        if self.monitor not in scalars:
            raise config_lib.ConfigError(
                f"config.early_stopping.monitor={self.monitor!r} is not a metric of this run; "
                f"choose one of {sorted(k for k in scalars if k.startswith(('train_', 'val_')))}."
            )
        value = scalars[self.monitor]
        if self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        ):
            self.best, self.best_step, self.best_epoch, self.wait = value, step, epoch, 0
            self.best_scalars = dict(scalars)
            self.improvements += 1
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.wait >= self.patience

    def state_dict(self) -> dict:
        keys = ("best", "best_step", "best_epoch", "best_scalars", "wait", "improvements")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, values: dict) -> None:
        for key, value in values.items():
            setattr(self, key, value)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    overwrite: bool = False,
    stop_after_step: int | None = None,
) -> dict:
    """Trains (or resumes) the configured run in `workdir`; returns the final validation summary.

    `stop_after_step` behaves like a SIGTERM after that step (tests use it to interrupt).
    """
    # TensorFlow (tf.data, TensorBoard) loads here, where a run reads data: building a model, its
    # state and step (benchmarks, notebooks, the GPU image without TensorFlow) do not need it.
    from labjax import writers
    from labjax.data import pipeline

    config_lib.validate(config)
    info = models.model_info(config.model.name)
    data = pipeline.load(config, info.preprocessing)  # bad data fails here, before the workdir is touched
    check_input_fits_model(config, data.input_shape)
    workdir = Path(workdir)
    resuming = check_workdir(config, workdir, overwrite)
    mesh = parallel.make_mesh()
    num_classes = data.num_classes
    steps_per_epoch = pipeline.steps_per_epoch(data, config.batch_size)
    total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    num_epochs = -(-total_steps // steps_per_epoch)
    model, frozen = models.build(config.model, num_classes, data.input_shape)
    state = create_train_state(config, model, mesh, data.input_shape, frozen, steps_per_epoch, total_steps)
    if not resuming:  # a missing or mismatched weights file fails here, before anything is written
        state = _starting_weights(config, info, model, state, mesh, data.input_shape)
    claim_workdir(config, workdir, overwrite)

    stopper = EarlyStopping(config.early_stopping) if config.early_stopping.patience > 0 else None
    plateau = None
    if config.optimizer.schedule == "plateau":
        plateau = optim.ReduceOnPlateau(config.optimizer.plateau, config.optimizer.learning_rate)
    checkpoints = ckpt.Checkpoints(workdir, _checkpoint_config(config))
    start_step, train_time = 0, 0.0
    if checkpoints.latest_step() is not None:
        restored = checkpoints.restore(checkpoints.latest_step(), state)
        metadata = restored["metadata"]
        state = state.replace(
            step=jax.device_put(np.int32(metadata["step"]), parallel.replicated(mesh)),
            params=restored["params"],
            batch_stats=restored["batch_stats"],
            opt_state=restored["opt_state"],
        )
        start_step = metadata["step"]
        train_time = metadata.get("train_time_s", 0.0)
        if stopper and metadata.get("early_stopping"):
            stopper.load_state_dict(metadata["early_stopping"])
        if plateau and metadata.get("plateau"):
            plateau.load_state_dict(metadata["plateau"])
        if jax.process_index() == 0:
            writers.truncate_after(workdir / "metrics.jsonl", start_step)
        if metadata.get("stopped_early"):
            print(f"{workdir}: stopped early at step {start_step}; nothing to do.", flush=True)
            return _final_summary(workdir, mark_finished=True)
        print(f"Resuming {workdir} from step {start_step}.", flush=True)
    if start_step >= total_steps:
        print(f"{workdir}: already trained to step {start_step}; nothing to do.", flush=True)
        return _final_summary(workdir, mark_finished=True)

    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    num_frozen = sum(
        x.size for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0] if _module(path) in frozen
    )
    print(parameter_overview.get_parameter_overview(state.params), flush=True)
    print(
        f"{config.model.name}: {num_params:,} parameters ({num_params - num_frozen:,} trainable); "
        f"{data.num_train()} train / "
        f"{len(data.splits['validation'])} validation examples of {num_classes} classes, input "
        f"{'x'.join(map(str, data.input_shape))}; {steps_per_epoch} steps/epoch on {jax.device_count()} device(s).",
        flush=True,
    )
    step_options = {
        "label_smoothing": config.label_smoothing,
        "penalty": _l2_penalty(config.optimizer),
        "compute_dtype": config.compute_dtype,
    }
    train_step = make_train_step(mesh, num_classes, data.class_weights, **step_options)
    per_dispatch, multi_step = config.steps_per_execution, None
    if per_dispatch > 1:
        multi_step = make_multi_step(mesh, per_dispatch, num_classes, data.class_weights, **step_options)
        # An epoch's start, placed as the step's outputs are: an input typed otherwise would compile again.
        no_metrics = jax.device_put(tasks.TrainMetrics.empty(), parallel.replicated(mesh))
    eval_step = make_eval_step(mesh, model, num_classes)
    writer = writers.create_writer(workdir, jax.process_index() == 0)
    _write_status(workdir, "running", step=start_step)
    progress = Progress(total_steps, config.batch_size)
    profiler = profiling.StepProfiler(workdir / "profile", config.profile_steps)
    earlier_rows = _init_from_rows(config.model.init_from)
    run_facts = {"num_params": int(num_params), "trainable_params": int(num_params - num_frozen)}
    from labjax import predict  # imports this module

    input_spec = predict.InputSpec.from_data(data, config).to_dict()  # predict needs no data set with it

    def save(metrics=None, **extra):
        step = int(state.step)
        metadata = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "train_time_s": train_time,
            "config": config_lib.to_dict(config),
            "class_names": data.class_names,
            "input": input_spec,
            "early_stopping": stopper.state_dict() if stopper else None,
            "plateau": plateau.state_dict() if plateau else None,
            **extra,
        }
        checkpoints.save(state, metadata, metrics)

    step, summary, computed, stopped_early = start_step, None, None, False
    session_start, session_time, first_step_s, first_steps = start_step, 0.0, 0.0, 1

    def epoch_batches(epoch: int, first_step: int = 0):
        process = (jax.process_index(), jax.process_count())
        return pipeline.train_batches(data, config, epoch, first_step, *process, steps_per_chunk=per_dispatch)

    next_batches = None  # the next epoch's iterator, built while this epoch's last steps compute
    with _StopRequests() as stop:
        while step < total_steps and not stopped_early:
            epoch = step // steps_per_epoch
            epoch_metrics, tic = None, time.perf_counter()
            batches = epoch_batches(epoch, step % steps_per_epoch) if next_batches is None else next_batches
            # A dispatch never crosses the epoch's end, total_steps or stop_after_step.
            end = min((epoch + 1) * steps_per_epoch, total_steps)
            if stop_after_step is not None:
                end = min(end, max(stop_after_step, step + 1))
            while step < end:
                count = min(per_dispatch, end - step)
                if multi_step is None:
                    batch = parallel.to_global(next(batches), mesh)
                    state, metrics = train_step(state, batch)
                    epoch_metrics = metrics if epoch_metrics is None else epoch_metrics.merge(metrics)
                else:
                    chunk = _chunk_to_global(next(batches), count, per_dispatch, mesh)
                    merged = no_metrics if epoch_metrics is None else epoch_metrics
                    state, epoch_metrics, metrics = multi_step(state, merged, chunk, np.int32(count))
                step += count
                first = step - count == start_step
                if profiler.pending:  # config.profile_steps; nothing is added to the loop once it is done
                    if multi_step is None:
                        lower = functools.partial(train_step.lower, state, batch)
                    else:
                        lower = functools.partial(multi_step.lower, state, merged, chunk, np.int32(count))
                    # Summarising a trace takes seconds that are no training: rates and times leave them out.
                    summarising = profiler.after_dispatch(step, first, step >= end, state, lower)
                    tic += summarising
                    progress.exclude(summarising)
                if first or step // config.log_every_steps > (step - count) // config.log_every_steps:
                    loss = float(metrics.loss.compute())
                    _check_finite(loss, step, workdir)
                    progress.update(step, epoch, num_epochs, loss)
                if first:  # the loss above waited for it: compile + the first dispatch
                    first_step_s, first_steps = time.perf_counter() - tic, count
                if stop_after_step is not None and step >= stop_after_step:
                    stop.signal = "stop_after_step"
                if stop.signal:
                    train_time += time.perf_counter() - tic
                    save()
                    _write_status(workdir, "interrupted", step=step, reason=stop.signal)
                    raise TrainingInterrupted(
                        f"{stop.signal}: checkpoint saved at step {step}; run the same command to resume."
                    )
            if step < total_steps:  # tf.data's set-up of an epoch (~0.2 s) overlaps the computations still queued
                next_batches = epoch_batches(epoch + 1)
            # Computing the metrics waits for the last dispatch, so the epoch's time is its computation's.
            train = {f"train_{k}": float(v) for k, v in epoch_metrics.compute().items()}
            elapsed = time.perf_counter() - tic
            train_time, session_time = train_time + elapsed, session_time + elapsed
            _check_finite(train["train_loss"], step, workdir)
            summary, computed, _ = evaluate_split(
                eval_step, {"params": state.params, "batch_stats": state.batch_stats}, data, "validation", config, mesh
            )
            scalars = {
                "epoch": step / steps_per_epoch,
                **train,
                **{f"val_{k}": v for k, v in summary.items()},
                "learning_rate": optim.current_learning_rate(state.opt_state),
                "training_time_s": train_time,
            }
            writer.write_scalars(step, scalars)
            writer.flush()
            print(
                f"epoch {epoch + 1}/{num_epochs} done: "
                + " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith(("train_", "val_")))
                + f" lr {scalars['learning_rate']:.3g}",
                flush=True,
            )
            if plateau:  # the next epoch's rate; the one logged above is the rate this epoch used
                state = state.replace(opt_state=optim.set_lr_scale(state.opt_state, plateau.update(scalars)))
            improved = stopper.update(scalars, step, epoch + 1) if stopper else False
            stopped_early = bool(stopper and stopper.should_stop and step < total_steps)
            last = step >= total_steps or stopped_early
            metrics = {k: v for k, v in scalars.items() if k.startswith(("train_", "val_"))}
            if stopper:
                metrics[RANK] = float(stopper.improvements if improved else -1)
            if last and stopper and config.early_stopping.restore_best and stopper.best_step != step:
                # The run ends with the best epoch's weights: the final checkpoint holds them.
                best = checkpoints.restore(stopper.best_step, state, items=("params", "batch_stats"))
                state = state.replace(params=best["params"], batch_stats=best["batch_stats"])
                metrics = {k: v for k, v in stopper.best_scalars.items() if k.startswith(("train_", "val_"))}
                metrics[RANK] = float(stopper.improvements)
                summary, computed, _ = evaluate_split(
                    eval_step,
                    {"params": state.params, "batch_stats": state.batch_stats},
                    data,
                    "validation",
                    config,
                    mesh,
                )
                print(f"Restored the weights of epoch {stopper.best_epoch} (best {stopper.monitor}).", flush=True)
                save(metrics, stopped_early=stopped_early, restored_best_step=stopper.best_step)
            elif last or improved or (step // steps_per_epoch) % config.checkpoint.every_epochs == 0:
                save(metrics, stopped_early=stopped_early)
            if stopped_early:
                print(f"Early stopping: no {stopper.monitor} improvement in {stopper.patience} epochs.", flush=True)
            if jax.process_index() == 0:
                plots.plot_curves(writers.read_rows(workdir / "metrics.jsonl"), workdir / "plots", earlier_rows)
    profiler.finish()
    writer.close()
    best = checkpoints.best_step()
    checkpoints.close()
    stopping = {}
    if stopper:
        stopping = {"stopped_early": stopped_early, "stopped_epoch": step // steps_per_epoch if stopped_early else None}
        stopping.update(best_epoch=stopper.best_epoch, best_value=stopper.best, monitor=stopper.monitor)
    _write_status(
        workdir,
        "finished",
        step=step,
        epochs=-(-step // steps_per_epoch),
        train_time_s=train_time,
        steps_per_s=(step - session_start - first_steps) / max(session_time - first_step_s, 1e-9),
        peak_memory_mb=_peak_memory_mb(),
        best_step=best,
        final={f"val_{k}": v for k, v in summary.items()},
        class_names=data.class_names,
        confusion_matrix=np.asarray(computed["confusion"]).tolist(),
        **run_facts,
        **stopping,
    )
    print(f"Finished in {_format_time(train_time)} of training; workdir {workdir}.", flush=True)
    return summary


def _l2_penalty(opt):
    """The L2 term for the objective when weight decay means l2 (else None: nothing added)."""
    if opt.weight_decay > 0 and optim.weight_decay_type(opt) == "l2":
        return functools.partial(optim.l2_penalty, opt=opt)
    return None


def _checkpoint_config(config) -> ml_collections.ConfigDict:
    """With early stopping, 'best' means the early-stopping best: that checkpoint is kept for restoring.

    Its rank (the count of improvements so far; -1 for an epoch without one) rather than the raw
    monitored value decides, because min_delta can make a slightly better value no improvement.
    """
    cfg = ml_collections.ConfigDict(config.checkpoint.to_dict())
    if config.early_stopping.patience > 0:
        cfg.best_metric, cfg.best_mode = RANK, "max"
    return cfg


def _init_from_rows(init_from: str) -> list[dict]:
    """The per-epoch metrics of the run this one fine-tunes (plotted before its own)."""
    from labjax import writers

    if not init_from:
        return []
    location = Path(init_from).expanduser()
    if location.parent.name == "checkpoints" and location.name.isdigit():
        rows = writers.read_rows(location.parent.parent / "metrics.jsonl")
        return [row for row in rows if row.get("step", 0) <= int(location.name)]
    return writers.read_rows(location / "metrics.jsonl")


def _peak_memory_mb() -> float:
    """Peak accelerator memory where the device reports it (GPU), else the process's peak resident memory."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _module(path) -> tuple[str, ...]:
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
        lambda path, x: jax.lax.stop_gradient(x) if _module(path) in frozen else x, params
    )


def _starting_weights(config, info, model, state: TrainState, mesh, input_shape) -> TrainState:
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


def _check_finite(loss: float, step: int, workdir: Path) -> None:
    if not np.isfinite(loss):
        _write_status(workdir, "diverged", step=step, loss=str(loss))
        raise TrainingDiverged(
            f"the training loss is {loss} at step {step}: the run diverged (try a lower "
            "config.optimizer.learning_rate). Checkpoints of earlier epochs are kept."
        )


def _final_summary(workdir: Path, mark_finished: bool = False) -> dict:
    """The finished run's validation summary; `mark_finished` repairs a status left 'interrupted'
    by a stop that came after the last checkpoint was written."""
    status = json.loads((workdir / "status.json").read_text()) if (workdir / "status.json").exists() else {}
    if mark_finished and status.get("status") != "finished":
        _write_status(workdir, "finished", **{k: v for k, v in status.items() if k not in ("status", "time")})
    return {k.removeprefix("val_"): v for k, v in status.get("final", {}).items()}
