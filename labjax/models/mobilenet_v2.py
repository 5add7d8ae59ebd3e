"""MobileNetV2 (Sandler et al. 2018), layer for layer as `keras.applications.MobileNetV2`.

Endpoints are named after the Keras layers so that segmentation decoders can tap the same
features as Keras code (`block_13_expand_relu`, `block_16_project`, ...).
"""

import functools

import flax.linen as nn
import jax

from labjax.models.layers import Conv, DepthwiseConv

# (expansion, output filters, stride) for block ids 0..16, as in Keras.
BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)  # fmt: skip

glorot = nn.initializers.glorot_uniform()  # Keras' default, so training matches the peers


def make_divisible(value: float, divisor: int = 8) -> int:
    """Keras' channel rounding: nearest multiple of divisor, never below 90% of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _keras_stride2_pad(size: int, kernel: int = 3) -> tuple[int, int]:
    """Keras `correct_pad`: asymmetric zero padding before a stride-2 'valid' conv."""
    adjust = 1 - size % 2
    return (kernel // 2 - adjust, kernel // 2)


class MobileNetV2(nn.Module):
    """Returns a dict of endpoints up to `last_endpoint` (the whole backbone by default)."""

    alpha: float = 1.0
    last_endpoint: str = "out_relu"
    bn_momentum: float = 0.999  # Keras' value, right for pretrained statistics

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3)
        endpoints = {}

        def tap(name: str, value: jax.Array) -> bool:
            endpoints[name] = value
            return name == self.last_endpoint

        first = make_divisible(32 * self.alpha)
        x = Conv(first, (3, 3), (2, 2), "SAME", use_bias=False, kernel_init=glorot, name="Conv1")(x)
        x = jax.nn.relu6(bn(name="bn_Conv1")(x))
        if tap("Conv1_relu", x):
            return endpoints
        for block_id, (expansion, filters, stride) in enumerate(BLOCKS):
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            inputs = x
            out_channels = make_divisible(int(filters * self.alpha))
            if block_id:
                x = Conv(
                    expansion * x.shape[-1], (1, 1), use_bias=False, kernel_init=glorot,
                    name=prefix + "expand",
                )(x)  # fmt: skip
                x = jax.nn.relu6(bn(name=prefix + "expand_BN")(x))
                if tap(prefix + "expand_relu", x):
                    return endpoints
            padding = "SAME"
            if stride == 2:
                padding = (_keras_stride2_pad(x.shape[1]), _keras_stride2_pad(x.shape[2]))
            x = DepthwiseConv((3, 3), (stride, stride), padding, kernel_init=glorot, name=prefix + "depthwise")(x)
            x = jax.nn.relu6(bn(name=prefix + "depthwise_BN")(x))
            if tap(prefix + "depthwise_relu", x):
                return endpoints
            x = Conv(out_channels, (1, 1), use_bias=False, kernel_init=glorot, name=prefix + "project")(x)
            if tap(prefix + "project", x):
                return endpoints
            x = bn(name=prefix + "project_BN")(x)
            if stride == 1 and inputs.shape[-1] == out_channels:
                x = x + inputs
                if tap(prefix + "add", x):
                    return endpoints
        last = make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280
        x = Conv(last, (1, 1), use_bias=False, kernel_init=glorot, name="Conv_1")(x)
        x = jax.nn.relu6(bn(name="Conv_1_bn")(x))
        tap("out_relu", x)
        return endpoints


def endpoint_names() -> list[str]:
    """Every endpoint name MobileNetV2 can return, in order (for config validation)."""
    names = ["Conv1_relu"]
    for block_id in range(len(BLOCKS)):
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        if block_id:
            names.append(prefix + "expand_relu")
        names += [prefix + "depthwise_relu", prefix + "project"]
        expansion, filters, stride = BLOCKS[block_id]
        if block_id and stride == 1 and filters == BLOCKS[block_id - 1][1]:
            names.append(prefix + "add")
    return names + ["out_relu"]
