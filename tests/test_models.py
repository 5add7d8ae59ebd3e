"""Models against their Keras originals: parameter counts, endpoints and shapes."""

import jax
import jax.numpy as jnp
import pytest

from labjax.models import mobilenet_v2, unet
from labjax.models.small_cnn import SmallCNN

keras = pytest.importorskip("keras")
from benchmarks.keras_unet import build_keras_unet, param_counts  # noqa: E402


def _counts(module, size):
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    return count(variables["params"]), count(variables.get("batch_stats", {}))


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.0, 0.35])
def test_mobilenet_v2_matches_keras_parameter_counts(alpha):
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None, alpha=alpha)
    trainable, moving_stats = _counts(mobilenet_v2.MobileNetV2(alpha), 96)
    counts = param_counts(model)
    assert (trainable, moving_stats) == (counts["trainable"], counts["non_trainable"])


@pytest.mark.slow
@pytest.mark.parametrize("num_classes, alpha", [(3, 1.0), (59, 1.0), (6, 0.35)])
def test_unet_matches_the_keras_tutorial_model(num_classes, alpha):
    model = build_keras_unet(image_size=64, num_classes=num_classes, alpha=alpha)
    trainable, moving_stats = _counts(unet.MobileNetV2UNet(num_classes, alpha), 64)
    counts = param_counts(model)
    assert (trainable, moving_stats) == (counts["trainable"], counts["non_trainable"])
    if (num_classes, alpha) == (3, 1.0):
        assert counts["total"] == 6_504_227  # the tutorial's published summary


def test_encoder_endpoints_have_keras_names_and_shapes():
    keras_base = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None)
    names = mobilenet_v2.endpoint_names()
    endpoints = jax.eval_shape(
        lambda: mobilenet_v2.MobileNetV2().init_with_output(jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=False)
    )[0]
    assert sorted(endpoints) == sorted(names)  # pytrees sort dict keys
    for name in unet.MOBILENET_V2_SKIPS + ("out_relu", "block_15_add"):
        assert endpoints[name].shape[1:] == tuple(keras_base.get_layer(name).output.shape[1:]), name


@pytest.mark.slow
def test_unet_logits_at_input_resolution_and_small_cnn_shapes():
    logits = jax.eval_shape(
        lambda: unet.MobileNetV2UNet(5, 0.35).init_with_output(
            jax.random.key(0), jnp.zeros((2, 96, 64, 3)), train=False
        )
    )[0]
    assert logits.shape == (2, 96, 64, 5)
    out = jax.eval_shape(
        lambda: SmallCNN(3).init_with_output(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False)
    )[0]
    assert out.shape == (2, 3)


def test_resnet50_unet_taps_the_keras_stage_outputs_and_predicts_at_input_resolution():
    from labjax.models import resnet

    encoder = resnet.ResNet(return_endpoints=True)
    shapes = jax.eval_shape(
        lambda: encoder.init_with_output(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)[0]
    )
    sides = {name: shapes[name].shape[1] for name in unet.RESNET50_SKIPS}
    assert sides == {
        "conv1_relu": 32,
        "conv2_block3_out": 16,
        "conv3_block4_out": 8,
        "conv4_block6_out": 4,
        "conv5_block3_out": 2,
    }
    model = unet.ResNet50UNet(5)
    logits = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=False)[0]
    )
    assert logits.shape == (2, 64, 64, 5)


def _keras_classic_unet(size: int, features: int, depth: int, num_classes: int):
    """Ronneberger's U-Net as Keras layers ("same" padding, BatchNorm after each bias-free conv)."""
    layers = keras.layers

    def convs(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization()(x))
        return x

    inputs = keras.Input((size, size, 3))
    x, skips = inputs, []
    for level in range(depth):
        x = convs(x, features * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = convs(x, features * 2**depth)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(features * 2**level, 2, strides=2)(x)
        x = convs(layers.Concatenate()([x, skips[level]]), features * 2**level)
    return keras.Model(inputs, layers.Conv2D(num_classes, 1)(x))


@pytest.mark.slow
@pytest.mark.parametrize("features", [64, 8])
def test_classic_unet_matches_the_keras_layers_of_the_paper_and_predicts_at_input_resolution(features):
    model = _keras_classic_unet(32, features, 4, 2)
    trainable, moving_stats = _counts(unet.UNet(2, features=features), 32)
    counts = param_counts(model)
    assert (trainable, moving_stats) == (counts["trainable"], counts["non_trainable"])
    if features == 64:  # the paper's network: ~31M parameters
        assert 31_000_000 < counts["total"] < 31_100_000
    logits = jax.eval_shape(
        lambda: unet.UNet(5, features=features).init_with_output(
            jax.random.key(0), jnp.zeros((2, 48, 32, 3)), train=False
        )
    )[0]
    assert logits.shape == (2, 48, 32, 5)
