"""InceptionV3 and the MobileNetV2 classifier against keras.applications: outputs, counts, frozen BatchNorm.

Each Keras model is built once with its top (classifier_activation=None, so logits) and
random BatchNorm moving statistics; its include_top=False output is the same graph's last
feature map (mixed10, out_relu), exactly what Keras' include_top=False, pooling=None returns.
Keras' generated InceptionV3 names depend on this session's counters (other tests build
Keras models too), so its layers go through `rename_keras_layers`, as a file's would.
Compiled without XLA's backend optimisations: this file tests values, not speed, and
compiling is most of its time.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labjax.models import inception_v3, mobilenet_v2  # noqa: E402
from labjax.weights.keras import assign, layers_from_model  # noqa: E402

keras = pytest.importorskip("keras")

NUM_CLASSES = 5
ALPHAS = (0.35, 1.0)


def _keras_reference(model, feature_layer: str, size: int) -> dict:
    """Random moving statistics in `model`; its layers, counts and outputs on a fixed batch."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(scale=0.1, size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size=n).astype("float32"))
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    both = keras.Model(model.inputs, [model.get_layer(feature_layer).output, model.output])
    features, logits = (np.asarray(y) for y in both(x, training=False))
    size_of = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
    top = size_of(model.get_layer("predictions").weights)
    trainable, non_trainable = size_of(model.trainable_weights), size_of(model.non_trainable_weights)
    return dict(
        layers=layers_from_model(model),
        x=x,
        outputs={True: logits, False: features},
        counts={True: (trainable, non_trainable), False: (trainable - top, non_trainable)},
    )


def _shapes(module, size: int) -> dict:
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _run(fn, *args):
    """fn(*args), jitted and compiled without backend optimisations (quick to compile)."""
    compiled = jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    return compiled(*args)


def _without_top(tree: dict) -> dict:
    return {**tree, "params": {k: v for k, v in tree["params"].items() if k != "predictions"}}


def _check_parity(make_module, reference: dict, layers: dict) -> None:
    """Both tops: counts equal Keras'; the Keras weights cover the module exactly; outputs agree in inference.

    One compiled function computes both outputs (XLA merges the shared trunk: half the compile time).
    """
    modules = {top: make_module(top) for top in (True, False)}
    shapes = reference["shapes"]  # the include_top=True model's
    for top, tree in ((True, shapes), (False, _without_top(shapes))):
        assert (_count(tree["params"]), _count(tree["batch_stats"])) == reference["counts"][top]
    variables = assign(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), layers)

    def forward(v, x):  # the no-top module gets the variables without predictions (apply fails if it needs others)
        return {top: module.apply(v if top else _without_top(v), x, train=False) for top, module in modules.items()}

    for top, ours in _run(forward, variables, reference["x"]).items():
        theirs = reference["outputs"][top]
        assert ours.shape == theirs.shape
        assert np.abs(np.asarray(ours) - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max()), f"include_top={top}"


@pytest.fixture(scope="module")
def inception_reference() -> dict:
    model = keras.applications.InceptionV3(
        weights=None, input_shape=(75, 75, 3), classes=NUM_CLASSES, classifier_activation=None
    )
    reference = _keras_reference(model, "mixed10", 75)
    reference["shapes"] = _shapes(inception_v3.InceptionV3(NUM_CLASSES, include_top=True), 75)
    return reference


@pytest.mark.slow
def test_inception_v3_matches_keras(inception_reference):
    layers = inception_v3.rename_keras_layers(inception_reference["layers"])
    _check_parity(lambda top: inception_v3.InceptionV3(NUM_CLASSES, include_top=top), inception_reference, layers)


def test_inception_v3_names_follow_keras_construction_order():
    """Keras' file names (counters from 1) are kept; Keras 3 names (from 0, or offset by earlier
    layers in the session) map onto them by counter rank, not by model order."""
    tensors = lambda n: [np.zeros(n)]  # noqa: E731
    file_names = {f"{p}_{k}": tensors(k) for k in range(1, 95) for p in inception_v3.UNIT_PREFIXES}
    file_names["predictions"] = tensors(0)
    assert inception_v3.rename_keras_layers(file_names) == file_names
    for offset in (0, 17):
        order = np.random.default_rng(offset).permutation(94)  # Keras lists layers topologically
        session = {}
        for k in order:
            for prefix in inception_v3.UNIT_PREFIXES:
                session[prefix if k + offset == 0 else f"{prefix}_{k + offset}"] = tensors(k + 1)
        renamed = inception_v3.rename_keras_layers(session)
        assert all(arrays[0].size == int(name.rsplit("_", 1)[1]) for name, arrays in renamed.items())
        assert sorted(renamed) == sorted(n for n in file_names if n != "predictions")
    with pytest.raises(ValueError, match="94 conv2d"):
        inception_v3.rename_keras_layers({"conv2d": tensors(1)})
    with pytest.raises(ValueError, match="at least 75"):
        _shapes(inception_v3.InceptionV3(), 74)


@pytest.fixture(scope="module")
def mobilenet_references() -> dict[float, dict]:
    references = {}
    for alpha in ALPHAS:
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), alpha=alpha, classes=NUM_CLASSES, classifier_activation=None
        )
        references[alpha] = _keras_reference(model, "out_relu", 32)
        references[alpha]["shapes"] = _shapes(mobilenet_v2.MobileNetV2Classifier(NUM_CLASSES, True, alpha), 32)
    return references


@pytest.mark.slow
@pytest.mark.parametrize("alpha", ALPHAS)
def test_mobilenet_v2_classifier_matches_keras(mobilenet_references, alpha):
    reference = mobilenet_references[alpha]
    _check_parity(
        lambda top: mobilenet_v2.MobileNetV2Classifier(NUM_CLASSES, include_top=top, alpha=alpha),
        reference,
        reference["layers"],
    )


def test_mobilenet_v2_wide_last_conv_backbone_variables_and_keras_files():
    """Conv_1 widens above alpha 1 (1280 at and below: the Keras counts above); the classifier has
    the backbone's (the U-Net encoder's) flat variables plus predictions; weight URLs as Keras'."""
    classifier = _shapes(mobilenet_v2.MobileNetV2Classifier(3, include_top=True, alpha=1.4), 32)
    assert classifier["params"]["predictions"]["kernel"].shape == (1792, 3)
    backbone = _shapes(mobilenet_v2.MobileNetV2(1.4), 32)
    assert jax.tree.map(np.shape, _without_top(classifier)) == jax.tree.map(np.shape, backbone)
    base = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
    assert mobilenet_v2.weights_url(0.35, 96, False) == (
        base + "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    )
    assert mobilenet_v2.weights_url(1, 100, True) == base + "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    with pytest.raises(ValueError, match="alpha"):
        mobilenet_v2.weights_url(0.6, 224, True)
    assert mobilenet_v2.rename_keras_layers({"Conv1": [], "Logits": []}) == {"Conv1": [], "predictions": []}


def _passed_through_stats(module, shapes: dict, size: int) -> set[str]:
    """BatchNorm modules whose statistics a training step returns untouched (read off the jaxpr, no compile)."""
    x = jnp.zeros((2, size, size, 3))
    closed, out = jax.make_jaxpr(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"]), return_shape=True)(
        shapes
    )
    inputs = {id(var) for var in closed.jaxpr.invars}
    untouched, updated = set(), set()
    for (path, _), var in zip(jax.tree_util.tree_flatten_with_path(out)[0], closed.jaxpr.outvars):
        if path[0].idx == 1:  # (output, {"batch_stats": {module: {"mean", "var"}}})
            (untouched if id(var) in inputs else updated).add(path[2].key)
    assert not untouched & updated
    return untouched


def test_only_frozen_batchnorms_keep_their_statistics(inception_reference, mobilenet_references):
    inception = inception_v3.InceptionV3(
        NUM_CLASSES, include_top=True, frozen=("batch_normalization_1", "batch_normalization_94")
    )
    assert _passed_through_stats(inception, inception_reference["shapes"], 75) == set(inception.frozen)
    frozen = ("bn_Conv1", "block_3_expand_BN", "Conv_1_bn")
    mobilenet = mobilenet_v2.MobileNetV2Classifier(NUM_CLASSES, include_top=True, alpha=0.35, frozen=frozen)
    assert _passed_through_stats(mobilenet, mobilenet_references[0.35]["shapes"], 32) == set(frozen)


def test_frozen_batchnorms_use_moving_statistics_when_training(mobilenet_references):
    """All BatchNorms frozen, a training step is Keras' inference and leaves the statistics alone."""
    reference = mobilenet_references[0.35]
    frozen = tuple(reference["shapes"]["batch_stats"])
    module = mobilenet_v2.MobileNetV2Classifier(NUM_CLASSES, include_top=True, alpha=0.35, frozen=frozen)
    variables = assign(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), reference["shapes"]), reference["layers"])
    logits, updated = _run(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]), variables, reference["x"]
    )
    theirs = reference["outputs"][True]
    assert np.abs(np.asarray(logits) - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())
    jax.tree.map(np.testing.assert_array_equal, updated["batch_stats"], variables["batch_stats"])
