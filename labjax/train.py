"""Training: TrainState, the jitted data-parallel steps, and train_and_evaluate(config, workdir).

One global batch per step, sharded over the 'data' mesh axis; parameters replicated. XLA
reduces gradients and BatchNorm statistics over the whole global batch, so a run gives the
same result on 1 or N devices.
"""

import json
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
from flax.training import train_state

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import models, optim, parallel, plots, tasks, writers
from labjax.data import pipeline
from labjax.weights import pretrained

OWN_FILES = ("checkpoints", "tensorboard", "plots", "eval", "data", "metrics.jsonl", "status.json", "config.json")


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # dropout key; each step folds in its step number, so nothing to save


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; status.json says 'diverged'."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM (or a test's stop_after_step): a checkpoint was saved first."""


def create_train_state(config, model, mesh, image_shape: tuple[int, ...], frozen=frozenset()) -> TrainState:
    """Initialises parameters and optimizer state, replicated over the mesh; `frozen` modules get no updates."""
    tx = optim.create_optimizer(config, frozen)

    def init() -> TrainState:
        key = jax.random.key(config.seed)
        variables = model.init({"params": key}, jnp.zeros((1, *image_shape)), train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables.get("batch_stats", {}),
            rng=jax.random.fold_in(key, 1),
        ).replace(step=jnp.zeros((), jnp.int32))  # a fixed type: resumed steps reuse the compiled step

    return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def make_train_step(mesh, num_classes: int, class_weights: np.ndarray | None = None):
    """The jitted step: forward, backward, update; returns (new state, TrainMetrics).

    `class_weights` (balance=weights) scale each label's loss, normalised by the summed
    weights as PyTorch's weighted cross-entropy does. A mixed batch (mixup/cutmix) carries
    a second label and its share: the loss is mix * CE(label) + (1 - mix) * CE(label_b).
    """
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, tasks.TrainMetrics]:
        labels = batch["label"]
        mask = tasks.label_mask(labels, jnp.ones(labels.shape[:1], bool), num_classes)

        def objective(logits):
            losses = tasks.per_label_loss(logits, labels, mask)
            if "mix" in batch:
                mix = batch["mix"].reshape(batch["mix"].shape + (1,) * (labels.ndim - 1))
                losses = mix * losses + (1 - mix) * tasks.per_label_loss(logits, batch["label_b"], mask)
            if weights is None:
                return losses.sum() / jnp.maximum(mask.sum(), 1), losses
            per_label = jnp.where(mask, weights[jnp.clip(labels, 0, num_classes - 1)], 0.0)
            return (per_label * losses).sum() / jnp.maximum(per_label.sum(), 1e-12), losses

        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                rngs={"dropout": jax.random.fold_in(state.rng, state.step)},
                mutable=["batch_stats"],
            )
            loss, losses = objective(logits)
            return loss, (logits, losses, updates)

        grads, (logits, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
        metrics = tasks.TrainMetrics.single_from_model_output(loss=losses, logits=logits, labels=labels, mask=mask)
        return state, metrics

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        train_step,
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_eval_step(mesh, model, num_classes: int):
    """The jitted evaluation step over a padded batch; returns (EvalMetrics, predictions)."""

    def eval_step(variables: dict, batch: dict):
        logits = model.apply(variables, batch["image"], train=False)
        mask = tasks.label_mask(batch["label"], batch["valid"], num_classes)
        metrics = tasks.EvalMetrics.single_from_model_output(
            loss=tasks.per_label_loss(logits, batch["label"], mask),
            logits=logits,
            labels=batch["label"],
            mask=mask,
        )
        return metrics, jnp.argmax(logits, -1)

    return jax.jit(eval_step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)))


def evaluate_split(eval_step, variables, data, split: str, config, mesh, keep_predictions: int = 0):
    """Exact metrics over a whole split, and the first `keep_predictions` predictions."""
    collected, predictions = None, []
    batches = pipeline.eval_batches(data, split, config, None, jax.process_index(), jax.process_count())
    for batch in batches:
        metrics, preds = eval_step(variables, parallel.to_global(batch, mesh))
        collected = metrics if collected is None else collected.merge(metrics)
        if sum(len(p) for p in predictions) < keep_predictions:
            predictions.append(np.asarray(jax.device_get(preds)))
    computed = jax.device_get(collected.compute())
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
        self.mark_step, self.mark_time = None, None

    def update(self, step: int, epoch: int, num_epochs: int, loss: float) -> None:
        now = time.perf_counter()
        if self.mark_step is None:  # the first step compiled; time from here on
            self.mark_step, self.mark_time = step, now
            print(f"epoch {epoch + 1}/{num_epochs} step {step}/{self.total} loss {loss:.4f} (compiled)", flush=True)
            return
        rate = (step - self.mark_step) / max(now - self.mark_time, 1e-9)
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
    """Creates the workdir (deleting the old run's files with --overwrite) and writes config.json."""
    if overwrite:
        for name in OWN_FILES:
            path = workdir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        ckpt.write_json(workdir / "config.json", config_lib.to_dict(config))


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
    config_lib.validate(config)
    info = models.model_info(config.model.name)
    data = pipeline.load(config, info.preprocessing)  # bad data fails here, before the workdir is touched
    check_input_fits_model(config, data.input_shape)
    workdir = Path(workdir)
    resuming = check_workdir(config, workdir, overwrite)
    mesh = parallel.make_mesh()
    num_classes = data.num_classes
    model, frozen = models.build(config.model, num_classes, data.input_shape)
    state = create_train_state(config, model, mesh, data.input_shape, frozen)
    if not resuming:  # a missing or mismatched weights file fails here, before anything is written
        state = _starting_weights(config, info, model, state, mesh, data.input_shape)
    claim_workdir(config, workdir, overwrite)

    checkpoints = ckpt.Checkpoints(workdir, config.checkpoint)
    steps_per_epoch = pipeline.steps_per_epoch(data, config.batch_size)
    total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    num_epochs = -(-total_steps // steps_per_epoch)
    start_step, train_time = 0, 0.0
    if checkpoints.latest_step() is not None:
        restored = checkpoints.restore(checkpoints.latest_step(), state)
        state = state.replace(
            step=jax.device_put(np.int32(restored["metadata"]["step"]), parallel.replicated(mesh)),
            params=restored["params"],
            batch_stats=restored["batch_stats"],
            opt_state=restored["opt_state"],
        )
        start_step = restored["metadata"]["step"]
        train_time = restored["metadata"].get("train_time_s", 0.0)
        writers.truncate_after(workdir / "metrics.jsonl", start_step)
        print(f"Resuming {workdir} from step {start_step}.", flush=True)
    if start_step >= total_steps:
        print(f"{workdir}: already trained to step {start_step}; nothing to do.", flush=True)
        return _final_summary(workdir)

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
    train_step = make_train_step(mesh, num_classes, data.class_weights)
    eval_step = make_eval_step(mesh, model, num_classes)
    writer = writers.create_writer(workdir, jax.process_index() == 0)
    _write_status(workdir, "running", step=start_step)
    progress = Progress(total_steps, config.batch_size)

    def save(metrics=None):
        step = int(state.step)
        metadata = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "train_time_s": train_time,
            "config": config_lib.to_dict(config),
            "class_names": data.class_names,
        }
        checkpoints.save(state, metadata, metrics)

    step, summary = start_step, None
    with _StopRequests() as stop:
        while step < total_steps:
            epoch = step // steps_per_epoch
            epoch_metrics, tic = None, time.perf_counter()
            for batch in pipeline.train_batches(
                data, config, epoch, step % steps_per_epoch, jax.process_index(), jax.process_count()
            ):
                state, metrics = train_step(state, parallel.to_global(batch, mesh))
                epoch_metrics = metrics if epoch_metrics is None else epoch_metrics.merge(metrics)
                step += 1
                if step % config.log_every_steps == 0 or step == start_step + 1:
                    loss = float(metrics.loss.compute())
                    _check_finite(loss, step, workdir)
                    progress.update(step, epoch, num_epochs, loss)
                if stop_after_step is not None and step >= stop_after_step:
                    stop.signal = "stop_after_step"
                if stop.signal:
                    train_time += time.perf_counter() - tic
                    save()
                    _write_status(workdir, "interrupted", step=step, reason=stop.signal)
                    raise TrainingInterrupted(
                        f"{stop.signal}: checkpoint saved at step {step}; run the same command to resume."
                    )
                if step >= total_steps:
                    break
            train_time += time.perf_counter() - tic
            train = {f"train_{k}": float(v) for k, v in epoch_metrics.compute().items()}
            _check_finite(train["train_loss"], step, workdir)
            summary, _, _ = evaluate_split(
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
                + " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith(("train_", "val_"))),
                flush=True,
            )
            completed_epochs = step // steps_per_epoch
            if step >= total_steps or completed_epochs % config.checkpoint.every_epochs == 0:
                save({f"val_{k}": v for k, v in summary.items()})
            if jax.process_index() == 0:
                plots.plot_curves(writers.read_rows(workdir / "metrics.jsonl"), workdir / "plots")
    writer.close()
    best = checkpoints.best_step()
    checkpoints.close()
    _write_status(
        workdir,
        "finished",
        step=step,
        train_time_s=train_time,
        best_step=best,
        final={f"val_{k}": v for k, v in summary.items()},
    )
    print(f"Finished in {_format_time(train_time)} of training; workdir {workdir}.", flush=True)
    return summary


def _module(path) -> tuple[str, ...]:
    return tuple(p.key for p in path[:-1])


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


def _final_summary(workdir: Path) -> dict:
    status = json.loads((workdir / "status.json").read_text()) if (workdir / "status.json").exists() else {}
    return {k.removeprefix("val_"): v for k, v in status.get("final", {}).items()}
