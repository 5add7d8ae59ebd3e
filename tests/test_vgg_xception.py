"""VGG16/VGG19 and Xception against keras.applications: outputs, parameter counts, frozen BatchNorm.

Keras models are built with weights=None at the smallest input Keras accepts, their biases and
BatchNorm variables randomised (so a misplaced tensor shows), copied with the generic importer,
and compared in inference mode.
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labjax.models import vgg, xception  # noqa: E402
from labjax.models.xception import Xception, rename_keras_layers  # noqa: E402
from labjax.weights.keras import assign, layers_from_model  # noqa: E402

CLASSES = 5
VGG_SIZE = vgg.MIN_SIZE["vgg16"]
XCEPTION_SIZE = xception.MIN_SIZE["xception"]
# Xception's entry flow (blocks 1-4 and their residuals): frozen in the train-mode test.
ENTRY_BNS = (
    "block1_conv1_bn", "block1_conv2_bn", "batch_normalization_1", "batch_normalization_2", "batch_normalization_3",
    *(f"block{block}_sepconv{i}_bn" for block in (2, 3, 4) for i in (1, 2)),
)  # fmt: skip


def randomise(model: keras.Model, seed: int) -> None:
    """Random biases and BatchNorm gamma/beta/moving statistics (Keras initialises them to constants)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            n = weights[0].shape[0]
            weights = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 1.5, n)]
        elif getattr(layer, "use_bias", False):
            weights[-1] = rng.normal(0, 0.1, weights[-1].shape)
        layer.set_weights([np.asarray(w, np.float32) for w in weights])


def abstract_variables(model, size: int) -> dict:
    """The model's variable shapes, without compiling or running anything."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def keras_variables(model, size: int, keras_layers: dict) -> dict:
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(model, size))
    return assign(zeros, keras_layers)


def counts(variables: dict) -> tuple[int, int]:
    """(trainable, non-trainable) sizes: the params and batch_stats collections."""

    def size(collection: str) -> int:
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get(collection, {})))

    assert set(variables) <= {"params", "batch_stats"}
    return size("params"), size("batch_stats")


def keras_counts(model: keras.Model) -> tuple[int, int]:
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    assert trainable + non_trainable == model.count_params()
    return trainable, non_trainable


def assert_close(ours: jax.Array, theirs: np.ndarray) -> None:
    """Same shape, max abs difference within 1e-4 of the largest Keras value (never a trivial pass)."""
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 1e-2
    assert np.abs(ours - theirs).max() <= 1e-4 * scale


def inputs(size: int, scale: float) -> np.ndarray:
    return (scale * np.random.default_rng(1).normal(size=(2, size, size, 3))).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, keras_fn, depths, include_top",
    [
        ("vgg16", keras.applications.VGG16, vgg.VGG16_DEPTHS, True),
        ("vgg16", keras.applications.VGG16, vgg.VGG16_DEPTHS, False),
        ("vgg19", keras.applications.VGG19, vgg.VGG19_DEPTHS, False),
    ],
)
def test_vgg_matches_keras(name, keras_fn, depths, include_top):
    theirs_model = keras_fn(
        weights=None,
        include_top=include_top,
        input_shape=(VGG_SIZE, VGG_SIZE, 3),
        classes=CLASSES,
        classifier_activation=None,
    )
    randomise(theirs_model, seed=0)
    model = vgg.VARIANTS[name]["cls"](num_classes=CLASSES, include_top=include_top)
    assert model.depths == depths
    variables = keras_variables(model, VGG_SIZE, layers_from_model(theirs_model))
    assert counts(variables) == keras_counts(theirs_model)

    x = inputs(VGG_SIZE, scale=50.0)  # caffe-preprocessed pixels are of this order
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert_close(ours, theirs_model(x, training=False).numpy())
    expected = (2, CLASSES) if include_top else (2, 1, 1, 512)
    assert ours.shape == expected


@pytest.mark.parametrize(
    "name, size, total",
    [("vgg16", 224, 138_357_544), ("vgg19", 224, 143_667_240)],  # keras.applications' published counts
)
def test_vgg_full_size_parameter_count(name, size, total):
    model = vgg.VARIANTS[name]["cls"](include_top=True)
    trainable, non_trainable = counts(abstract_variables(model, size))
    assert (trainable, non_trainable) == (total, 0)


def test_xception_full_size_parameter_count():
    trainable, non_trainable = counts(abstract_variables(Xception(include_top=True), 299))
    assert (trainable, non_trainable) == (22_855_952, 54_528)  # keras.applications.Xception()


@pytest.fixture(scope="module")
def xception_run():
    """One Keras Xception (top; its prefix up to block14_sepconv2_act is Keras' include_top=False model)
    and one jitted run of ours: logits, features, and a train-mode step with the entry flow frozen."""
    top_keras = keras.applications.Xception(
        weights=None, input_shape=(XCEPTION_SIZE, XCEPTION_SIZE, 3), classes=CLASSES, classifier_activation=None
    )
    randomise(top_keras, seed=0)
    notop_keras = keras.Model(top_keras.input, top_keras.get_layer("block14_sepconv2_act").output)
    top = Xception(num_classes=CLASSES, include_top=True)
    notop = Xception(include_top=False)
    frozen = Xception(include_top=False, frozen=ENTRY_BNS)
    top_vars = keras_variables(top, XCEPTION_SIZE, rename_keras_layers(layers_from_model(top_keras)))
    notop_vars = keras_variables(notop, XCEPTION_SIZE, rename_keras_layers(layers_from_model(notop_keras)))
    x = inputs(XCEPTION_SIZE, scale=1.0)  # 'tf' preprocessing: pixels in [-1, 1]

    def after_entry(module, method):  # the first layer after the (frozen) entry flow
        return module.name == "block5_sepconv1"

    @jax.jit
    def run(top_vars, notop_vars, x):
        logits = top.apply(top_vars, x, train=False)
        features, captured = notop.apply(
            notop_vars, x, train=False, capture_intermediates=after_entry, mutable=["intermediates"]
        )
        _, trained = frozen.apply(
            notop_vars, x, train=True, capture_intermediates=after_entry, mutable=["intermediates", "batch_stats"]
        )
        entry = captured["intermediates"]["block5_sepconv1"]["__call__"][0]
        entry_train = trained["intermediates"]["block5_sepconv1"]["__call__"][0]
        return logits, features, entry, entry_train, trained["batch_stats"]

    logits, features, entry, entry_train, new_stats = run(top_vars, notop_vars, x)
    return dict(
        keras=(top_keras, notop_keras),
        variables=(top_vars, notop_vars),
        theirs=(top_keras(x, training=False).numpy(), notop_keras(x, training=False).numpy()),
        ours=(logits, features),
        entry=(entry, entry_train),
        new_stats=new_stats,
    )


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["include_top", "no_top"])
def test_xception_matches_keras(xception_run, which):
    assert_close(xception_run["ours"][which], xception_run["theirs"][which])
    assert xception_run["ours"][which].shape == ((2, CLASSES), (2, 3, 3, 2048))[which]


@pytest.mark.parametrize("which", [0, 1], ids=["include_top", "no_top"])
def test_xception_parameter_counts(xception_run, which):
    keras_model, variables = xception_run["keras"][which], xception_run["variables"][which]
    assert counts(variables) == keras_counts(keras_model)


def test_xception_frozen_batchnorm_keeps_running_statistics(xception_run):
    old = xception_run["variables"][1]["batch_stats"]
    new = xception_run["new_stats"]
    assert set(new) == set(old) and set(ENTRY_BNS) < set(new)
    for name in new:
        same = all(np.array_equal(new[name][k], old[name][k]) for k in ("mean", "var"))
        assert same == (name in ENTRY_BNS), name
    # the frozen entry flow normalises with its running statistics in train mode, as in inference
    entry, entry_train = xception_run["entry"]
    np.testing.assert_allclose(entry_train, entry, rtol=1e-5, atol=1e-5)


def test_rename_keras_layers_maps_session_names_by_order():
    conv, bn = [np.zeros((1, 1, 3, 8))], [np.zeros(8)] * 4
    names = ["block1_conv1", "conv2d_7", "batch_normalization_7", "block2_sepconv1"]
    names += ["conv2d_8", "batch_normalization_8", "conv2d_9", "batch_normalization_9", "conv2d_10"]
    names += ["batch_normalization_10", "predictions"]
    layers = {n: bn if n.startswith("batch") else conv for n in names}
    renamed = rename_keras_layers(layers)
    assert list(renamed) == [
        "block1_conv1", "conv2d_1", "batch_normalization_1", "block2_sepconv1", "conv2d_2", "batch_normalization_2",
        "conv2d_3", "batch_normalization_3", "conv2d_4", "batch_normalization_4", "predictions",
    ]  # fmt: skip
    assert list(rename_keras_layers({"extra_layer": [np.zeros(2)] * 2})) == ["extra_layer"]
