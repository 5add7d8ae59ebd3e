"""VGG16 and VGG19 (Simonyan & Zisserman 2015), layer for layer as `keras.applications.VGG16/VGG19`.

Five blocks of 3x3 'same' convolutions with ReLU, each closed by a 2x2 max pool; the original
top flattens the last feature map into two 4096-wide ReLU dense layers and the classifier.
Module names are the Keras layer names (`block1_conv1` ... `fc1`, `fc2`, `predictions`), so
Keras weight files load by name. VGG has no BatchNorm.
"""

import functools

import flax.linen as nn
import jax

from labjax.models.layers import Conv, max_pool

WIDTHS = (64, 128, 256, 512, 512)  # filters of blocks 1..5
VGG16_DEPTHS = (2, 2, 3, 3, 3)  # convolutions per block
VGG19_DEPTHS = (2, 2, 4, 4, 4)
TOP_WIDTH = 4096  # fc1 and fc2

glorot = nn.initializers.glorot_uniform()  # Keras' default, so training from scratch matches Keras


class VGG(nn.Module):
    """VGG backbone (include_top=False: block5_pool's map) or the Keras top (logits).

    The original top's fc1 reads the flattened final map, so its kernel (and a pretrained top
    file, made at 224x224) fixes the input size; the backbone takes any side >= 32.
    `frozen` is accepted for the common Keras-family interface and has no effect here: VGG has
    no BatchNorm, so freezing is entirely the optimizer's business.
    """

    depths: tuple[int, ...] = VGG16_DEPTHS
    num_classes: int = 1000
    include_top: bool = False
    frozen: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for block, (depth, width) in enumerate(zip(self.depths, WIDTHS), start=1):
            for index in range(1, depth + 1):
                x = Conv(width, (3, 3), padding="SAME", kernel_init=glorot, name=f"block{block}_conv{index}")(x)
                x = nn.relu(x)
            # views: faster than lax's pool here (see max_pool's views_in_inference)
            x = max_pool(x, (2, 2), strides=(2, 2), views_in_inference=True)  # block{block}_pool
        if not self.include_top:
            return x
        x = x.reshape(x.shape[0], -1)  # Keras' Flatten of the NHWC map: same element order
        x = nn.relu(nn.Dense(TOP_WIDTH, kernel_init=glorot, name="fc1")(x))
        x = nn.relu(nn.Dense(TOP_WIDTH, kernel_init=glorot, name="fc2")(x))
        return nn.Dense(self.num_classes, kernel_init=glorot, name="predictions")(x)


MIN_SIZE = {"vgg16": 32, "vgg19": 32}

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
VARIANTS: dict[str, dict] = {
    "vgg16": dict(
        cls=functools.partial(VGG, depths=VGG16_DEPTHS),
        min_size=MIN_SIZE["vgg16"],
        preprocessing="caffe",
        top_layers=("fc1", "fc2", "predictions"),
        weights=dict(
            top=(_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b"),
            notop=(
                _BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "6d6bbae143d832006294945121d1f1fc",
            ),
        ),
    ),
    "vgg19": dict(
        cls=functools.partial(VGG, depths=VGG19_DEPTHS),
        min_size=MIN_SIZE["vgg19"],
        preprocessing="caffe",
        top_layers=("fc1", "fc2", "predictions"),
        weights=dict(
            top=(_BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318"),
            notop=(
                _BASE + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "253f8cb515780f3b799900260a226db6",
            ),
        ),
    ),
}
