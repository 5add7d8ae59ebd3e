"""ResNets against their oracles: Keras' applications (forward parity, parameter counts) and
torchvision's published parameter counts for the basic-block ResNet18/34."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from labjax.models.resnet import MIN_SIZE, VARIANTS, BasicResNet, ResNet  # noqa: E402
from labjax.weights.keras import assign, layers_from_model  # noqa: E402

KERAS_BUILDERS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
    "resnet50v2": keras.applications.ResNet50V2,
    "resnet101v2": keras.applications.ResNet101V2,
    "resnet152v2": keras.applications.ResNet152V2,
}
CLASSES = 7
SIZE = 32


def build_keras(name: str) -> keras.Model:
    """Keras' model with its top (7 logits), at the smallest input Keras accepts."""
    return KERAS_BUILDERS[name](weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES, classifier_activation=None)


@functools.cache
def keras_model(name: str) -> keras.Model:
    """Keras' model built once, with random BN moving statistics so that they matter."""
    model = build_keras(name)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32") * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size=n).astype("float32"))
    return model


def abstract_variables(model):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def run_once(fn, *args):
    """fn(*args) compiled at XLA's lowest optimisation level: a third less compile time for a graph run once."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def check_parity(model, keras_net: keras.Model) -> None:
    """Copies Keras' weights (nothing missing or left over) and compares inference outputs."""
    x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(model))
    variables = assign(variables, layers_from_model(keras_net))
    ours = np.asarray(run_once(functools.partial(model.apply, train=False), variables, x))
    theirs = keras_net(x, training=False).numpy()
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max()))
    assert np.abs(ours - theirs).max() < 1e-4 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet50v2"])
def test_matches_keras_with_top(name):
    check_parity(VARIANTS[name]["cls"](include_top=True, num_classes=CLASSES), keras_model(name))


@pytest.mark.slow
def test_matches_keras_without_top():
    full = keras_model("resnet50")
    # Keras' include_top=False, pooling=None model is exactly this sub-graph (same layers, same weights).
    notop = keras.Model(full.input, full.get_layer("conv5_block3_out").output)
    assert "predictions" not in [layer.name for layer in notop.layers]
    check_parity(ResNet(include_top=False), notop)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_BUILDERS))
def test_parameter_counts_match_keras(name):
    variables = abstract_variables(VARIANTS[name]["cls"](include_top=True, num_classes=CLASSES))
    if name in ("resnet50", "resnet50v2"):  # built for the parity tests anyway
        net = keras_model(name)
    else:  # counting needs no values: skip initialising them
        with keras.StatelessScope():
            net = build_keras(name)
    trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    assert count(variables["params"]) == trainable
    assert count(variables["batch_stats"]) == net.count_params() - trainable
    assert set(variables) == {"params", "batch_stats"}


def test_registry():
    assert set(VARIANTS) == set(MIN_SIZE) == {"resnet18", "resnet34", *KERAS_BUILDERS}
    for name, entry in VARIANTS.items():
        assert entry["preprocessing"] == (
            "torch" if name in ("resnet18", "resnet34") else "tf" if "v2" in name else "caffe"
        )
        if entry["weights"] is not None:
            for url, file_hash in entry["weights"].values():
                assert url.startswith("https://storage.googleapis.com/") and name in url and len(file_hash) == 32
    assert VARIANTS["resnet50"]["weights"]["notop"][0].endswith("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")


@pytest.mark.parametrize("cls", [ResNet, BasicResNet])
def test_small_inputs_keep_resolution_and_weights(cls):
    x = jnp.zeros((2, 64, 64, 3))

    def run(model):
        return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))

    out, small_vars = run(cls(small_inputs=True))
    normal_out, normal_vars = run(cls())
    channels = 512 if cls is BasicResNet else 2048
    assert out.shape == (2, 8, 8, channels) and normal_out.shape == (2, 2, 2, channels)
    small_shapes = jax.tree.map(lambda s: s.shape, small_vars)
    normal_shapes = jax.tree.map(lambda s: s.shape, normal_vars)
    assert small_shapes["params"].pop("conv1_conv")["kernel"] == (3, 3, 3, 64)
    assert normal_shapes["params"].pop("conv1_conv")["kernel"] == (7, 7, 3, 64)
    assert small_shapes == normal_shapes  # every other pretrained tensor still fits


def torchvision_counts(depths: tuple[int, ...], classes: int) -> tuple[int, int]:
    """(trainable parameters, BN running mean + var) of torchvision's basic-block ResNet."""
    trainable, channels_bn, cin = 7 * 7 * 3 * 64, 64, 64
    for stage, blocks in enumerate(depths):
        c = 64 * 2**stage
        for block in range(blocks):
            trainable += 9 * cin * c + 9 * c * c
            channels_bn += 2 * c
            if (block == 0 and stage > 0) or cin != c:
                trainable += cin * c
                channels_bn += c
            cin = c
    return trainable + 2 * channels_bn + 512 * classes + classes, 2 * channels_bn


@pytest.mark.parametrize("name, published", [("resnet18", 11_689_512), ("resnet34", 21_797_672)])
def test_basic_resnets_match_torchvision(name, published):
    trainable, running = torchvision_counts(VARIANTS[name]["cls"]().depths, 1000)
    assert trainable == published
    x = jnp.zeros((2, 224, 224, 3))

    def run(model):
        return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))

    logits, variables = run(VARIANTS[name]["cls"](include_top=True))
    assert count(variables["params"]) == published
    assert count(variables["batch_stats"]) == running
    assert logits.shape == (2, 1000)
    assert run(VARIANTS[name]["cls"]())[0].shape == (2, 7, 7, 512)


@pytest.mark.parametrize("cls", [ResNet, BasicResNet])
def test_frozen_batchnorm_keeps_running_stats_in_training(cls):
    frozen = ("conv2_block1_1_bn", "conv3_block1_2_bn")
    model = cls(depths=(1, 1), frozen=frozen, small_inputs=True)
    x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    # random numpy values: compiling the model's own initialisers costs XLA:CPU ~10 s
    rng = np.random.default_rng(0)
    variables = abstract_variables(model)
    variables = {
        "params": jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype) * 0.1, variables["params"]),
        "batch_stats": jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), variables["batch_stats"]),
    }
    _, updated = run_once(functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x)
    before, after = variables["batch_stats"], updated["batch_stats"]
    for name in before:
        unchanged = all(np.array_equal(before[name][k], after[name][k]) for k in ("mean", "var"))
        assert unchanged == (name in frozen), name
