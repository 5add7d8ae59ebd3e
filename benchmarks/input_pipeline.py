"""Input-pipeline throughput against what training consumes, in one run.

The pipeline must not be the bottleneck: it should deliver several times the examples/s
that the training step takes. For each workload this times `pipeline.train_batches`
alone (host batches, augmentation included, nothing else running) and, where labjax has
the workload's model, the jitted training step on random data of the same shape.

  S0: 128x128 synthetic segmentation, flips, batch 32, the MobileNetV2 U-Net step.
  S1: 64x64 classification, flips + RandAugment(2, 9) + RandomErasing, batch 64, the
      small-image ResNet50 step (3x3 stride-1 stem, no max-pool).
  S2: 28x28 gray Fashion-MNIST-like, merged classes, oversampling copies, batch 32,
      the small CNN step.

Usage: python benchmarks/input_pipeline.py [--epochs 2] [--skip-training] [--workloads S0,S1,S2]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import fashion3_cnn, seg_mobilenet  # noqa: E402
from labjax.config import base_config  # noqa: E402
from labjax.data import pipeline  # noqa: E402


def s1_config():
    config = base_config("classification")
    config.data.update(
        dict(
            source="synthetic",
            num_classes=20,
            image_size=64,
            train_size=2048,
            val_size=64,
            augment="flip_lr|flip_ud|randaugment(2, 9)|random_erasing(p=0.5)",
            normalize="mean_std",
        )
    )
    config.model.name, config.model.small_inputs = "resnet50", True
    config.batch_size = 64
    return config


def pipeline_rate(config, epochs: int) -> tuple[float, float]:
    """(seconds to load/generate the data, training examples/s over `epochs` epochs)."""
    start = time.perf_counter()
    data = pipeline.load(config)
    load_s = time.perf_counter() - start
    next(pipeline.train_batches(data, config, epoch=0))  # warm up tf.data's function tracing
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for batch in pipeline.train_batches(data, config, epoch=epoch + 1):
            count += len(batch["label"])
    return load_s, count / (time.perf_counter() - start)


def training_rate(config, steps: int = 6) -> float:
    """Examples/s of the labjax train step on one random batch of the config's input shape."""
    import jax
    import numpy as np

    from labjax import models, parallel, train

    info = models.model_info(config.model.name)
    data = pipeline.load(config, info.preprocessing)
    mesh = parallel.make_mesh()
    model = models.create_model(config.model, data.num_classes)
    state = train.create_train_state(config, model, mesh, data.input_shape)
    step = train.make_train_step(mesh, data.num_classes)
    batch = next(pipeline.train_batches(data, config, epoch=0))
    batch = parallel.to_global({k: np.asarray(v) for k, v in batch.items()}, mesh)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * config.batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--workloads", default="S0,S1,S2")
    args = parser.parse_args(argv)
    s2 = fashion3_cnn.get_config("synthetic")
    workloads = [("S0", seg_mobilenet.get_config(), True), ("S1", s1_config(), True), ("S2", s2, True)]
    workloads = [w for w in workloads if w[0] in args.workloads.split(",")]
    rows = []
    for name, config, has_model in workloads:
        load_s, rate = pipeline_rate(config, args.epochs)
        train_rate = training_rate(config) if has_model and not args.skip_training else None
        rows.append((name, load_s, rate, train_rate))
        print(f"[done] {name}: load {load_s:.1f}s, pipeline {rate:.0f} examples/s, training {train_rate}", flush=True)
    print(f"\n{'workload':<9}{'load s':>8}{'pipeline ex/s':>15}{'training ex/s':>15}{'pipeline / training':>21}")
    for name, load_s, rate, train_rate in rows:
        ratio = f"{rate / train_rate:.1f}x" if train_rate else "n/a"
        train_text = f"{train_rate:.1f}" if train_rate else "n/a"
        print(f"{name:<9}{load_s:>8.1f}{rate:>15.0f}{train_text:>15}{ratio:>21}")


if __name__ == "__main__":
    main()
