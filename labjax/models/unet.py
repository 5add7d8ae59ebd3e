"""U-Net segmentation: a backbone's skip endpoints + the pix2pix upsampling decoder.

This is the model of the TensorFlow segmentation tutorial (study S0): MobileNetV2 taps at
1/2 .. 1/32 resolution, four `Conv2DTranspose(3x3, s2) -> BatchNorm -> Dropout -> ReLU`
blocks (512, 256, 128, 64 filters) each concatenated with the next skip, and a final
transposed convolution to per-pixel class logits at input resolution.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.models.layers import Conv, ConvTranspose, max_pool
from labjax.models.mobilenet_v2 import MobileNetV2
from labjax.models.resnet import ResNet

MOBILENET_V2_SKIPS = (
    "block_1_expand_relu",  # 1/2
    "block_3_expand_relu",  # 1/4
    "block_6_expand_relu",  # 1/8
    "block_13_expand_relu",  # 1/16
    "block_16_project",  # 1/32
)
DECODER_FILTERS = (512, 256, 128, 64)
pix2pix_init = nn.initializers.normal(0.02)


RESNET50_SKIPS = (
    "conv1_relu",  # 1/2
    "conv2_block3_out",  # 1/4
    "conv3_block4_out",  # 1/8
    "conv4_block6_out",  # 1/16
    "conv5_block3_out",  # 1/32
)


def pix2pix_decoder(skips: list[jax.Array], num_classes: int, dropout: float, bn_momentum: float, train: bool):
    """Upsample the deepest skip, concatenating each shallower one; logits at twice the shallowest's size.

    Called inside a module's compact __call__, so its layers are that module's (up_i, up_i_bn, logits).
    """
    x = skips[-1]
    for i, (filters, skip) in enumerate(zip(DECODER_FILTERS, reversed(skips[:-1]))):
        x = ConvTranspose(filters, (3, 3), (2, 2), use_bias=False, kernel_init=pix2pix_init, name=f"up_{i}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=bn_momentum, epsilon=1e-3, name=f"up_{i}_bn")(x)
        x = nn.Dropout(dropout, deterministic=not train)(x)
        x = jnp.concatenate([jax.nn.relu(x), skip], axis=-1)
    return ConvTranspose(num_classes, (3, 3), (2, 2), kernel_init=nn.initializers.glorot_uniform(), name="logits")(x)


class ResNet50UNet(nn.Module):
    """The pix2pix decoder on Keras' ResNet50 (v1), skips at its stage outputs (1/2 .. 1/32)."""

    num_classes: int
    dropout: float = 0.0
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        endpoints = ResNet(bn_momentum=self.bn_momentum, return_endpoints=True, name="encoder")(x, train=train)
        skips = [endpoints[name] for name in RESNET50_SKIPS]
        return pix2pix_decoder(skips, self.num_classes, self.dropout, self.bn_momentum, train)


class MobileNetV2UNet(nn.Module):
    num_classes: int
    alpha: float = 1.0
    dropout: float = 0.0
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        endpoints = MobileNetV2(
            self.alpha, last_endpoint=MOBILENET_V2_SKIPS[-1], bn_momentum=self.bn_momentum, name="encoder"
        )(x, train=train)
        skips = [endpoints[name] for name in MOBILENET_V2_SKIPS]
        return pix2pix_decoder(skips, self.num_classes, self.dropout, self.bn_momentum, train)


class UNet(nn.Module):
    """The original U-Net (Ronneberger et al. 2015) with "same" padding and BatchNorm.

    Each of `depth` levels: two 3x3 conv -> BatchNorm -> ReLU, then 2x2 max-pool; a bottleneck
    of the same two convs (dropout after it); each decoder level: a 2x2 stride-2 transposed
    convolution, concatenation with the encoder level's output, two convs; 1x1 conv logits.
    `features` channels at the first level, doubling per level (64 in the paper; model.alpha
    scales it). Trains from scratch quickly on small data sets, and compiles in a fraction of
    the MobileNetV2 U-Net's time, which makes it the light model for quick tries.
    """

    num_classes: int
    features: int = 64
    depth: int = 4
    dropout: float = 0.0
    bn_momentum: float = 0.99

    def _convs(self, x: jax.Array, features: int, name: str, train: bool) -> jax.Array:
        for i in range(2):
            x = Conv(features, (3, 3), use_bias=False, name=f"{name}_conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=f"{name}_bn{i}")(x)
            x = jax.nn.relu(x)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        skips = []
        for level in range(self.depth):
            x = self._convs(x, self.features * 2**level, f"down_{level}", train)
            skips.append(x)
            x = max_pool(x, (2, 2), (2, 2))
        x = self._convs(x, self.features * 2**self.depth, "bottleneck", train)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for level in reversed(range(self.depth)):
            features = self.features * 2**level
            x = ConvTranspose(features, (2, 2), (2, 2), name=f"up_{level}")(x)
            x = self._convs(jnp.concatenate([x, skips[level]], axis=-1), features, f"up_{level}", train)
        return Conv(self.num_classes, (1, 1), name="logits")(x)
