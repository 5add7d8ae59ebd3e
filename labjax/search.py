"""Searches: an Optuna study over a config's keys, each trial an ordinary run folder, bad trials pruned early.

`--mode=search --config=FILE[:ARG] --trials=N --space='KEY=loguniform(a,b)' ...` asks Optuna's
sampler (TPE, random or grid) for each trial's values, trains the trial as a `launch.py`
child through the sweep's launcher (labjax/sweep.py, `--parallel=N` at a time) into
DIR/<number>_<values>/, and tells the study the trial's best `checkpoint.best_metric`. The
child reports that metric after every epoch (LABJAX_TRIAL names the storage, the study and
the trial: `trial_hook`, RunRecord's epoch_hook) and stops when the pruner says so: the trial
is recorded `pruned` with its epoch and keeps its checkpoint. The study lives in DIR/study.db
(SQLite through Optuna's RDB storage) or DIR/study.journal (`--storage=journal`: a file that
machines sharing the folder can all add trials to); running the command again continues the
study to --trials, resuming interrupted trials. DIR/sweep.json lists the trials as a sweep's
members (so --mode=report reads them as runs), DIR/search.json the study: trials, best trial
with its command line, parameter importances.

Optuna is imported here and nowhere else; without it a search is a ConfigError naming the install.
"""

import ast
import contextlib
import copy
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import socket
import time
import warnings
from pathlib import Path

from labjax import config as config_lib
from labjax import sweep, writers
from labjax import workdir as workdir_lib
from labjax.errors import ConfigError, SweepIncomplete, SweepInterrupted

TRIAL_ENV = "LABJAX_TRIAL"  # JSON given to a trial's process: storage, study, trial id, pruner, metric
STUDY_NAME = "labjax"
KINDS = ("loguniform", "uniform", "int", "choice")
STORAGES = {"sqlite": "study.db", "journal": "study.journal"}
PRUNERS = {
    "median": "MedianPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "percentile": "PercentilePruner",
    "none": "NopPruner",
}


def import_optuna():
    """Optuna, or a ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "--mode=search needs Optuna: pip install optuna==5.1.0 (or pip install -r requirements-dev.txt)."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --- the search space ---


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One key's range: loguniform(a, b), uniform(a, b), int(a, b) (both ends included) or choice(v1, v2, ...)."""

    kind: str
    args: tuple

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.args))})"


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text  # choice(adam, sgd): bare words are strings


def parse_distribution(text: str, where: str) -> Distribution:
    """`loguniform(1e-5, 1e-1)` -> Distribution; `where` (the flag or the config) names the mistake."""
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", str(text), re.S)
    usage = "loguniform(a,b), uniform(a,b), int(a,b) or choice(v1,v2,...)"
    if not match or match.group(1) not in KINDS:
        raise ConfigError(f"{where}: {text!r} is no distribution; expected {usage}.")
    kind, inner = match.groups()
    args = tuple(_literal(piece.strip()) for piece in inner.split(",") if piece.strip())
    return check_distribution(Distribution(kind, args), where)


def check_distribution(dist: Distribution, where: str) -> Distribution:
    if dist.kind == "choice":
        if not dist.args or len(set(map(repr, dist.args))) < len(dist.args):
            raise ConfigError(f"{where}: {dist} needs one or more distinct values.")
        if any(not isinstance(value, str | int | float | bool) for value in dist.args):
            raise ConfigError(f"{where}: {dist}: values must be numbers, strings or booleans.")
        return dist
    numbers = len(dist.args) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in dist.args)
    if not numbers:
        raise ConfigError(f"{where}: {dist} needs two numbers, low and high.")
    low, high = dist.args
    if dist.kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: {dist} needs two integers.")
    if not low < high or (dist.kind == "loguniform" and low <= 0):
        extra = " and low > 0" if dist.kind == "loguniform" else ""
        raise ConfigError(f"{where}: {dist} needs low < high{extra}.")
    return dist


def parse_space_flag(text: str) -> tuple[str, Distribution]:
    """`--space=KEY=loguniform(1e-4,1e-1)` -> (KEY, Distribution)."""
    key, equals, dist = text.partition("=")
    key = key.strip().removeprefix("config.")
    if not equals or not key or not dist.strip():
        raise ConfigError(
            f"--space={text!r}: expected KEY=DISTRIBUTION, e.g. optimizer.learning_rate=loguniform(1e-4,1e-1)."
        )
    return key, parse_distribution(dist, f"--space={text}")


def search_space(module, arg, space_flags=()) -> dict[str, Distribution]:
    """The config's get_search_space(arg) (KEY -> 'loguniform(a,b)' text, or a list for a choice), then --space."""
    space = {}
    if hasattr(module, "get_search_space"):
        for key, value in dict(module.get_search_space(arg)).items():
            where = f"{module.__file__}: get_search_space()[{key!r}]"
            if isinstance(value, list | tuple):
                space[key] = check_distribution(Distribution("choice", tuple(value)), where)
            else:
                space[key] = parse_distribution(value, where)
    flags = [parse_space_flag(text) for text in space_flags]
    if len({key for key, _ in flags}) < len(flags):
        raise ConfigError(f"--space names a key twice: {[key for key, _ in flags]}.")
    space.update(flags)
    if not space:
        raise ConfigError(
            "--mode=search needs a search space: --space='KEY=loguniform(a,b)' (repeatable) or get_search_space(arg) "
            "in the config."
        )
    return space


def check_space(config, space: dict[str, Distribution]) -> None:
    """Every key exists and takes both ends of its range or every choice (an int key refuses uniform(), ...)."""
    for key, dist in space.items():
        for value in dist.args:
            config_lib.apply_overrides(copy.deepcopy(config), {key: value}, source=f"--space={key}={dist}")


def suggest(trial, space: dict[str, Distribution]) -> dict:
    """The trial's values, one per key, from its sampler."""
    values = {}
    for key, dist in space.items():
        if dist.kind == "choice":
            values[key] = trial.suggest_categorical(key, list(dist.args))
        elif dist.kind == "int":
            values[key] = trial.suggest_int(key, *dist.args)
        else:
            values[key] = trial.suggest_float(
                key, float(dist.args[0]), float(dist.args[1]), log=dist.kind == "loguniform"
            )
    return values


def grid_size(space: dict[str, Distribution]) -> int:
    return math.prod(len(dist.args) for dist in space.values())


def make_sampler(optuna, name: str, space: dict[str, Distribution], seed: int):
    """tpe | random | grid (every key a choice()); seeded, so a search is repeatable."""
    if name == "grid":
        others = [key for key, dist in space.items() if dist.kind != "choice"]
        if others:
            raise ConfigError(f"--sampler=grid needs choice(...) for every key; {others[0]} is {space[others[0]]}.")
        return optuna.samplers.GridSampler({key: list(dist.args) for key, dist in space.items()}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ConfigError(f"--sampler={name!r} is unknown; choose tpe, random or grid.")


def parse_pruner(text: str) -> tuple[str, dict]:
    """`median`, `median(n_startup_trials=2)`, `threshold(lower=0.5)`, `none` -> (name, keyword arguments)."""
    match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", text or "", re.S)
    if not match or match.group(1) not in PRUNERS:
        raise ConfigError(f"--pruner={text!r} is unknown; choose {', '.join(PRUNERS)} (with Optuna's arguments in ()).")
    kwargs = {}
    for piece in filter(None, (piece.strip() for piece in (match.group(2) or "").split(","))):
        key, equals, value = piece.partition("=")
        if not equals or not key.strip().isidentifier():
            raise ConfigError(f"--pruner={text!r}: {piece!r} is not NAME=VALUE.")
        kwargs[key.strip()] = _literal(value.strip())
    return match.group(1), kwargs


def make_pruner(optuna, text: str, epochs: int):
    """The pruner of --pruner; hyperband's resource is the epoch (max_resource: the run's epochs)."""
    name, kwargs = parse_pruner(text)
    if name == "hyperband":
        kwargs.setdefault("max_resource", max(epochs, 1))
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--pruner={text!r}: {error}") from None


def storage_file(workdir: Path, storage: str) -> Path:
    """DIR/study.db or DIR/study.journal; refuses the other kind when the folder already keeps its study there."""
    if storage not in STORAGES:
        raise ConfigError(f"--storage={storage!r} is unknown; choose sqlite (study.db) or journal (study.journal).")
    for kind, name in STORAGES.items():
        if kind != storage and (workdir / name).exists():
            raise ConfigError(f"{workdir} keeps its study in {name}; add --storage={kind} (or use another --workdir).")
    return workdir / STORAGES[storage]


def open_storage(optuna, storage: str, path: Path):
    if storage == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    # A trial's process writes its epochs while the search writes trials: wait for SQLite's lock.
    return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}", engine_kwargs={"connect_args": {"timeout": 120}})


# --- a trial's side: report each epoch, stop when pruned ---


def trial_hook():
    """RunRecord's epoch_hook for a trial's process (LABJAX_TRIAL set), else None (an ordinary run).

    After each epoch it reports the metric to the study and returns True (stop now) when the pruner
    prunes the trial; RunRecord then keeps the checkpoint and records the run as 'pruned'.
    """
    text = os.environ.get(TRIAL_ENV)
    if not text:
        return None
    info = json.loads(text)
    optuna = import_optuna()
    storage = open_storage(optuna, info["storage"], Path(info["path"]))
    pruner = make_pruner(optuna, info["pruner"], info["epochs"])
    study = optuna.load_study(study_name=info["study"], storage=storage, pruner=pruner)
    trial = optuna.trial.Trial(study, info["trial_id"])
    metric = info["metric"]

    def hook(step: int, epoch: int, scalars: dict) -> bool:
        if metric not in scalars:
            raise ConfigError(
                f"config.checkpoint.best_metric={metric!r} is not a metric of this run; the search needs it."
            )
        trial.report(float(scalars[metric]), epoch)
        pruned = trial.should_prune()
        if pruned:
            print(f"[search] trial {info['number']}: pruned after epoch {epoch} ({metric} {scalars[metric]:.4g}).")
        return pruned

    return hook


# --- the search ---


def _short_keys(keys) -> dict[str, str]:
    """optimizer.learning_rate -> learning_rate, unless two keys end alike (then the whole key)."""
    leaves = [key.rpartition(".")[2] for key in keys]
    return {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)}


def trial_name(number: int, values: dict) -> str:
    """`003_learning_rate=0.00123,dropout=0.31`: the trial's number and its values (3 significant digits)."""
    short = _short_keys(list(values))

    def text(value):
        return (
            f"{value:.3g}"
            if isinstance(value, float)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )

    name = f"{number:03d}_" + ",".join(f"{short[key]}={text(value)}" for key, value in values.items())
    name = re.sub(r"[/\0]", "_", name)
    return name if len(name.encode()) <= 200 else f"{number:03d}"


def default_workdir(config_argument: str) -> Path:
    """configs/fashion3_cnn.py:smoke -> runs/fashion3_cnn_smoke_search."""
    base = workdir_lib.default_workdir(config_argument)
    return base.with_name(base.name + "_search")


def best_value(run_dir: Path, metric: str, mode: str) -> float | None:
    """The best `metric` over the run's epochs (what the study is told), None when it logged none."""
    values = [
        row[metric] for row in writers.read_rows(run_dir / "metrics.jsonl") if isinstance(row.get(metric), int | float)
    ]
    values = [float(v) for v in values if math.isfinite(v)]
    return (max if mode == "max" else min)(values) if values else None


def command_line(config_argument: str, overrides: dict, workdir: Path) -> str:
    """The launch.py command that trains this trial again as an ordinary run."""
    command = sweep.child_command(config_argument, overrides, workdir)
    return shlex.join(["python", "launch.py", *command[2:]])


@dataclasses.dataclass
class _Search:
    """One search command: its study, record (sweep.json) and what it needs to start and tell trials."""

    optuna: object
    study: object
    record: sweep.SweepRecord
    workdir: Path
    config_argument: str
    base_overrides: dict
    space: dict
    trial_env: dict  # LABJAX_TRIAL's fields common to every trial
    metric: str
    mode: str
    trials: int
    failed_here: int = 0

    def member(self, trial_number: int, trial_id: int, values: dict) -> tuple[sweep.Member, dict]:
        name = trial_name(trial_number, values)
        env = {TRIAL_ENV: json.dumps({**self.trial_env, "trial_id": trial_id, "number": trial_number})}
        member = sweep.Member(name, dict(values), None, env)
        entry = {"name": name, "status": "pending", "error": None, "time_s": 0.0, "attempts": 0, "trial": trial_number}
        entry["overrides"] = dict(values)
        saved = {e["name"]: e for e in self.record.data["members"]}
        entry = saved.get(name) or entry
        if name not in saved:
            self.record.data["members"].append(entry)
        return member, entry

    def counted(self) -> int:
        """Trials that count towards --trials: finished, pruned, running (here or elsewhere), failed here."""
        states = self.optuna.trial.TrialState
        done = (states.COMPLETE, states.PRUNED, states.RUNNING, states.WAITING)
        return len(self.study.get_trials(deepcopy=False, states=done)) + self.failed_here

    def interrupted(self) -> list:
        """RUNNING trials of this folder whose search stopped (Ctrl-C, or its process is gone): resumed first."""
        resumed = []
        for trial in self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
            attrs = trial.user_attrs
            gone = attrs.get("host") == socket.gethostname() and not _alive(attrs.get("pid"))
            if attrs.get("status") == "interrupted" or gone:
                resumed.append(trial)
        return resumed

    def todo(self, resumed: list):
        """Members to run: the interrupted trials, then new ones asked of the sampler as slots free."""
        for frozen in resumed:
            trial = self.optuna.trial.Trial(self.study, trial_id(frozen))
            _claim(trial)
            yield self.member(frozen.number, trial_id(frozen), frozen.params)
        while self.counted() < self.trials:
            trial = self.study.ask()
            values = suggest(trial, self.space)
            _claim(trial)
            member, entry = self.member(trial.number, trial_id(trial), values)
            trial.set_user_attr("run_name", member.name)
            yield member, entry

    def on_end(self, member: sweep.Member, entry: dict) -> None:
        """Tells the study how the trial ended: its best metric, pruned, failed; an interrupted one stays open."""
        info = json.loads(member.env[TRIAL_ENV])
        number, trial = info["number"], self.optuna.trial.Trial(self.study, info["trial_id"])
        states, status = self.optuna.trial.TrialState, entry["status"]
        trial.set_user_attr("status", status)
        if status == "interrupted":
            return
        if status == "finished":
            value = best_value(self.workdir / member.name, self.metric, self.mode)
            if value is not None:
                self.study.tell(number, value)
                return
            entry["error"] = f"the run logged no {self.metric}"
        if status == "pruned":
            self.study.tell(number, state=states.PRUNED)
            return
        trial.set_user_attr("error", (entry.get("error") or status)[:2000])
        self.failed_here += 1
        self.study.tell(number, state=states.FAIL)


def trial_id(trial) -> int:
    """The storage's id of a trial (Optuna keeps it as `_trial_id`; a trial's process opens its Trial by it)."""
    return trial._trial_id


def _claim(trial) -> None:
    """This process runs the trial now (a later search resumes it if this one is gone)."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("status", "running")


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_search(config_argument, workdir, space_flags, base_overrides, trials, sampler, pruner, storage, overwrite):
    optuna = import_optuna()
    module, arg = sweep.load_config_module(config_argument)
    config = module.get_config(arg)
    config_lib.apply_overrides(config, base_overrides, source="--config")
    config_lib.validate(config, num_devices=1)
    space = search_space(module, arg, space_flags)
    check_space(config, space)
    if trials < 1:
        raise ConfigError(f"--trials={trials} is invalid: expected N >= 1.")
    parse_pruner(pruner)
    if overwrite:
        _remove_search(workdir)
    path = storage_file(workdir, storage)
    workdir.mkdir(parents=True, exist_ok=True)
    metric, mode = config.checkpoint.best_metric, config.checkpoint.best_mode
    study_storage = open_storage(optuna, storage, path)
    # Seeded by the trials so far: repeatable, and a continued study does not draw its first trials again.
    known = STUDY_NAME in optuna.get_all_study_names(study_storage)
    earlier = len(optuna.load_study(study_name=STUDY_NAME, storage=study_storage).trials) if known else 0
    seed = config.seed + earlier
    study = optuna.create_study(
        storage=study_storage,
        sampler=make_sampler(optuna, sampler, space, seed),
        pruner=make_pruner(optuna, pruner, config.num_epochs),
        study_name=STUDY_NAME,
        direction="maximize" if mode == "max" else "minimize",
        load_if_exists=True,
    )
    saved = study.user_attrs.get("config")
    if saved is not None and (saved, study.user_attrs.get("metric")) != (config_argument, metric):
        raise ConfigError(
            f"{workdir} holds a search of --config={saved} on {study.user_attrs.get('metric')}, not {config_argument} "
            f"on {metric}; use another --workdir, or --overwrite to start that search again."
        )
    for key, value in {"config": config_argument, "metric": metric, "mode": mode, "space": _space_text(space)}.items():
        study.set_user_attr(key, value)
    if sampler == "grid" and trials > grid_size(space):
        print(f"[search] --sampler=grid: {grid_size(space)} points in the grid, so {grid_size(space)} trials.")
        trials = grid_size(space)
    trial_env = {
        "storage": storage,
        "path": str(path.resolve()),
        "study": STUDY_NAME,
        "pruner": pruner,
        "epochs": config.num_epochs,
        "metric": metric,
    }
    record = sweep.SweepRecord(workdir, config_argument, base_overrides, space_flags, overwrite)
    return _Search(
        optuna, study, record, workdir, config_argument, base_overrides, space, trial_env, metric, mode, trials
    )


def _space_text(space: dict) -> dict:
    return {key: str(dist) for key, dist in space.items()}


def _remove_search(workdir: Path) -> None:
    """--overwrite: the study, its records and the trials' folders that sweep.json lists."""
    saved = json.loads((workdir / "sweep.json").read_text()) if (workdir / "sweep.json").is_file() else {}
    for entry in saved.get("members", []):
        shutil.rmtree(workdir / entry["name"], ignore_errors=True)
    for name in (*STORAGES.values(), "sweep.json", "search.json"):
        path = workdir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def run_search(
    config_argument: str,
    workdir: str | Path | None = None,
    space_flags=(),
    base_overrides: dict | None = None,
    *,
    trials: int,
    sampler: str = "tpe",
    pruner: str = "median",
    storage: str = "sqlite",
    parallel: int = 1,
    overwrite: bool = False,
    report: bool = True,
) -> dict:
    """Runs (or continues) the study to `trials` trials in workdir; returns search.json's content.

    Raises SweepInterrupted after Ctrl-C (running trials checkpointed, resumed next time) and
    SweepIncomplete when trials failed; search.json and the report are written first either way.
    """
    if parallel < 1:
        raise ConfigError(f"--parallel={parallel}: a search runs its trials as processes; expected N >= 1.")
    base_overrides = dict(base_overrides or {})
    workdir = Path(workdir) if workdir else default_workdir(config_argument)
    # SQLite's study is this machine's: one search process per folder. A journal study is shared on
    # purpose by the machines that add trials to it.
    lock = workdir_lib.FolderLock(workdir, "search") if storage == "sqlite" else contextlib.nullcontext()
    with lock:
        search = _open_search(
            config_argument, workdir, space_flags, base_overrides, trials, sampler, pruner, storage, overwrite
        )
        return _run_trials(search, config_argument, workdir, base_overrides, parallel, overwrite, report)


def _run_trials(search, config_argument, workdir, base_overrides, parallel, overwrite, report) -> dict:
    """run_search's trials, report and outcome."""
    resumed = search.interrupted()
    before = len(search.study.get_trials(deepcopy=False))
    print(
        f"[search] {search.trials} trials of {search.metric} ({search.mode}) into {workdir}: {before} in the study"
        + (f", {len(resumed)} to resume" if resumed else "")
        + (f", {parallel} at a time" if parallel > 1 else ""),
        flush=True,
    )
    search.record.save()
    completed = sweep.run_members(
        search.todo(resumed),
        search.record,
        workdir,
        config_argument,
        base_overrides,
        parallel,
        overwrite,
        on_end=search.on_end,
    )
    summary = write_summary(search)
    if report:
        sweep.write_report_of(workdir, "search")
    if not completed:
        raise SweepInterrupted(f"the search was stopped; run the same command to continue it ({workdir}).")
    failed = [t["name"] for t in summary["trials"] if t["state"] == "FAIL"]
    if search.failed_here:
        raise SweepIncomplete(f"{search.failed_here} trial(s) failed: {failed}; see {search.record.path}.")
    return summary


def importances(optuna, study) -> dict:
    """Optuna's parameter importances (fANOVA) over the finished trials; {} while they cannot be computed."""
    try:
        with warnings.catch_warnings():  # few trials: "importances will be equal", said in the report instead
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study)
        return {key: float(value) for key, value in values.items()}
    except (RuntimeError, ValueError, ZeroDivisionError) as error:
        print(f"[search] no parameter importances yet: {error}", flush=True)
        return {}


def write_summary(search: _Search) -> dict:
    """DIR/search.json: every trial (values, state, value, epochs), the best one and its command, importances."""
    optuna, study = search.optuna, search.study
    states = optuna.trial.TrialState
    rows = []
    for trial in study.get_trials(deepcopy=False):
        reported = sorted(trial.intermediate_values)
        rows.append(
            {
                "number": trial.number,
                "name": trial.user_attrs.get("run_name"),
                "state": trial.state.name,
                "status": trial.user_attrs.get("status"),
                "value": trial.value,
                "params": trial.params,
                "epochs": reported[-1] if reported else None,
                "duration_s": trial.duration.total_seconds() if trial.duration else None,
            }
        )
    complete = [t for t in study.get_trials(deepcopy=False, states=(states.COMPLETE,))]
    best = None
    if complete:
        trial = study.best_trial
        name = trial.user_attrs.get("run_name") or trial_name(trial.number, trial.params)
        overrides = {**search.base_overrides, **trial.params}
        best = {
            "number": trial.number,
            "name": name,
            "value": trial.value,
            "params": trial.params,
            "command": command_line(search.config_argument, overrides, search.workdir / name),
        }
    summary = {
        "config": search.config_argument,
        "overrides": search.base_overrides,
        "metric": search.metric,
        "mode": search.mode,
        "space": _space_text(search.space),
        "trials_wanted": search.trials,
        "trials": rows,
        "best": best,
        "importances": importances(optuna, study) if len(complete) >= 2 else {},
        "updated": time.time(),
    }
    path = search.workdir / "search.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    counts = {state: sum(t["state"] == state for t in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    line = ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
    print(f"[search] {line}" + (f"; best trial {best['name']}: {search.metric} {best['value']:.4g}" if best else ""))
    return summary
