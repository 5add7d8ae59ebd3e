"""Evaluation of saved checkpoints: every metric on a whole split, written as JSON, CSV and PNG.

Only params and batch_stats are restored (no optimizer state), onto the devices present
now, with the config the run saved in its workdir. `--config.KEY=VALUE` overrides may
change only what evaluation may change (EVAL_OVERRIDES): the data to read, not the model.
"""

import csv
import dataclasses
import json
import logging
import types
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import evaluation, metrics, models, parallel, plots, tasks
from labjax.data import pipeline
from labjax.errors import ConfigError, MissingFileError

NUM_SAMPLES = 6
# What evaluation and prediction may change in the run's config: where the data is and how it
# is batched, and which class counts as positive. Everything else defines the trained model.
EVAL_OVERRIDES = (
    "eval_batch_size",
    "eval_positive_class",
    "data.path",
    "data.test_path",
    "data.data_dir",
    "data.cache",
    "data.skip_bad_files",
    "data.class_names",
)
MAX_CLASS_ROWS = 20  # the printed table; the JSON has every class


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """WORKDIR/config.json, else the config saved with the newest readable checkpoint."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not workdir.is_dir():
        raise MissingFileError(f"{path}: not found; the workdir {workdir} does not exist (give a run's --workdir).")
    if path.exists():
        try:
            return config_lib.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error}); restore it from a checkpoint's metadata.") from None
    if (workdir / "checkpoints").is_dir():
        checkpoints = ckpt.Checkpoints(workdir, read_only=True)
        try:
            for step in reversed(checkpoints.steps()):
                try:
                    return config_lib.from_dict(checkpoints.metadata(step)["config"])
                except Exception:  # a corrupt step: an older one may still hold the config
                    continue
        finally:
            checkpoints.close()
    raise MissingFileError(
        f"{path}: not found, and no checkpoint in {workdir / 'checkpoints'} holds a config; "
        "--workdir must be a labjax training workdir."
    )


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies '--config.KEY=VALUE' strings to a run's saved config; refuses keys evaluation may not change."""
    config_lib.apply_overrides(
        config,
        overrides,
        allowed=EVAL_OVERRIDES,
        source="evaluation and prediction use the run's saved config, where every other key defines what was "
        "trained; train a new run to change it",
    )
    if config.eval_batch_size <= 0:
        raise config_lib.ConfigError(f"config.eval_batch_size={config.eval_batch_size} is invalid: expected > 0.")


@dataclasses.dataclass
class Session:
    """A run opened for evaluation: its config (with overrides), data, mesh, model and checkpoints."""

    workdir: Path
    config: ml_collections.ConfigDict
    data: pipeline.Data
    mesh: jax.sharding.Mesh
    model: nn.Module
    target: types.SimpleNamespace  # abstract params and batch_stats on the mesh, to restore into
    checkpoints: ckpt.Checkpoints

    @property
    def segmentation(self) -> bool:
        return self.config.task == "segmentation"

    def restore(self, which: str) -> tuple[int, dict, dict]:
        """(step, variables, metadata) of a checkpoint; 'latest' falls back to the newest intact one."""
        step, restored = ckpt.restore_checkpoint(
            self.checkpoints,
            which,
            self.target,
            items=("params", "batch_stats"),
            model_config=config_lib.to_dict(self.config)["model"],
        )
        saved_names = restored["metadata"].get("class_names")
        if saved_names and list(saved_names) != list(self.data.class_names):
            raise config_lib.ConfigError(
                f"the data gives the classes {self.data.class_names} but {self.checkpoints.directory / str(step)} "
                f"was trained on {saved_names}; point config.data.path at data with those classes, or fix their "
                "order with config.data.class_names."
            )
        return step, {"params": restored["params"], "batch_stats": restored["batch_stats"]}, restored["metadata"]

    def close(self) -> None:
        self.checkpoints.close()


def abstract_variables(model, input_shape: tuple[int, ...], mesh) -> types.SimpleNamespace:
    """params and batch_stats as shapes laid out on the mesh (replicated): what a checkpoint restores into.

    No initialisation runs (jax.eval_shape), and no optimizer is built: evaluation needs neither.
    """
    shapes = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, *input_shape)), train=False)
    )
    replicated = parallel.replicated(mesh)
    placed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)
    return types.SimpleNamespace(params=placed["params"], batch_stats=placed.get("batch_stats", {}))


def open_run(workdir: str | Path, overrides: Sequence[str] = (), devices=None) -> Session:
    """Reads a run's config (with overrides) and data and builds its model on `devices` (default: all present)."""
    workdir = Path(workdir)
    config = load_run_config(workdir)
    apply_overrides(config, overrides)
    data = pipeline.load(config, models.model_info(config.model.name).preprocessing)
    mesh = parallel.make_mesh(devices)
    count = mesh.devices.size
    if config.eval_batch_size % count:  # trained on another number of devices than are here
        config.eval_batch_size = count * -(-config.eval_batch_size // count)
    model = models.create_model(config.model, data.num_classes)
    target = abstract_variables(model, data.input_shape, mesh)
    checkpoints = ckpt.Checkpoints(workdir, config.checkpoint, read_only=True)
    return Session(workdir, config, data, mesh, model, target, checkpoints)


def evaluate(
    workdir: str | Path,
    checkpoint: str = "latest",
    split: str = "validation",
    overrides: Sequence[str] = (),
    devices=None,
) -> dict:
    """Evaluates a checkpoint (latest | best | STEP | all) on a split and writes WORKDIR/eval/<checkpoint>_<split>.*.

    Files: .json (every metric), _confusion.csv and _confusion.png, and for segmentation
    _samples.png. With checkpoint='all' every checkpoint is evaluated and all_<split>.csv
    holds one row of scalars per checkpoint; the result then has 'rows'. `devices`: a subset
    of jax.devices() to run on (default all).
    """
    session = open_run(workdir, overrides, devices)
    try:
        if split not in session.data.splits:
            raise ConfigError(f"--split={split!r} is unknown; available: {sorted(session.data.splits)}.")
        eval_step = evaluation.make_eval_step(session.mesh, session.model, session.data.num_classes)
        if checkpoint == "all":
            return _evaluate_all(session, eval_step, split)
        step, variables, metadata = session.restore(checkpoint)
        result, samples = evaluate_variables(session, eval_step, variables, split, step, metadata)
        result["checkpoint"] = checkpoint
        write_outputs(session, result, checkpoint, samples)
        print(format_table(result, session.workdir), flush=True)
        return result
    finally:
        session.close()


def _evaluate_all(session: Session, eval_step, split: str) -> dict:
    rows, skipped = [], []
    for step in session.checkpoints.steps():
        try:
            _, variables, metadata = session.restore(str(step))
        except ckpt.CheckpointError as error:
            if error.other_model:
                raise
            logging.warning("%s Skipped.", error)
            skipped.append(step)
            continue
        result, samples = evaluate_variables(session, eval_step, variables, split, step, metadata)
        result["checkpoint"] = str(step)
        write_outputs(session, result, str(step), samples)
        rows.append(scalars(result))
    if not rows:
        raise ckpt.CheckpointError(
            f"{session.checkpoints.directory}: none of the steps {session.checkpoints.steps()} can be restored."
        )
    path = session.workdir / "eval" / f"all_{split}.csv"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{session.workdir}: every checkpoint on {split} ({path})", flush=True)
    print(_text_table(columns, [[row.get(c) for c in columns] for row in rows]), flush=True)
    return {"checkpoint": "all", "split": split, "rows": rows, "skipped_steps": skipped, "table": str(path)}


def evaluate_variables(session: Session, eval_step, variables: dict, split: str, step: int, metadata: dict):
    """(result, sample predictions): every metric of the task for one set of variables on a whole split.

    Exact: padded batches with masks. The samples are the first predicted masks (segmentation), else None.
    """
    data, config = session.data, session.config
    names = data.class_names
    binary = not session.segmentation and data.num_classes == 2
    _, computed, predictions = evaluation.evaluate_split(
        eval_step,
        variables,
        data,
        split,
        config,
        session.mesh,
        keep_predictions=NUM_SAMPLES if session.segmentation else 0,
        keep_scores=binary,
    )
    confusion = computed["confusion"]
    result = {
        "step": step,
        "epoch": metadata.get("epoch"),
        "split": split,
        "num_examples": len(data.splits[split]),
        "class_names": names,
        "loss": float(computed["loss"]),
        "confusion_matrix": confusion.tolist(),
    }
    if session.segmentation:
        result.update(metrics.segmentation_metrics(confusion, names))
        result["accuracy"] = result["pixel_accuracy"]
    else:
        result.update(metrics.classification_metrics(confusion, names))
    for name, value in tasks.eval_summary(config.task, computed).items():  # what training logs, e.g. top5
        result.setdefault(name, value)
    if binary:
        positive = metrics.resolve_positive_class(config.get("eval_positive_class", ""), names)
        result["positive_class"] = names[positive]
        result.update(
            metrics.binary_metrics(confusion, positive, computed["probabilities"][:, positive], computed["labels"])
        )
    return result, predictions if session.segmentation else None


def scalars(result: dict) -> dict:
    """The one-number metrics of a result (a row of the per-checkpoint table)."""
    logged = [name for metrics_of_task in tasks.EPOCH_METRICS.values() for name in metrics_of_task]
    keys = dict.fromkeys(
        ("step", "epoch", "loss", *(k for names in tasks.EVAL_SCALARS.values() for k in names), *logged)
    )
    row = {key: result[key] for key in keys if key in result}
    if "pixel_accuracy" in row:
        del row["accuracy"]  # the same number
    return row


def write_outputs(session: Session, result: dict, name: str, samples=None) -> list[Path]:
    """<name>_<split>.json, the confusion matrix as CSV and PNG, and the segmentation samples' PNG."""
    out_dir = session.workdir / "eval"
    out_dir.mkdir(exist_ok=True)
    stem = f"{name}_{result['split']}"
    json_path = out_dir / f"{stem}.json"
    ckpt.write_json(json_path, result)
    names = result["class_names"]
    csv_path = out_dir / f"{stem}_confusion.csv"
    with open(csv_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *row] for name, row in zip(names, result["confusion_matrix"]))
    written = [
        json_path,
        csv_path,
        plots.plot_confusion_matrix(result["confusion_matrix"], names, out_dir / f"{stem}_confusion.png"),
    ]
    if samples is not None:
        batch = next(pipeline.eval_batches(session.data, result["split"], session.config, global_batch=NUM_SAMPLES))
        count = min(NUM_SAMPLES, result["num_examples"])
        written.append(
            plots.plot_segmentation_samples(
                batch["image"][:count],
                batch["label"][:count],
                samples[:count],
                session.data.num_classes,
                out_dir / f"{stem}_samples.png",
                class_names=names,
            )
        )
    return written


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _text_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [list(columns)] + [[_number(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in cells
    )


def format_table(result: dict, workdir: Path | str = "") -> str:
    """A compact printout: the scalars on one line, then a per-class table."""
    epoch = f" (epoch {result['epoch']:g})" if isinstance(result.get("epoch"), float | int) else ""
    head = f"{workdir} step {result['step']}{epoch} on {result['split']} ({result['num_examples']} examples)"
    numbers = {k: v for k, v in scalars(result).items() if k not in ("step", "epoch")}
    lines = [head, "  ".join(f"{k} {_number(v)}" for k, v in numbers.items())]
    if "positive_class" in result:
        lines[-1] += f"  (positive class {result['positive_class']!r})"
    per_class = result["per_class"]
    columns = ["class", *next(iter(per_class.values()))]
    rows = [[name, *values.values()] for name, values in list(per_class.items())[:MAX_CLASS_ROWS]]
    lines.append(_text_table(columns, rows))
    if len(per_class) > MAX_CLASS_ROWS:
        lines.append(f"... {len(per_class) - MAX_CLASS_ROWS} more classes in the JSON file")
    return "\n".join(lines)
