"""Keras 3 peers of benchmarks/speed.py, on the backend KERAS_BACKEND names (fixed at import, so
benchmarks/speed.py runs each backend in its own process).

The models are the workloads' architectures as a Keras user would write them, with the parameter
counts of labjax's (speed.py prints both): W0 the TensorFlow tutorial's U-Net
(benchmarks/keras_unet.py), W1 keras.applications' ResNet50 rebuilt with the small-image stem,
W2 the S2 Sequential CNN, W3 keras.applications.DenseNet121 + Dense, W4 ConvNN_1.
Modes: `fit` (model.fit over in-memory arrays), `fit_spe50` (the same with steps_per_execution=50)
and `train_on_batch`.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from benchmarks.speed_common import (  # noqa: E402
    SEED,
    STEPS_PER_EXECUTION,
    Workload,
    peak_device_mb,
    peak_rss_mb,
    random_arrays,
    time_calls,
)

RESNET_EPSILON = 1.001e-5  # keras.applications' ResNet BatchNorm epsilon


def _resnet50_small(workload: Workload) -> keras.Model:
    """keras.applications.ResNet50 (v1, biased convolutions) with a 3x3 stride-1 stem and no max-pool,
    then global average pooling, dropout and a new Dense head (configs/cls_resnet_small.py)."""
    layers = keras.layers

    def bn(x):
        return layers.BatchNormalization(momentum=0.9, epsilon=RESNET_EPSILON)(x)

    def block(x, filters: int, stride: int, conv_shortcut: bool):
        shortcut = bn(layers.Conv2D(4 * filters, 1, strides=stride)(x)) if conv_shortcut else x
        x = layers.ReLU()(bn(layers.Conv2D(filters, 1, strides=stride)(x)))
        x = layers.ReLU()(bn(layers.Conv2D(filters, 3, padding="same")(x)))
        x = bn(layers.Conv2D(4 * filters, 1)(x))
        return layers.ReLU()(layers.Add()([shortcut, x]))

    inputs = keras.Input(workload.image_shape)
    x = layers.ReLU()(bn(layers.Conv2D(64, 3, padding="same")(inputs)))
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for index in range(blocks):
            x = block(x, 64 * 2**stage, 2 if stage and not index else 1, conv_shortcut=not index)
    x = layers.Dropout(workload.dropout)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(workload.num_classes)(x))


def _small_cnn(workload: Workload) -> keras.Model:
    """S2's Keras CNN (labjax.models.small_cnn.SmallCNN)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(workload.image_shape),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.AveragePooling2D(2),
            layers.Conv2D(128, 3, activation="relu"),
            layers.Flatten(),
            layers.Dropout(workload.dropout),
            layers.Dense(64, activation="relu"),
            layers.Dense(workload.num_classes),
        ]
    )


def _densenet121(workload: Workload) -> keras.Model:
    """keras.applications.DenseNet121 (random weights, average pooling) + a Dense head; a frozen
    base (trainable=False) also runs its BatchNorm in inference mode, as labjax's."""
    shape = workload.image_shape
    base = keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg", input_shape=shape)
    base.trainable = not workload.frozen_base
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Dense(workload.num_classes)(base(inputs)))


def _convnn1(workload: Workload) -> keras.Model:
    """S4's ConvNN_1 (PyTorch's Conv2d(1,8,3,padding=(2,1)) ... Linear(->40) ReLU Linear(40,2))."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(workload.image_shape),
            layers.ZeroPadding2D((2, 1)),
            layers.Conv2D(8, 3),
            layers.MaxPooling2D(2),
            layers.ReLU(),
            layers.Conv2D(16, 3),
            layers.MaxPooling2D(2),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(40, activation="relu"),
            layers.Dense(workload.num_classes),
        ]
    )


def build_model(workload: Workload) -> keras.Model:
    """The Keras model of `workload` (random weights)."""
    study = workload.name.split("/")[0]
    if study == "W0":
        from benchmarks.keras_unet import build_keras_unet

        return build_keras_unet(workload.image_shape[0], workload.num_classes)
    builders = {"W1": _resnet50_small, "W2": _small_cnn, "W3": _densenet121, "W4": _convnn1}
    return builders[study](workload)


def _optimizer(workload: Workload) -> keras.optimizers.Optimizer:
    if workload.optimizer == "sgd":  # S1: momentum 0.9, weight decay 1e-4
        return keras.optimizers.SGD(workload.learning_rate, momentum=0.9, weight_decay=1e-4)
    return keras.optimizers.Adam(workload.learning_rate, epsilon=workload.adam_eps)


def _fit_rates(model: keras.Model, workload: Workload, *, steps: int, warmup: int, windows: int, per_call: int) -> dict:
    """model.fit over in-memory arrays: one epoch of `steps` batches per timed window.

    The first fit (one execution of `per_call` steps) compiles; epochs are timed by a callback, so
    what fit does around the steps of an epoch (its iterator, callbacks) counts, as for a user.
    """
    batch = workload.batch_size
    images, labels = random_arrays(workload, steps * batch)
    times: list[float] = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    def fit(count: int, epochs: int = 1, callbacks=()) -> None:
        n = count * batch
        model.fit(images[:n], labels[:n], batch, epochs, verbose=0, callbacks=callbacks, shuffle=False)

    start = time.perf_counter()
    fit(per_call)
    first_s = time.perf_counter() - start
    if warmup:
        fit(min(-(-warmup // per_call) * per_call, steps))
    fit(steps, windows, [EpochClock()])
    rates = [steps * batch / t for t in times]
    return {"rate": statistics.median(rates), "windows": rates, "first_s": first_s}


def run(
    workload: Workload,
    mode: str,
    *,
    steps: int,
    warmup: int,
    windows: int,
    infer: bool,
    jit_compile: bool,
    precision: str = "float32",
) -> dict:
    """Times training in `mode` (fit | fit_spe50 | train_on_batch) and, with `infer`, predict_on_batch;
    `precision` bfloat16 sets Keras' mixed_bfloat16 policy (float32 weights, bfloat16 compute)."""
    keras.utils.set_random_seed(SEED)
    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else f"mixed_{precision}")
    model = build_model(workload)
    per_call = STEPS_PER_EXECUTION if mode == f"fit_spe{STEPS_PER_EXECUTION}" else 1
    model.compile(
        optimizer=_optimizer(workload),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],  # as the studies' Keras code (and labjax's step) computes it
        jit_compile=jit_compile,
        steps_per_execution=per_call,
    )
    if mode.startswith("fit"):
        steps = -(-steps // per_call) * per_call
        timing = _fit_rates(model, workload, steps=steps, warmup=warmup, windows=windows, per_call=per_call)
    elif mode == "train_on_batch":
        images, labels = random_arrays(workload, workload.batch_size)
        timing = time_calls(
            lambda: model.train_on_batch(images, labels),  # returns NumPy values: it waits for the step
            calls=steps,
            warmup=warmup,
            windows=windows,
            images_per_call=workload.batch_size,
        )
    else:
        raise ValueError(f"Keras mode {mode!r}: choose fit, fit_spe{STEPS_PER_EXECUTION} or train_on_batch")
    backend = keras.backend.backend()
    xla = "" if backend != "tensorflow" else (" xla" if jit_compile else " no-xla")
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    result = {
        "framework": f"keras_{backend}",
        "mode": mode,
        "label": f"keras-{backend}{xla} {mode}",
        "train_rate": timing["rate"],
        "train_windows": timing["windows"],
        "first_step_s": timing["first_s"],
        "params": int(model.count_params()),
        "trainable": int(trainable),
    }
    if infer:
        images, _ = random_arrays(workload, workload.batch_size)
        timing = time_calls(
            lambda: model.predict_on_batch(images),
            calls=steps,
            warmup=warmup,
            windows=windows,
            images_per_call=workload.batch_size,
        )
        result["infer_rate"] = timing["rate"]
    result["peak_rss_mb"] = peak_rss_mb()
    if backend == "jax":
        result["peak_device_mb"] = peak_device_mb()
    return result
