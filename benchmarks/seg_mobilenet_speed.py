"""Training-throughput benchmark: labjax U-Net vs. the Keras tutorial model.

Both sides train the TensorFlow segmentation tutorial's MobileNetV2 U-Net on
the same random in-memory batch, so the numbers measure the training step
alone (no input pipeline). Each side reports images/s as the median over
several timed windows after a warm-up, plus the first step's wall time, which
is dominated by tracing/compilation and tells a different story.

Usage::

    python benchmarks/seg_mobilenet_speed.py --batch-size 32 --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SEED = 0


def _random_batch(
    batch_size: int, image_size: int, num_classes: int, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed images in [0, 1) and int masks, the same for every side."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    masks = rng.integers(0, num_classes, (batch_size, image_size, image_size), dtype=np.int32)
    return images, masks


def _time_steps(
    step: Callable[[], Any], warmup_steps: int, timed_steps: int, windows: int, batch_size: int
) -> dict[str, Any]:
    """Run ``step`` (which must block until done) and collect throughput.

    The first call is timed on its own because it includes compilation;
    the median over windows damps noise from other processes on the host.
    """
    start = time.perf_counter()
    step()
    first_step_s = time.perf_counter() - start
    for _ in range(max(warmup_steps - 1, 0)):
        step()
    window_rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(timed_steps):
            step()
        window_rates.append(batch_size * timed_steps / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(window_rates),
        "first_step_s": first_step_s,
        "window_images_per_s": window_rates,
    }


def keras_train_throughput(
    backend_note: str = "",
    *,
    batch_size: int = 32,
    image_size: int = 128,
    num_classes: int = 59,
    warmup_steps: int = 3,
    timed_steps: int = 10,
    windows: int = 3,
    jit_compile: bool | str = "auto",
) -> dict[str, Any]:
    """Images/s of ``train_on_batch`` on the Keras reference model.

    Keras is imported here, after forcing the TensorFlow backend, so that the
    labjax side (JAX) can run in the same process without Keras picking JAX.
    ``backend_note`` is free text (e.g. "CPU, 2 cores") echoed in the result.
    """
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    try:  # ``python -m benchmarks.seg_mobilenet_speed`` from the repo root
        from benchmarks.keras_unet import build_keras_unet, param_counts
    except ImportError:  # ``python benchmarks/seg_mobilenet_speed.py``
        from keras_unet import build_keras_unet, param_counts

    keras.utils.set_random_seed(SEED)
    model = build_keras_unet(image_size, num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    images, masks = _random_batch(batch_size, image_size, num_classes)

    def step() -> None:
        # train_on_batch returns NumPy values, i.e. it waits for the step.
        model.train_on_batch(images, masks)

    timing = _time_steps(step, warmup_steps, timed_steps, windows, batch_size)
    counts = param_counts(model)
    return {
        "framework": "keras-" + keras.backend.backend(),
        **timing,
        "params": counts["total"],
        "trainable_params": counts["trainable"],
        "non_trainable_params": counts["non_trainable"],
        "jit_compile": model.jit_compile,
        "note": backend_note,
    }


def labjax_train_throughput(
    backend_note: str = "",
    *,
    batch_size: int = 32,
    image_size: int = 128,
    num_classes: int = 59,
    warmup_steps: int = 3,
    timed_steps: int = 10,
    windows: int = 3,
) -> dict[str, Any]:
    """Images/s of labjax's jitted train step on the same model and data.

    Uses the engine's own pieces (config, model registry, TrainState, the
    data-parallel train step), so what is timed is what `launch.py` runs.
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax

    from configs import seg_mobilenet
    from labjax import parallel, train
    from labjax.models import create_model

    config = seg_mobilenet.get_config()
    config.data.num_classes, config.batch_size = num_classes, batch_size
    mesh = parallel.make_mesh()
    model = create_model(config.model, num_classes)
    images, labels = _random_batch(batch_size, image_size, num_classes)
    batch = parallel.to_global({"image": images * 2.0 - 1.0, "label": labels}, mesh)
    state = train.create_train_state(config, model, mesh, images.shape[1:])
    train_step = train.make_train_step(mesh, num_classes)
    params = sum(x.size for x in jax.tree.leaves((state.params, state.batch_stats)))

    def step() -> None:
        nonlocal state
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)

    result = _time_steps(step, warmup_steps, timed_steps, windows, batch_size)
    return {"framework": f"labjax-{jax.default_backend()}", **result, "params": int(params), "note": backend_note}


def _print_table(results: list[dict[str, Any]]) -> None:
    """Print one row per side; the ratio compares each row against Keras."""
    keras_rate = next((r["images_per_s"] for r in results if r["framework"].startswith("keras")), None)
    header = f"{'framework':<18} {'images/s':>10} {'first step s':>13} {'params':>12} {'labjax / keras':>15}"
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = ""
        if r["framework"].startswith("labjax") and keras_rate:
            ratio = f"{r['images_per_s'] / keras_rate:.2f}x"
        print(
            f"{r['framework']:<18} {r['images_per_s']:>10.2f} {r['first_step_s']:>13.2f} {r['params']:>12,} {ratio:>15}"
        )


def main(argv: list[str] | None = None) -> None:
    """Run every available side with the same settings and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=59)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args(argv)

    kwargs = dict(
        batch_size=args.batch_size,
        image_size=args.image_size,
        num_classes=args.num_classes,
        warmup_steps=args.warmup_steps,
        timed_steps=args.steps,
        windows=args.windows,
    )
    sides: list[tuple[str, Callable[..., dict[str, Any]]]] = [("labjax", labjax_train_throughput)]
    if not args.skip_keras:
        sides.append(("keras", keras_train_throughput))

    results = []
    for name, fn in sides:
        try:
            result = fn(**kwargs)
        except NotImplementedError as err:
            print(f"[skip] {name}: {err}")
            continue
        print(f"[done] {name}: {result}")
        results.append(result)
    if results:
        _print_table(results)


if __name__ == "__main__":
    main()
