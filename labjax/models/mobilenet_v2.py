"""MobileNetV2 (Sandler et al. 2018), layer for layer as `keras.applications.MobileNetV2`.

`MobileNetV2` is the backbone: a dict of endpoints named after the Keras layers, so that
segmentation decoders can tap the same features as Keras code (`block_13_expand_relu`,
`block_16_project`, ...). `MobileNetV2Classifier` is the Keras model itself: the same layers
(same flat module names, so the same Keras files load into either) with Keras' top, global
average pooling + Dense "predictions" (logits), or the `out_relu` feature map.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from labjax.errors import ConfigError
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


def _features(
    x: jax.Array, *, train: bool, alpha: float, last_endpoint: str, bn_momentum: float, frozen: tuple[str, ...]
) -> dict[str, jax.Array]:
    """The Keras layers up to `last_endpoint`, created in the calling module's compact scope (flat names)."""
    endpoints = {}

    def bn(name: str) -> nn.BatchNorm:
        frozen_bn = not train or name in frozen
        return nn.BatchNorm(use_running_average=frozen_bn, momentum=bn_momentum, epsilon=1e-3, name=name)

    def tap(name: str, value: jax.Array) -> bool:
        endpoints[name] = value
        return name == last_endpoint

    first = make_divisible(32 * alpha)
    x = Conv(first, (3, 3), (2, 2), "SAME", use_bias=False, kernel_init=glorot, name="Conv1")(x)
    x = jax.nn.relu6(bn("bn_Conv1")(x))
    if tap("Conv1_relu", x):
        return endpoints
    for block_id, (expansion, filters, stride) in enumerate(BLOCKS):
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        inputs = x
        out_channels = make_divisible(int(filters * alpha))
        if block_id:
            x = Conv(expansion * x.shape[-1], (1, 1), use_bias=False, kernel_init=glorot, name=prefix + "expand")(x)
            x = jax.nn.relu6(bn(prefix + "expand_BN")(x))
            if tap(prefix + "expand_relu", x):
                return endpoints
        padding = "SAME"
        if stride == 2:
            padding = (_keras_stride2_pad(x.shape[1]), _keras_stride2_pad(x.shape[2]))
        x = DepthwiseConv((3, 3), (stride, stride), padding, kernel_init=glorot, name=prefix + "depthwise")(x)
        x = jax.nn.relu6(bn(prefix + "depthwise_BN")(x))
        if tap(prefix + "depthwise_relu", x):
            return endpoints
        x = Conv(out_channels, (1, 1), use_bias=False, kernel_init=glorot, name=prefix + "project")(x)
        if tap(prefix + "project", x):
            return endpoints
        x = bn(prefix + "project_BN")(x)
        if stride == 1 and inputs.shape[-1] == out_channels:
            x = x + inputs
            if tap(prefix + "add", x):
                return endpoints
    last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280  # Keras: no alpha below 1 on the last conv
    x = Conv(last, (1, 1), use_bias=False, kernel_init=glorot, name="Conv_1")(x)
    x = jax.nn.relu6(bn("Conv_1_bn")(x))
    tap("out_relu", x)
    return endpoints


class MobileNetV2(nn.Module):
    """Returns a dict of endpoints up to `last_endpoint` (the whole backbone by default).

    `frozen`: BatchNorm modules that run in inference mode even when train=True (Keras'
    trainable=False).
    """

    alpha: float = 1.0
    last_endpoint: str = "out_relu"
    bn_momentum: float = 0.999  # Keras' value, right for pretrained statistics
    frozen: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        return _features(
            x,
            train=train,
            alpha=self.alpha,
            last_endpoint=self.last_endpoint,
            bn_momentum=self.bn_momentum,
            frozen=self.frozen,
        )


class MobileNetV2Classifier(nn.Module):
    """`keras.applications.MobileNetV2`: logits (B, num_classes) with include_top, else the out_relu map.

    Module names are Keras' and flat, as in `MobileNetV2`; the top's Dense is "predictions"
    (Keras' final softmax is left to the loss). `frozen` as in `MobileNetV2`.
    """

    num_classes: int = 1000
    include_top: bool = False
    alpha: float = 1.0
    bn_momentum: float = 0.999  # Keras MobileNetV2's BatchNorm momentum
    frozen: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = _features(
            x, train=train, alpha=self.alpha, last_endpoint="out_relu", bn_momentum=self.bn_momentum, frozen=self.frozen
        )["out_relu"]
        if not self.include_top:
            return x
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=glorot, name="predictions")(x)


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


MIN_SIZE = {"mobilenetv2": 32}

KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # widths with ImageNet weights
KERAS_SIZES = (96, 128, 160, 192, 224)  # input sides with ImageNet weights
_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def weights_url(alpha: float, size: int, include_top: bool) -> str:
    """URL of Keras' ImageNet file for this width and input side (Keras' naming; other sides get 224's)."""
    if alpha not in KERAS_ALPHAS:
        raise ConfigError(
            f"config.model.alpha={alpha}: MobileNetV2 ImageNet weights exist for alpha in {KERAS_ALPHAS}."
        )
    rows = size if size in KERAS_SIZES else 224
    stem = f"{_BASE}mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}"
    return f"{stem}.h5" if include_top else f"{stem}_no_top.h5"


def keras_weights(model_config: ml_collections.ConfigDict, input_size: int) -> dict[str, tuple[str, None]]:
    """{"top", "notop": (URL, file hash)} for the configured alpha and input side (Keras checks no hash here)."""
    return {key: (weights_url(model_config.alpha, input_size, key == "top"), None) for key in ("top", "notop")}


def rename_keras_layers(layers: dict[str, list]) -> dict[str, list]:
    """Keras layers with the top's Dense called "predictions".

    keras_applications (which made the ImageNet files) named it "Logits"; keras 3 names it
    "predictions". Every other layer name is the same in both.
    """
    return {("predictions" if name == "Logits" else name): arrays for name, arrays in layers.items()}


VARIANTS: dict[str, dict] = {
    "mobilenetv2": dict(
        cls=MobileNetV2Classifier,  # alpha: the config's model.alpha
        min_size=MIN_SIZE["mobilenetv2"],
        preprocessing="tf",
        top_layers=("predictions",),
        weights=keras_weights,
        keras_rename=rename_keras_layers,  # apply to a file's layers before labjax.weights.keras.assign
    ),
}
