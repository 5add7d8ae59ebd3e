"""EfficientNet B0-B7 (Tan & Le 2019), layer for layer as `keras.applications.EfficientNetB*`.

Every module with variables carries its Keras layer's name (`stem_conv`, `block2a_expand_bn`,
`block1a_se_reduce`, `normalization`, ...), so Keras' ImageNet files load with
`labjax.weights.keras.assign`. The model takes pixels in [0, 255] and normalises them itself
(Rescaling 1/255 and a Keras Normalization layer), so its preprocessing is "none".
"""

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.models.layers import Conv, DepthwiseConv

# (kernel size, repeats, filters in, filters out, expand ratio, stride) of the seven stages of B0, as
# Keras' DEFAULT_BLOCKS_ARGS; every block has id_skip=True and se_ratio=0.25.
BLOCKS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), the Normalization layer's floor on sqrt(variance)

# Keras' CONV_KERNEL_INITIALIZER and DENSE_KERNEL_INITIALIZER. A depthwise kernel is (kh, kw, 1, C) here
# but (kh, kw, C, 1) in Keras, so its fan-out (kh * kw) is read with the last two axes swapped.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal", in_axis=-1, out_axis=-2)
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Keras' channel scaling: nearest multiple of divisor, never below 90% of the scaled value."""
    filters *= width_coefficient
    new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new_filters < 0.9 * filters:
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Keras' depth scaling of a stage's block count."""
    return int(math.ceil(depth_coefficient * repeats))


def correct_pad(size: tuple[int, int], kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras `correct_pad`: the zero padding before a stride-2 'valid' convolution."""
    return tuple((kernel // 2 - (1 - n % 2), kernel // 2) for n in size)


class Normalization(nn.Module):
    """Keras' Normalization layer (axis=-1): (x - mean) / max(sqrt(var), eps), statistics never updated.

    Keras builds it unadapted (mean 0, variance 1, count 0); ImageNet files hold the ImageNet statistics.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32).value
        self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
        return (x - mean) / jnp.maximum(jnp.sqrt(var), KERAS_EPSILON)


def mbconv_block(
    inputs: jax.Array,
    bn: Callable[[str], nn.Module],
    conv: Callable[..., nn.Module],
    name: str,
    filters_in: int,
    filters_out: int,
    kernel: int,
    stride: int,
    expand_ratio: int,
    drop_rate: float,
    train: bool,
) -> jax.Array:
    """Keras `block`: expand, depthwise, squeeze-and-excite, project, stochastic-depth residual."""
    channels = filters_in * expand_ratio
    x = inputs
    if expand_ratio != 1:
        x = conv(channels, name + "expand_conv")(x)
        x = nn.swish(bn(name + "expand_bn")(x))
    padding = correct_pad(x.shape[1:3], kernel) if stride == 2 else "SAME"
    x = DepthwiseConv((kernel, kernel), (stride, stride), padding, kernel_init=depthwise_init, name=name + "dwconv")(x)
    x = nn.swish(bn(name + "bn")(x))

    squeezed = max(1, int(filters_in * SE_RATIO))
    se = x.mean(axis=(1, 2), keepdims=True)
    se = nn.swish(Conv(squeezed, (1, 1), kernel_init=conv_init, name=name + "se_reduce")(se))
    se = nn.sigmoid(Conv(channels, (1, 1), kernel_init=conv_init, name=name + "se_expand")(se))
    x = x * se

    x = conv(filters_out, name + "project_conv")(x)
    x = bn(name + "project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = nn.Dropout(drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train, name=name + "drop")(x)
        x = x + inputs
    return x


class EfficientNet(nn.Module):
    """EfficientNet scaled by width and depth; B0-B7 are the `VARIANTS` below.

    include_top=False returns the `top_activation` feature map (B, h, w, C); True returns logits.
    """

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    num_classes: int = 1000
    include_top: bool = False
    dropout: float = 0.2  # top_dropout before `predictions`
    drop_connect_rate: float = 0.2  # stochastic depth of the residual blocks, rising linearly to this rate
    depth_divisor: int = 8
    imagenet_rescaling: bool = False  # Keras' extra Rescaling(1/sqrt(stddev)), present only with ImageNet weights
    bn_momentum: float = 0.99
    frozen: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        def bn(name: str) -> nn.BatchNorm:
            frozen = not train or name in self.frozen
            return nn.BatchNorm(use_running_average=frozen, momentum=self.bn_momentum, epsilon=1e-3, name=name)

        def conv(features: int, name: str) -> Conv:  # Keras' 1x1 Conv2D without bias
            return Conv(features, (1, 1), use_bias=False, kernel_init=conv_init, name=name)

        filters = functools.partial(round_filters, width_coefficient=self.width_coefficient, divisor=self.depth_divisor)

        x = x * (1.0 / 255.0)
        x = Normalization(name="normalization")(x)
        if self.imagenet_rescaling:
            x = x * jnp.asarray([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], x.dtype)
        x = Conv(
            filters(32), (3, 3), (2, 2), correct_pad(x.shape[1:3], 3), use_bias=False, kernel_init=conv_init,
            name="stem_conv",
        )(x)  # fmt: skip
        x = nn.swish(bn("stem_bn")(x))

        blocks = float(sum(round_repeats(stage[1], self.depth_coefficient) for stage in BLOCKS))
        b = 0
        for i, (kernel, repeats, filters_in, filters_out, expand_ratio, stride) in enumerate(BLOCKS):
            filters_in, filters_out = filters(filters_in), filters(filters_out)
            for j in range(round_repeats(repeats, self.depth_coefficient)):
                if j > 0:
                    stride, filters_in = 1, filters_out
                x = mbconv_block(
                    x, bn, conv, f"block{i + 1}{chr(j + 97)}_", filters_in, filters_out, kernel, stride,
                    expand_ratio, self.drop_connect_rate * b / blocks, train,
                )  # fmt: skip
                b += 1

        x = conv(filters(1280), "top_conv")(x)
        x = nn.swish(bn("top_bn")(x))
        if not self.include_top:
            return x
        x = x.mean(axis=(1, 2))
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train, name="top_dropout")(x)
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="predictions")(x)


# (width, depth, Keras default input size, top dropout) per variant, as keras.applications.
_SCALING = {
    "efficientnetb0": (1.0, 1.0, 224, 0.2),
    "efficientnetb1": (1.0, 1.1, 240, 0.2),
    "efficientnetb2": (1.1, 1.2, 260, 0.3),
    "efficientnetb3": (1.2, 1.4, 300, 0.3),
    "efficientnetb4": (1.4, 1.8, 380, 0.4),
    "efficientnetb5": (1.6, 2.2, 456, 0.4),
    "efficientnetb6": (1.8, 2.6, 528, 0.5),
    "efficientnetb7": (2.0, 3.1, 600, 0.5),
}
# Keras WEIGHTS_HASHES: (top file, no-top file) per variant.
_HASHES = {
    "efficientnetb0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "efficientnetb1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "efficientnetb2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "efficientnetb3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "efficientnetb4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "efficientnetb5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "efficientnetb6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "efficientnetb7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}
BASE_WEIGHTS_PATH = "https://storage.googleapis.com/keras-applications/"

DEFAULT_SIZE = {name: size for name, (_, _, size, _) in _SCALING.items()}  # the ImageNet training resolution
MIN_SIZE = {name: 32 for name in _SCALING}

VARIANTS: dict[str, dict] = {
    name: dict(
        cls=functools.partial(EfficientNet, width_coefficient=width, depth_coefficient=depth, dropout=dropout),
        min_size=MIN_SIZE[name],
        preprocessing="none",
        top_layers=("predictions",),
        weights=dict(
            top=(f"{BASE_WEIGHTS_PATH}{name}.h5", _HASHES[name][0]),
            notop=(f"{BASE_WEIGHTS_PATH}{name}_notop.h5", _HASHES[name][1]),
        ),
    )
    for name, (width, depth, _, dropout) in _SCALING.items()
}
