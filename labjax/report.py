"""The report of a run or of a sweep folder: report.html (self-contained), report.md, and their PNGs and CSVs.

A folder is a run when it holds metrics.jsonl, status.json or config.json; otherwise its
sub-folders that do are the runs (a sweep's members, or the workdirs of a shell loop), and
sweep.json, when present, orders them and adds each member's sweep status and error. The
report reads what training writes (config.json, status.json, metrics.jsonl, eval/*.json,
summary.json); what a run did not record is left blank. Every name that comes from users or
data (run names, override values, class names, errors) is escaped in the HTML and Markdown.
"""

import base64
import csv
import dataclasses
import html
import json
import re
import shlex
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from labjax import config as config_lib
from labjax import hparams, metrics, plots, tasks, writers
from labjax.errors import MissingFileError

FILES = "report_files"  # PNGs and CSVs beside report.html / report.md
RUN_FILES = ("metrics.jsonl", "status.json", "config.json")
BINARY_METRICS = tuple(tasks.REPORT_BINARY_COLUMNS)  # the binary table's columns
LOWER_IS_BETTER = ("loss", "FPR", "FNR", "fpr", "fnr")  # column names ending so are better low


@dataclasses.dataclass
class Run:
    """What one run folder holds; empty where the run did not write it."""

    name: str
    path: Path
    config: dict  # flattened config.json
    status: dict  # status.json
    rows: list[dict]  # metrics.jsonl rows with an epoch
    sweep: dict  # the member's sweep.json entry
    evaluation: dict  # eval/*.json with a confusion matrix (preferring the best checkpoint's validation)
    samples: Path | None  # eval/*_samples.png (segmentation)
    summary: dict  # summary.json of --mode=summary


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _evaluation(path: Path) -> tuple[dict, Path | None]:
    files = sorted((path / "eval").glob("*.json")) if (path / "eval").is_dir() else []
    preferred = [path / "eval" / f"{name}_validation.json" for name in ("best", "latest")]
    for candidate in [p for p in preferred if p in files] + files:
        result = _read_json(candidate)
        if result.get("confusion_matrix"):
            samples = candidate.with_name(candidate.stem + "_samples.png")
            return result, samples if samples.is_file() else None
    return {}, None


def load_run(path: Path, name: str, sweep_entry: dict | None = None) -> Run:
    evaluation, samples = _evaluation(path)
    return Run(
        name=name,
        path=path,
        config=config_lib.flatten(_read_json(path / "config.json")),
        status=_read_json(path / "status.json"),
        rows=[row for row in writers.read_rows(path / "metrics.jsonl") if "epoch" in row],
        sweep=sweep_entry or {},
        evaluation=evaluation,
        samples=samples,
        summary=_read_json(path / "summary.json"),
    )


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def collect_runs(workdir: Path) -> tuple[list[Run], dict]:
    """The runs of `workdir` (itself, or its sub-folders in sweep.json's order, then by name) and sweep.json."""
    sweep = _read_json(workdir / "sweep.json")
    if _is_run(workdir) and not sweep:
        return [load_run(workdir, workdir.resolve().name)], {}
    runs, seen = [], set()
    for entry in sweep.get("members", []):
        runs.append(load_run(workdir / entry["name"], entry["name"], entry))
        seen.add(entry["name"])
    for child in sorted(p for p in workdir.iterdir() if p.is_dir() and p.name not in seen and p.name != FILES):
        if _is_run(child):
            runs.append(load_run(child, child.name))
    return runs, sweep


def _number(value) -> int | float | None:
    """The value if it is a number (not a bool, not a 'nan' string from a diverged run's log), else None."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def best_metric(run: Run) -> tuple[str | None, str]:
    """The metric that picks the best checkpoint (checkpoint.best_metric) and its mode, if the run logged it."""
    name, mode = run.config.get("checkpoint.best_metric", "val_accuracy"), run.config.get("checkpoint.best_mode", "max")
    logged = {key for row in run.rows for key in row}
    if name not in logged:
        name, mode = next((m for m in tasks.PRIMARY_METRICS if m in logged), None), "max"
    return name, mode


def run_facts(run: Run) -> dict:
    """One row of the across-runs table: status, best and final metrics, time, speed, size."""
    status = run.status.get("status")
    if status in (None, "running") and run.sweep.get("status"):
        status = run.sweep["status"]  # a crashed child leaves its status.json 'running'
    metric, mode = best_metric(run)
    best_value = best_epoch = None
    if metric:
        scored = [(row[metric], row["epoch"]) for row in run.rows if _number(row.get(metric)) is not None]
        if scored:
            best_value, best_epoch = (max if mode == "max" else min)(scored, key=lambda pair: pair[0])
    last = run.rows[-1] if run.rows else {}
    train_time = _number(run.status.get("train_time_s")) or _number(last.get("training_time_s"))
    steps_per_s = _number(run.status.get("steps_per_s"))
    if steps_per_s is None and train_time and _number(run.status.get("step")):
        steps_per_s = run.status["step"] / train_time
    error = run.sweep.get("error")
    if not error and status == "diverged":
        error = f"loss {run.status.get('loss')} at step {run.status.get('step')}"
    return {
        "status": status or "unknown",
        "metric": metric,
        "best": best_value,
        "best epoch": best_epoch,
        **{key: _number(value) for key, value in last.items() if key.startswith("val_") or key == "train_loss"},
        "epochs": _number(run.status.get("epochs")) or _number(last.get("epoch")),
        "train time (s)": train_time,
        "steps/s": steps_per_s,
        "params": _number(run.status.get("num_params")) or _number(run.summary.get("total_params")),
        "peak memory (MB)": _number(run.status.get("peak_memory_mb"))
        or _number(run.summary.get("train_step_peak_memory_mb")),
        "error": error,
    }


def differing_keys(runs: list[Run], sweep: dict) -> list[str]:
    """The sweep's override keys, then every other config key whose value differs between the runs."""
    keys = list(dict.fromkeys(key for entry in sweep.get("members", []) for key in entry.get("overrides", {})))
    configs = [run.config for run in runs if run.config]
    if len(configs) > 1:
        every = sorted(set().union(*configs))
        keys += [k for k in every if k not in keys and len({json.dumps(c.get(k)) for c in configs}) > 1]
    return keys


def _value(run: Run, key: str):
    return run.config[key] if key in run.config else run.sweep.get("overrides", {}).get(key)


def binary_metrics(matrix) -> dict:
    """TPR, TNR, FPR, FNR, accuracy and F1 of a 2x2 confusion matrix (rows true, columns predicted).

    Class 1 is the positive class; a ratio with nothing to divide by is None. The values are
    labjax.metrics' (what evaluation writes), under the report's column names.
    """
    values = {**metrics.binary_metrics(matrix, positive=1), "accuracy": _accuracy(matrix)}
    return {column: values[key] for column, key in tasks.REPORT_BINARY_COLUMNS.items()}


def _accuracy(matrix) -> float | None:
    return metrics.classification_metrics(matrix, [str(i) for i in range(len(matrix))])["accuracy"]


def _confusion(run: Run) -> tuple[list | None, list[str], str]:
    """The run's confusion matrix, class names and where they come from (an --mode=eval file or status.json)."""
    if run.evaluation:
        e = run.evaluation
        where = f"{e.get('checkpoint', '')} checkpoint (step {e.get('step')}) on {e.get('split')}"
        return e["confusion_matrix"], list(e.get("class_names") or []), where
    if run.status.get("confusion_matrix"):
        return run.status["confusion_matrix"], list(run.status.get("class_names") or []), "the last validation"
    return None, [], ""


# Student's t at 97.5% for 1..30 degrees of freedom (a 95% interval of a mean); _t_975 beyond.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
T_975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# Repeats of one setting the report summarises: the key, the count's column, the table's title and CSV.
REPEATS = {
    "data.fold": ("folds", "k-fold cross-validation: mean, std and 95% interval over the folds", "kfold.csv"),
    "seed": ("seeds", "seeds: mean, std and 95% interval over the seeds, per setting", "seeds.csv"),
}


def mean_interval(values: list[float]) -> tuple[float, float, float | None, float | None]:
    """Mean, standard deviation (numpy's, ddof=0) and the 95% interval of the mean (Student's t on the
    sample standard deviation, ddof=1); the interval is None for a single value."""
    mean, std = float(np.mean(values)), float(np.std(values))
    if len(values) < 2:
        return mean, std, None, None
    t = T_975[len(values) - 2] if len(values) - 1 <= len(T_975) else _t_975(len(values) - 1)
    half = t * float(np.std(values, ddof=1)) / np.sqrt(len(values))
    return mean, std, mean - half, mean + half


def _t_975(dof: int) -> float:
    """Student's t at 97.5% beyond the table: the Cornish-Fisher expansion around the normal's 1.96 (< 1e-4 off)."""
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def repeat_groups(runs: list[Run], facts: list[dict], keys: list[str], repeat: str = "data.fold") -> list[dict]:
    """Members that differ only in `repeat` (data.fold, seed), grouped: mean, std and 95% interval per setting."""
    if repeat not in keys:
        return []
    others = [k for k in keys if k != repeat]
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(tuple(json.dumps(_value(run, k)) for k in others), []).append(i)
    measures = ["best", *sorted({k for f in facts for k in f if k.startswith("val_")})]
    table = []
    for members in groups.values():
        row = {k: _value(runs[members[0]], k) for k in others}
        row[REPEATS.get(repeat, (repeat,))[0]] = len(members)
        for measure in measures:
            values = [facts[i][measure] for i in members if facts[i].get(measure) is not None]
            mean, std, low, high = mean_interval(values) if values else (None, None, None, None)
            row.update({f"{measure} mean": mean, f"{measure} std": std})
            row.update({f"{measure} ci95 low": low, f"{measure} ci95 high": high})
        table.append(row)
    return table


def kfold_groups(runs: list[Run], facts: list[dict], keys: list[str]) -> list[dict]:
    """Members that differ only in data.fold, grouped: mean, std (numpy's, ddof=0) and 95% interval."""
    return repeat_groups(runs, facts, keys, "data.fold")


def _slug(index: int, name: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)[:60]}"


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if row.get(c) is None else row.get(c) for c in columns] for row in rows])
    return path


def _format(column: str, value, raw=()) -> str:
    """Metrics to 4 decimals, counts as integers; `raw` columns (override values) exactly as configured."""
    if value is None:
        return ""
    if column == "error" and len(value) > 100:  # the whole error is in the run's section
        return value[:100] + "..."
    if column in raw or isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if column == "params":
        return f"{int(value):,}"
    if column == "steps/s":
        return f"{value:.3g}"
    if column in ("train time (s)", "epochs", "best epoch", "folds", "seeds", "trial", "peak memory (MB)"):
        return f"{value:.1f}" if value % 1 else f"{int(value)}"
    return f"{value:.4f}"


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict]
    csv: str | None = None  # file name under report_files
    raw: tuple = ()  # columns shown as they are (override values), not as metrics
    best: dict = dataclasses.field(default_factory=dict)  # column -> "max"/"min": its best cells are marked

    def best_cells(self) -> set[tuple[int, str]]:
        """(row index, column) of each marked column's best value (ties all marked) where the values differ."""
        cells = set()
        for column, mode in self.best.items():
            scored = [(i, row.get(column)) for i, row in enumerate(self.rows) if _number(row.get(column)) is not None]
            if len({value for _, value in scored}) > 1:  # a column of one value has no winner
                top = (max if mode == "max" else min)(value for _, value in scored)
                cells |= {(i, column) for i, value in scored if value == top}
        return cells


def direction(column: str) -> str:
    """'min' for a loss or an error rate (also as 'X mean' or 'best X'), else 'max'."""
    name = column.removesuffix(" mean").removeprefix("best ")
    return "min" if name.endswith(LOWER_IS_BETTER) else "max"


@dataclasses.dataclass
class Section:
    """A run's part of the report: a heading, notes, tables and figures (title, path)."""

    title: str
    status: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[tuple[str, Path]] = dataclasses.field(default_factory=list)
    error: str | None = None


def _run_section(index: int, run: Run, facts: dict, keys: list[str], files: Path) -> Section:
    slug = _slug(index, run.name)
    section = Section(run.name, facts["status"], error=facts["error"])
    overrides = {k: _value(run, k) for k in keys} or run.sweep.get("overrides", {})
    if overrides:
        section.notes.append(", ".join(f"{k} = {v}" for k, v in overrides.items()))
    for path in _curves(run, files / slug):
        section.figures.append((path.stem.replace("_", " "), path))
    matrix, class_names, where = _confusion(run)
    if matrix is not None:
        names = class_names if len(class_names) == len(matrix) else [str(i) for i in range(len(matrix))]
        path = plots.plot_confusion_matrix(matrix, names, files / slug / "confusion_matrix.png")
        section.figures.append((f"confusion matrix, {where}", path))
        confusion_csv = f"{slug}_confusion.csv"
        _write_csv(
            files / confusion_csv,
            ["true \\ predicted", *names],
            [{"true \\ predicted": name, **dict(zip(names, counts))} for name, counts in zip(names, matrix)],
        )
        if len(matrix) == 2:
            values = binary_metrics(matrix)
            title = f"binary metrics (positive class: {names[1]}), {where}"
            section.tables.append(Table(title, list(BINARY_METRICS), [values]))
    if run.status.get("provenance"):
        section.tables.append(provenance_table(run.status["provenance"]))
    if run.samples:
        path = files / slug / "samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.samples, path)
        section.figures.append(("image / true mask / predicted mask", path))
    return section


def _curves(run: Run, out_dir: Path) -> list[Path]:
    """The run's curves: its own figures when it drew them after its last metrics row (a run draws
    them as it ends), else drawn now."""
    names = [f"{metric}.png" for metric in plots.curve_metrics(run.rows)] + ["learning_rate.png"]
    own = [run.path / "plots" / name for name in names]
    rows_file = run.path / "metrics.jsonl"
    if run.rows and rows_file.exists() and all(p.exists() for p in own):
        if min(p.stat().st_mtime for p in own) >= rows_file.stat().st_mtime:
            out_dir.mkdir(parents=True, exist_ok=True)
            return [Path(shutil.copyfile(p, out_dir / p.name)) for p in own]
    return plots.plot_curves(run.rows, out_dir)


def provenance_table(facts: dict) -> Table:
    """What produced the run (status.json's provenance): code, packages, devices, command."""
    rows = [{"what": "labjax", "value": facts.get("labjax")}]
    if facts.get("git"):
        git = facts["git"]
        rows.append({"what": "git commit", "value": git["commit"] + (" (uncommitted changes)" if git["dirty"] else "")})
    packages = facts.get("packages") or {}
    rows.append({"what": "packages", "value": ", ".join(f"{k} {v or '-'}" for k, v in packages.items())})
    devices = facts.get("devices") or {}
    if devices:
        processes = devices.get("processes", 1)
        where = f"{devices.get('count')} x {devices.get('kind')} ({devices.get('platform')})"
        rows.append({"what": "devices", "value": where + (f", {processes} processes" if processes > 1 else "")})
    rows.append({"what": "Python", "value": facts.get("python")})
    rows.append({"what": "command", "value": shlex.join(facts.get("command") or [])})
    return Table("provenance", ["what", "value"], [row for row in rows if row["value"]], raw=("value",))


def summary_line(runs: list[Run], facts: list[dict], metric: str | None, mode: str | None) -> str:
    """One sentence on top of the report: how the runs ended, which won on `metric`, the training time."""
    counts = Counter(fact["status"] for fact in facts)
    if len(runs) == 1:
        parts = [f"1 run, {facts[0]['status']}"]
    else:
        parts = [f"{len(runs)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.most_common())]
    scored = [(f["best"], run.name, f["best epoch"]) for run, f in zip(runs, facts) if f["best"] is not None]
    if metric and mode and scored:
        value, name, epoch = (max if mode == "max" else min)(scored, key=lambda item: item[0])
        by = "" if len(runs) == 1 else f" by {name}"
        parts.append(f"best {metric} {_format(metric, value)}{by}" + ("" if epoch is None else f" (epoch {epoch:g})"))
    times = [f["train time (s)"] for f in facts if f["train time (s)"] is not None]
    if times:
        parts.append(f"training time {_duration(sum(times))}" + (" in all" if len(times) > 1 else ""))
    return "; ".join(parts) + "."


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def declare_hparams(runs: list[Run], logdir: Path, metric: str | None) -> Path:
    """The runs' experiment for TensorBoard's HParams dashboard (labjax.hparams): their config keys, those
    that differ first, and their final metrics, the ranking one first."""
    finals = list(dict.fromkeys(key for run in runs for key in run.status.get("final", {})))
    finals.sort(key=lambda key: key != metric)
    tags = [hparams.FINAL + key for key in [*finals, "train_time_s", "steps_per_s"]]
    return hparams.write_experiment(logdir, [run.config for run in runs if run.config], tags)


def _selection(facts: list[dict], runs: list[Run]) -> tuple[str | None, str | None]:
    """The metric that ranks the runs and its mode, when all runs share them (else None, None)."""
    chosen = {(fact["metric"], best_metric(run)[1]) for run, fact in zip(runs, facts) if fact["metric"]}
    return next(iter(chosen)) if len(chosen) == 1 else (None, None)


def build(workdir: Path) -> tuple[list[Table], list[tuple[str, Path]], list[Section], dict, str]:
    """Tables, across-runs figures, per-run sections and the summary line; writes the PNGs and CSVs."""
    runs, sweep = collect_runs(workdir)
    if not runs:
        raise MissingFileError(
            f"{workdir}: no run found; --mode=report needs a run folder (with metrics.jsonl or status.json) "
            "or a folder of run folders (a sweep)."
        )
    files = workdir / FILES
    shutil.rmtree(files, ignore_errors=True)  # the report's own folder: rewritten whole
    files.mkdir(parents=True)
    facts = [run_facts(run) for run in runs]
    keys = differing_keys(runs, sweep) if len(runs) > 1 or sweep else []
    metrics = {f["metric"] for f in facts if f["metric"]}
    best_column = f"best {next(iter(metrics))}" if len(metrics) == 1 else "best"
    finals = sorted({k for f in facts for k in f if k.startswith("val_") or k == "train_loss"})
    columns = ["run", *keys, "status", *([] if len(metrics) == 1 else ["metric"]), best_column, "best epoch"]
    columns += [*finals, "epochs", "train time (s)", "steps/s", "params", "peak memory (MB)"]
    if any(f["error"] for f in facts):
        columns.append("error")
    rows = []
    for run, fact in zip(runs, facts):
        error = (fact["error"] or "").strip().splitlines()
        rows.append({"run": run.name, **{k: _value(run, k) for k in keys}, **fact, best_column: fact["best"]})
        rows[-1]["error"] = error[0] if error else None
    metric, mode = _selection(facts, runs)
    if len(runs) > 1:
        declare_hparams(runs, files / "tensorboard", metric)
    marked = {best_column: mode} if mode else {}
    tables = [Table("runs", columns, rows, "runs.csv", tuple(keys), {**marked, **{f: direction(f) for f in finals}})]

    for repeat, (_, title, csv_name) in REPEATS.items():
        groups = repeat_groups(runs, facts, keys, repeat)
        if groups:
            group_columns = list(groups[0])
            means = {c: mode if c == "best mean" else direction(c) for c in group_columns if c.endswith(" mean")}
            tables.append(Table(title, group_columns, groups, csv_name, tuple(keys), means if mode else {}))
    search = _read_json(workdir / "search.json")
    if search:
        tables[0].title = "trials"
        tables.append(_best_trial(search))
    binaries = []
    for run in runs:
        matrix = _confusion(run)[0]
        if matrix is not None and len(matrix) == 2:
            binaries.append({"run": run.name, **binary_metrics(matrix)})
    if len(runs) > 1 and binaries:
        tables.append(
            Table(
                "binary metrics (class 1 positive)",
                ["run", *BINARY_METRICS],
                binaries,
                "binary_metrics.csv",
                best={column: direction(column) for column in BINARY_METRICS},
            )
        )
    for table in tables:
        if table.csv:
            _write_csv(files / table.csv, table.columns, table.rows)

    figures = _figures(runs, facts, keys, metrics, best_column, search, files, marked)
    sections = [_run_section(i, run, fact, keys, files) for i, (run, fact) in enumerate(zip(runs, facts))]
    return tables, figures, sections, sweep, summary_line(runs, facts, metric, mode)


def _figures(
    runs, facts, keys, metrics, best_column, search: dict, files: Path, marked: dict
) -> list[tuple[str, Path]]:
    """The across-runs figures: comparison bars, curves per setting over seeds or by each key, a search's."""
    figures = []
    if search.get("trials"):
        importances = search.get("importances")
        logs = [key for key, text in (search.get("space") or {}).items() if text.startswith("loguniform")]
        path = files / "search.png"
        path = plots.plot_search(search["trials"], search["metric"], search["mode"], importances, path, logs)
        figures.append(("search: history, each key against the metric, parameter importances", path))
    if len(runs) < 2:
        return figures
    quantities = {best_column: [f["best"] for f in facts]}
    quantities.update({key: [f[key] for f in facts] for key in ("train time (s)", "params", "peak memory (MB)")})
    quantities = {name: values for name, values in quantities.items() if any(v is not None for v in values)}
    if quantities:
        path = plots.plot_bars([r.name for r in runs], quantities, files / "comparison.png", marked)
        figures.append(("comparison (the best run in orange)" if marked else "comparison", path))
    curve_metrics = ["val_loss", *sorted(m for m in metrics if m != "val_loss")]
    if "seed" in keys:
        settings = _settings(runs, [k for k in keys if k != "seed"])
        path = plots.plot_band_curves(settings, curve_metrics, files / "by_setting_over_seeds.png")
        figures.append(("validation curves per setting: mean and ± 1 std band over the seeds", path))
    for axis_index, key in enumerate(k for k in keys if k not in ("data.fold", "seed") and not search):
        series = [(run.name, str(_value(run, key)), run.rows) for run in runs]
        if len({group for _, group, _ in series}) > 1:
            path = files / f"by_{axis_index:02d}_{_slug(0, key)[3:]}.png"
            figures.append(
                (f"validation curves by {key}", plots.plot_overlaid_curves(series, curve_metrics, key, path))
            )
    return figures


def _settings(runs: list[Run], keys: list[str]) -> list[tuple[str, list[list[dict]]]]:
    """Runs grouped by their values of `keys` (a setting): (label, each run's rows)."""
    groups: dict[str, list[list[dict]]] = {}
    for run in runs:
        label = ", ".join(f"{k}={_value(run, k)}" for k in keys) or "all"
        groups.setdefault(label, []).append(run.rows)
    return list(groups.items())


def _best_trial(search: dict) -> Table:
    """The search's best trial: number, value, values and the command that trains it again."""
    best = search.get("best") or {}
    counts = {state: sum(t["state"] == state for t in search.get("trials", [])) for state in ("COMPLETE", "PRUNED")}
    row = {
        "trial": best.get("number"),
        "run": best.get("name"),
        f"best {search.get('metric')}": best.get("value"),
        **{key: value for key, value in (best.get("params") or {}).items()},
        "complete / pruned / of": f"{counts['COMPLETE']} / {counts['PRUNED']} / {search.get('trials_wanted')}",
        "command": best.get("command"),
    }
    title = f"best trial ({search.get('mode')} {search.get('metric')}; space {search.get('space')})"
    return Table(title, list(row), [row], None, tuple(best.get("params") or {}) + ("command",))


def write_report(workdir: str | Path) -> Path:
    """Writes DIR/report.html and DIR/report.md (and DIR/report_files/); returns the HTML's path."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise MissingFileError(f"--workdir={workdir}: no such folder; give a run or sweep folder.")
    tables, figures, sections, sweep, summary = build(workdir)
    title = f"labjax report: {workdir.resolve().name}"
    (workdir / "report.md").write_text(_markdown(title, workdir, tables, figures, sections, sweep, summary))
    path = workdir / "report.html"
    path.write_text(_html(title, tables, figures, sections, sweep, summary))
    print(f"Report: {path} ({len(sections)} run(s)); {workdir / 'report.md'}.", flush=True)
    return path


def _overrides_text(sweep: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in (sweep.get("overrides") or {}).items()) or "none"


# --- Markdown ---


def _md(text) -> str:
    return html.escape(" ".join(str(text).split())).replace("|", "\\|")


def _md_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_md(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    best = table.best_cells()
    for i, row in enumerate(table.rows):
        cells = [_md(_format(c, row.get(c), table.raw)) for c in table.columns]
        cells = [f"**{cell}**" if (i, c) in best else cell for cell, c in zip(cells, table.columns)]
        lines.append("| " + " | ".join(cells) + " |")
    if best:
        lines += ["", "Bold: the best value of its column."]
    return lines


def _markdown(title, workdir: Path, tables, figures, sections, sweep, summary="") -> str:
    lines = [f"# {_md(title)}", "", f"**{_md(summary)}**", "", f"Written {time.strftime('%Y-%m-%d %H:%M')}."]
    if sweep:
        lines.append(f"Sweep of {_md(sweep.get('config'))}; overrides: {_md(_overrides_text(sweep))}.")
    for table in tables:
        lines += ["", f"## {_md(table.title)}", "", *_md_table(table)]
        if table.csv:
            lines += ["", f"[{table.csv}]({FILES}/{table.csv})"]
    for caption, path in figures:
        lines += ["", f"![{_md(caption)}]({path.relative_to(workdir).as_posix()})"]
    for section in sections:
        lines += ["", f"## {_md(section.title)} ({_md(section.status)})", ""]
        lines += [_md(note) for note in section.notes]
        if section.error:
            lines += ["", "```", section.error.replace("```", "'''"), "```"]
        for table in section.tables:
            lines += ["", f"**{_md(table.title)}**", "", *_md_table(table)]
        for caption, path in section.figures:
            lines += ["", f"![{_md(caption)}]({path.relative_to(workdir).as_posix()})"]
    return "\n".join(lines) + "\n"


# --- HTML ---

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th { background: #f0f0f0; }
table.sortable th { cursor: pointer; }
th[data-order=ascending]::after { content: " \\25B2"; }
th[data-order=descending]::after { content: " \\25BC"; }
img { max-width: 100%; height: auto; margin: 0.3em 0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.8em; color: #555; }
.finished { color: #1a7f37; } .diverged, .failed { color: #c62828; } .interrupted, .pending { color: #b26a00; }
.pruned { color: #6a1b9a; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
.summary { font-size: 1.1em; background: #f3f7fb; border-left: 4px solid #1f77b4; padding: 0.5em 0.8em; }
.scroll { overflow: auto; width: fit-content; max-width: 100%; max-height: 75vh; margin: 0.5em 0 0.3em; }
.scroll table { margin: 0; }
.scroll thead th { position: sticky; top: 0; z-index: 1; }
.scroll td:first-child { position: sticky; left: 0; background: #fff; }
.scroll th:first-child { left: 0; z-index: 2; }
td:first-child { min-width: 10em; max-width: 24em; overflow-wrap: break-word; }
td.text { text-align: left; }
td.best { font-weight: bold; background: #e6f4ea; white-space: nowrap; }
.note { font-size: 0.8em; color: #555; margin-top: 0; }
"""

# Sorts a table by the clicked column: numbers as numbers, blanks last, again to reverse.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], index = th.cellIndex;
    var ascending = th.getAttribute("data-order") !== "ascending";
    table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("data-order"); });
    th.setAttribute("data-order", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute("data-sort"), y = b.cells[index].getAttribute("data-sort");
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _html_table(table: Table, sortable: bool) -> str:
    """The table in a box that scrolls (its header and first column stay); the best cells marked."""
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    best = table.best_cells()
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for c in table.columns:
            value = row.get(c)
            sort = "" if value is None else repr(float(value)) if _number(value) is not None else str(value)
            text = _e(_format(c, value, table.raw))
            if c == "run":  # a sweep member's name may break after its commas
                text = text.replace(",", ",<wbr>")
            mark = ' class="best" title="best of this column"' if (i, c) in best else ""
            if c in table.raw and isinstance(value, str) and not mark:
                mark = ' class="text"'  # words read from the left
            cells.append(f'<td data-sort="{_e(sort)}"{mark}>{text}{" &#9733;" if "best" in mark else ""}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    css = ' class="sortable"' if sortable else ""
    note = '<p class="note">&#9733; the best value of its column.</p>' if best else ""
    table_html = f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table_html}</div>{note}'


def _figure(caption: str, path: Path) -> str:
    """The PNG embedded as a data URI, shown at 3/4 of its pixel width (a run's curves sit side by side)."""
    png = path.read_bytes()
    width = int(0.75 * int.from_bytes(png[16:20], "big"))  # the IHDR chunk's width
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{width}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _html(title, tables, figures, sections, sweep, summary="") -> str:
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="summary">{_e(summary)}</p>']
    parts.append(f'<p class="note">Written {_e(time.strftime("%Y-%m-%d %H:%M"))}.</p>')
    if sweep:
        overrides = _overrides_text(sweep)
        parts.append(
            f"<p>Sweep of <code>{_e(sweep.get('config'))}</code>; overrides: <code>{_e(overrides)}</code>.</p>"
        )
    for table in tables:
        link = f' (<a href="{FILES}/{_e(table.csv)}">{_e(table.csv)}</a>)' if table.csv else ""
        parts += [f"<h2>{_e(table.title)}{link}</h2>", _html_table(table, sortable=True)]
    parts += [_figure(caption, path) for caption, path in figures]
    many = len(sections) > 1
    for section in sections:
        inner = [f"<p>{_e(note)}</p>" for note in section.notes]
        if section.error:
            inner.append(f"<pre>{_e(section.error)}</pre>")
        for table in section.tables:
            inner += [f"<h4>{_e(table.title)}</h4>", _html_table(table, sortable=False)]
        inner += [_figure(caption, path) for caption, path in section.figures]
        status = f'<span class="{_e(section.status)}">{_e(section.status)}</span>'
        if many:
            parts.append(f"<details><summary><b>{_e(section.title)}</b> {status}</summary>{''.join(inner)}</details>")
        else:
            parts += [f"<h2>{_e(section.title)} {status}</h2>", *inner]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{STYLE}</style></head>\n'
        f"<body>\n{chr(10).join(parts)}\n<script>{SORT_SCRIPT}</script>\n</body></html>\n"
    )
