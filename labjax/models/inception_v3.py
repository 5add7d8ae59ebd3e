"""InceptionV3 (Szegedy et al. 2016), layer for layer as `keras.applications.InceptionV3`.

94 conv-BN-ReLU units (Conv2D without bias, BatchNorm with scale=False and epsilon 1e-3,
Keras' default momentum 0.99) in a stem and eleven mixed blocks `mixed0`..`mixed10`
(35x35, 17x17 and 8x8 grids at 299 pixels), then Keras' top: global average pooling and
Dense "predictions" (logits here; Keras' softmax is left to the loss).

Keras leaves every unit unnamed, so its layer names come from Keras' global counters in the
order the layers are created and depend on the session that built or saved a model. The
modules here are named as in Keras' ImageNet files (written by Keras 2, whose counters
start at 1): unit k (1..94, in Keras' construction order) is `conv2d_k` +
`batch_normalization_k`. `rename_keras_layers` maps any Keras model's or file's names
(Keras 3 counts from 0, and a session that built other layers first counts on from there)
onto these by the rank of their counter, which follows construction order in every version.
"""

import itertools
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.errors import ConfigError
from labjax.models.layers import Conv, Padding, max_pool

glorot = nn.initializers.glorot_uniform()  # Keras' default for Conv2D and Dense
ConvBN = Callable[..., jax.Array]  # (x, filters, kernel rows, kernel cols, strides=1, padding="SAME") -> x
NUM_UNITS = 94
UNIT_PREFIXES = ("conv2d", "batch_normalization")  # Keras' generated names of the units' two layers
MIN_SIZE = {"inceptionv3": 75}


def _max_pool(x: jax.Array) -> jax.Array:
    return max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _avg_pool(x: jax.Array) -> jax.Array:
    """Keras' AveragePooling2D(3, 1, "same"): border windows average only the pixels inside."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)


def _block_35(conv_bn: ConvBN, x: jax.Array, pool_filters: int) -> jax.Array:
    """mixed0..mixed2: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1."""
    branch1x1 = conv_bn(x, 64, 1, 1)
    branch5x5 = conv_bn(conv_bn(x, 48, 1, 1), 64, 5, 5)
    branch3x3dbl = conv_bn(conv_bn(conv_bn(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
    branch_pool = conv_bn(_avg_pool(x), pool_filters, 1, 1)
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


def _reduction_35(conv_bn: ConvBN, x: jax.Array) -> jax.Array:
    """mixed3: strided 3x3 | 1x1-3x3-strided 3x3 | max pool."""
    branch3x3 = conv_bn(x, 384, 3, 3, strides=2, padding="VALID")
    branch3x3dbl = conv_bn(conv_bn(x, 64, 1, 1), 96, 3, 3)
    branch3x3dbl = conv_bn(branch3x3dbl, 96, 3, 3, strides=2, padding="VALID")
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool(x)], axis=-1)


def _block_17(conv_bn: ConvBN, x: jax.Array, width: int) -> jax.Array:
    """mixed4..mixed7: 1x1 | factorised 7x7 | two factorised 7x7 | avg pool-1x1 (192 filters out each)."""
    branch1x1 = conv_bn(x, 192, 1, 1)
    branch7x7 = conv_bn(conv_bn(conv_bn(x, width, 1, 1), width, 1, 7), 192, 7, 1)
    branch7x7dbl = conv_bn(x, width, 1, 1)
    for filters, rows, cols in ((width, 7, 1), (width, 1, 7), (width, 7, 1), (192, 1, 7)):
        branch7x7dbl = conv_bn(branch7x7dbl, filters, rows, cols)
    branch_pool = conv_bn(_avg_pool(x), 192, 1, 1)
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


def _reduction_17(conv_bn: ConvBN, x: jax.Array) -> jax.Array:
    """mixed8: 1x1-strided 3x3 | 1x1-1x7-7x1-strided 3x3 | max pool."""
    branch3x3 = conv_bn(conv_bn(x, 192, 1, 1), 320, 3, 3, strides=2, padding="VALID")
    branch7x7x3 = conv_bn(conv_bn(conv_bn(x, 192, 1, 1), 192, 1, 7), 192, 7, 1)
    branch7x7x3 = conv_bn(branch7x7x3, 192, 3, 3, strides=2, padding="VALID")
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool(x)], axis=-1)


def _block_8(conv_bn: ConvBN, x: jax.Array) -> jax.Array:
    """mixed9, mixed10: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avg pool-1x1."""
    branch1x1 = conv_bn(x, 320, 1, 1)
    branch3x3 = conv_bn(x, 384, 1, 1)
    branch3x3 = jnp.concatenate([conv_bn(branch3x3, 384, 1, 3), conv_bn(branch3x3, 384, 3, 1)], axis=-1)
    branch3x3dbl = conv_bn(conv_bn(x, 448, 1, 1), 384, 3, 3)
    branch3x3dbl = jnp.concatenate([conv_bn(branch3x3dbl, 384, 1, 3), conv_bn(branch3x3dbl, 384, 3, 1)], axis=-1)
    branch_pool = conv_bn(_avg_pool(x), 192, 1, 1)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
    """Logits (B, num_classes) with include_top, else the mixed10 feature map (B, h, w, 2048).

    `frozen`: BatchNorm modules that run in inference mode even when train=True (Keras'
    trainable=False). Inputs need at least 75 pixels a side, as in Keras.
    """

    num_classes: int = 1000
    include_top: bool = False
    bn_momentum: float = 0.99
    frozen: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if min(x.shape[1:3]) < MIN_SIZE["inceptionv3"]:
            raise ConfigError(f"InceptionV3 needs inputs of at least 75x75 pixels, got {x.shape[1:3]}.")
        unit_numbers = itertools.count(1)

        def conv_bn(
            value: jax.Array, filters: int, rows: int, cols: int, strides: int = 1, padding: Padding = "SAME"
        ) -> jax.Array:
            number = next(unit_numbers)
            conv_name, bn_name = (f"{prefix}_{number}" for prefix in UNIT_PREFIXES)
            value = Conv(
                filters, (rows, cols), (strides, strides), padding, use_bias=False, kernel_init=glorot, name=conv_name
            )(value)
            value = nn.BatchNorm(
                use_running_average=not train or bn_name in self.frozen,
                momentum=self.bn_momentum,
                epsilon=1e-3,
                use_scale=False,
                name=bn_name,
            )(value)
            return nn.relu(value)

        x = conv_bn(x, 32, 3, 3, strides=2, padding="VALID")
        x = conv_bn(x, 32, 3, 3, padding="VALID")
        x = _max_pool(conv_bn(x, 64, 3, 3))
        x = conv_bn(x, 80, 1, 1, padding="VALID")
        x = _max_pool(conv_bn(x, 192, 3, 3, padding="VALID"))
        for pool_filters in (32, 64, 64):  # mixed0..mixed2
            x = _block_35(conv_bn, x, pool_filters)
        x = _reduction_35(conv_bn, x)  # mixed3
        for width in (128, 160, 160, 192):  # mixed4..mixed7
            x = _block_17(conv_bn, x, width)
        x = _reduction_17(conv_bn, x)  # mixed8
        for _ in range(2):  # mixed9, mixed10
            x = _block_8(conv_bn, x)
        if not self.include_top:
            return x
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=glorot, name="predictions")(x)


def rename_keras_layers(layers: dict[str, list]) -> dict[str, list]:
    """Keras InceptionV3 layers ({name: tensors}) with the units' generated names made this module's.

    The n-th Conv2D (BatchNormalization) by its name's counter ("conv2d" counts as 0) becomes
    `conv2d_n` (`batch_normalization_n`), n from 1, whatever the session's counters were.
    Names that are not generated ones ("predictions") are kept, so `assign` reports strays.
    """
    counters: dict[str, list[tuple[int, str]]] = {prefix: [] for prefix in UNIT_PREFIXES}
    for name in layers:
        match = re.fullmatch(r"(conv2d|batch_normalization)(?:_(\d+))?", name)
        if match:
            counters[match[1]].append((int(match[2] or 0), name))
    renamed = {}
    for prefix, entries in counters.items():
        if len(entries) != NUM_UNITS:
            raise ConfigError(f"InceptionV3 has {NUM_UNITS} {prefix} layers; these Keras layers have {len(entries)}.")
        renamed |= {name: f"{prefix}_{rank}" for rank, (_, name) in enumerate(sorted(entries), start=1)}
    return {renamed.get(name, name): arrays for name, arrays in layers.items()}


_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
VARIANTS: dict[str, dict] = {
    "inceptionv3": dict(
        cls=InceptionV3,
        min_size=MIN_SIZE["inceptionv3"],
        preprocessing="tf",
        top_layers=("predictions",),
        weights=dict(
            top=(_BASE + "inception_v3_weights_tf_dim_ordering_tf_kernels.h5", "9a0d58056eeedaa3f26cb7ebd46da564"),
            notop=(
                _BASE + "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "bcbd6486424b2319ff4ef7d526e38f63",
            ),
        ),
        keras_rename=rename_keras_layers,  # apply to a file's layers before labjax.weights.keras.assign
    ),
}
