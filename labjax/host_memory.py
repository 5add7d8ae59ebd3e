"""Huge pages for XLA:CPU's step buffers: launch.py restarts itself once with glibc set to use them.

XLA:CPU allocates one block for all of a step's temporaries at every step (S2's small CNN at batch
256: 110 MB; W0's U-Net: 1.7 GB) and frees it when the step ends. glibc serves a block that big
with mmap and unmaps it on free, so at every step the kernel faults the whole block in again, 4 KiB
at a time: 28,000 page faults in each 120 ms step of S2's CNN on a 2-core VM, about a quarter of
the step. glibc's tunable `glibc.malloc.hugetlb=1` (glibc 2.35+) makes malloc ask for transparent
huge pages, where the kernel offers them on request ("madvise" mode, the common default), and the
same block then takes 2 MiB faults: 540 a step. Measured on 2 cores (benchmarks/README.md): S2's
CNN at batch 256 trains 1.5x faster, DenseNet121's full fine-tune at 96 px 1.24x, the MobileNetV2
U-Net 1.08x. Tunables are read when a process starts, hence the restart; `GLIBC_TUNABLES` already
naming the tunable (`glibc.malloc.hugetlb=0` to opt out) is left as it is.
"""

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with the tunable


def _glibc_version() -> tuple[int, ...] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):  # not glibc (musl, macOS, Windows)
        return None


def _transparent_huge_pages() -> str | None:
    """The kernel's transparent huge page mode: always, madvise or never (None: no such setting)."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_pages_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """`environ` with glibc's huge-page tunable added, or None where a restart would change nothing:
    the tunable is set already, the C library is not glibc 2.35+, or the kernel's transparent huge
    pages are not in "madvise" mode ("always" gives them without asking, "never" not at all)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or not sys.platform.startswith("linux"):
        return None
    version = _glibc_version()
    if version is None or version < MIN_GLIBC or _transparent_huge_pages() != "madvise":
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def restart_with_huge_pages() -> None:
    """Replaces this process by the same command with the tunable set, where it would help; the
    interpreter's own options and the arguments are kept (sys.orig_argv). Call before any work."""
    environment = huge_pages_environment(os.environ)
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError:  # cannot re-run the interpreter (unusual sandboxes): go on without huge pages
        return
