"""EfficientNet B0-B7 against keras.applications: forward parity, parameter counts, stochastic depth."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labjax.models.efficientnet import MIN_SIZE, VARIANTS
from labjax.weights.keras import CANONICAL_ORDER, assign, layers_from_model

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

SIZE = MIN_SIZE["efficientnetb0"]  # the smallest input Keras accepts
CLASSES = 5
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # halves XLA:CPU compile time; these runs are tiny

# Builds Keras B0-B7 (weights=None) in a child process and prints, one JSON line per variant, what the structure
# test compares: parameter counts, each layer's tensor shapes (depthwise kernels in the Flax layout) and the Dropout
# layers' rates. Building the eight functional graphs takes most of a minute of single-core Python, which the child
# does while this process compiles the parity tests.
KERAS_SUMMARY_SCRIPT = """
import json, os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import keras, numpy as np

def shape(layer, w):
    s = tuple(w.shape)
    return s[:2] + (1, s[2] * s[3]) if isinstance(layer, keras.layers.DepthwiseConv2D) else s

for name in sys.argv[1:]:
    keras.backend.clear_session()
    with keras.StatelessScope():  # shapes only: the initial values (66M for B7) are never drawn
        model = getattr(keras.applications, "EfficientNetB" + name[-1])(weights=None, input_shape=(32, 32, 3))
    summary = dict(
        trainable=sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        non_trainable=sum(int(np.prod(w.shape)) for w in model.non_trainable_weights),
        layers={l.name: [shape(l, w) for w in l.weights] for l in model.layers if l.weights},
        dropouts={l.name: (l.rate, (1, 2, 3) if l.noise_shape else ()) for l in model.layers
                  if isinstance(l, keras.layers.Dropout)},
    )
    print(json.dumps({name: summary}), flush=True)
"""


@pytest.fixture(scope="module", autouse=True)
def keras_summaries(tmp_path_factory):
    """Starts the Keras builds with the module's first test; returns name -> that variant's summary (waiting)."""
    log = tmp_path_factory.mktemp("keras") / "stderr.txt"
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", KERAS_SUMMARY_SCRIPT, *sorted(VARIANTS)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    summaries = {}

    def summary(name: str) -> dict:
        while name not in summaries:
            line = child.stdout.readline()
            assert line, f"the Keras child process failed: {log.read_text()[-3000:]}"
            summaries.update(json.loads(line))
        return summaries[name]

    yield summary
    child.kill()
    child.wait()
    child.stdout.close()


@functools.cache
def _apply(include_top: bool, train: bool):
    """One jitted B0 apply per (top, mode), shared by the tests so each compiles once."""
    model = VARIANTS["efficientnetb0"]["cls"](num_classes=CLASSES, include_top=include_top)

    def apply(variables, x, key):
        mutable = ["batch_stats"] if train else False
        return model.apply(variables, x, train=train, rngs={"dropout": key}, mutable=mutable)

    return model, jax.jit(apply, compiler_options=FAST_COMPILE)


@functools.cache
def _keras_b0(include_top: bool):
    """Keras B0 (weights=None) with random BatchNorm statistics and a non-trivial Normalization layer."""
    keras.backend.clear_session()  # the Normalization layer is then named "normalization", as in Keras' files
    kmodel = keras.applications.EfficientNetB0(
        include_top=include_top, weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    for layer in kmodel.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    norm = kmodel.get_layer("normalization")
    norm.adapt_mean.assign(np.array([0.48, 0.46, 0.41], "float32"))
    norm.adapt_variance.assign(np.array([0.05, 0.06, 0.07], "float32"))
    norm.finalize_state()
    return kmodel


def _b0_variables(include_top: bool) -> dict:
    model, _ = _apply(include_top, False)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return assign(variables, layers_from_model(_keras_b0(include_top)))


def _images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("include_top", [True, False])
def test_forward_parity_with_keras(include_top):
    variables = _b0_variables(include_top)
    np.testing.assert_allclose(variables["batch_stats"]["normalization"]["var"], [0.05, 0.06, 0.07], rtol=1e-6)
    x = _images()
    _, apply = _apply(include_top, False)
    ours = np.asarray(apply(variables, x, jax.random.key(0)))
    theirs = _keras_b0(include_top)(x, training=False).numpy()
    assert ours.shape == theirs.shape == ((2, CLASSES) if include_top else (2, 1, 1, 1280))
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())


class _Stop(Exception):
    """Ends a forward pass once the input of interest has been seen."""


def _stem_conv_input(imagenet_rescaling: bool, x: jax.Array) -> np.ndarray:
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        if context.module.name == "stem_conv":
            seen.append(np.asarray(args[0]))
            raise _Stop
        return next_fun(*args, **kwargs)

    model = VARIANTS["efficientnetb0"]["cls"](imagenet_rescaling=imagenet_rescaling)
    with nn.intercept_methods(interceptor), pytest.raises(_Stop):
        model.init(jax.random.key(0), x, train=False)
    return seen[0]


def test_imagenet_rescaling_divides_by_sqrt_stddev():
    """Keras adds Rescaling(1/sqrt(stddev)) after Normalization only for ImageNet weights."""
    x = jnp.asarray(_images())
    plain = _stem_conv_input(False, x)
    np.testing.assert_allclose(plain, x / 255.0, rtol=1e-6)  # unadapted Normalization: mean 0, variance 1
    rescaled = _stem_conv_input(True, x)
    np.testing.assert_allclose(rescaled, plain / np.sqrt([0.229, 0.224, 0.225]), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameter_counts_layers_and_drop_rates_match_keras(name, keras_summaries):
    dropouts = {}

    def record_dropout(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout):
            dropouts[context.module.name] = [context.module.rate, list(context.module.broadcast_dims)]
        return next_fun(*args, **kwargs)

    model = VARIANTS[name]["cls"](include_top=True)
    with nn.intercept_methods(record_dropout):
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))
    keras_model = keras_summaries(name)

    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))  # noqa: E731
    assert count(shapes["params"]) == keras_model["trainable"]
    assert count(shapes["batch_stats"]) == keras_model["non_trainable"]
    layers: dict[str, list] = {}  # module -> tensor shapes in the importer's (= Keras') order
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        module, var = path[-2].key, path[-1].key
        layers.setdefault(module, []).append((CANONICAL_ORDER.index(var), list(leaf.shape)))
    assert {module: [shape for _, shape in sorted(entries)] for module, entries in layers.items()} == keras_model[
        "layers"
    ]
    # Stochastic depth and top dropout: the same layers with the same rates; drop-connect whole samples.
    assert dropouts.keys() == keras_model["dropouts"].keys()
    for layer, (rate, dims) in keras_model["dropouts"].items():
        assert dropouts[layer] == [pytest.approx(rate, abs=1e-7), dims]


@pytest.mark.slow
def test_stochastic_depth_only_in_training():
    variables = _b0_variables(False)
    x = _images()
    _, train_apply = _apply(False, True)
    a, _ = train_apply(variables, x, jax.random.key(1))
    b, _ = train_apply(variables, x, jax.random.key(2))
    again, _ = train_apply(variables, x, jax.random.key(1))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3  # include_top=False: drop-connect is the only noise
    np.testing.assert_array_equal(np.asarray(a), np.asarray(again))
    _, eval_apply = _apply(False, False)
    np.testing.assert_array_equal(
        np.asarray(eval_apply(variables, x, jax.random.key(1))), np.asarray(eval_apply(variables, x, jax.random.key(2)))
    )
