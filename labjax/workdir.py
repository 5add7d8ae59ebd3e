"""Run-folder conventions: what a run writes, its status.json, whether it may start, and exit codes.

A workdir holds one run: config.json (what it is), status.json (where it stands), metrics.jsonl,
checkpoints/, tensorboard/, plots/, and what eval and predict add. `cli` and `sweep` both read
these conventions here, so neither imports the other for them.
"""

import json
import re
import shutil
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
# launch.py's exit statuses, which scripts and sweeps tell apart.
EXIT_FAILED_MEMBERS, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130


def default_workdir(config_argument: str) -> Path:
    """configs/seg_mobilenet.py:quick -> runs/seg_mobilenet_quick."""
    path, _, arg = config_argument.partition(":")
    name = Path(path).stem + (f"_{arg}" if arg else "")
    return Path("runs") / re.sub(r"[^\w.=-]+", "_", name)


def write_status(workdir: Path, status: str, **fields) -> None:
    """status.json (process 0 only): 'running', 'finished', 'interrupted', 'diverged', with facts."""
    from labjax import checkpoints as ckpt  # Orbax loads only where a run writes

    if jax.process_index() == 0:
        ckpt.write_json(Path(workdir) / "status.json", {"status": status, "time": time.time(), **fields})


def read_status(workdir: Path) -> dict:
    """The run's status.json, or {} when it has none."""
    path = Path(workdir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def final_summary(workdir: Path, mark_finished: bool = False) -> dict:
    """The finished run's validation summary; `mark_finished` repairs a status left 'interrupted'
    by a stop that came after the last checkpoint was written."""
    status = read_status(workdir)
    if mark_finished and status.get("status") != "finished":
        write_status(workdir, "finished", **{k: v for k, v in status.items() if k not in ("status", "time")})
    return {k.removeprefix("val_"): v for k, v in status.get("final", {}).items()}


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
