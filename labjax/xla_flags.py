"""XLA flags labjax runs with, added to the environment's XLA_FLAGS when labjax is imported.

JAX reads XLA_FLAGS once, when it starts its first backend, so labjax must be imported before the
first JAX computation (launch.py, the tests and the benchmarks are; in a notebook, import labjax
first). A flag that XLA_FLAGS names already keeps the user's value.

`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: XLA:CPU gives every convolution
to YNNPACK by default; without this kind of fusion XLA's own convolution runs, which was faster on
this project's shapes (2 cores, 3x3 'same' float32): 8x96x96x64 -> 64 at 158 GFLOP/s against 118,
DenseNet's 32x24x24x128 -> 32 at 147 against 85, equal from 128 channels up. Inference at 96 px,
batch 8, each setting in its own process, three alternating rounds: InceptionV3 160 -> 189
images/s, ResNet50 88 -> 98, VGG16 25.4 -> 28.0, Xception 83 -> 89, DenseNet121 126 -> 128.
Training is unchanged within noise (W0, W2, W3; on the CPU its convolutions are matmuls, which,
with reductions and elementwise work, stay on YNNPACK).
"""

import os
from collections.abc import MutableMapping

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

# XLA_FLAGS as they were before labjax added its own: benchmarks run their peers with these.
user_flags: str | None = None


def with_labjax_flags(flags: str) -> str:
    """An XLA_FLAGS value with labjax's flags added, except those it names already."""
    added = [flag for flag in FLAGS if flag.split("=")[0] not in flags]
    return " ".join(filter(None, [flags.strip(), *added]))


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    global user_flags
    if user_flags is None:
        user_flags = environ.get("XLA_FLAGS", "")
    environ["XLA_FLAGS"] = with_labjax_flags(environ.get("XLA_FLAGS", ""))
