"""Inference throughput of the model zoo: labjax vs Keras 3 (TensorFlow backend), side by side.

For each family's representative, both sides build the same architecture with random weights
(the parameter counts are printed and must agree), then run a forward pass on the same
random batch in inference mode: labjax a jitted `model.apply(train=False)`, Keras its
compiled `predict_on_batch`. Images/s is the median over timed windows after warm-up, the two
sides' windows taken in turn.

Usage: python benchmarks/zoo_inference.py [--size 224] [--batch 8] [--models resnet50,densenet121]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from labjax import config as config_lib  # noqa: E402
from labjax import models  # noqa: E402

KERAS_NAMES = {
    "vgg16": "VGG16",
    "resnet50": "ResNet50",
    "resnet50v2": "ResNet50V2",
    "densenet121": "DenseNet121",
    "efficientnetb0": "EfficientNetB0",
    "xception": "Xception",
    "inceptionv3": "InceptionV3",
    "mobilenetv2": "MobileNetV2",
}


def _first_call(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _alternating_rates(steps: dict, batch: int, windows: int = 5, calls: int = 3) -> dict:
    """Median images/s of each side over timed windows taken in turn (labjax, Keras, labjax, ...),
    so that the VM's drift within minutes, up to a fifth here, falls on both sides alike."""
    rates = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up after the compile
    for _ in range(windows):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            rates[name].append(batch * calls / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def labjax_side(name: str, images: np.ndarray):
    config = config_lib.base_config("classification")
    config.model.name, config.model.head = name, "original"
    model = models.create_model(config.model, 1000)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jnp.asarray(images)
    params = sum(v.size for v in jax.tree.leaves(variables))
    return (lambda: forward(variables, x).block_until_ready()), int(params)


def keras_side(name: str, images: np.ndarray):
    import keras

    cls = getattr(keras.applications, KERAS_NAMES[name])
    model = cls(weights=None, input_shape=images.shape[1:], classes=1000, classifier_activation=None)
    return (lambda: model.predict_on_batch(images)), int(model.count_params())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default=",".join(KERAS_NAMES))
    args = parser.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        size = max(args.size, 75 if name == "inceptionv3" else 71 if name == "xception" else 32)
        images = np.random.default_rng(0).uniform(0, 1, (args.batch, size, size, 3)).astype(np.float32)
        (ours_step, ours_params), (theirs_step, theirs_params) = labjax_side(name, images), keras_side(name, images)
        firsts = {"labjax": _first_call(ours_step), "keras": _first_call(theirs_step)}
        rates = _alternating_rates({"labjax": ours_step, "keras": theirs_step}, len(images))
        ours = {"rate": rates["labjax"], "first": firsts["labjax"], "params": ours_params}
        theirs = {"rate": rates["keras"], "first": firsts["keras"], "params": theirs_params}
        rows.append((name, size, ours, theirs))
        print(f"[done] {name}: labjax {ours}, keras {theirs}", flush=True)
    print(f"\n{'model':<15}{'px':>5}{'params':>13}{'labjax img/s':>14}{'keras img/s':>13}{'ratio':>8}")
    for name, size, ours, theirs in rows:
        same = "" if ours["params"] == theirs["params"] else f" (keras {theirs['params']:,})"
        print(
            f"{name:<15}{size:>5}{ours['params']:>13,}{ours['rate']:>14.1f}{theirs['rate']:>13.1f}"
            f"{ours['rate'] / theirs['rate']:>7.2f}x{same}"
        )


if __name__ == "__main__":
    main()
