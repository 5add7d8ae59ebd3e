"""Small nets: spec parsing, Keras parity of SpecCNN, hand-derived PyTorch sizes of S4's CNNs, BasicBlockNet."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labjax.models.small_nets import (
    LENET5_LAYERS,
    MIN_SIZE,
    S2_PRESETS,
    VARIANTS,
    BasicBlockNet,
    ConvNN1,
    ConvNN2,
    LeNet5,
    SpecCNN,
    min_input_size,
    parse_layers,
)
from labjax.weights.keras import assign, layers_from_model

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ARCH10 = (
    "conv(32,3,relu)|maxpool(2)|conv(64,3,relu)|avgpool(2)|conv(128,3,relu)|flatten|dropout(0.2)|dense(64,relu)"
    "|dense(classes)"
)
# Strides, 'same' pooling (average over real pixels), explicit BN settings, a non-square kernel,
# global max pooling and Keras' gelu (exact) / leaky_relu (slope 0.2) at an odd input size.
CUSTOM = (
    "conv(8,3,gelu,stride=2,padding=same)|avgpool(3,2,same)|batchnorm(0.9,1e-5)|maxpool(2,padding=same)"
    "|conv(6,(1,3),elu)|globalmaxpool|dense(16,leaky_relu)|dense(classes)"
)


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def shapes(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def key(seed: int) -> jax.Array:
    """A key whose random bits compile several times faster on XLA:CPU than threefry's."""
    return jax.random.key(seed, impl="unsafe_rbg")


def init(model, x):
    """Variables of `model` for input `x`, initialised in one compiled call (eager init is slow)."""
    return jax.jit(functools.partial(model.init, train=False))(key(0), x)


def train_and_eval(model, variables, x):
    """(train-mode output, batch-stats updates, inference output), compiled once."""

    @jax.jit
    def run(variables, x):
        rngs = {"dropout": key(1)}
        out, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
        return out, updates, model.apply(variables, x, train=False)

    return run(variables, x)


def keras_model(spec: str, input_shape: tuple[int, int, int], classes: int):
    """The Keras Sequential model a spec stands for, its layers named like SpecCNN's modules."""
    import keras

    def layer(spec):
        a, name = spec.args, spec.name
        if spec.op == "conv":
            return keras.layers.Conv2D(
                a["filters"], a["kernel"], a["stride"], a["padding"], activation=a["activation"], name=name
            )
        if spec.op in ("maxpool", "avgpool"):
            cls = keras.layers.MaxPooling2D if spec.op == "maxpool" else keras.layers.AveragePooling2D
            return cls(a["size"], a["stride"], a["padding"], name=name)
        if spec.op == "batchnorm":
            return keras.layers.BatchNormalization(momentum=a["momentum"] or 0.99, epsilon=a["epsilon"], name=name)
        if spec.op == "dense":
            units = classes if a["units"] == "classes" else a["units"]
            return keras.layers.Dense(units, activation=a["activation"], name=name)
        simple = {
            "globalavgpool": keras.layers.GlobalAveragePooling2D,
            "globalmaxpool": keras.layers.GlobalMaxPooling2D,
            "flatten": keras.layers.Flatten,
        }
        return keras.layers.Dropout(a["rate"], name=name) if spec.op == "dropout" else simple[spec.op](name=name)

    return keras.Sequential([keras.Input(input_shape), *map(layer, parse_layers(spec))])


def test_parse_names_args_and_presets():
    layers = parse_layers(ARCH10)
    assert [layer.name for layer in layers] == [
        "conv_1", "pool_1", "conv_2", "pool_2", "conv_3", "flatten_1", "dropout_1", "dense_1", "dense_2"
    ]  # fmt: skip
    assert layers[0].args == dict(filters=32, kernel=(3, 3), activation="relu", stride=(1, 1), padding="valid")
    assert layers[1].args == dict(size=(2, 2), stride=None, padding="valid")
    assert layers[-1].args == dict(units="classes", activation=None)
    assert S2_PRESETS["arch10"] == ARCH10 and parse_layers("arch10") == layers
    bn = parse_layers("conv(8,(1,3),padding='SAME',stride=2)|batchnorm(epsilon=1e-5)|globalavgpool|dense(classes)")
    assert bn[0].args["kernel"] == (1, 3) and bn[0].args["padding"] == "same" and bn[0].args["stride"] == (2, 2)
    assert bn[1].name == "bn_1" and bn[1].args == dict(momentum=None, epsilon=1e-5) and bn[2].name == "pool_1"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("conv(32,3)|blah(2)|flatten|dense(classes)", "unknown op 'blah'"),
        ("conv(32)|flatten|dense(classes)", "conv needs 'kernel'"),
        ("conv(32,3,foo)|flatten|dense(classes)", "activation 'foo' is unknown"),
        ("conv(32,3,padding=full)|flatten|dense(classes)", "padding must be 'valid' or 'same'"),
        ("conv(32,3,relu,activation=tanh)|flatten|dense(classes)", "'activation' given twice"),
        ("conv(32,3,dilation=2)|flatten|dense(classes)", "no argument 'dilation'"),
        ("conv(0,3)|flatten|dense(classes)", "filters must be a positive int"),
        ("conv(8,(3,0))|flatten|dense(classes)", "kernel must be"),
        ("conv(8,3,__import__('os'))|flatten|dense(classes)", "is not a number, name or string"),
        ("flatten|dropout(1.5)|dense(classes)", "rate must be in [0, 1)"),
        ("flatten|dense(10)", "the last op must be dense(classes)"),
        ("flatten|dense(classes,relu)", "the last op must be dense(classes)"),
        ("conv(8,3)|dense(classes)", "needs flatten or global pooling"),
        ("conv(8,3)|flatten|maxpool(2)|dense(classes)", "comes after flatten"),
        ("flatten|maxpool(2,3,4,5)|dense(classes)", "at most 3 arguments"),
        ("conv(8,3)||flatten|dense(classes)", "empty op"),
        ("conv(8,3)[0]|flatten|dense(classes)", "not of the form op or op(args)"),
        ("conv(8,3,relu|flatten|dense(classes)", "not of the form op or op(args)"),
    ],
)
def test_parse_errors_name_the_field_op_and_valid_ops(spec, message):
    with pytest.raises(ValueError, match="config.model.layers") as error:
        parse_layers(spec)
    assert message in str(error.value)
    assert "Valid ops: conv(filters, kernel, activation=None, stride=1, padding='valid')" in str(error.value)
    assert "globalavgpool" in str(error.value) and "dense(units, activation=None)" in str(error.value)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="config.model.layers: conv_3: its 2x2 input is too small"):
        shapes(SpecCNN(3), (1, 17, 17, 1))


@pytest.mark.parametrize(
    "spec, side, classes",
    [
        ("arch10", 28, 3),
        ("arch4", 28, 3),
        ("arch5", 28, 3),
        ("proposed", 28, 3),
        (LENET5_LAYERS, 32, 10),
        (CUSTOM, 29, 5),
    ],
)
def test_spec_cnn_matches_keras(spec, side, classes):
    keras_net = keras_model(S2_PRESETS.get(spec, spec), (side, side, 1), classes)
    rng = np.random.default_rng(0)
    for layer in keras_net.layers:
        if hasattr(layer, "moving_mean"):  # random statistics so that they matter
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32") * 0.3)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size=layer.moving_variance.shape).astype("float32"))
    model = SpecCNN(classes, layers=spec)
    x = rng.uniform(size=(2, side, side, 1)).astype("float32")
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes(model, x.shape))
    assert count(variables["params"]) == sum(int(np.prod(w.shape)) for w in keras_net.trainable_weights)
    assert count(variables.get("batch_stats", {})) == sum(
        int(np.prod(w.shape)) for w in keras_net.non_trainable_weights
    )
    if spec == "arch10":  # 320 + 18,496 + 73,856 conv; 3*3*128 = 1,152 features; 73,792 + 195 dense
        assert keras_net.count_params() == count(variables["params"]) == 166_659
    variables = assign(variables, layers_from_model(keras_net))
    ours = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))
    theirs = keras_net(x, training=False).numpy()
    assert ours.shape == (2, classes)
    np.testing.assert_allclose(ours, theirs, atol=1e-5 * max(1.0, np.abs(theirs).max()), rtol=0)


def test_spec_cnn_dropout_and_batchnorm_training():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 1)), jnp.float32)
    model = SpecCNN(3, layers="conv(4,3,relu)|batchnorm|dropout(0.5)|flatten|dense(classes)", bn_momentum=0.5)
    variables = init(model, x)
    dropped, updates, _ = train_and_eval(model, variables, x)
    mean = updates["batch_stats"]["bn_1"]["mean"]  # 0.5 * 0 + 0.5 * batch mean of conv_1's ReLU output
    conv = jax.nn.relu(jax.lax.conv_general_dilated(
        x, variables["params"]["conv_1"]["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ))  # fmt: skip
    assert float(jnp.abs(mean).max()) > 0
    np.testing.assert_allclose(mean, 0.5 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # `dropout` overrides every dropout op's rate: 0 gives the net without dropout (same variables).
    kept, _, _ = train_and_eval(model.clone(dropout=0.0), variables, x)
    plain, _, _ = train_and_eval(model.clone(layers="conv(4,3,relu)|batchnorm|flatten|dense(classes)"), variables, x)
    np.testing.assert_allclose(kept, plain, atol=1e-6)
    assert not np.allclose(dropped, plain)


def test_lenet5_shapes():
    variables = shapes(LeNet5(10), (2, 32, 32, 1))
    # 6*25+6, 16*6*25+16, 400*120+120, 120*84+84, 84*10+10: the classic 61,706
    assert count(variables["params"]) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    assert variables["params"]["dense_1"]["kernel"].shape == (5 * 5 * 16, 120)
    assert shapes(LeNet5(10), (2, 28, 28, 1))["params"]["dense_1"]["kernel"].shape == (4 * 4 * 16, 120)
    out = jax.eval_shape(
        lambda v: LeNet5(10).apply(v, jnp.zeros((2, 32, 32, 3)), train=False), shapes(LeNet5(10), (2, 32, 32, 3))
    )
    assert out.shape == (2, 10)


def test_convnn_pytorch_sizes_at_30x32():
    # ConvNN_1: conv1 8*1*9+8; pad (2,1): 30+4-2=32 x 32+2-2=32 -> pool 16x16 -> conv2 (8*16*9+16) 14x14 -> pool 7x7;
    # 16*7*7 = 784 -> Linear(784,40) -> Linear(40,2).
    p1 = shapes(ConvNN1(), (2, 30, 32, 1))["params"]
    assert p1["fc1"]["kernel"].shape == (784, 40)
    assert count(p1) == 80 + 1_168 + (784 * 40 + 40) + (40 * 2 + 2) == 32_730
    # ConvNN_2: pad (1,0): 30+2-2=30 x 32-2=30 -> pool3 10x10 -> conv2 8x8 -> pool 4x4; 16*4*4 = 256 -> 32 -> 2.
    p2 = shapes(ConvNN2(), (2, 30, 32, 1))["params"]
    assert p2["fc1"]["kernel"].shape == (256, 32)
    assert count(p2) == 80 + 1_168 + (256 * 32 + 32) + (32 * 2 + 2) == 9_538
    # floors: 31 rows -> (31+4-2)//2 = 16, then 14 -> 7 as at 30; 33 cols -> 33//2 = 16 -> 7.
    assert shapes(ConvNN1(), (2, 31, 33, 1))["params"]["fc1"]["kernel"].shape == (784, 40)


def test_convnn_pytorch_init_and_dropout():
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 30, 32, 1)), jnp.float32)
    model = ConvNN1(dropout=0.5)
    params = init(model, x)["params"]
    for name, fan_in in (("conv1", 9), ("conv2", 72), ("fc1", 784), ("fc2", 40)):
        bound = 1 / np.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) == uniform(+-1/sqrt(fan_in)); biases alike
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound and np.abs(bias).max() > 0
    assert np.abs(params["fc1"]["kernel"]).max() > 0.99 / np.sqrt(784)  # uniform over the whole range
    assert abs(np.asarray(params["fc1"]["kernel"]).std() - 1 / np.sqrt(3 * 784)) < 2e-4
    train_out, _, eval_out = train_and_eval(model, {"params": params}, x)
    assert train_out.shape == (2, 2) and not np.allclose(train_out, eval_out)


def test_basicblocknet_shapes_and_counts():
    variables = shapes(BasicBlockNet(10), (2, 32, 32, 3))
    # stem 3*9*32; stage 32: 2 * 32*32*9; stage 64: 32*64*9 + 64*64*9 + 1x1 32*64; stage 128 alike; BN 2 per channel
    convs = 864 + 2 * 9_216 + (18_432 + 36_864 + 2_048) + (73_728 + 147_456 + 8_192)
    bn = 2 * (32 + 2 * 32 + 3 * 64 + 3 * 128)
    assert count(variables["params"]) == convs + bn + 128 * 10 + 10
    assert count(variables["batch_stats"]) == bn
    assert "conv2_block1_0_conv" not in variables["params"] and "conv3_block1_0_conv" in variables["params"]
    deeper = shapes(BasicBlockNet(200, widths=(16, 32), blocks_per_stage=2), (2, 64, 64, 3))["params"]
    assert {"conv3_block2_2_conv", "conv2_block2_1_bn"} <= set(deeper) and "conv4_block1_1_conv" not in deeper
    model = BasicBlockNet(200, widths=(16, 32))
    out = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3)), train=False), shapes(model, (2, 64, 64, 3))
    )
    assert out.shape == (2, 200)


@pytest.mark.slow
def test_basicblocknet_sgd_step_reduces_loss():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.uniform(size=(4, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 3])
    model = BasicBlockNet(5, widths=(8, 16), dropout=0.3)
    variables = init(model, x)
    rngs = {"dropout": key(5)}

    def loss_fn(params, batch_stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean(), updates["batch_stats"]

    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, stats), grads = value_and_grad(variables["params"], variables["batch_stats"])
    params = jax.tree.map(lambda p, g: p - 0.05 * g, variables["params"], grads)
    (new_loss, _), _ = value_and_grad(params, variables["batch_stats"])
    assert float(new_loss) < float(loss)
    assert not np.allclose(stats["conv1_bn"]["mean"], variables["batch_stats"]["conv1_bn"]["mean"])


@pytest.mark.parametrize("name", sorted(MIN_SIZE))
def test_min_size(name):
    models = {"lenet5": LeNet5(3), "convnn1": ConvNN1(), "convnn2": ConvNN2(), "basicblocknet": BasicBlockNet(3)}
    model = models[name] if name in models else SpecCNN(3, layers=name.removeprefix("spec_cnn_"))
    side = MIN_SIZE[name]
    variables = shapes(model, (1, side, side, 1))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, side, side, 1)), train=False), variables)
    assert out.shape == (1, model.num_classes)
    if side > 1:
        with pytest.raises(ValueError, match="too small"):
            shapes(model, (1, side - 1, side - 1, 1))


def test_min_input_size_and_variants():
    assert min_input_size(ARCH10) == 18  # 18 -> 16 -> 8 -> 6 -> 3 -> 1
    assert min_input_size("conv(4,(3,7))|flatten|dense(classes)") == 7
    assert min_input_size(LENET5_LAYERS) == MIN_SIZE["lenet5"] == 16
    assert set(VARIANTS) == {"spec_cnn", "lenet5", "convnn1", "convnn2", "basicblocknet"}
    for variant in VARIANTS.values():
        assert variant["preprocessing"] == "zero_one" and variant["weights"] is None
