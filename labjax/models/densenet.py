"""DenseNet-121/169/201 (Huang et al. 2017), layer for layer as `keras.applications.DenseNet*`.

Every module with variables carries its Keras layer's name ('/' -> '_': `conv1_conv`, `conv1_bn`,
`conv2_block1_0_bn`, `pool2_conv`, `bn`, `predictions`), so Keras' ImageNet files load with
`labjax.weights.keras.assign`. Keras' ZeroPadding2D + 'valid' layers become explicit pads.

Dense blocks keep the layer outputs as a list and concatenate it once per layer, right before
the BatchNorm that reads it: the same tensors Keras' chain of `_concat` layers builds, never a
concatenation of a concatenation.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.models.layers import Conv, max_pool

BN_EPSILON = 1.001e-5  # Keras DenseNet's value (the pretrained statistics assume it)
glorot = nn.initializers.glorot_uniform()  # Keras' default Conv2D/Dense kernel initialiser


class DenseNet(nn.Module):
    """DenseNet-BC: stem, four dense blocks joined by halving transitions, final BN-ReLU.

    include_top=True returns logits (B, num_classes) of Keras' top (global average pool +
    `predictions`, without its softmax); False returns the final (B, h, w, C) feature map, as
    Keras include_top=False, pooling=None.
    """

    blocks: tuple[int, ...] = (6, 12, 24, 16)  # conv_blocks per dense block (DenseNet121)
    growth_rate: int = 32  # channels each conv_block adds (Keras fixes 32)
    num_classes: int = 1000
    include_top: bool = False
    bn_momentum: float = 0.99  # Keras' BatchNormalization default
    frozen: tuple[str, ...] = ()  # BatchNorm names that use running statistics even when train=True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        def bn_relu(name: str, y: jax.Array) -> jax.Array:
            norm = nn.BatchNorm(
                use_running_average=(not train) or (name in self.frozen),
                momentum=self.bn_momentum,
                epsilon=BN_EPSILON,
                name=name,
            )
            return jax.nn.relu(norm(y))

        conv = functools.partial(Conv, use_bias=False, kernel_init=glorot)

        x = conv(64, (7, 7), (2, 2), ((3, 3), (3, 3)), name="conv1_conv")(x)
        x = bn_relu("conv1_bn", x)
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # Keras pads with zeros, not -inf (same after ReLU)
        x = max_pool(x, (3, 3), (2, 2), "VALID")  # pool1
        for stage, num_blocks in enumerate(self.blocks, start=2):
            x = _dense_block(x, num_blocks, self.growth_rate, f"conv{stage}", bn_relu, conv)
            if stage < len(self.blocks) + 1:  # transition (pool{stage}) after every block but the last
                x = bn_relu(f"pool{stage}_bn", x)
                # Keras convolves, then pools; both are linear per pixel, so pooling first gives the same
                # map with a quarter of the 1x1 convolution's work (DenseNet121 at 96 px: 1.09x inference).
                x = nn.avg_pool(x, (2, 2), (2, 2), "VALID")
                x = conv(int(x.shape[-1] * 0.5), (1, 1), name=f"pool{stage}_conv")(x)
        x = bn_relu("bn", x)
        if not self.include_top:
            return x
        x = jnp.mean(x, axis=(1, 2))  # avg_pool
        return nn.Dense(self.num_classes, kernel_init=glorot, name="predictions")(x)


def _dense_block(
    x: jax.Array,
    num_blocks: int,
    growth_rate: int,
    name: str,
    bn_relu: Callable[[str, jax.Array], jax.Array],
    conv: Callable[..., nn.Module],
) -> jax.Array:
    """Keras `dense_block`: each conv_block (BN-ReLU-1x1-BN-ReLU-3x3) appends growth_rate channels."""
    features = [x]
    for i in range(1, num_blocks + 1):
        prefix = f"{name}_block{i}"
        y = bn_relu(f"{prefix}_0_bn", jnp.concatenate(features, axis=-1))
        y = conv(4 * growth_rate, (1, 1), name=f"{prefix}_1_conv")(y)
        y = bn_relu(f"{prefix}_1_bn", y)
        features.append(conv(growth_rate, (3, 3), padding="SAME", name=f"{prefix}_2_conv")(y))
    return jnp.concatenate(features, axis=-1)


DenseNet121 = functools.partial(DenseNet, blocks=(6, 12, 24, 16))
DenseNet169 = functools.partial(DenseNet, blocks=(6, 12, 32, 32))
DenseNet201 = functools.partial(DenseNet, blocks=(6, 12, 48, 32))

# Keras' min_size: the four stride-2 stages after the stem leave a 1x1 map at 32 pixels.
MIN_SIZE = {"densenet121": 32, "densenet169": 32, "densenet201": 32}

_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"


def _weights(variant: str, top_hash: str, notop_hash: str) -> dict[str, tuple[str, str]]:
    return dict(
        top=(f"{_WEIGHTS}{variant}_weights_tf_dim_ordering_tf_kernels.h5", top_hash),
        notop=(f"{_WEIGHTS}{variant}_weights_tf_dim_ordering_tf_kernels_notop.h5", notop_hash),
    )


VARIANTS: dict[str, dict] = {
    "densenet121": dict(
        cls=DenseNet121,
        min_size=MIN_SIZE["densenet121"],
        preprocessing="torch",
        top_layers=("predictions",),
        weights=_weights("densenet121", "9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
    ),
    "densenet169": dict(
        cls=DenseNet169,
        min_size=MIN_SIZE["densenet169"],
        preprocessing="torch",
        top_layers=("predictions",),
        weights=_weights("densenet169", "d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b"),
    ),
    "densenet201": dict(
        cls=DenseNet201,
        min_size=MIN_SIZE["densenet201"],
        preprocessing="torch",
        top_layers=("predictions",),
        weights=_weights("densenet201", "1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    ),
}
