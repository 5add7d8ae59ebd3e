"""Sweeps: expand a config's get_sweep and --sweep products into members, run them, resume them.

A member is (run name, overrides, config): a fresh get_config(arg) with the command line's
--config.KEY=VALUE and then the member's overrides applied and type-checked, so an unknown
key, a wrong type, an empty product or two members with one name fail before anything
trains. Each member trains into DIR/<run name>/, a normal workdir; DIR/sweep.json records
every member's status, so a second call skips finished members and resumes the others.

Members run as `launch.py` child processes (a crash or a kill is recorded and the sweep goes
on), N at a time with --parallel=N, each pinned to its share of the CPU cores (or its own
GPU when there are several); --parallel=0 runs them one after another in this process.
"""

import ast
import dataclasses
import importlib.util
import itertools
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

import ml_collections
from ml_collections.config_flags import config_path

from labjax import config as config_lib
from labjax import config_files
from labjax import workdir as workdir_lib
from labjax.errors import MissingFileError, SweepIncomplete, SweepInterrupted, UserError

STATUSES = ("pending", "running", "finished", "diverged", "pruned", "failed", "interrupted")
# A diverged member diverges again from the same start, a pruned trial (labjax/search.py) would be pruned
# again: neither is re-run.
DONE = ("finished", "diverged", "pruned")
LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"


@dataclasses.dataclass
class Member:
    """One run of a sweep: its folder name, the overrides that define it and its full config."""

    name: str
    overrides: dict
    config: ml_collections.ConfigDict
    env: dict = dataclasses.field(default_factory=dict)  # added to its process's environment (a search's trial)


def default_workdir(config_argument: str, sweep_flags=()) -> Path:
    """configs/seg_mobilenet.py:smoke -> runs/seg_mobilenet_smoke_sweep; a named sweep's name instead of `sweep`
    (`--sweep=dropout` -> runs/cifar100_transfer_dropout)."""
    base = workdir_lib.default_workdir(config_argument)
    names = [text for text in sweep_flags if "=" not in text]
    return base.with_name(base.name + "_" + ("+".join(names) if names else "sweep"))


def load_config_module(config_argument: str):
    """The module of `configs/NAME.py[:ARG]` and ARG (None when absent)."""
    path, _, arg = config_files.resolve(config_argument).partition(":")
    if not Path(path).is_file():
        raise MissingFileError(
            f"--config={config_argument}: no such config file {path!r}.{config_files.missing_hint()}"
        )
    spec = importlib.util.spec_from_file_location(f"labjax_sweep_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, arg or None


def parse_sweep_flag(text: str) -> tuple[str, list]:
    """`--sweep=KEY=V1,V2,...` (or `KEY=[v1, v2]`, a Python list for values holding commas) -> (KEY, values)."""
    key, equals, values = text.partition("=")
    key = key.strip().removeprefix("config.")
    if not equals or not key:
        raise config_lib.ConfigError(f"--sweep={text!r}: expected KEY=VALUE,VALUE,... e.g. optimizer.name=adam,sgd.")
    values = values.strip()
    if values.startswith("["):
        try:
            parsed = ast.literal_eval(values)
        except (SyntaxError, ValueError) as error:
            raise config_lib.ConfigError(f"--sweep={text!r}: {values!r} is not a list of values ({error}).") from None
    else:
        parsed = [value.strip() for value in values.split(",")] if values else []
    if not parsed:
        raise config_lib.ConfigError(f"--sweep={text!r}: no values for {key}, so the product of the sweep is empty.")
    return key, list(parsed)


def _format_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def default_name(overrides: dict) -> str:
    """`k=v` joined with commas, e.g. `optimizer.name=adam,optimizer.learning_rate=0.001` ('/' in values -> '_')."""
    name = ",".join(f"{key}={_format_value(value)}" for key, value in overrides.items())
    return name.replace("/", "_") or "default"


def template_name(template: str, overrides: dict, config: ml_collections.ConfigDict) -> str:
    """Formats RUN_NAME with dotted keys; a key absent from the member's overrides is dropped with its separator.

    The text before a key goes with it: `{optimizer.name}_{optimizer.learning_rate}_{optimizer.b1}`
    gives `sgd_0.01` for a member that sets only the name and the learning rate, and
    `lr{optimizer.learning_rate}-s{seed}` gives `s3` for one that sets only the seed. Values
    come from the member's config, so `0.010` on the command line and `1e-2` in get_sweep
    name the same run.
    """
    name, first, suffix, used = "", True, "", False
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            suffix = literal
            continue
        if field in overrides:
            value = config_path.get_value(field, config)
            if conversion:
                value = {"r": repr, "s": str, "a": ascii}[conversion](value)
            text = format(value, spec) if spec else _format_value(value)
            name += (literal if used or first else literal.lstrip("_-., ")) + text
            used = True
        first = False
    return name + suffix if used else default_name(overrides)


def _check_name(name, member: dict) -> None:
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or "/" in name or "\0" in name:
        raise config_lib.ConfigError(
            f"sweep member {member}: run name {name!r} cannot be a folder name (empty, '.', '..' or with '/')."
        )
    if len(name.encode()) > 200:
        raise config_lib.ConfigError(f"sweep member {member}: run name {name[:60]!r}... is over 200 bytes.")


def member_name(module, typed: dict, named_keys: set, config: ml_collections.ConfigDict) -> str:
    """The config's run_name(overrides) or RUN_NAME for its own keys, else `k=v`; --sweep keys on top as `,k=v`.

    A config names the members of its get_sweep; keys a --sweep product adds to them are
    appended, so `--sweep=seed=0,1` over S0 gives `sgd_0.01,seed=0` and `sgd_0.01,seed=1`.
    """
    named = {key: value for key, value in typed.items() if key in named_keys}
    extra = {key: value for key, value in typed.items() if key not in named_keys}
    if named and hasattr(module, "run_name"):
        name = module.run_name(named)
    elif named and hasattr(module, "RUN_NAME"):
        name = template_name(module.RUN_NAME, named, config)
    else:
        name = default_name(named) if named else ""
    return ",".join(part for part in (name, default_name(extra) if extra else "") if part) or "default"


def arg_overrides(get_config, arg: str | None, add=(), drop=()) -> dict:
    """The overrides that turn get_config(arg) into get_config(arg with `add`, without `drop`): a named sweep's
    member written as config arguments (`model=vgg16`, `kfold`) but run as --config.KEY=VALUE flags.

    `add` pieces replace the arg's pieces of the same key (`size=96` replaces `size=32`); `drop`
    removes names (the other models of a one-of choice).
    """
    pieces = [piece.strip() for piece in (arg or "").split(",") if piece.strip()]
    added_keys = {piece.partition("=")[0] for piece in add if "=" in piece}
    kept = [p for p in pieces if p not in drop and p not in add and p.partition("=")[0] not in added_keys]
    base = config_lib.flatten(config_lib.to_dict(get_config(arg)))
    other = config_lib.flatten(config_lib.to_dict(get_config(",".join([*kept, *add]) or None)))
    if set(other) - set(base):
        raise config_lib.ConfigError(f"{add}: adds config keys {sorted(set(other) - set(base))} an override cannot.")
    return {key: value for key, value in other.items() if key in base and base[key] != value}


def named_sweeps(module) -> dict:
    """The config's SWEEPS: study name -> function(arg) yielding members (dicts, or (run name, dict) pairs)."""
    return dict(getattr(module, "SWEEPS", {}))


def _config_members(module, arg, source: str, members) -> list[tuple[str | None, dict]]:
    members = list(members)
    if not members:
        raise config_lib.ConfigError(f"{module.__file__}: {source} yielded no members (an empty sweep).")
    pairs = []
    for member in members:
        name, overrides = member if isinstance(member, tuple) and len(member) == 2 else (None, member)
        if not isinstance(overrides, dict):
            raise config_lib.ConfigError(f"{module.__file__}: {source} yielded {member!r}; expected a dict.")
        pairs.append((name, overrides))
    return pairs


def _config_sweep(module, arg, names=()) -> list[tuple[str | None, dict]]:
    """(run name or None, overrides) of the config's get_sweep, or of its named sweeps one after another."""
    if names:
        sweeps = named_sweeps(module)
        unknown = [name for name in names if name not in sweeps]
        if unknown:
            known = ", ".join(sweeps) or "none"
            raise config_lib.ConfigError(
                f"--sweep={unknown[0]}: {module.__file__} has no named sweep {unknown[0]!r} (its SWEEPS: {known}); "
                "for a product of values, expected KEY=VALUE,VALUE,... e.g. optimizer.name=adam,sgd."
            )
        return [pair for name in names for pair in _config_members(module, arg, f"SWEEPS[{name!r}]", sweeps[name](arg))]
    if not hasattr(module, "get_sweep"):
        return [(None, {})]
    return _config_members(module, arg, f"get_sweep({arg!r})", module.get_sweep(arg))


def seed_axis(config, seeds: int) -> list[int]:
    """--seeds=K: the config's seed and the K-1 after it."""
    if seeds < 1:
        raise config_lib.ConfigError(f"--seeds={seeds} is invalid: expected K >= 1 (each member repeated K times).")
    return [config.seed + i for i in range(seeds)]


def expand(config_argument: str, sweep_flags=(), base_overrides: dict | None = None, seeds: int = 1) -> list[Member]:
    """Every member of the sweep, in order: the config's get_sweep (or the named sweeps that --sweep=NAME
    picks from its SWEEPS) times the product of the --sweep=KEY=V1,V2 flags, times --seeds.

    Each member's config is validated (model, optimizer, values) before it is returned; what
    needs the data or the devices is checked by the member's own run.
    """
    module, arg = load_config_module(config_argument)
    named = [text.strip() for text in sweep_flags if "=" not in text]
    axes = [parse_sweep_flag(text) for text in sweep_flags if "=" in text]
    if seeds != 1:
        if "seed" in [key for key, _ in axes]:
            raise config_lib.ConfigError("--seeds and --sweep=seed=... both set the seeds; give one of them.")
        axes.append(("seed", seed_axis(module.get_config(arg), seeds)))
    keys = [key for key, _ in axes]
    if len(set(keys)) < len(keys):
        raise config_lib.ConfigError(f"--sweep names a key twice: {keys}; give all its values in one flag.")
    own_sweep = bool(named) or hasattr(module, "get_sweep")
    if not own_sweep and not axes:
        raise config_lib.ConfigError(
            f"{config_argument}: nothing to sweep; the config defines no get_sweep() "
            "and no --sweep=KEY=V1,V2 (or --sweep=NAME of its SWEEPS, or --seeds=K) was given."
        )
    products = [dict(zip(keys, values)) for values in itertools.product(*[values for _, values in axes])]
    members, names = [], {}
    for (given, own), product in itertools.product(_config_sweep(module, arg, named), products):
        if seeds != 1 and "seed" in own:
            raise config_lib.ConfigError(f"--seeds: sweep member {own} sets the seed itself; drop --seeds.")
        overrides = {**own, **product}
        config = module.get_config(arg)
        config_lib.apply_overrides(config, dict(base_overrides or {}), source="--config")
        config_lib.apply_overrides(config, overrides, source=f"sweep member {overrides}")
        typed = {key: config_path.get_value(key, config) for key in overrides}
        if given is not None:  # a named sweep's member names itself; --sweep keys are added as `,k=v`
            extra = {key: value for key, value in typed.items() if key not in own}
            name = ",".join([given, *([default_name(extra)] if extra else [])])
        else:
            name = member_name(module, typed, set(own) if own_sweep else set(typed), config)
        _check_name(name, overrides)
        if name in names:
            raise config_lib.ConfigError(
                f"two sweep members are both named {name!r}: {names[name]} and {typed}; "
                "give them distinct run names (RUN_NAME or run_name in the config)."
            )
        try:
            config_lib.validate(config, num_devices=1)  # the device count is the member's to check
        except config_lib.ConfigError as error:
            raise config_lib.ConfigError(f"sweep member {name!r}: {error}") from None
        config.lock()
        names[name] = typed
        members.append(Member(name, typed, config))
    return members


def _cli_value(value) -> str:
    return _format_value(value) if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)


def child_command(config_argument: str, overrides: dict, workdir: Path, overwrite: bool = False) -> list[str]:
    """The launch.py command that trains one member (its --config.KEY=VALUE flags round-trip exactly)."""
    flags = [f"--config.{key}={_cli_value(value)}" for key, value in overrides.items()]
    launcher = [str(LAUNCH)] if LAUNCH.is_file() else ["-m", "labjax"]  # a clone's launch.py, or installed
    return [
        sys.executable,
        *launcher,
        f"--config={config_argument}",
        *flags,
        f"--workdir={workdir}",
        *(["--overwrite"] if overwrite else []),
    ]


def visible_gpus() -> list[str]:
    """GPU ids the children may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [gpu.strip() for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=60
    )
    return result.stdout.split() if result.returncode == 0 else []


def child_resources(slot: int, parallel: int, cpus: list[int], gpus: list[str]) -> tuple[list[int], dict]:
    """The CPU cores and environment of the child in `slot` of `parallel` concurrent ones.

    Cores are split evenly (XLA's and TensorFlow's thread pools size themselves to the cores
    a process may run on); with several GPUs each child sees one, and children sharing a GPU
    share its memory instead of each pre-allocating most of it.
    """
    if parallel <= 1:
        return cpus, {}
    share = max(1, len(cpus) // parallel)
    start = (slot * share) % len(cpus)
    cores = cpus[start : start + share]
    threads = str(len(cores))
    env = {"OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1"}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        sharing = -(-parallel // len(gpus))
        if sharing > 1:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.2f}"
    return cores, env


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _error_line(lines) -> str | None:
    """The 'error: ...' line launch.py prints for a user error, divergence or interruption."""
    found = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return found[-1] if found else None


def outcome(returncode: int, lines) -> tuple[str, str | None]:
    """A member's status and error from its exit status and last lines of output."""
    lines = list(lines)
    if returncode == 0:
        return "finished", None
    if returncode == workdir_lib.EXIT_DIVERGED:
        return "diverged", _error_line(lines) or "diverged"
    if returncode == workdir_lib.EXIT_PRUNED:
        return "pruned", None
    if returncode in (workdir_lib.EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
        return "interrupted", _error_line(lines) or "interrupted"
    tail = "\n".join(lines[-15:])
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
        return "failed", f"killed by {name}{hint}\n{tail}".strip()
    return "failed", _error_line(lines) or f"exit status {returncode}\n{tail}".strip()


class SweepRecord:
    """DIR/sweep.json: the members, their overrides, status, error and times; written atomically."""

    def __init__(self, workdir: Path, config_argument: str, base_overrides: dict, sweep_flags, overwrite: bool):
        self.path = workdir / "sweep.json"
        saved = json.loads(self.path.read_text()) if self.path.exists() and not overwrite else {}
        if saved and saved.get("config") != config_argument:
            raise config_lib.ConfigError(
                f"{workdir} holds a sweep of --config={saved.get('config')}, not {config_argument}; "
                "use another --workdir, or --overwrite to start that sweep again."
            )
        self.data = {
            "config": config_argument,
            "overrides": base_overrides,
            "sweep": list(sweep_flags),
            "members": saved.get("members", []),
        }
        self.workdir = workdir

    def entries(self, members: list[Member]) -> list[dict]:
        """One entry per member, saved state kept; entries of members no longer in the sweep stay at the end."""
        saved = {entry["name"]: entry for entry in self.data["members"]}
        entries = []
        for member in members:
            entry = saved.pop(member.name, None) or {"name": member.name, "status": "pending", "error": None}
            entry.setdefault("time_s", 0.0)
            entry.setdefault("attempts", 0)
            entry["overrides"] = member.overrides
            entries.append(entry)
        self.data["members"] = entries + list(saved.values())
        return entries

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data["updated"] = time.time()
        from labjax import checkpoints as ckpt  # Orbax loads only here, after the members are known

        ckpt.write_json(self.path, self.data)


def _is_done(entry: dict, member: Member, workdir: Path) -> bool:
    """Finished (or diverged) with the same config: skipped. A raised num_epochs makes a finished run go on."""
    saved = workdir / member.name / "config.json"
    if entry["status"] not in DONE or not saved.exists():
        return False
    current = config_lib.flatten(config_lib.to_dict(member.config))
    return config_lib.flatten(json.loads(saved.read_text())) == current


class _Signals:
    """Counts SIGINT/SIGTERM while the sweep runs: the first stops it cleanly, the second kills the children."""

    def __init__(self):
        self.count, self.previous = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        print(
            f"\n[sweep] {signal.Signals(signum).name}: "
            + ("stopping the running members (they save a checkpoint)..." if self.count == 1 else "killing them."),
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Child:
    """A member's launch.py process; a thread copies its output to DIR/<name>/sweep.log and keeps the tail."""

    def __init__(self, entry: dict, command: list[str], log_path: Path, cores, env: dict, echo: bool, overwrite):
        self.entry, self.tail, self.started = entry, deque(maxlen=40), time.time()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = log_path.open("w" if overwrite else "a")
        everything = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cores)  # the child inherits this thread's cores
        try:
            # Its own session: a terminal's Ctrl-C reaches only the sweep, which forwards exactly one SIGINT.
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **env},
                start_new_session=True,
            )
        finally:
            os.sched_setaffinity(0, everything)
        self.thread = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self.thread.start()

    def _pump(self, echo: bool) -> None:
        for line in self.process.stdout:
            self.log.write(line)
            self.log.flush()
            self.tail.append(line.rstrip("\n"))
            if echo:
                print(line, end="", flush=True)

    def finish(self) -> tuple[str, str | None]:
        self.thread.join()
        self.log.close()
        return outcome(self.process.returncode, self.tail)


def _record(record: SweepRecord, entry: dict, status: str, error: str | None, started: float) -> None:
    entry.pop("pid", None)
    entry.update(status=status, error=error, ended=time.time())
    entry["time_s"] = entry.get("time_s", 0.0) + time.time() - started
    record.save()
    note = f": {error.splitlines()[0]}" if error else ""
    print(f"[sweep] {entry['name']}: {status} after {_format_seconds(time.time() - started)}{note}", flush=True)


def _run_processes(todo, record, workdir, config_argument, base_overrides, parallel, overwrite, on_end=None) -> bool:
    """Runs members as launch.py children, `parallel` at a time; False when a signal stopped the sweep.

    `todo` yields (member, entry) pairs, drawn one by one as slots free (a search asks its sampler
    for a trial then); `on_end(member, entry)` runs after a member's end is recorded.
    """
    cpus, gpus = sorted(os.sched_getaffinity(0)), (visible_gpus() if parallel > 1 else [])
    pending, running, stopped_at, exhausted = iter(todo), {}, 0, False
    with _Signals() as signals:
        try:
            while (not exhausted and not signals.count) or running:
                if signals.count > stopped_at:  # forward once per Ctrl-C: first SIGINT (checkpoint), then SIGKILL
                    stopped_at = signals.count
                    for child in running.values():
                        child.process.send_signal(signal.SIGINT if signals.count == 1 else signal.SIGKILL)
                free = [slot for slot in range(max(parallel, 1)) if slot not in running]
                while not exhausted and free and not signals.count:
                    item = next(pending, None)
                    if item is None:
                        exhausted = True
                        break
                    member, entry = item
                    slot = free.pop(0)
                    cores, env = child_resources(slot, parallel, cpus, gpus)
                    overrides = {**base_overrides, **member.overrides}
                    command = child_command(config_argument, overrides, workdir / member.name, overwrite)
                    log = workdir / member.name / "sweep.log"
                    print(f"[sweep] {member.name}: started (log {log})", flush=True)
                    env = {**env, **member.env}
                    running[slot] = _Child(entry, command, log, cores, env, echo=parallel <= 1, overwrite=overwrite)
                    running[slot].member = member
                    entry.update(status="running", error=None, started=time.time(), attempts=entry["attempts"] + 1)
                    entry["pid"] = running[slot].process.pid  # which process trains it, while it runs
                    record.save()
                for slot, child in list(running.items()):
                    if child.process.poll() is not None:
                        del running[slot]
                        status, error = child.finish()
                        if signals.count and status == "failed":  # stopped by us before its own handler was set
                            status = "interrupted"
                        _record(record, child.entry, status, error, child.started)
                        if on_end is not None:
                            on_end(child.member, child.entry)
                time.sleep(0.1)
        finally:  # the sweep itself failed: its children are in their own sessions and would run on
            for child in running.values():
                child.process.send_signal(signal.SIGINT)
            for child in running.values():
                try:
                    child.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.process.kill()
    return signals.count == 0


def run_members(todo, record, workdir, config_argument, base_overrides, parallel, overwrite=False, on_end=None) -> bool:
    """The local launcher for other drivers (labjax/search.py): members as launch.py children, `parallel` at a time.

    `todo` yields (member, entry) as slots free; entries live in `record` (sweep.json); `on_end(member,
    entry)` follows each end. False when a signal stopped it.
    """
    return _run_processes(todo, record, workdir, config_argument, base_overrides, parallel, overwrite, on_end)


def _run_in_process(todo, record, workdir, overwrite) -> bool:
    """Runs members one after another in this process (no start-up per member; a hard crash ends the sweep)."""
    from labjax import train

    for member, entry in todo:
        started = time.time()
        entry.update(status="running", error=None, started=started, attempts=entry["attempts"] + 1)
        record.save()
        print(f"[sweep] {member.name}: started", flush=True)
        try:
            train.train_and_evaluate(member.config, workdir / member.name, overwrite=overwrite)
            _record(record, entry, "finished", None, started)
        except train.TrainingDiverged as error:
            _record(record, entry, "diverged", str(error), started)
        except (train.TrainingInterrupted, KeyboardInterrupt) as error:
            _record(record, entry, "interrupted", str(error) or "KeyboardInterrupt", started)
            return False
        except Exception as error:  # noqa: BLE001 - a crashing member is recorded and the sweep goes on
            tail = "".join(traceback.format_exc().splitlines(keepends=True)[-15:])
            message = str(error) if isinstance(error, UserError) else tail
            _record(record, entry, "failed", message.strip(), started)
    return True


def _run_vectorized(todo, record, workdir) -> tuple[bool, list]:
    """Trains the groups of two or more members vectorized; returns (not interrupted, members left to run).

    A vectorized group trains from scratch, so an interrupted one restarts its unfinished members.
    """
    from labjax import vectorize

    entries = {member.name: entry for member, entry in todo}
    groups = vectorize.group_members([member for member, _ in todo])
    together = [group for group in groups if len(group) > 1]
    if not together:
        reason = vectorize.why_not_vectorized([member for member, _ in todo])
        print(f"[sweep] --vectorize: nothing to vectorize ({reason}); running the members one by one.", flush=True)
        return True, todo
    print(
        f"[sweep] --vectorize: {len(together)} group(s) of {[len(g) for g in together]} members in one program each"
        + (f", {sum(len(g) == 1 for g in groups)} alone" if len(together) < len(groups) else ""),
        flush=True,
    )
    starts = {}

    def on_start(member):
        starts[member.name] = time.time()
        entry = entries[member.name]
        entry.update(status="running", error=None, started=starts[member.name], attempts=entry["attempts"] + 1)
        record.save()

    def on_end(member, status, error):
        _record(record, entries[member.name], status, error, starts[member.name])

    completed = vectorize.run_groups(together, workdir, on_start, on_end)
    alone = {group[0].name for group in groups if len(group) == 1}
    return completed, [(member, entry) for member, entry in todo if member.name in alone]


def write_report_of(workdir: Path, kind: str) -> None:
    """The report of a sweep's or a search's folder; a failing report is said, the results stand without it."""
    from labjax import report as report_lib

    try:
        report_lib.write_report(workdir)
    except Exception as error:  # noqa: BLE001 - the members' results are written; the report is their summary
        print(f"[{kind}] the report failed: {type(error).__name__}: {error}", flush=True)


def run_sweep(
    config_argument: str,
    workdir: str | Path | None = None,
    sweep_flags=(),
    base_overrides: dict | None = None,
    *,
    parallel: int = 1,
    overwrite: bool = False,
    report: bool = True,
    vectorize: bool = False,
    launcher=None,
    seeds: int = 1,
) -> dict:
    """Runs (or resumes) every member of the sweep into workdir/<run name>/; returns sweep.json's content.

    Finished and diverged members with an unchanged config are skipped; interrupted, failed
    and pending ones run (resuming from their checkpoints). At the end the report is written.
    Raises SweepInterrupted after Ctrl-C (running members checkpointed) and SweepIncomplete
    when members failed; sweep.json is saved first either way. With `vectorize`, members that
    share a program structure train together in this process (labjax/vectorize.py); the rest
    run as without it. `launcher` runs the members elsewhere instead of as local processes
    (labjax/slurm.py's Launcher: a SLURM job array); it returns None when it detached.
    """
    if parallel < 0:
        raise config_lib.ConfigError(f"--parallel={parallel} is invalid: expected 0 (in this process) or N >= 1.")
    base_overrides = dict(base_overrides or {})
    members = expand(config_argument, sweep_flags, base_overrides, seeds)
    workdir = Path(workdir) if workdir else default_workdir(config_argument, sweep_flags)
    with workdir_lib.FolderLock(workdir, "sweep"):  # one sweep process per folder
        return _run_locked(
            config_argument,
            workdir,
            members,
            sweep_flags,
            base_overrides,
            parallel=parallel,
            overwrite=overwrite,
            report=report,
            vectorize=vectorize,
            launcher=launcher,
        )


def _still_training(entry: dict, member_dir: Path) -> bool:
    """Whether a process an earlier sweep started still trains this member: it holds the member's lock,
    or the pid sweep.json recorded is alive and runs this member's command (it may not have locked yet)."""
    if workdir_lib.holder_alive(member_dir):
        return True
    pid = entry.get("pid")
    if entry.get("status") != "running" or not pid:
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone (or no /proc: then the lock above is the only sign)
        return False
    return f"--workdir={member_dir}".encode() in command


def _run_locked(
    config_argument, workdir, members, sweep_flags, base_overrides, *, parallel, overwrite, report, vectorize, launcher
):
    """run_sweep's work, with the sweep folder locked."""
    record = SweepRecord(workdir, config_argument, base_overrides, sweep_flags, overwrite)
    entries = record.entries(members)
    todo = [(m, e) for m, e in zip(members, entries) if overwrite or not _is_done(e, m, workdir)]
    for member, entry in todo:
        if launcher is not None:  # on a cluster the scheduler knows which members still run (labjax/slurm.py)
            continue
        if _still_training(entry, workdir / member.name):
            raise config_lib.ConfigError(
                f"{workdir / member.name} is still being trained by a process an earlier sweep started; wait for "
                "it to end (or stop it), then run the same command to resume the sweep."
            )
        if entry["status"] == "running":  # a sweep that was killed, and its member's process is gone: it resumes
            entry["status"] = "interrupted"
    record.save()
    skipped = len(members) - len(todo)
    print(
        f"[sweep] {len(members)} members into {workdir}"
        + (f" ({skipped} already done, skipped)" if skipped else "")
        + (f", {parallel} at a time" if parallel > 1 and launcher is None else ""),
        flush=True,
    )
    completed, alone = _run_vectorized(todo, record, workdir) if vectorize else (True, todo)
    if completed and parallel == 0:
        completed = _run_in_process(alone, record, workdir, overwrite)
    elif completed and launcher is not None:
        completed = launcher(alone, record, workdir, config_argument, base_overrides, overwrite)
    elif completed:
        completed = _run_processes(alone, record, workdir, config_argument, base_overrides, parallel, overwrite)
    counts = {status: sum(e["status"] == status for e in entries) for status in STATUSES}
    print("[sweep] " + ", ".join(f"{n} {status}" for status, n in counts.items() if n), flush=True)
    if completed is None:  # detached: the members run on; the same command attaches
        return record.data
    if report:
        write_report_of(workdir, "sweep")
    if not completed:
        raise SweepInterrupted(f"the sweep was stopped; run the same command to resume it ({record.path}).")
    failed = [e["name"] for e in entries if e["status"] in ("failed", "interrupted")]
    if failed:
        raise SweepIncomplete(f"{len(failed)} of {len(entries)} members did not finish: {failed}; see {record.path}.")
    return record.data
