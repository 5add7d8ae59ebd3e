"""launch.py's restart with glibc's huge-page tunable (labjax/host_memory.py): when it happens, what
it keeps, and that it does what it is for: XLA:CPU's per-call buffers stop faulting in 4 KiB pages."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from labjax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPLIES = host_memory.huge_pages_environment(os.environ) is not None
NOT_HERE = "glibc 2.35+ with transparent huge pages in 'madvise' mode is what the restart is for; this machine lacks it"


@pytest.fixture
def linux_with_madvise(monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(host_memory, "_transparent_huge_pages", lambda: "madvise")


def test_the_tunable_is_added_to_a_copy_of_the_environment(linux_with_madvise):
    environ = {"PATH": "/bin"}
    assert host_memory.huge_pages_environment(environ) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert environ == {"PATH": "/bin"}
    others = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert host_memory.huge_pages_environment(others)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )


@pytest.mark.parametrize(
    "environ, glibc, mode, platform",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", "linux"),  # the user's opt-out, or set by us
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, (2, 36), "madvise", "linux"),  # the restarted process
        ({}, (2, 34), "madvise", "linux"),  # glibc without the tunable
        ({}, None, "madvise", "linux"),  # another C library
        ({}, (2, 36), "always", "linux"),  # the kernel gives huge pages unasked
        ({}, (2, 36), "never", "linux"),
        ({}, (2, 36), None, "linux"),  # no transparent huge pages at all
        ({}, (2, 36), "madvise", "darwin"),
    ],
)
def test_no_restart_where_it_would_change_nothing(monkeypatch, environ, glibc, mode, platform):
    monkeypatch.setattr(host_memory.sys, "platform", platform)
    monkeypatch.setattr(host_memory, "_glibc_version", lambda: glibc)
    monkeypatch.setattr(host_memory, "_transparent_huge_pages", lambda: mode)
    assert host_memory.huge_pages_environment(environ) is None


def test_the_kernel_setting_is_read_from_its_file(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_memory, "THP_SETTING", str(setting))
    assert host_memory._transparent_huge_pages() == "madvise"
    setting.write_text("[always] madvise never\n")
    assert host_memory._transparent_huge_pages() == "always"
    monkeypatch.setattr(host_memory, "THP_SETTING", str(tmp_path / "missing"))
    assert host_memory._transparent_huge_pages() is None


def test_this_machines_glibc_version_is_read():
    library, version = platform.libc_ver()  # the standard library's own reading, from the binary
    expected = tuple(int(part) for part in version.split(".")[:2]) if library == "glibc" else None
    assert host_memory._glibc_version() == expected


SCRIPT = textwrap.dedent(
    """
    import os, sys
    print("pid", os.getpid(), "tunables", os.environ.get("GLIBC_TUNABLES"), "argv", sys.argv[1:],
          "utf8", sys.flags.utf8_mode, flush=True)
    from labjax import host_memory
    host_memory.restart_with_huge_pages()
    print("ran", flush=True)
    """
)


def test_the_restart_keeps_pid_arguments_and_interpreter_options(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environ["PYTHONPATH"] = ROOT
    done = subprocess.run(
        [sys.executable, "-X", "utf8", str(script), "a", "--b=c"], capture_output=True, text=True, env=environ
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "ran" and lines.count("ran") == 1
    starts = [line.split() for line in lines if line.startswith("pid")]
    restarted = host_memory.huge_pages_environment(environ) is not None
    assert len(starts) == (2 if restarted else 1)
    assert {s[1] for s in starts} == {starts[0][1]}  # one process: exec keeps the pid (signals still reach it)
    for start in starts:
        assert start[4:] == ["argv", "['a',", "'--b=c']", "utf8", "1"]
    assert starts[-1][3] == ("glibc.malloc.hugetlb=1" if restarted else "None")


@pytest.mark.slow
def test_launch_py_restarts_before_its_imports(tmp_path):
    # sitecustomize runs at every interpreter start: once, or twice when launch.py restarts itself.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nprint('start', os.environ.get('GLIBC_TUNABLES'), file=sys.stderr, flush=True)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ROOT])
    done = subprocess.run(
        [sys.executable, "launch.py", "--mode=report", f"--workdir={tmp_path / 'missing'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environ,
    )
    starts = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("start ")]
    assert starts == (["None", "glibc.malloc.hugetlb=1"] if APPLIES else ["None"]), done.stderr
    assert done.returncode != 0 and "missing" in done.stderr  # the restarted launch.py did the work


FAULTS = textwrap.dedent(
    """
    import resource, jax, jax.numpy as jnp
    x, w = jnp.ones((4096, 2048), jnp.float32), jnp.ones((4096, 8), jnp.float32)
    f = jax.jit(lambda x, w: jnp.dot(jnp.concatenate([x, 2 * x], axis=1), w))  # a 64 MB temporary
    for _ in range(2):
        f(x, w).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        f(x, w).block_until_ready()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
def test_huge_pages_stop_the_per_call_page_faults_of_xla_buffers():
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}

    def faults_per_call(environ):
        done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=environ)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split()[-1])

    small_pages = faults_per_call(base)
    huge_pages = faults_per_call(host_memory.huge_pages_environment(base))
    assert small_pages > 10_000  # 64 MB of 4 KiB pages faulted in again at every call
    assert huge_pages < small_pages / 10
