"""labjax's XLA flags (labjax/xla_flags.py): added on import, the user's own settings kept, and in effect."""

import os
import subprocess
import sys

import pytest

from labjax import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_labjax_flags_join_the_users_and_leave_a_flag_the_user_named():
    assert xla_flags.with_labjax_flags("") == f"{FLAG}=-individual_convolution"
    ours = xla_flags.with_labjax_flags(" --xla_force_host_platform_device_count=4 ")
    assert ours == f"--xla_force_host_platform_device_count=4 {FLAG}=-individual_convolution"
    assert xla_flags.with_labjax_flags(f"{FLAG}=dot") == f"{FLAG}=dot"
    assert xla_flags.with_labjax_flags(ours) == ours  # applying twice (a child process) adds nothing
    environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    xla_flags.apply(environ)
    assert environ["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {FLAG}=-individual_convolution"


# Compiles a 3x3 convolution after importing labjax and prints whether YNNPACK took it.
_PROBE = """
import labjax, jax, jax.numpy as jnp
x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
numbers = ("NHWC", "HWIO", "NHWC")
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=numbers))
print("ynn" if "ynn_fusion" in conv.lower(x, w).compile().as_text() else "xla")
"""


@pytest.mark.slow
@pytest.mark.parametrize("user_flags, runs", [("", "xla"), (f"{FLAG}=+individual_convolution", "ynn")])
def test_importing_labjax_moves_cpu_convolutions_off_ynnpack_unless_the_user_says(user_flags, runs):
    env = {**os.environ, "XLA_FLAGS": user_flags, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", _PROBE]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == runs


def test_benchmark_peers_run_with_the_users_flags_not_labjaxs():
    from benchmarks import speed

    assert FLAG in os.environ["XLA_FLAGS"]  # this process imported labjax
    for framework in ("keras_jax", "keras_tf", "torch"):
        env = speed._environment(framework, "none")
        assert env["XLA_FLAGS"] == xla_flags.user_flags and FLAG not in env["XLA_FLAGS"]
