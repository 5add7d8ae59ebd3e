"""Xception (Chollet 2017), layer for layer as `keras.applications.Xception`.

Entry flow (two 'valid' convolutions, then three blocks of separable convolutions closed by a
strided max pool plus a 1x1 strided residual convolution), eight middle blocks of three
separable convolutions with identity residuals, and the exit flow (block 13 with a residual,
block 14 without). BatchNorm as Keras' default (momentum 0.99, epsilon 1e-3).

Module names are the Keras layer names. Keras leaves the four residual convolutions and their
BatchNorms unnamed, so their names depend on the session that built or saved a model; here
they are `conv2d_1`..`conv2d_4` and `batch_normalization_1`..`batch_normalization_4` (the
Keras 2 names, in network order), and `rename_keras_layers` maps any Keras model's or file's
names for them onto these, by order.
"""

import flax.linen as nn
import jax
import numpy as np

from labjax.models.layers import Conv, SeparableConv, max_pool

RESIDUAL_CONVS = ("conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4")
RESIDUAL_BNS = ("batch_normalization_1", "batch_normalization_2", "batch_normalization_3", "batch_normalization_4")
ENTRY_BLOCKS = ((2, 128), (3, 256), (4, 728))  # (block number, filters) of the entry flow
MIDDLE_BLOCKS = range(5, 13)

glorot = nn.initializers.glorot_uniform()  # Keras' default for Conv2D, SeparableConv2D and Dense


class Xception(nn.Module):
    """Xception backbone (include_top=False: block14_sepconv2_act's map) or the Keras top (logits)."""

    num_classes: int = 1000
    include_top: bool = False
    bn_momentum: float = 0.99
    frozen: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        def bn(value: jax.Array, name: str) -> jax.Array:
            frozen = name in self.frozen
            return nn.BatchNorm(
                use_running_average=not train or frozen, momentum=self.bn_momentum, epsilon=1e-3, name=name
            )(value)

        def sepconv(value: jax.Array, filters: int, name: str) -> jax.Array:
            """SeparableConv2D(3x3, 'same', no bias) then its BatchNorm `name_bn`."""
            value = SeparableConv(filters, (3, 3), padding="SAME", use_bias=False, kernel_init=glorot, name=name)(value)
            return bn(value, name + "_bn")

        def residual(value: jax.Array, filters: int, index: int) -> jax.Array:
            """The strided 1x1 shortcut of a downsampling block."""
            conv = Conv(filters, (1, 1), (2, 2), "SAME", use_bias=False, kernel_init=glorot, name=RESIDUAL_CONVS[index])
            return bn(conv(value), RESIDUAL_BNS[index])

        def pool(value: jax.Array) -> jax.Array:
            return max_pool(value, (3, 3), strides=(2, 2), padding="SAME")

        x = Conv(32, (3, 3), (2, 2), "VALID", use_bias=False, kernel_init=glorot, name="block1_conv1")(x)
        x = nn.relu(bn(x, "block1_conv1_bn"))
        x = Conv(64, (3, 3), padding="VALID", use_bias=False, kernel_init=glorot, name="block1_conv2")(x)
        x = nn.relu(bn(x, "block1_conv2_bn"))

        for index, (block, filters) in enumerate(ENTRY_BLOCKS):
            shortcut = residual(x, filters, index)
            if index:  # block 2 follows block1_conv2_act directly
                x = nn.relu(x)
            x = nn.relu(sepconv(x, filters, f"block{block}_sepconv1"))
            x = sepconv(x, filters, f"block{block}_sepconv2")
            x = pool(x) + shortcut

        for block in MIDDLE_BLOCKS:
            shortcut = x
            for index in (1, 2, 3):
                x = sepconv(nn.relu(x), 728, f"block{block}_sepconv{index}")
            x = x + shortcut

        shortcut = residual(x, 1024, 3)
        x = nn.relu(sepconv(nn.relu(x), 728, "block13_sepconv1"))
        x = pool(sepconv(x, 1024, "block13_sepconv2")) + shortcut
        x = nn.relu(sepconv(x, 1536, "block14_sepconv1"))
        x = nn.relu(sepconv(x, 2048, "block14_sepconv2"))
        if not self.include_top:
            return x
        return nn.Dense(self.num_classes, kernel_init=glorot, name="predictions")(x.mean(axis=(1, 2)))


def rename_keras_layers(layers: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Keras Xception layers ({name: tensors}, in model order) with the unnamed residual layers renamed.

    Every named Xception layer starts with 'block' or is 'predictions'; any other layer with one
    tensor is a residual convolution and one with four a residual BatchNorm, taken in order.
    Anything else keeps its name (so `assign` reports it).
    """
    convs, bns = iter(RESIDUAL_CONVS), iter(RESIDUAL_BNS)
    renamed = {}
    for name, arrays in layers.items():
        if not (name.startswith("block") or name == "predictions"):
            if len(arrays) == 1:
                name = next(convs, name)
            elif len(arrays) == 4:
                name = next(bns, name)
        renamed[name] = arrays
    return renamed


MIN_SIZE = {"xception": 71}

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
VARIANTS: dict[str, dict] = {
    "xception": dict(
        cls=Xception,
        min_size=MIN_SIZE["xception"],
        preprocessing="tf",
        top_layers=("predictions",),
        weights=dict(
            top=(_BASE + "xception_weights_tf_dim_ordering_tf_kernels.h5", "0a58e3b7378bc2990ea3b43d5981f1f6"),
            notop=(_BASE + "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
        ),
        keras_rename=rename_keras_layers,  # apply to a file's layers before labjax.weights.keras.assign
    ),
}
