"""The Python API, for notebooks and scripts: the command's modes as functions that return results.

Each function does what one `labjax --mode=...` command does (docs/api.md) and returns what it
found instead of printing only. Reach them as labjax.get_config, labjax.train, ...; a user's
mistake raises a labjax.errors.UserError subclass whose message names the key or file and the fix.
"""

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Overrides = Mapping[str, Any] | Iterable[str] | str | None


def get_config(name_or_path: str, overrides: Overrides = None):
    """A study's config, as `--config=NAME_OR_PATH --config.KEY=VALUE ...` gives it to the command.

    `name_or_path`: a built-in config and its argument ("fashion3_cnn:smoke") or a config file
    ("configs/fashion3_cnn.py:smoke", "my_study.py"). `overrides`: {"KEY": value} or
    "KEY=VALUE" strings (dotted keys: "optimizer.learning_rate=0.01"), checked against the
    config's keys and types. The config comes back locked: a mistyped key raises.
    """
    from labjax import config as config_lib
    from labjax import sweep as sweep_lib

    module, arg = sweep_lib.load_config_module(name_or_path)
    config = module.get_config(arg) if arg is not None else module.get_config()
    if overrides:
        config_lib.apply_overrides(config, [overrides] if isinstance(overrides, str) else overrides)
    config.lock()
    return config


def _as_config(config, overrides: Overrides = None):
    return get_config(config, overrides) if isinstance(config, str | Path) else config


def run_summary(workdir: str | Path) -> dict:
    """What a run's status.json and metrics.jsonl say: status, final and best metrics, times, size."""
    from labjax import workdir as workdir_lib
    from labjax import writers

    workdir = Path(workdir)
    status = workdir_lib.read_status(workdir)
    rows = [row for row in writers.read_rows(workdir / "metrics.jsonl") if "epoch" in row]
    best_epoch = status.get("best_epoch")
    best_row = next((row for row in rows if row["epoch"] == best_epoch), None)
    if best_row is None:  # no early stopping: the best checkpoint's epoch
        best_row = next((row for row in rows if row["step"] == status.get("best_step")), {})
    return {
        "workdir": str(workdir),
        "status": status.get("status", "unknown"),
        "final": status.get("final", {}),
        "best": {
            "epoch": best_row.get("epoch"),
            "step": best_row.get("step"),
            "metrics": {key: value for key, value in best_row.items() if key.startswith("val_")},
        },
        "epochs": status.get("epochs"),
        "steps": status.get("step"),
        "train_time_s": status.get("train_time_s"),
        "steps_per_s": status.get("steps_per_s"),
        "num_params": status.get("num_params"),
        "finished_at": status.get("time"),
    }


def train(config, workdir: str | Path, overwrite: bool = False) -> dict:
    """Trains `config` (a ConfigDict, or a name for get_config) into `workdir`, or resumes the run there.

    Returns the run's summary, read from its status.json and metrics.jsonl: {'workdir',
    'status', 'final': {val_ metrics of the final weights}, 'best': {'epoch', 'step',
    'metrics'}, 'epochs', 'steps', 'train_time_s', 'steps_per_s', 'num_params', 'finished_at'}.
    A finished run in `workdir` is not trained again (its summary comes back); `overwrite`
    deletes it first. Raises ConfigError for a different run in `workdir`, TrainingDiverged
    for a NaN loss and TrainingInterrupted when stopped (the run resumes from its checkpoint).
    """
    from labjax import cli
    from labjax import train as train_lib

    cli.enable_compilation_cache()
    train_lib.train_and_evaluate(_as_config(config), workdir, overwrite=overwrite)
    return run_summary(workdir)


def evaluate(
    workdir: str | Path, checkpoint: str = "latest", split: str = "validation", overrides: Overrides = None
) -> dict:
    """Evaluates a trained run's checkpoint on a split and returns every metric.

    `checkpoint`: "latest", "best", a step number or "all" (then 'rows' holds one row of
    scalars per checkpoint). `split`: "validation", "test", "train" (what the run's data has).
    `overrides`: the keys evaluation may change (data paths, eval_batch_size, ...), e.g.
    {"data.test_path": "photos_test"}. The result has 'loss', 'accuracy' (and the task's other
    metrics), per-class metrics, 'confusion_matrix' and 'class_names'; the files go to WORKDIR/eval/.
    """
    from labjax import evaluate as evaluate_lib

    return evaluate_lib.evaluate(workdir, str(checkpoint), split, _override_strings(overrides))


def predict(
    workdir: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path | None = None,
    checkpoint: str = "latest",
) -> dict:
    """Runs a trained run's checkpoint on image files and returns the predictions.

    `inputs`: a file, a folder (its images, recursively), a glob ("photos/**/*.jpg") or a list
    of files. Returns {'step', 'output', 'predictions': [one dict per file: 'file', 'class',
    'probability', 'top_k' (classification) or the mask's file and class shares
    (segmentation)], 'skipped': [(file, reason)]}; predictions.csv and contact sheets (or
    masks) go to `output` (default WORKDIR/predict).
    """
    from labjax import predict as predict_lib

    inputs = str(inputs) if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    return predict_lib.predict(workdir, inputs, output, str(checkpoint))


def sweep(
    config: str,
    workdir: str | Path,
    sweep: Iterable[str] | str = (),
    overrides: Overrides = None,
    *,
    parallel: int = 0,
    vectorize: bool = False,
    overwrite: bool = False,
):
    """Trains every member of a sweep into workdir/<member>/ and returns the runs' table (load_runs).

    `config`: a built-in config's name or a config file, with its argument ("fashion3_cnn:smoke");
    each member starts from a fresh get_config. `sweep`: "KEY=V1,V2,..." strings, their product
    (with the config's own get_sweep, if it has one). `overrides`: changes for every member.
    `parallel`: 0 (default) trains members one after another in this process, N >= 1 as N child
    processes at a time; `vectorize` trains members that differ only in numbers in one program.
    A second call resumes: finished members are skipped. The report is written at the end.
    Raises SweepIncomplete when members failed (see workdir/sweep.json).
    """
    from labjax import config_files
    from labjax import sweep as sweep_lib

    if isinstance(overrides, Mapping):
        base = dict(overrides)
    else:
        base = dict(map(_split_override, _override_strings(overrides)))
    sweep_lib.run_sweep(
        config_files.resolve(config),
        workdir,
        [sweep] if isinstance(sweep, str) else list(sweep),
        base,
        parallel=parallel,
        overwrite=overwrite,
        vectorize=vectorize,
    )
    return load_runs(workdir)


def report(workdir: str | Path) -> Path:
    """Writes the report of a run or a sweep folder (report.html, report.md); returns the HTML file's path.

    In a notebook: IPython.display.IFrame(str(path), width="100%", height=600) shows it.
    """
    from labjax import report as report_lib

    return report_lib.write_report(workdir)


def load_runs(workdir: str | Path):
    """A pandas DataFrame of the runs in a sweep folder (or the one run of a run folder), one row per run.

    Columns: 'name', 'status', the config keys whose values differ between the runs (or that
    the sweep sets), the final metrics (val_loss, val_accuracy, ...; train_loss), 'metric',
    'best', 'best epoch' (the best checkpoint's metric, value and epoch), 'epochs',
    'train time (s)', 'steps/s', 'params', 'error' and 'path'.
    """
    import pandas as pd

    from labjax import report as report_lib
    from labjax.errors import MissingFileError

    workdir = Path(workdir)
    if not workdir.is_dir():
        raise MissingFileError(f"{workdir}: no such folder; give a run or sweep folder.")
    runs, sweep_record = report_lib.collect_runs(workdir)
    keys = report_lib.differing_keys(runs, sweep_record)
    rows = []
    for run in runs:
        facts = report_lib.run_facts(run)
        config = {key: run.config.get(key, run.sweep.get("overrides", {}).get(key)) for key in keys}
        rows.append({"name": run.name, "status": facts.pop("status"), **config, **facts, "path": str(run.path)})
    return pd.DataFrame(rows)


def _override_strings(overrides: Overrides) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={value}" for key, value in overrides.items()]
    return list(overrides)


def _split_override(text: str) -> tuple[str, str]:
    from labjax import config as config_lib

    return config_lib.parse_override(text)
