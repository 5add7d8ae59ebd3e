"""What produced a run: labjax's version and git commit, the package versions, the devices, the command line.

RunRecord writes `collect()` into status.json under "provenance" (every status it writes),
so a result can be traced to its code and environment from its folder alone; the report
shows it. Cheap: package versions come from their installed metadata (importlib.metadata),
not from importing them, and the git commit from one `git` call, only when labjax runs from
a clone (git absent, or labjax installed into site-packages: no "git" entry).
"""

import functools
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

from labjax.version import __version__

# Distribution names as pip knows them; the first installed one of each tuple is recorded.
PACKAGES = {
    "jax": ("jax",),
    "jaxlib": ("jaxlib",),
    "flax": ("flax",),
    "optax": ("optax",),
    "orbax-checkpoint": ("orbax-checkpoint",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
    "numpy": ("numpy",),
}
PACKAGE_ROOT = Path(__file__).resolve().parent


def package_versions() -> dict[str, str | None]:
    """{name: installed version, or None when not installed}."""
    versions = {}
    for name, distributions in PACKAGES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout.strip()


def git_state() -> dict | None:
    """{"commit", "dirty"} of the clone labjax runs from; None without git or outside a clone of labjax.

    Dirty means tracked files differ from the commit (untracked files, such as runs/, do not count).
    """
    try:
        top = Path(_git("rev-parse", "--show-toplevel")).resolve()
        if top / "labjax" != PACKAGE_ROOT:  # labjax installed inside some other repository
            return None
        return {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def devices() -> dict:
    import jax  # already started by the run that asks

    found = jax.devices()
    return {
        "platform": found[0].platform,
        "count": len(found),
        "kind": found[0].device_kind,
        "processes": jax.process_count(),
    }


@functools.lru_cache(maxsize=1)
def collect() -> dict:
    """The process's provenance (computed once: a vectorized group's members share it)."""
    facts = {"labjax": __version__}
    git = git_state()
    if git:
        facts["git"] = git
    facts.update(
        packages=package_versions(),
        devices=devices(),
        python=platform.python_version(),
        command=list(sys.argv),
    )
    return facts
