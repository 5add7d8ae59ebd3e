"""Run-folder conventions: what a run writes, its status.json, whether it may start, and exit codes.

A workdir holds one run: config.json (what it is), status.json (where it stands), metrics.jsonl,
checkpoints/, tensorboard/, plots/, and what eval and predict add. `cli` and `sweep` both read
these conventions here, so neither imports the other for them.
"""

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import jax

from labjax import config as config_lib
from labjax import parallel
from labjax.errors import ConfigError

# What `--overwrite` deletes: the files and folders a run writes, nothing else.
OWN_FILES = (
    "checkpoints",
    "tensorboard",
    "plots",
    "eval",
    "predict",
    "data",
    "metrics.jsonl",
    "parameters.txt",
    "status.json",
    "config.json",
)
MARKER = ".labjax-run"  # written into every folder a run claims: --overwrite deletes only in such folders
LOCK = ".lock"  # held (fcntl) by the process training in the folder, or running the sweep
# launch.py's exit statuses, which scripts and sweeps tell apart.
EXIT_FAILED_MEMBERS, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130
EXIT_PRUNED = 4  # a search's pruner stopped the trial (labjax/search.py)


def default_workdir(config_argument: str) -> Path:
    """configs/seg_mobilenet.py:quick -> runs/seg_mobilenet_quick."""
    path, _, arg = config_argument.partition(":")
    name = Path(path).stem + (f"_{arg}" if arg else "")
    return Path("runs") / re.sub(r"[^\w.=-]+", "_", name)


def write_status(workdir: Path, status: str, **fields) -> None:
    """status.json (process 0 only): 'running', 'finished', 'interrupted', 'diverged', 'pruned', 'failed',
    with facts and where()."""
    from labjax import checkpoints as ckpt  # Orbax loads only where a run writes

    if jax.process_index() == 0:
        ckpt.write_json(Path(workdir) / "status.json", {"status": status, "time": time.time(), **where(), **fields})


def where() -> dict:
    """Where this process runs: its host; under SLURM its job (ARRAY_TASK for an array task) and restarts."""
    env, fields = os.environ, {"host": socket.gethostname()}
    if env.get("SLURM_JOB_ID"):
        array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        fields["slurm_job_id"] = f"{array}_{task}" if array and task else env["SLURM_JOB_ID"]
        if task:
            fields["slurm_array_task_id"] = int(task)
        fields["slurm_restart_count"] = int(env.get("SLURM_RESTART_COUNT") or 0)
    return fields


def read_status(workdir: Path) -> dict:
    """The run's status.json, or {} when it has none."""
    path = Path(workdir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def final_summary(workdir: Path) -> dict:
    """The finished run's validation summary (status.json's `final`, without the 'val_' prefixes)."""
    status = read_status(workdir)
    return {k.removeprefix("val_"): v for k, v in status.get("final", {}).items()}


def check_workdir(config, workdir: Path, overwrite: bool) -> bool:
    """Whether the workdir holds checkpoints to resume; refuses a different run in it (lists differing keys).

    Reads only: nothing is written or deleted until the run is known to start (claim_workdir).
    """
    if overwrite:
        check_overwritable(workdir)
        return False
    saved_path = workdir / "config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else _config_in_checkpoints(workdir)
    if saved is not None:
        differing = config_lib.differing_keys(saved, config_lib.to_dict(config))
        if differing:
            raise ConfigError(
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
    from labjax import checkpoints as ckpt

    if jax.process_index() == 0:
        if overwrite:
            for name in OWN_FILES:
                path = workdir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / MARKER).write_text("A labjax run folder: --overwrite deletes the run's files here.\n")
        ckpt.write_json(workdir / "config.json", config_lib.to_dict(config))
    parallel.sync("claim_workdir")


def _config_in_checkpoints(workdir: Path) -> dict | None:
    """The config saved with the latest checkpoint, for a workdir whose config.json is gone."""
    from labjax import checkpoints as ckpt

    if not (workdir / "checkpoints").is_dir():
        return None
    checkpoints = ckpt.Checkpoints(workdir, read_only=True)
    step = checkpoints.latest_step()
    config = None if step is None else checkpoints.metadata(step)["config"]
    checkpoints.close()
    return config


def is_run_folder(folder: Path) -> bool:
    """A folder a labjax run claimed (its marker; runs from before the marker have config.json and status.json)."""
    folder = Path(folder)
    return (folder / MARKER).exists() or ((folder / "config.json").is_file() and (folder / "status.json").is_file())


def check_overwritable(workdir: Path) -> None:
    """--overwrite deletes a run's own files; a folder no run claimed (a project root, data) is refused."""
    workdir = Path(workdir)
    if not workdir.is_dir() or is_run_folder(workdir):
        return
    if any(p.name not in (LOCK, MARKER) for p in workdir.iterdir()):
        raise ConfigError(
            f"--overwrite: {workdir} is not a labjax run folder (no {MARKER} file), so nothing in it is deleted; "
            "give --workdir a run's folder, or a new one."
        )


class FolderLock:
    """An exclusive lock on FOLDER/.lock for as long as it is held: one labjax process per run or sweep folder.

    fcntl's lock belongs to the open file, so the kernel releases it when the process ends, however
    it ends (kill -9 included): a stale lock file never blocks anyone. The file names the holder's pid.
    """

    def __init__(self, folder: Path, what: str = "run"):
        self.folder, self.what, self.file = Path(folder), what, None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        file = open(self.folder / LOCK, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise ConfigError(
                f"{self.folder} is in use by another labjax process (pid {holder}) training or sweeping there; "
                f"wait for it to end (or stop it), or use another --workdir."
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder_alive(folder: Path) -> bool:
    """Whether a live process holds FOLDER's lock (a run training there now)."""
    if not (Path(folder) / LOCK).exists():
        return False
    try:
        FolderLock(folder).acquire().release()
    except ConfigError:
        return True
    return False
