"""U-Net segmentation: a backbone's skip endpoints + the pix2pix upsampling decoder.

This is the model of the TensorFlow segmentation tutorial (study S0): MobileNetV2 taps at
1/2 .. 1/32 resolution, four `Conv2DTranspose(3x3, s2) -> BatchNorm -> Dropout -> ReLU`
blocks (512, 256, 128, 64 filters) each concatenated with the next skip, and a final
transposed convolution to per-pixel class logits at input resolution.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.models.layers import ConvTranspose
from labjax.models.mobilenet_v2 import MobileNetV2

MOBILENET_V2_SKIPS = (
    "block_1_expand_relu",  # 1/2
    "block_3_expand_relu",  # 1/4
    "block_6_expand_relu",  # 1/8
    "block_13_expand_relu",  # 1/16
    "block_16_project",  # 1/32
)
DECODER_FILTERS = (512, 256, 128, 64)
pix2pix_init = nn.initializers.normal(0.02)


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
        x = skips[-1]
        for i, (filters, skip) in enumerate(zip(DECODER_FILTERS, reversed(skips[:-1]))):
            x = ConvTranspose(filters, (3, 3), (2, 2), use_bias=False, kernel_init=pix2pix_init, name=f"up_{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3, name=f"up_{i}_bn")(
                x
            )
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = jnp.concatenate([jax.nn.relu(x), skip], axis=-1)
        return ConvTranspose(
            self.num_classes, (3, 3), (2, 2), kernel_init=nn.initializers.glorot_uniform(), name="logits"
        )(x)
