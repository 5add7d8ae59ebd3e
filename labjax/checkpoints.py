"""Orbax checkpoints of a run (the only module that imports orbax).

A checkpoint is a Composite of named items: params, batch_stats, opt_state and a JSON
metadata item (step, epoch, config, validation metrics, format version). Evaluation
restores params and batch_stats only, against abstract arrays laid out on the current
mesh, so a run trained on N GPUs restores on one CPU.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from labjax.errors import CheckpointError, ConfigError, MissingFileError

FORMAT_VERSION = 1
STATE_ITEMS = ("params", "batch_stats", "opt_state")


_MISMATCH = ("do not match", "not compatible with the stored shape")  # Orbax's words for a different tree


def _manager(directory: Path, read_only=False):
    """Orbax keeps every step it is given; which to delete is labjax's decision (Checkpoints.prune), made
    from the metrics saved in each step's own metadata, so it survives a restart (Orbax's best-N policy
    forgot the metrics of steps saved before one and deleted the best checkpoint)."""
    options = ocp.CheckpointManagerOptions(
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,  # a run's end and signals must find it on disk
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


class Checkpoints:
    """Saves and restores the checkpoints under WORKDIR/checkpoints."""

    def __init__(self, workdir: str | Path, checkpoint_config=None, read_only: bool = False):
        self.directory = Path(workdir) / "checkpoints"
        cfg = checkpoint_config
        self.best_metric = cfg.best_metric if cfg else ""
        self.best_mode = cfg.best_mode if cfg else "max"
        self.keep = cfg.keep if cfg else 1
        self.manager = _manager(self.directory, read_only=read_only)
        self._metric_of: dict[int, float | None] = {}  # best_metric by step, read once from its metadata

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state, metadata: dict, metrics: dict | None = None) -> None:
        step = int(metadata["step"])
        if step in self.manager.all_steps():
            return
        metadata = dict(metadata, format_version=FORMAT_VERSION, metrics=metrics)
        items = {name: ocp.args.StandardSave(getattr(state, name)) for name in _present(state, STATE_ITEMS)}
        self.manager.save(step, args=ocp.args.Composite(**items, metadata=ocp.args.JsonSave(metadata)))
        self.manager.wait_until_finished()
        self._metric_of[step] = (metrics or {}).get(self.best_metric)
        self.prune()

    def prune(self) -> None:
        """Deletes all but the `keep` newest steps and the best one (by the metric in each step's metadata)."""
        steps = self.steps()
        kept = set(steps[-self.keep :])
        best = self.best_step() if self.best_metric else None
        if best is not None:
            kept.add(best)
        for step in steps:
            if step not in kept:
                self.manager.delete(step)
                self._metric_of.pop(step, None)

    def metadata(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        return restored["metadata"]

    def best_step(self) -> int | None:
        """The step whose saved validation metric is best (None if none has metrics)."""
        scored = [(value, step) for step in self.steps() if (value := self._metric(step)) is not None]
        if not scored:
            return None
        return (max(scored) if self.best_mode == "max" else min(scored))[1]

    def best_value(self) -> float | None:
        """best_metric of the best step (None if none has it)."""
        step = self.best_step()
        return None if step is None else self._metric(step)

    def _metric(self, step: int) -> float | None:
        if step not in self._metric_of:
            try:
                self._metric_of[step] = (self.metadata(step).get("metrics") or {}).get(self.best_metric)
            except Exception:  # a corrupt step cannot be the best; restoring it names the problem
                logging.warning("%s: unreadable metadata; not a candidate for the best checkpoint.", self.directory)
                return None
        return self._metric_of[step]

    def restore(self, step: int, target, items=STATE_ITEMS) -> dict:
        """Restores the named items onto `target`'s shapes and shardings (a pytree per item).

        Items that are empty in `target` (batch_stats of a model without BatchNorm) were not
        saved; they come back as the target's own empty value.
        """
        present = _present(target, items)
        abstract = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, getattr(target, name)) for name in present}
        args = {name: ocp.args.StandardRestore(abstract[name]) for name in present}
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args, metadata=ocp.args.JsonRestore()))
        except Exception as error:  # Orbax and TensorStore raise KeyError, ValueError or a bare Exception
            raise self._failure(step, error) from error
        result = {name: restored[name] if name in present else getattr(target, name) for name in items}
        return {**result, "metadata": restored["metadata"]}

    def restore_arrays(self, step: int, items=("params", "batch_stats")) -> dict:
        """The named items as saved (host numpy trees), with no target: for another run's weights.

        They are read onto this process's first device, whatever devices and processes saved
        them: Orbax refuses to restore onto the saved layout when those devices are not here.
        """
        saved = [name for name in items if (self.directory / str(step) / name).exists()]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        args = {name: ocp.args.StandardRestore(self._saved_shapes(step, name, device)) for name in saved}
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return {name: jax.tree.map(np.asarray, restored[name]) if name in saved else {} for name in items}

    def close(self) -> None:
        self.manager.close()

    def set_aside(self, step: int) -> Path:
        """Moves an unreadable step to WORKDIR/corrupt_checkpoints/ (kept, not deleted), so a resumed run
        can save that step again; returns where it went."""
        target = self.directory.parent / "corrupt_checkpoints" / str(step)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(self.directory / str(step)), target)
        self.manager.reload()
        self._metric_of.pop(step, None)
        return target

    def _saved_shapes(self, step: int, name: str, sharding) -> dict:
        """The saved item's tree of shapes and dtypes, laid out with `sharding`."""
        saved = ocp.StandardCheckpointHandler().metadata((self.directory / str(step) / name).absolute()).tree
        return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved)

    def _failure(self, step: int, error: Exception) -> "CheckpointError":
        """A restore failure as one line: the step's folder, what is wrong, and the steps there are."""
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)  # no repr quotes
        lines = text.split("See full TensorStore")[0].strip().splitlines() or [type(error).__name__]
        reason = lines[0].strip("'\" .:")[:200]
        other_model = isinstance(error, ValueError) and any(words in str(error) for words in _MISMATCH)
        what = "does not fit this model (another model's checkpoint?)" if other_model else "is truncated or corrupt"
        return CheckpointError(
            f"{self.directory / str(step)} {what}: {reason}; available steps: {self.steps()}.", other_model
        )


def _present(state, names) -> list[str]:
    """Items with arrays: a model without BatchNorm has empty batch_stats, which Orbax refuses."""
    return [name for name in names if jax.tree.leaves(getattr(state, name))]


def resolve_step(checkpoints: Checkpoints, which: str) -> int:
    """'latest' | 'best' | a step number -> an existing step, with a clear error otherwise."""
    steps = checkpoints.steps()
    if not steps:
        raise MissingFileError(f"{checkpoints.directory}: no checkpoints; train the run first.")
    if which == "latest":
        return steps[-1]
    if which == "best":
        step = checkpoints.best_step()
        if step is None:
            logging.warning("No checkpoint has validation metrics; using the latest.")
            return steps[-1]
        return step
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise ConfigError(f"--checkpoint={which!r} not found in {checkpoints.directory}; available: latest, best, {steps}.")


def restore_checkpoint(checkpoints: Checkpoints, which: str, target, items=STATE_ITEMS, model_config=None):
    """(step, restored items) for 'latest' | 'best' | STEP, with clear errors for broken checkpoints.

    'latest' falls back to the newest intact checkpoint with a warning. `model_config` (the
    run's config['model']) is compared with the one the checkpoint saved, so weights of another
    model are named as such even when their shapes happen to fit.
    """
    step = resolve_step(checkpoints, which)
    candidates = [step]
    if which == "latest":
        candidates += [s for s in reversed(checkpoints.steps()) if s < step]
    errors = []
    for candidate in candidates:
        try:
            restored = checkpoints.restore(candidate, target, items)
        except CheckpointError as error:
            error = _explain(checkpoints, candidate, error, model_config)
            if error.other_model or which != "latest":
                raise error from error.__cause__
            errors.append(error)
            logging.warning("%s", error)
            continue
        saved = (restored["metadata"].get("config") or {}).get("model")
        if model_config is not None and saved is not None and saved != dict(model_config):
            raise CheckpointError(_other_model(checkpoints, candidate, saved, model_config), True)
        if errors:
            logging.warning("Using step %d, the newest intact checkpoint in %s.", candidate, checkpoints.directory)
        return candidate, restored
    raise CheckpointError(
        f"{checkpoints.directory}: no intact checkpoint among steps {checkpoints.steps()}; the newest: {errors[0]}"
    )


def _explain(checkpoints: Checkpoints, step: int, error: CheckpointError, model_config) -> CheckpointError:
    """A failed restore whose saved metadata names another model becomes an other-model error."""
    if model_config is None:
        return error
    try:
        saved = checkpoints.metadata(step)["config"]["model"]
    except Exception:  # unreadable metadata: the checkpoint is corrupt, as the error says
        return error
    if saved == dict(model_config):
        return error
    return CheckpointError(_other_model(checkpoints, step, saved, model_config), True)


def _other_model(checkpoints: Checkpoints, step: int, saved: dict, expected) -> str:
    differing = [
        f"model.{key}: {saved.get(key, '<absent>')!r} in the checkpoint, {expected.get(key, '<absent>')!r} in the run"
        for key in sorted(set(saved) | set(expected), key=lambda k: (k != "name", k))  # the name first
        if saved.get(key) != expected.get(key)
    ]
    return (
        f"{checkpoints.directory / str(step)} is a checkpoint of another model ({'; '.join(differing[:4])}); "
        f"available steps: {checkpoints.steps()}. Evaluate it from its own workdir."
    )


def resolve_init_from(path: str) -> tuple["Checkpoints", int]:
    """init_from: a run's workdir (its best checkpoint, else its latest) or WORKDIR/checkpoints/STEP."""
    location = Path(path).expanduser()
    if location.parent.name == "checkpoints" and location.name.isdigit():
        checkpoints = Checkpoints(location.parent.parent, read_only=True)
        which = location.name
    else:
        if not (location / "checkpoints").is_dir():
            raise MissingFileError(
                f"config.model.init_from={path!r}: no labjax run there (no checkpoints folder); give a run's workdir "
                "or WORKDIR/checkpoints/STEP."
            )
        config = json.loads((location / "config.json").read_text()) if (location / "config.json").exists() else {}
        checkpoints = Checkpoints(location, _Best(config.get("checkpoint", {})), read_only=True)
        which = "best"
    return checkpoints, resolve_step(checkpoints, which)


class _Best:
    """The checkpoint section of a saved config.json, as Checkpoints reads it."""

    def __init__(self, values: dict):
        self.best_metric = values.get("best_metric", "")
        self.best_mode = values.get("best_mode", "max")
        self.keep = values.get("keep", 1)


def write_json(path: Path, value: dict) -> None:
    """Writes atomically and durably: a crash or a power cut leaves the old file or the new, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as file:
        file.write(json.dumps(value, indent=2, sort_keys=True))
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)
