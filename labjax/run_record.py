"""The loop policy: one RunRecord per run owns what happens between train steps.

A training loop computes; its RunRecord decides and writes: resuming from the latest
checkpoint, each epoch's scalars (metrics.jsonl, TensorBoard), ReduceLROnPlateau's scale,
early stopping (and restoring the best epoch's weights), which checkpoints to save,
divergence, interruption and status.json. train.train_and_evaluate drives one; a vectorized
group (labjax/vectorize.py) drives one per member, so a fix here reaches both loops.
"""

import contextlib
import dataclasses
import os
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import hparams, optim, plots, provenance
from labjax import workdir as workdir_lib
from labjax.errors import ConfigError, TrainingPruned

RANK = "early_stopping_rank"  # checkpoint metric of runs with early stopping
# Curves are redrawn during training at most this often, and always when the run ends: a small
# model's epoch trains in a fraction of the second three figures take (TensorBoard is live).
PLOT_EVERY_S = 60.0


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
            raise ConfigError(
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


class StopRequests:
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


def checkpoint_config(config) -> ml_collections.ConfigDict:
    """With early stopping, 'best' means the early-stopping best: that checkpoint is kept for restoring.

    Its rank (the count of improvements so far; -1 for an epoch without one) rather than the raw
    monitored value decides, because min_delta can make a slightly better value no improvement.
    """
    cfg = ml_collections.ConfigDict(config.checkpoint.to_dict())
    if config.early_stopping.patience > 0:
        cfg.best_metric, cfg.best_mode = RANK, "max"
    return cfg


def peak_memory_mb() -> float:
    """Peak accelerator memory where the device reports it (GPU), else the process's peak resident memory."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def process_age_s() -> float | None:
    """Seconds since this process started (Linux), so a run can say what start-up cost; else None."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def init_from_rows(init_from: str) -> list[dict]:
    """The per-epoch metrics of the run this one fine-tunes (plotted before its own)."""
    from labjax import writers

    if not init_from:
        return []
    location = Path(init_from).expanduser()
    if location.parent.name == "checkpoints" and location.name.isdigit():
        rows = writers.read_rows(location.parent.parent / "metrics.jsonl")
        return [row for row in rows if row.get("step", 0) <= int(location.name)]
    return writers.read_rows(location / "metrics.jsonl")


def divergence_message(loss, step: int) -> str:
    return (
        f"the training loss is {loss} at step {step}: the run diverged (try a lower "
        "config.optimizer.learning_rate). Checkpoints of earlier epochs are kept."
    )


@dataclasses.dataclass
class EpochEnd:
    """What a loop does after an epoch: go on with `state` (the best epoch's when the run restored it)."""

    scalars: dict  # the epoch's row of metrics.jsonl
    state: Any
    lr_scale: float | None  # ReduceLROnPlateau's scale for the next epoch; None without a plateau schedule
    last: bool  # the run ends here: every step trained, or stopped early
    stopped_early: bool


class RunRecord:
    """One run's writer, checkpoints, early stopping, plateau, divergence, interruption and status.json.

    The loop tells it where the run stands (`step`, `train_time`) and calls restore, end_epoch,
    save, interrupt or diverge, and finish; `close` is safe to call more than once.
    `plot_while_training` redraws the curves after an epoch when the last drawing is PLOT_EVERY_S old;
    they are drawn at close in any case.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | Path,
        *,
        steps_per_epoch: int,
        total_steps: int,
        class_names: list[str],
        input_spec: dict | None = None,
        plot_while_training: bool = True,
        epoch_hook=None,
    ):
        from labjax import writers  # TensorBoard's writer loads TensorFlow: only where a run writes

        self.config, self.workdir = config, Path(workdir)
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.class_names, self.input_spec, self.plot_while_training = class_names, input_spec, plot_while_training
        self.stopper = EarlyStopping(config.early_stopping) if config.early_stopping.patience > 0 else None
        self.plateau = None
        if config.optimizer.schedule == "plateau":
            self.plateau = optim.ReduceOnPlateau(config.optimizer.plateau, config.optimizer.learning_rate)
        self.earlier_rows = init_from_rows(config.model.init_from)
        self.checkpoints = ckpt.Checkpoints(self.workdir, checkpoint_config(config))
        self.writer = writers.create_writer(self.workdir, jax.process_index() == 0)
        hparams.write_start(self.writer, config_lib.to_dict(config))  # TensorBoard's HParams dashboard
        self.step, self.train_time, self.stopped_early = 0, 0.0, False
        self.summary, self.computed = None, None  # the latest validation summary and computed metrics
        self.pending_epoch = None  # an epoch's train scalars when a stop came before its end was recorded
        self.partial_epoch = None  # the metric sums (tree leaves) of an epoch a stop cut short
        self._open = True
        self._plotted_at = time.monotonic()  # the run's start counts as a drawing: its first is a minute in
        self._saved_at = time.monotonic()  # likewise for checkpoint.min_interval_s
        # This process's seconds outside the training steps, by kind (status.json's time_s).
        self.seconds = {"validation": 0.0, "checkpoints": 0.0, "plots": 0.0, "logs": 0.0}
        # epoch_hook(step, epoch, scalars) -> True to stop now (a search's pruner, labjax/search.py)
        self.epoch_hook = epoch_hook

    @contextlib.contextmanager
    def timed(self, kind: str):
        """Adds the block's wall time to `self.seconds[kind]`."""
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - tic

    @property
    def num_epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def write_status(self, status: str, **fields) -> None:
        workdir_lib.write_status(self.workdir, status, provenance=provenance.collect(), **fields)

    def write_parameter_table(self, table: str) -> Path:
        """WORKDIR/parameters.txt and TensorBoard's text tab get clu's parameter overview (not the log)."""
        path = self.workdir / "parameters.txt"
        if jax.process_index() == 0:
            path.write_text(table + "\n")
            indented = "\n".join("    " + line for line in table.splitlines())  # Markdown: monospace
            self.writer.write_texts(self.step, {"parameters": indented})
            self.writer.flush()
        return path

    def write_final_hparams(self, steps_per_s: float) -> None:
        """The final metrics for TensorBoard's HParams dashboard (the run's validation summary and speed)."""
        final = {f"val_{k}": v for k, v in self.summary.items()}
        final.update(train_time_s=self.train_time, steps_per_s=steps_per_s)
        hparams.write_final(self.writer, self.step, final)

    def restore(self, state) -> tuple[Any, bool]:
        """Resumes from the newest intact checkpoint: (state, done), done when the run had already ended.

        The run's time, early stopping and plateau come back with it; metrics.jsonl loses the rows
        written after that checkpoint (the resumed run writes them again), all of them when there
        is none. An unreadable checkpoint is set aside (corrupt_checkpoints/) and the next older one used.
        """
        from labjax import writers

        restored = self._restore_newest_intact(state)
        if jax.process_index() == 0:
            writers.truncate_after(self.workdir / "metrics.jsonl", restored["metadata"]["step"] if restored else 0)
        if restored is None:
            return state, False
        metadata = restored["metadata"]
        state = state.replace(
            step=jax.device_put(np.int32(metadata["step"]), state.step.sharding),
            params=restored["params"],
            batch_stats=restored["batch_stats"],
            opt_state=restored["opt_state"],
        )
        self.step, self.train_time = metadata["step"], metadata.get("train_time_s", 0.0)
        self.pending_epoch = metadata.get("pending_epoch")
        self.partial_epoch = metadata.get("partial_epoch")
        if self.stopper and metadata.get("early_stopping"):
            self.stopper.load_state_dict(metadata["early_stopping"])
        if self.plateau and metadata.get("plateau"):
            self.plateau.load_state_dict(metadata["plateau"])
        if metadata.get("stopped_early"):
            print(f"{self.workdir}: stopped early at step {self.step}; nothing to do.", flush=True)
            return state, True
        if self.step >= self.total_steps and not self.pending_epoch:
            print(f"{self.workdir}: already trained to step {self.step}; nothing to do.", flush=True)
            return state, True
        print(f"Resuming {self.workdir} from step {self.step}.", flush=True)
        return state, False

    def _restore_newest_intact(self, state) -> dict | None:
        """The newest checkpoint that restores; unreadable newer ones are set aside with a warning."""
        for step in reversed(self.checkpoints.steps()):
            try:
                return self.checkpoints.restore(step, state)
            except ckpt.CheckpointError as error:
                if error.other_model:  # not damage: the folder holds another run
                    raise
                if jax.process_index() == 0:
                    moved = self.checkpoints.set_aside(step)
                    print(f"warning: {error} It was moved to {moved}; resuming from an older one.", flush=True)
        return None

    def save(self, state, metrics: dict | None = None, **extra) -> None:
        """A checkpoint of `state` at the current step, with what resuming and evaluation need."""
        metadata = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "train_time_s": self.train_time,
            "config": config_lib.to_dict(self.config),
            "class_names": self.class_names,
            "early_stopping": self.stopper.state_dict() if self.stopper else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
            **extra,
        }
        if self.input_spec is not None:
            metadata["input"] = self.input_spec
        with self.timed("checkpoints"):
            self.checkpoints.save(state, metadata, metrics)
        self._saved_at = time.monotonic()

    def fail(self, error: BaseException) -> None:
        """Records an unexpected error (status 'failed' with it), so no status stays 'running'."""
        self.write_status("failed", step=self.step, error=f"{type(error).__name__}: {error}"[:2000])

    def diverge(self, loss, step: int) -> str:
        """Records a NaN or infinite loss at `step` (status 'diverged'); returns the message to show."""
        self.write_status("diverged", step=step, loss=str(loss))
        return divergence_message(loss, step)

    def interrupt(
        self, state, reason: str, pending_epoch: dict | None = None, partial_epoch: list | None = None
    ) -> str:
        """Saves a checkpoint and records the interruption; returns the message to show.

        `pending_epoch`: the train scalars of an epoch whose steps all ran but whose end (validation,
        its metrics row) did not; the resumed run records that end first. `partial_epoch`: the metric
        sums of an epoch stopped part-way, which the resumed epoch goes on adding to.
        """
        self.save(state, pending_epoch=pending_epoch, partial_epoch=partial_epoch)
        self.write_status("interrupted", step=self.step, reason=reason)
        return f"{reason}: checkpoint saved at step {self.step}; run the same command to resume."

    def end_epoch(self, state, train_scalars: dict, summary: dict, computed: dict, learning_rate: float, evaluate):
        """Logs the epoch that ended at `self.step`, then applies plateau, early stopping and checkpoints.

        `evaluate(variables) -> (summary, computed)` re-validates the best epoch's weights when the
        run ends restoring them. Returns an EpochEnd.
        """
        step, spe = self.step, self.steps_per_epoch
        self.summary, self.computed = summary, computed
        scalars = {
            "epoch": step / spe,
            **train_scalars,
            **{f"val_{k}": v for k, v in summary.items()},
            "learning_rate": learning_rate,
            "training_time_s": self.train_time,
        }
        with self.timed("logs"):
            self.writer.write_scalars(step, scalars)
            self.writer.flush()
        lr_scale = self.plateau.update(scalars) if self.plateau else None  # the next epoch's rate
        stopper = self.stopper
        improved = stopper.update(scalars, step, -(-step // spe)) if stopper else False
        self.stopped_early = bool(stopper and stopper.should_stop and step < self.total_steps)
        last = step >= self.total_steps or self.stopped_early
        metrics = {k: v for k, v in scalars.items() if k.startswith(("train_", "val_"))}
        if stopper:
            metrics[RANK] = float(stopper.improvements if improved else -1)
        saved = False
        if last and stopper and self.config.early_stopping.restore_best and stopper.best_step != step:
            state = self._restore_best(state, evaluate)
        elif last or improved or self._new_best(metrics) or self._periodic_save_due(step):
            self.save(state, metrics, stopped_early=self.stopped_early)
            saved = True
        if self.stopped_early:
            print(f"Early stopping: no {stopper.monitor} improvement in {stopper.patience} epochs.", flush=True)
        if self.plot_while_training and time.monotonic() - self._plotted_at >= PLOT_EVERY_S:
            self._plot()
        stop = self.epoch_hook(step, -(-step // spe), scalars) if self.epoch_hook is not None else False
        if stop and not last:
            self.prune(state, metrics, saved=saved)
        return EpochEnd(scalars, state, lr_scale, last, self.stopped_early)

    def _periodic_save_due(self, step: int) -> bool:
        cfg = self.config.checkpoint
        every_epochs = (step // self.steps_per_epoch) % cfg.every_epochs == 0
        return every_epochs and time.monotonic() - self._saved_at >= cfg.get("min_interval_s", 0.0)

    def _new_best(self, metrics: dict) -> bool:
        """Whether this epoch's checkpoint.best_metric beats every saved checkpoint's (it is then saved)."""
        name = self.checkpoints.best_metric
        if not name or metrics.get(name) is None:
            return False
        best = self.checkpoints.best_value()
        return best is None or (metrics[name] > best if self.checkpoints.best_mode == "max" else metrics[name] < best)

    def prune(self, state, metrics: dict, saved: bool) -> None:
        """The epoch hook stopped the run: its checkpoint is kept (saved now unless it was), status 'pruned'."""
        if not saved:
            self.save(state, metrics)
        epoch = -(-self.step // self.steps_per_epoch)
        self.write_status("pruned", step=self.step, epoch=epoch, epochs=epoch, train_time_s=self.train_time)
        raise TrainingPruned(f"pruned after epoch {epoch} of {self.num_epochs} (step {self.step}); checkpoint kept.")

    def _restore_best(self, state, evaluate):
        """The run ends with the best epoch's weights: the final checkpoint holds them."""
        stopper = self.stopper
        best = self.checkpoints.restore(stopper.best_step, state, items=("params", "batch_stats"))
        state = state.replace(params=best["params"], batch_stats=best["batch_stats"])
        metrics = {k: v for k, v in stopper.best_scalars.items() if k.startswith(("train_", "val_"))}
        metrics[RANK] = float(stopper.improvements)
        self.summary, self.computed = evaluate({"params": state.params, "batch_stats": state.batch_stats})
        print(f"Restored the weights of epoch {stopper.best_epoch} (best {stopper.monitor}).", flush=True)
        self.save(state, metrics, stopped_early=self.stopped_early, restored_best_step=stopper.best_step)
        return state

    def finish(self, steps_per_s: float, **facts) -> None:
        """status.json 'finished' with the run's final metrics, times and `facts` (parameter counts, ...)."""
        best = self.checkpoints.best_step()
        self.write_final_hparams(steps_per_s)
        self.close()
        stopping = {}
        if self.stopper:
            stopper = self.stopper
            stopping = {
                "stopped_early": self.stopped_early,
                "stopped_epoch": self.step // self.steps_per_epoch if self.stopped_early else None,
                "best_epoch": stopper.best_epoch,
                "best_value": stopper.best,
                "monitor": stopper.monitor,
            }
        self.seconds["process"] = process_age_s()
        self.write_status(
            "finished",
            step=self.step,
            epochs=-(-self.step // self.steps_per_epoch),
            train_time_s=self.train_time,
            steps_per_s=steps_per_s,
            peak_memory_mb=peak_memory_mb(),
            best_step=best,
            final={f"val_{k}": v for k, v in self.summary.items()},
            class_names=self.class_names,
            confusion_matrix=np.asarray(self.computed["confusion"]).tolist(),
            time_s={kind: round(s, 3) if isinstance(s, float) else s for kind, s in self.seconds.items()},
            **facts,
            **stopping,
        )

    def close(self) -> None:
        """Closes the writer and checkpoints (waiting for saves) and draws the curves of every epoch."""
        if not self._open:
            return
        self._open = False
        self.writer.close()
        self.checkpoints.close()
        self._plot()

    def _plot(self) -> None:
        from labjax import writers

        rows_path = self.workdir / "metrics.jsonl"
        with self.timed("plots"):
            if jax.process_index() == 0 and rows_path.exists():
                plots.plot_curves(writers.read_rows(rows_path), self.workdir / "plots", self.earlier_rows)
        self._plotted_at = time.monotonic()
