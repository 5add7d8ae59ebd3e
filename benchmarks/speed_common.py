"""What every side of benchmarks/speed.py shares: the workloads, their random data and the timing rule.

Imports only numpy, so a Keras, PyTorch or labjax worker pulls in nothing of the others.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np

SEED = 0


@dataclasses.dataclass(frozen=True)
class Workload:
    """One study's training set-up, the same for every framework; steps are per timed window."""

    name: str
    title: str
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    batch_size: int
    task: str  # classification | segmentation
    optimizer: str  # adam | sgd (momentum 0.9)
    learning_rate: float
    steps: int  # timed steps per window
    warmup: int  # steps after the first (compiling) one, before timing
    quick_steps: int  # --quick's steps per window (also its warm-up)
    adam_eps: float = 1e-7  # Keras' default; S4 (PyTorch) used 1e-8
    dropout: float = 0.0  # before the classifier (W1: 0.7, W2: 0.2)
    frozen_base: bool = False  # W3: only the head trains, the base's BatchNorm in inference mode
    torch_channels_last: bool = False  # PyTorch's faster layout for this model (measured, see README)
    chunked: bool = False  # also timed with STEPS_PER_EXECUTION steps per dispatch (the per-step overhead case)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("W0", "S0 MobileNetV2 U-Net", (128, 128, 3), 59, 32, "segmentation", "adam", 1e-3, 5, 2, 1),
        Workload(
            "W1", "S1 ResNet50 small-image stem", (64, 64, 3), 200, 64, "classification", "sgd", 0.1, 5, 2, 1,
            dropout=0.7, torch_channels_last=True,
        ),
        Workload(
            "W2/b32", "S2 small CNN", (28, 28, 1), 3, 32, "classification", "adam", 1e-3, 200, 50, 10, dropout=0.2
        ),
        Workload(
            "W2/b256", "S2 small CNN", (28, 28, 1), 3, 256, "classification", "adam", 1e-3, 40, 10, 4, dropout=0.2
        ),
        Workload(
            "W3/frozen", "S3 DenseNet121, frozen base", (96, 96, 3), 100, 32, "classification", "adam", 1e-3, 10, 2, 1,
            frozen_base=True, torch_channels_last=True,
        ),
        Workload(
            "W3/full", "S3 DenseNet121, full fine-tune", (96, 96, 3), 100, 32, "classification", "adam", 1e-3, 4, 1, 1,
            torch_channels_last=True,
        ),
        Workload(
            "W4", "S4 ConvNN_1, batch 1", (30, 32, 1), 2, 1, "classification", "adam", 2e-3, 1000, 200, 100,
            adam_eps=1e-8, chunked=True,
        ),
    )
}  # fmt: skip

# A workload id on the command line names all its cases (W2 -> W2/b32 and W2/b256).
GROUPS: dict[str, list[str]] = {}
for _name in WORKLOADS:
    GROUPS.setdefault(_name.split("/")[0], []).append(_name)

STEPS_PER_EXECUTION = 50  # W4's chunk of steps per dispatch (labjax k, Keras steps_per_execution)


def random_arrays(workload: Workload, count: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """`count` NHWC images in [0, 1) and int32 labels ((count,) or per-pixel (count, H, W))."""
    rng = np.random.default_rng(seed)
    images = rng.random((count, *workload.image_shape), dtype=np.float32)
    label_shape = (count, *workload.image_shape[:2]) if workload.task == "segmentation" else (count,)
    return images, rng.integers(0, workload.num_classes, label_shape, dtype=np.int32)


def time_calls(
    call: Callable[[], object],
    *,
    calls: int,
    warmup: int,
    windows: int,
    images_per_call: int,
    sync: Callable[[], object] = lambda: None,
) -> dict:
    """Images/s of `call` as the median over `windows` windows of `calls` calls, after warm-up.

    The first call is timed on its own: it compiles (jit, XLA, tf.function). `sync` waits for
    work dispatched asynchronously (JAX); the window's clock stops only after it, so queued
    steps are never counted as done.
    """
    start = time.perf_counter()
    call()
    sync()
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        call()
    sync()
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        rates.append(calls * images_per_call / (time.perf_counter() - start))
    return {"rate": statistics.median(rates), "windows": rates, "first_s": first_s}


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(precision: str = "float32", repeats: int = 5) -> dict:
    """The machine's matmul rate in `precision`: the best of `repeats` timed square products with a
    jitted jnp.dot (and np.dot on a CPU, float32 only); the faster one is the ceiling. A GPU gets
    8192^2 products (2048^2 cannot fill it) and its default float32 precision (TF32 tensor cores),
    which is also what the frameworks' float32 convolutions use there."""
    import jax
    import jax.numpy as jnp

    on_cpu = jax.default_backend() == "cpu"
    size = 2048 if on_cpu else 8192
    rng = np.random.default_rng(SEED)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    flops = 2.0 * size**3

    def best(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return flops / min(times) / 1e9

    dot = jax.jit(jnp.dot)
    da, db = (jnp.asarray(m, dtype=precision) for m in (a, b))
    rates = {"jnp.dot": best(lambda: dot(da, db).block_until_ready())}
    if on_cpu and precision == "float32":
        rates["np.dot"] = best(lambda: np.dot(a, b))
    winner = max(rates, key=rates.get)
    device = str(jax.devices()[0].device_kind if not on_cpu else jax.devices()[0])
    return {
        "gflops": rates[winner],
        "by": winner,
        "rates": rates,
        "size": size,
        "device": device,
        "precision": precision,
    }


def peak_device_mb() -> float | None:
    """JAX's peak accelerator memory in use (its allocator's high-water mark); None on a CPU."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20
