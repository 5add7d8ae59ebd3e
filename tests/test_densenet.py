"""DenseNet: forward parity with keras.applications, parameter counts, frozen BatchNorm, registry entries."""

import functools
import inspect
import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras.src.applications import densenet as keras_densenet  # noqa: E402

from labjax.models import densenet  # noqa: E402
from labjax.weights.keras import assign, flax_name, layers_from_model  # noqa: E402

SIZE = 32  # Keras' min_size for DenseNet
KERAS_MODELS = {
    "densenet121": keras.applications.DenseNet121,
    "densenet169": keras.applications.DenseNet169,
    "densenet201": keras.applications.DenseNet201,
}


def _randomised_bn(model: keras.Model) -> keras.Model:
    """Moving statistics away from (0, 1), so a wrong epsilon, order or missing BN shows."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    return model


def _template(model) -> dict:
    """Zero variables of the model's shapes, without compiling its init."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _apply(model, variables: dict, x: np.ndarray, **kwargs):
    """One jitted apply, compiled without LLVM optimisation (the compile dominates at this size)."""
    fn = jax.jit(functools.partial(model.apply, **kwargs))
    return fn.lower(variables, x).compile({"xla_backend_optimization_level": 0})(variables, x)


def _size(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _keras_size(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(2, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def keras121_top() -> keras.Model:
    model = keras.applications.DenseNet121(
        weights=None, input_shape=(SIZE, SIZE, 3), classes=5, classifier_activation=None
    )
    return _randomised_bn(model)


@pytest.fixture(scope="module")
def template121_top() -> dict:
    return _template(densenet.DenseNet121(num_classes=5, include_top=True))


def _assert_close(ours, theirs) -> None:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max()))
    assert np.abs(ours - theirs).max() < 1e-4 * scale


@pytest.mark.slow
def test_densenet121_logits_match_keras(keras121_top, template121_top, inputs):
    model = densenet.DenseNet121(num_classes=5, include_top=True)
    variables = assign(template121_top, layers_from_model(keras121_top))
    _assert_close(_apply(model, variables, inputs, train=False), keras121_top(inputs, training=False))


@pytest.mark.slow
def test_densenet121_features_match_keras(keras121_top, template121_top, inputs):
    # Keras' include_top=False model is exactly this graph up to its last layer, "relu".
    keras_model = keras.Model(keras121_top.input, keras121_top.get_layer("relu").output)
    model = densenet.DenseNet121(include_top=False)
    template = {col: {k: v for k, v in tree.items() if k != "predictions"} for col, tree in template121_top.items()}
    variables = assign(template, layers_from_model(keras_model))
    ours = _apply(model, variables, inputs, train=False)
    assert ours.shape == (2, 1, 1, 1024)
    _assert_close(ours, keras_model(inputs, training=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "densenet169", "densenet201"])
def test_names_and_parameter_counts_match_keras(name, request):
    if name == "densenet121":  # the parity models, with 5 classes
        keras_model, variables = request.getfixturevalue("keras121_top"), request.getfixturevalue("template121_top")
    else:
        keras_model = KERAS_MODELS[name](weights=None, input_shape=(SIZE, SIZE, 3))
        variables = _template(densenet.VARIANTS[name]["cls"](include_top=True))
    keras_names = {flax_name(layer.name) for layer in keras_model.layers if layer.weights}
    assert set(variables["params"]) | set(variables["batch_stats"]) == keras_names
    assert _size(variables["params"]) == _keras_size(keras_model.trainable_weights)
    assert _size(variables["batch_stats"]) == _keras_size(keras_model.non_trainable_weights)


@pytest.mark.slow
def test_frozen_batchnorm_keeps_running_statistics_in_training(inputs):
    small = functools.partial(densenet.DenseNet, blocks=(1, 1, 1, 1))
    variables = _template(small())  # random values without compiling a random init
    rng = np.random.default_rng(3)
    variables["params"] = jax.tree.map(lambda a: rng.normal(0.0, 0.1, a.shape).astype(a.dtype), variables["params"])
    for stats in variables["batch_stats"].values():
        stats["var"] = rng.uniform(0.5, 1.5, stats["var"].shape).astype("float32")
    frozen = ("conv1_bn", "conv3_block1_0_bn", "pool4_bn")
    _, updates = _apply(small(frozen=frozen), variables, inputs, train=True, mutable=["batch_stats"])
    stats, new_stats = variables["batch_stats"], updates["batch_stats"]
    for name in stats:
        unchanged = all(np.array_equal(stats[name][k], new_stats[name][k]) for k in ("mean", "var"))
        assert unchanged == (name in frozen), name

    # With every BatchNorm frozen, training mode normalises exactly as inference does.
    all_frozen = small(frozen=tuple(stats))
    trained, _ = _apply(all_frozen, variables, inputs, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(trained, _apply(all_frozen, variables, inputs, train=False), rtol=1e-6, atol=1e-6)


def test_registry_weights_are_keras_files():
    source = inspect.getsource(keras_densenet)
    hashes = dict(
        re.findall(r'"(densenet\d+_weights_\w+\.h5)",\s*\w+,\s*cache_subdir="models",\s*file_hash="(\w+)"', source)
    )
    assert len(hashes) == 6
    for name, variant in densenet.VARIANTS.items():
        assert variant["min_size"] == densenet.MIN_SIZE[name] == SIZE
        assert variant["preprocessing"] == "torch" and variant["top_layers"] == ("predictions",)
        for kind, suffix in (("top", ""), ("notop", "_NO_TOP")):
            url, file_hash = variant["weights"][kind]
            assert url == getattr(keras_densenet, f"{name.upper()}_WEIGHT_PATH{suffix}")
            assert hashes[url.rsplit("/", 1)[1]] == file_hash


@pytest.mark.slow
def test_densenet121_matches_keras_where_transitions_see_odd_maps(keras121_top, template121_top):
    # At 44 px the transitions pool 11x11 and 5x5 maps (the last row and column dropped): labjax pools
    # before the 1x1 convolution and Keras after it, which must agree there too.
    keras_model = keras.applications.DenseNet121(
        weights=None, input_shape=(44, 44, 3), classes=5, classifier_activation=None
    )
    keras_model.set_weights(keras121_top.get_weights())
    x = np.random.default_rng(3).normal(size=(2, 44, 44, 3)).astype("float32")
    variables = assign(template121_top, layers_from_model(keras_model))
    model = densenet.DenseNet121(num_classes=5, include_top=True)
    _assert_close(_apply(model, variables, x, train=False), keras_model(x, training=False))
