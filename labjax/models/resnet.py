"""ResNets: Keras' ResNet50/101/152 (v1) and ResNet50V2/101V2/152V2, and torchvision's ResNet18/34.

`ResNet` is layer for layer `keras.applications.ResNet*` / `ResNet*V2` (same layer names, BN
epsilon 1.001e-5, Keras' ZeroPadding2D + 'valid' convolutions and poolings written as explicit
pads), so Keras' ImageNet files load with `labjax.weights.keras`. `BasicResNet` is torchvision's
ResNet18/34 (basic blocks, symmetric pads, BN epsilon 1e-5 and momentum 0.1 in torch's sense)
with the layers named in the Keras pattern (`conv2_block1_1_conv`, ...).

Both take `small_inputs` for 64x64 images (study S1): the 7x7 stride-2 stem convolution and its
max-pool become one 3x3 stride-1 convolution (still `conv1_conv`), so the final feature map is
1/8 of the input instead of 1/32 and every other layer keeps its pretrained shape.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.models.layers import Conv, max_pool

Array = jax.Array

KERAS_EPSILON = 1.001e-5
glorot = nn.initializers.glorot_uniform()  # Keras' Conv2D / Dense default
# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convolutions; nn.Linear's
# kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (its bias, likewise random in
# torch, starts at zero here).
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
torch_linear = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

PAD1 = ((1, 1), (1, 1))
PAD3 = ((3, 3), (3, 3))


def _zero_pad(x: Array, pad: int) -> Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _stem_pool(x: Array) -> Array:
    """Keras' pool1_pad (zeros) + MaxPooling2D(3, 2). Zeros equal torch's -inf pads after a ReLU."""
    return max_pool(_zero_pad(x, 1), (3, 3), (2, 2), padding="VALID")


def _bn_factory(train: bool, frozen: tuple[str, ...], momentum: float, epsilon: float) -> Callable[[str], nn.BatchNorm]:
    """BatchNorm by name; names in `frozen` use their running statistics even in training."""

    def bn(name: str) -> nn.BatchNorm:
        return nn.BatchNorm(
            use_running_average=(not train) or (name in frozen), momentum=momentum, epsilon=epsilon, name=name
        )

    return bn


def _top(x: Array, num_classes: int, kernel_init: Callable) -> Array:
    """Global average pooling + the Dense 'predictions' layer, returning logits."""
    return nn.Dense(num_classes, kernel_init=kernel_init, name="predictions")(jnp.mean(x, axis=(1, 2)))


class ResNet(nn.Module):
    """Keras' ResNet (bottleneck blocks; `preact=True`: ResNetV2's pre-activation blocks + post_bn).

    Returns logits (B, num_classes) with `include_top`, else the last feature map
    (conv5_block{n}_out for v1, post_relu for v2).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    preact: bool = False
    num_classes: int = 1000
    include_top: bool = False
    bn_momentum: float = 0.99
    frozen: tuple[str, ...] = ()
    small_inputs: bool = False
    return_endpoints: bool = False  # v1: a dict of Keras-named stage outputs, for segmentation decoders

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array | dict[str, Array]:
        bn = _bn_factory(train, self.frozen, self.bn_momentum, KERAS_EPSILON)
        endpoints = {}
        conv = functools.partial(Conv, kernel_init=glorot)
        if self.small_inputs:
            x = conv(64, (3, 3), padding=PAD1, name="conv1_conv")(x)
        else:
            x = conv(64, (7, 7), (2, 2), padding=PAD3, name="conv1_conv")(x)
        if not self.preact:
            x = jax.nn.relu(bn("conv1_bn")(x))
            endpoints["conv1_relu"] = x
        if not self.small_inputs:
            x = _stem_pool(x)
        last_stage = len(self.depths) - 1
        for stage, blocks in enumerate(self.depths):
            filters = 64 * 2**stage
            for block in range(1, blocks + 1):
                name = f"conv{stage + 2}_block{block}"
                if self.preact:  # stride on the stage's last block; none in the last stage
                    stride = 2 if block == blocks and stage < last_stage else 1
                    x = _block_v2(x, filters, stride, block == 1, name, conv, bn)
                else:  # stride on the stage's first block; none in the first stage
                    stride = 2 if block == 1 and stage > 0 else 1
                    x = _block_v1(x, filters, stride, block == 1, name, conv, bn)
                endpoints[f"{name}_out"] = x
        if self.return_endpoints:
            return endpoints
        if self.preact:
            x = jax.nn.relu(bn("post_bn")(x))
        if self.include_top:
            return _top(x, self.num_classes, glorot)
        return x


def _block_v1(x: Array, filters: int, stride: int, conv_shortcut: bool, name: str, conv, bn) -> Array:
    """Keras `residual_block_v1`: 1x1 (strided) -> 3x3 -> 1x1 (4x filters), post-activation."""
    strides = (stride, stride)
    if conv_shortcut:
        shortcut = bn(f"{name}_0_bn")(conv(4 * filters, (1, 1), strides, padding="VALID", name=f"{name}_0_conv")(x))
    else:
        shortcut = x
    x = conv(filters, (1, 1), strides, padding="VALID", name=f"{name}_1_conv")(x)
    x = jax.nn.relu(bn(f"{name}_1_bn")(x))
    x = conv(filters, (3, 3), padding="SAME", name=f"{name}_2_conv")(x)
    x = jax.nn.relu(bn(f"{name}_2_bn")(x))
    x = bn(f"{name}_3_bn")(conv(4 * filters, (1, 1), padding="VALID", name=f"{name}_3_conv")(x))
    return jax.nn.relu(shortcut + x)


def _block_v2(x: Array, filters: int, stride: int, conv_shortcut: bool, name: str, conv, bn) -> Array:
    """Keras `residual_block_v2`: BN-ReLU preactivation, 1x1 -> padded 3x3 (strided) -> 1x1."""
    strides = (stride, stride)
    preact = jax.nn.relu(bn(f"{name}_preact_bn")(x))
    if conv_shortcut:
        shortcut = conv(4 * filters, (1, 1), strides, padding="VALID", name=f"{name}_0_conv")(preact)
    else:  # Keras' MaxPooling2D(1, strides=stride): a plain subsample
        shortcut = x[:, ::stride, ::stride] if stride > 1 else x
    x = conv(filters, (1, 1), padding="VALID", use_bias=False, name=f"{name}_1_conv")(preact)
    x = jax.nn.relu(bn(f"{name}_1_bn")(x))
    x = conv(filters, (3, 3), strides, padding=PAD1, use_bias=False, name=f"{name}_2_conv")(x)
    x = jax.nn.relu(bn(f"{name}_2_bn")(x))
    x = conv(4 * filters, (1, 1), padding="VALID", name=f"{name}_3_conv")(x)
    return shortcut + x


class BasicResNet(nn.Module):
    """torchvision's ResNet18/34: basic blocks (two 3x3 convolutions), 1x1 projection shortcuts.

    Layers are named as Keras would (conv1_conv, conv2_block1_1_conv, ..., predictions), so
    the same freezing and import machinery applies. Returns logits with `include_top`, else the
    last feature map.
    """

    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 1000
    include_top: bool = False
    bn_momentum: float = 0.9  # torch's momentum 0.1
    frozen: tuple[str, ...] = ()
    small_inputs: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        bn = _bn_factory(train, self.frozen, self.bn_momentum, 1e-5)
        conv = functools.partial(Conv, use_bias=False, kernel_init=he_fan_out)
        if self.small_inputs:
            x = conv(64, (3, 3), padding=PAD1, name="conv1_conv")(x)
        else:
            x = conv(64, (7, 7), (2, 2), padding=PAD3, name="conv1_conv")(x)
        x = jax.nn.relu(bn("conv1_bn")(x))
        if not self.small_inputs:
            x = _stem_pool(x)
        for stage, blocks in enumerate(self.depths):
            filters = 64 * 2**stage
            for block in range(1, blocks + 1):
                stride = 2 if block == 1 and stage > 0 else 1
                name = f"conv{stage + 2}_block{block}"
                strides = (stride, stride)
                if stride != 1 or x.shape[-1] != filters:
                    shortcut = conv(filters, (1, 1), strides, padding="VALID", name=f"{name}_0_conv")(x)
                    shortcut = bn(f"{name}_0_bn")(shortcut)
                else:
                    shortcut = x
                y = conv(filters, (3, 3), strides, padding=PAD1, name=f"{name}_1_conv")(x)
                y = jax.nn.relu(bn(f"{name}_1_bn")(y))
                y = bn(f"{name}_2_bn")(conv(filters, (3, 3), padding=PAD1, name=f"{name}_2_conv")(y))
                x = jax.nn.relu(shortcut + y)
        if self.include_top:
            return _top(x, self.num_classes, torch_linear)
        return x


DEPTHS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "resnet50v2": (3, 4, 6, 3),
    "resnet101v2": (3, 4, 23, 3),
    "resnet152v2": (3, 8, 36, 3),
}

# Keras' min_size for every ResNet. ResNet18/34 would run on smaller inputs, but 32 keeps the five
# halvings meaningful (1x1 final map); with small_inputs the final map is side/8.
MIN_SIZE = dict.fromkeys(DEPTHS, 32)

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
# (top, notop) file hashes, copied from keras/src/applications/resnet.py.
_KERAS_HASHES = {
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}


def _keras_weights(name: str) -> dict[str, tuple[str, str]]:
    top, notop = _KERAS_HASHES[name]
    stem = f"{_KERAS_URL}{name}_weights_tf_dim_ordering_tf_kernels"
    return dict(top=(f"{stem}.h5", top), notop=(f"{stem}_notop.h5", notop))


VARIANTS: dict[str, dict] = {
    **{
        name: dict(
            cls=functools.partial(BasicResNet, depths=DEPTHS[name]),
            min_size=MIN_SIZE[name],
            preprocessing="torch",
            top_layers=("predictions",),
            weights=None,
        )
        for name in ("resnet18", "resnet34")
    },
    **{
        name: dict(
            cls=functools.partial(ResNet, depths=DEPTHS[name], preact=name.endswith("v2")),
            min_size=MIN_SIZE[name],
            preprocessing="tf" if name.endswith("v2") else "caffe",
            top_layers=("predictions",),
            weights=_keras_weights(name),
        )
        for name in _KERAS_HASHES
    },
}
