"""Test set-up: several simulated CPU devices, so data parallelism is exercised everywhere."""

import os
import sys
from pathlib import Path

NUM_DEVICES = 4
# Tests run tiny shapes, where compiling dominates: XLA's backend optimisation off compiles several
# times faster (numerics stay IEEE; benchmarks, not tests, measure speed).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_force_host_platform_device_count={NUM_DEVICES} --xla_backend_optimization_level=0"
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # labjax, configs and benchmarks importable from the tests

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One XLA cache for the session, shared by the pytest-xdist workers: a model that two test
    files train compiles once, whichever worker gets there first (JAX locks the cache's files)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
    path.mkdir(exist_ok=True)
    os.environ["LABJAX_COMPILATION_CACHE"] = str(path)  # for launch.py subprocesses
    from labjax import cli

    cli.enable_compilation_cache()
    return path
