"""Keras reference U-Net: the TensorFlow image-segmentation tutorial model.

Reproduces https://www.tensorflow.org/tutorials/images/segmentation in plain
Keras 3 (no ``tensorflow_examples``) so that labjax's port can be compared
against it for parameter counts and training speed. It deliberately does not
import ``labjax``: the reference must stay independent of the code it checks.
"""

from __future__ import annotations

import math
import os

# Default to TensorFlow (the tutorial's backend) unless the caller chose one.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

# Encoder activations used as skip connections, shallowest first (tutorial).
SKIP_LAYER_NAMES: tuple[str, ...] = (
    "block_1_expand_relu",  # s/2
    "block_3_expand_relu",  # s/4
    "block_6_expand_relu",  # s/8
    "block_13_expand_relu",  # s/16
    "block_16_project",  # s/32
)

# Decoder widths, deepest first (tutorial's up_stack).
UP_STACK_FILTERS: tuple[int, ...] = (512, 256, 128, 64)


def upsample(filters: int, size: int, dropout: float = 0.0, name: str | None = None) -> keras.Sequential:
    """pix2pix ``upsample``: 2x transposed conv, BN, [dropout], ReLU.

    Mirrors ``tensorflow_examples.models.pix2pix.upsample`` (bias-free conv,
    N(0, 0.02) kernel init) so parameter counts match the tutorial exactly.
    """
    layers: list[keras.layers.Layer] = [
        keras.layers.Conv2DTranspose(
            filters,
            size,
            strides=2,
            padding="same",
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
            use_bias=False,
        ),
        keras.layers.BatchNormalization(),
    ]
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.ReLU())
    return keras.Sequential(layers, name=name)


def build_keras_unet(
    image_size: int = 128, num_classes: int = 59, alpha: float = 1.0, dropout: float = 0.0, freeze_encoder: bool = False
) -> keras.Model:
    """Build the tutorial's MobileNetV2 U-Net returning per-pixel logits.

    Weights are always random (``weights=None``): the benchmark measures
    structure and speed, and the machines it runs on may have no internet.
    ``freeze_encoder`` matches the tutorial's ``down_stack.trainable = False``.
    """
    inputs = keras.Input(shape=[image_size, image_size, 3])

    base_model = keras.applications.MobileNetV2(
        input_shape=[image_size, image_size, 3], include_top=False, weights=None, alpha=alpha
    )
    skip_outputs = [base_model.get_layer(n).output for n in SKIP_LAYER_NAMES]
    down_stack = keras.Model(inputs=base_model.input, outputs=skip_outputs, name="down_stack")
    down_stack.trainable = not freeze_encoder

    up_stack = [upsample(f, 3, dropout=dropout, name=f"upsample_{i}") for i, f in enumerate(UP_STACK_FILTERS)]

    skips = down_stack(inputs)
    x = skips[-1]
    for i, (up, skip) in enumerate(zip(up_stack, reversed(skips[:-1]))):
        x = up(x)
        x = keras.layers.Concatenate(name=f"concat_{i}")([x, skip])

    # Last 2x upsampling back to input resolution; raw logits (no softmax).
    outputs = keras.layers.Conv2DTranspose(
        filters=num_classes, kernel_size=3, strides=2, padding="same", name="logits"
    )(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="keras_unet")


def param_counts(model: keras.Model) -> dict[str, int]:
    """Total / trainable / non-trainable parameter counts of ``model``."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {"total": int(model.count_params()), "trainable": trainable, "non_trainable": non_trainable}


if __name__ == "__main__":
    for size, classes, a in ((128, 59, 1.0), (128, 3, 1.0), (64, 6, 0.35)):
        counts = param_counts(build_keras_unet(size, classes, alpha=a))
        print(
            f"image_size={size} num_classes={classes} alpha={a}: "
            f"total={counts['total']:,} trainable={counts['trainable']:,} "
            f"non_trainable={counts['non_trainable']:,}"
        )
