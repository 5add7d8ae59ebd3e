"""Small from-scratch classifiers of studies S1-S4.

* `SpecCNN`: a Keras-style sequential CNN written as a layer-spec string in the config
  (`config.model.layers`), so a study defines its own variants without code (S2, S3); the
  S2 variants are named presets in `S2_PRESETS`. `LeNet5` is one such spec.
* `ConvNN1`, `ConvNN2`: the PyTorch CNNs of S4, with PyTorch's padding, pooling and init.
* `BasicBlockNet`: the small residual net of S1a.

All take NHWC input and return logits (B, num_classes). Modules with variables are created
flat in each class's compact `__call__`, named as the equivalent Keras layers would be, so a
Keras model of the same spec (named alike) loads with `labjax.weights.keras.assign`.
"""

import ast
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from labjax.errors import ConfigError
from labjax.models.layers import Conv, Padding, max_pool

glorot = nn.initializers.glorot_uniform()  # Keras' default kernel initialiser (biases: zeros)

# Keras activation names -> functions with Keras' defaults (gelu exact, leaky_relu slope 0.2).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
}

_REQUIRED = object()
# op -> its arguments (name, default) in positional order.
_OPS: dict[str, tuple[tuple[str, Any], ...]] = {
    "conv": (("filters", _REQUIRED), ("kernel", _REQUIRED), ("activation", None), ("stride", 1), ("padding", "valid")),
    "maxpool": (("size", _REQUIRED), ("stride", None), ("padding", "valid")),
    "avgpool": (("size", _REQUIRED), ("stride", None), ("padding", "valid")),
    "globalavgpool": (),
    "globalmaxpool": (),
    "batchnorm": (("momentum", None), ("epsilon", 1e-3)),
    "dropout": (("rate", _REQUIRED),),
    "flatten": (),
    "dense": (("units", _REQUIRED), ("activation", None)),
}
_PREFIX = {"conv": "conv", "batchnorm": "bn", "dropout": "dropout", "flatten": "flatten", "dense": "dense"}
_SPATIAL = ("conv", "maxpool", "avgpool", "globalavgpool", "globalmaxpool")
_FIELD = "config.model.layers"


def _signature(op: str) -> str:
    args = [name if default is _REQUIRED else f"{name}={default!r}" for name, default in _OPS[op]]
    return f"{op}({', '.join(args)})" if args else op


VALID_OPS = ", ".join(_signature(op) for op in _OPS)

# S2's variants of the Keras CNN. "arch10" is the model given in docs/studies.md; the others are
# reconstructions of "variants with more Dropout, BatchNormalization and pooling".
S2_PRESETS: dict[str, str] = {
    # BatchNorm after each conv, two max pools, dropout after each block and in the head.
    "arch4": "conv(32,3,relu)|batchnorm|maxpool(2)|dropout(0.25)|conv(64,3,relu)|batchnorm|maxpool(2)|dropout(0.25)"
    "|flatten|dense(128,relu)|dropout(0.5)|dense(classes)",
    # 'same' convs, a pool after every conv (28 -> 14 -> 7 -> 3), dropout before both dense layers.
    "arch5": "conv(32,3,relu,padding=same)|maxpool(2)|conv(64,3,relu,padding=same)|maxpool(2)"
    "|conv(128,3,relu,padding=same)|maxpool(2)|flatten|dropout(0.3)|dense(128,relu)|dropout(0.3)|dense(classes)",
    "arch10": "conv(32,3,relu)|maxpool(2)|conv(64,3,relu)|avgpool(2)|conv(128,3,relu)|flatten|dropout(0.2)"
    "|dense(64,relu)|dense(classes)",
    # VGG-style pairs of 'same' convs with BatchNorm, pooling and dropout, global average pooling head.
    "proposed": "conv(32,3,relu,padding=same)|batchnorm|conv(32,3,relu,padding=same)|batchnorm|maxpool(2)|dropout(0.25)"
    "|conv(64,3,relu,padding=same)|batchnorm|conv(64,3,relu,padding=same)|batchnorm|maxpool(2)|dropout(0.25)"
    "|conv(128,3,relu,padding=same)|batchnorm|globalavgpool|dropout(0.4)|dense(64,relu)|dropout(0.3)|dense(classes)",
}

# The common Keras LeNet-5 for 32x32 inputs (LeCun et al. 1998 with tanh and average pooling
# for the subsampling layers, the RBF output replaced by a dense classifier): 61,706 parameters
# at 32x32x1 with 10 classes.
LENET5_LAYERS = (
    "conv(6,5,tanh)|avgpool(2)|conv(16,5,tanh)|avgpool(2)|flatten|dense(120,tanh)|dense(84,tanh)|dense(classes)"
)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One parsed op: `name` is its Keras/Flax layer name (conv_1, pool_1, bn_1, dense_1, ...)."""

    op: str
    name: str
    args: dict[str, Any]


def _error(piece: str, message: str) -> ValueError:
    return ValueError(f"{_FIELD}: {piece!r}: {message}. Valid ops: {VALID_OPS}.")


def _literal(node: ast.expr, piece: str) -> Any:
    """A bare name is a string (relu, same, classes); everything else must be a Python literal."""
    if isinstance(node, ast.Name):
        return node.id
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _error(piece, f"argument {ast.unparse(node)!r} is not a number, name or string") from None


def _pair(value: Any) -> tuple[int, int] | None:
    """(h, w) from an int or a 2-sequence of positive ints, None when invalid."""
    pair = (value, value) if isinstance(value, int) else value
    if isinstance(pair, tuple | list) and len(pair) == 2 and all(type(v) is int and v > 0 for v in pair):
        return tuple(pair)
    return None


def _checked(op: str, args: dict[str, Any], piece: str) -> dict[str, Any]:
    """Arguments validated and normalised (pairs for sizes, lower-case names)."""
    out = dict(args)
    for key in ("kernel", "size", "stride"):
        if key in out and out[key] is not None:
            out[key] = _pair(out[key])
            if out[key] is None:
                raise _error(piece, f"{key} must be a positive int or a pair of them, got {args[key]!r}")
    if "padding" in out:
        out["padding"] = str(out["padding"]).lower()
        if out["padding"] not in ("valid", "same"):
            raise _error(piece, f"padding must be 'valid' or 'same', got {args['padding']!r}")
    if "activation" in out and out["activation"] is not None:
        if out["activation"] not in ACTIVATIONS:
            raise _error(piece, f"activation {args['activation']!r} is unknown; valid: {sorted(ACTIVATIONS)}")
    if op == "conv" and not (type(out["filters"]) is int and out["filters"] > 0):
        raise _error(piece, f"filters must be a positive int, got {args['filters']!r}")
    if op == "dense" and out["units"] != "classes" and not (type(out["units"]) is int and out["units"] > 0):
        raise _error(piece, f"units must be a positive int or 'classes', got {args['units']!r}")
    if op == "dropout" and not (isinstance(out["rate"], int | float) and 0 <= out["rate"] < 1):
        raise _error(piece, f"rate must be in [0, 1), got {args['rate']!r}")
    if op == "batchnorm":
        if out["momentum"] is not None and not (isinstance(out["momentum"], int | float) and 0 <= out["momentum"] < 1):
            raise _error(piece, f"momentum must be in [0, 1), got {args['momentum']!r}")
        if not (isinstance(out["epsilon"], int | float) and out["epsilon"] > 0):
            raise _error(piece, f"epsilon must be positive, got {args['epsilon']!r}")
    return out


def _parse_op(piece: str) -> tuple[str, dict[str, Any]]:
    try:
        node = ast.parse(piece, mode="eval").body
    except SyntaxError:
        raise _error(piece, "not of the form op or op(args)") from None
    call = node if isinstance(node, ast.Call) else None
    func = call.func if call else node
    if not isinstance(func, ast.Name):
        raise _error(piece, "not of the form op or op(args)")
    op = func.id.lower()
    if op not in _OPS:
        raise _error(piece, f"unknown op {func.id!r}")
    params = _OPS[op]
    positional = [_literal(arg, piece) for arg in call.args] if call else []
    if len(positional) > len(params):
        raise _error(piece, f"{op} takes at most {len(params)} arguments: {_signature(op)}")
    args = dict(zip((name for name, _ in params), positional))
    for keyword in call.keywords if call else ():
        if keyword.arg not in dict(params):
            raise _error(piece, f"{op} has no argument {keyword.arg!r}: {_signature(op)}")
        if keyword.arg in args:
            raise _error(piece, f"argument {keyword.arg!r} given twice")
        args[keyword.arg] = _literal(keyword.value, piece)
    for name, default in params:
        if name not in args:
            if default is _REQUIRED:
                raise _error(piece, f"{op} needs {name!r}: {_signature(op)}")
            args[name] = default
    return op, _checked(op, args, piece)


def parse_layers(spec: str) -> tuple[LayerSpec, ...]:
    """Parses an op string ("conv(32,3,relu)|maxpool(2)|...|dense(classes)") or an S2 preset name.

    Checks the order too: spatial ops before `flatten`/global pooling, dense after, and a
    final `dense(classes)` without activation (the logits).
    """
    spec = S2_PRESETS.get(spec, spec)
    pieces = [piece.strip() for piece in spec.split("|")]
    if not spec.strip() or any(not piece for piece in pieces):
        raise ConfigError(f"{_FIELD}={spec!r}: empty op; give ops separated by '|'. Valid ops: {VALID_OPS}.")
    counts: dict[str, int] = {}
    layers, flat = [], False
    for piece in pieces:
        op, args = _parse_op(piece)
        if op in _SPATIAL and flat:
            raise _error(piece, f"{op} needs a spatial (image) input but comes after flatten or global pooling")
        if op == "dense" and not flat:
            raise _error(piece, "dense needs flatten or global pooling before it")
        flat = flat or op in ("flatten", "globalavgpool", "globalmaxpool")
        prefix = "pool" if op.endswith("pool") else _PREFIX[op]
        counts[prefix] = counts.get(prefix, 0) + 1
        layers.append(LayerSpec(op, f"{prefix}_{counts[prefix]}", args))
    last = layers[-1]
    if last.op != "dense" or last.args["units"] != "classes" or last.args["activation"] not in (None, "linear"):
        raise _error(pieces[-1], "the last op must be dense(classes) without activation (the model returns logits)")
    return tuple(layers)


def _out_size(size: int, window: int, stride: int, padding: str) -> int:
    """Keras output length: 'valid' floor((n - k) / s) + 1, 'same' ceil(n / s); <= 0 when too small."""
    return -(-size // stride) if padding == "same" else (size - window) // stride + 1


def min_input_size(spec: str) -> int:
    """The smallest square input side for which no convolution or pooling of `spec` comes out empty."""
    layers = parse_layers(spec)
    sides = []
    for axis in (0, 1):
        for side in range(1, 4097):
            size = side
            for layer in layers:
                if layer.op in ("conv", "maxpool", "avgpool"):
                    window = layer.args["kernel" if layer.op == "conv" else "size"]
                    stride = layer.args["stride"] or window
                    size = _out_size(size, window[axis], stride[axis], layer.args["padding"])
                    if size < 1:
                        break
            if size >= 1:
                sides.append(side)
                break
    return max(sides)


def _fits(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding, where: str) -> None:
    """A clear error (instead of an empty map or a deep XLA one) when the input is too small."""
    pads = ((0, 0), (0, 0)) if isinstance(padding, str) else padding
    mode = padding.lower() if isinstance(padding, str) else "valid"
    out = [_out_size(n + sum(p), k, s, mode) for n, k, s, p in zip(x.shape[1:3], window, strides, pads)]
    if min(out) < 1:
        raise ConfigError(f"{where}: its {x.shape[1]}x{x.shape[2]} input is too small (output {out[0]}x{out[1]}).")


def _pool(x: jax.Array, kind: str, window: tuple[int, int], strides: tuple[int, int], padding: str) -> jax.Array:
    """Keras/PyTorch pooling: 'valid' floors; 'same' averages over the real (unpadded) pixels only."""
    _fits(x, window, strides, padding, f"{kind}pool{window}")
    if kind == "max":
        return max_pool(x, window, strides, padding.upper())
    return nn.avg_pool(x, window, strides, padding.upper(), count_include_pad=False)


class SpecCNN(nn.Module):
    """Sequential Keras-style CNN from `layers`, an op string or an `S2_PRESETS` name.

    Ops (Keras semantics; names map to Keras layers conv_i -> Conv2D, pool_i -> pooling,
    bn_i -> BatchNormalization, dense_i -> Dense, dropout_i, flatten_i):
    conv(filters, kernel, activation=None, stride=1, padding='valid'), maxpool(size, stride=None,
    padding='valid'), avgpool(...), globalavgpool, globalmaxpool, batchnorm(momentum=None,
    epsilon=1e-3), dropout(rate), flatten, dense(units | classes, activation=None).
    Kernels glorot_uniform, biases zero; `flatten` flattens NHWC as Keras does.
    `bn_momentum` is the momentum of batchnorm ops that give none (Keras' default 0.99);
    `dropout`, when set, replaces the rate of every dropout op (a sweep over one architecture).
    """

    num_classes: int = 10
    layers: str = "arch10"
    bn_momentum: float = 0.99
    dropout: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for layer in parse_layers(self.layers):
            args = layer.args
            if layer.op == "conv":
                strides = args["stride"]
                _fits(x, args["kernel"], strides, args["padding"], f"{_FIELD}: {layer.name}")
                padding = args["padding"].upper()
                conv = Conv(args["filters"], args["kernel"], strides, padding, kernel_init=glorot, name=layer.name)
                x = ACTIVATIONS[args["activation"] or "linear"](conv(x))
            elif layer.op in ("maxpool", "avgpool"):
                x = _pool(x, layer.op[:3], args["size"], args["stride"] or args["size"], args["padding"])
            elif layer.op == "globalavgpool":
                x = x.mean(axis=(1, 2))
            elif layer.op == "globalmaxpool":
                x = x.max(axis=(1, 2))
            elif layer.op == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif layer.op == "batchnorm":
                momentum = self.bn_momentum if args["momentum"] is None else args["momentum"]
                epsilon = args["epsilon"]
                x = nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, name=layer.name)(x)
            elif layer.op == "dropout":
                rate = args["rate"] if self.dropout is None else self.dropout
                x = nn.Dropout(rate, deterministic=not train)(x)
            else:
                units = self.num_classes if args["units"] == "classes" else args["units"]
                x = ACTIVATIONS[args["activation"] or "linear"](nn.Dense(units, kernel_init=glorot, name=layer.name)(x))
        return x


class LeNet5(SpecCNN):
    """LeNet-5 as commonly written in Keras for 32x32 inputs (`LENET5_LAYERS`):
    Conv(6,5,tanh) AvgPool(2) Conv(16,5,tanh) AvgPool(2) Flatten Dense(120,tanh) Dense(84,tanh)
    Dense(classes); 'valid' padding, so 32 -> 28 -> 14 -> 10 -> 5 (400 features). Takes any side
    >= 16 (28x28 MNIST gives 4x4x16 = 256 features)."""

    layers: str = LENET5_LAYERS


def _torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) weights and the biases are
    both uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dropout(nn.Module):
    """nn.Dropout whose rate may be a traced number, so a vectorized sweep's members can each have
    their own (labjax/vectorize.py clones the model with the member's rate). Named as nn.Dropout
    (auto-named Dropout_0), it draws the same random masks; the Python 0 draws none."""

    rate: Any

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(self.rate, int | float) and self.rate == 0):
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


class ConvNN(nn.Module):
    """S4's PyTorch CNN family: Conv2d(C,8,3,padding) MaxPool2d(pool) ReLU Conv2d(8,16,3) MaxPool2d(2)
    ReLU Flatten Linear(->hidden) ReLU [Dropout] Linear(hidden, classes).

    `padding` is PyTorch's (H, W) zero padding of the first conv on both sides; pooling floors.
    The Linear input size follows from the input shape. Flatten runs over NHWC (H, W, C order)
    where PyTorch flattens NCHW (C, H, W): same feature count, permuted order, so PyTorch
    weights need fc1's rows permuted. PyTorch's default init, so training from scratch behaves
    like the original. `dropout` (S4: 0.25, 0.5) follows the first dense layer's ReLU; it may be
    a traced number (one per member of a vectorized sweep).
    """

    num_classes: int = 2
    dropout: float = 0.0
    padding: tuple[int, int] = (2, 1)
    pool: int = 2
    hidden: int = 40

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        (ph, pw), pool = self.padding, (self.pool, self.pool)
        for name, features, pads in (("conv1", 8, ((ph, ph), (pw, pw))), ("conv2", 16, "VALID")):
            init = _torch_uniform(x.shape[-1] * 9)
            _fits(x, (3, 3), (1, 1), pads, name)
            x = Conv(features, (3, 3), padding=pads, kernel_init=init, bias_init=init, name=name)(x)
            x = jax.nn.relu(_pool(x, "max", pool, pool, "valid"))
            pool = (2, 2)
        x = x.reshape(x.shape[0], -1)
        init = _torch_uniform(x.shape[-1])
        x = jax.nn.relu(nn.Dense(self.hidden, kernel_init=init, bias_init=init, name="fc1")(x))
        x = Dropout(self.dropout)(x, deterministic=not train)
        init = _torch_uniform(self.hidden)
        return nn.Dense(self.num_classes, kernel_init=init, bias_init=init, name="fc2")(x)


class ConvNN1(ConvNN):
    """S4's ConvNN_1: Conv2d(1,8,3,padding=(2,1)) MaxPool(2) ... Linear(->40) ReLU Linear(40,2).
    At 30x32 (rows x cols) gray: 32x32 after conv1, 16x16, 14x14, 7x7 -> 784 features; 32,730 parameters."""

    padding: tuple[int, int] = (2, 1)
    pool: int = 2
    hidden: int = 40


class ConvNN2(ConvNN):
    """S4's ConvNN_2: Conv2d(1,8,3,padding=(1,0)) MaxPool(3) ... Linear(->32) ReLU Linear(32,2).
    At 30x32 gray: 30x30 after conv1, 10x10, 8x8, 4x4 -> 256 features; 9,538 parameters."""

    padding: tuple[int, int] = (1, 0)
    pool: int = 3
    hidden: int = 32


_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlockNet(nn.Module):
    """S1a's small residual net for 32-64 px images (a CIFAR-style ResNet of basic blocks).

    Stem conv3x3(widths[0]) BN ReLU; then per width a stage of `blocks_per_stage` basic blocks
    (conv3x3 BN ReLU conv3x3 BN, + shortcut, ReLU), the first block of every stage after the
    first with stride 2 and a 1x1 strided conv + BN projection shortcut (also whenever the width
    changes); global average pooling, dropout, Dense(classes). Widths (32, 64, 128) map 64x64 to
    16x16x128. Convs have PyTorch's padding 1 and no bias; as the S1 original is PyTorch, BN uses
    eps 1e-5 and momentum 0.9 (PyTorch's 0.1), convs torchvision ResNet's kaiming-normal fan_out
    init and the classifier PyTorch's Linear init. Names follow Keras' ResNet: conv1_conv,
    conv1_bn, conv{stage+2}_block{b}_{0: shortcut, 1, 2}_{conv, bn}, predictions.
    """

    num_classes: int = 200
    widths: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 1
    dropout: float = 0.0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        def conv(y: jax.Array, width: int, kernel: int, stride: int, name: str) -> jax.Array:
            pads = ((kernel // 2,) * 2,) * 2
            strides = (stride, stride)
            return Conv(width, (kernel,) * 2, strides, pads, use_bias=False, kernel_init=_kaiming_fan_out, name=name)(y)

        def bn(y: jax.Array, name: str) -> jax.Array:
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5, name=name)(y)

        x = jax.nn.relu(bn(conv(x, self.widths[0], 3, 1, "conv1_conv"), "conv1_bn"))
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                prefix = f"conv{stage + 2}_block{block + 1}"
                shortcut = x
                if stride != 1 or x.shape[-1] != width:
                    shortcut = bn(conv(x, width, 1, stride, f"{prefix}_0_conv"), f"{prefix}_0_bn")
                y = jax.nn.relu(bn(conv(x, width, 3, stride, f"{prefix}_1_conv"), f"{prefix}_1_bn"))
                y = bn(conv(y, width, 3, 1, f"{prefix}_2_conv"), f"{prefix}_2_bn")
                x = jax.nn.relu(y + shortcut)
        x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=(1, 2)))
        init = _torch_uniform(x.shape[-1])
        return nn.Dense(self.num_classes, kernel_init=init, bias_init=init, name="predictions")(x)


# Smallest input side each model accepts (square inputs). ConvNN1: W 32+2-2 -> pool/2 -> -2 -> pool/2
# needs 8; ConvNN2: (W-2)//3-2 >= 2 needs 14; LeNet5: ((n-4)//2-4)//2 >= 1 needs 16; BasicBlockNet
# has only padded convs (meant for 32-64 px). SpecCNN's depends on config.model.layers: min_input_size.
MIN_SIZE: dict[str, int] = {
    **{f"spec_cnn_{name}": min_input_size(spec) for name, spec in S2_PRESETS.items()},
    "lenet5": min_input_size(LENET5_LAYERS),
    "convnn1": 8,
    "convnn2": 14,
    "basicblocknet": 1,
}

# Registry proposal: all train from scratch on pixels scaled to [0, 1].
VARIANTS: dict[str, dict] = {
    "spec_cnn": dict(
        cls=SpecCNN,
        min_size=MIN_SIZE["spec_cnn_arch10"],  # of the default spec; others: min_input_size(layers)
        min_size_of=min_input_size,
        presets=S2_PRESETS,
        preprocessing="zero_one",
        top_layers=("dense_2",),
        weights=None,
    ),
    "lenet5": dict(
        cls=LeNet5, min_size=MIN_SIZE["lenet5"], preprocessing="zero_one", top_layers=("dense_3",), weights=None
    ),
    "convnn1": dict(
        cls=ConvNN1, min_size=MIN_SIZE["convnn1"], preprocessing="zero_one", top_layers=("fc2",), weights=None
    ),
    "convnn2": dict(
        cls=ConvNN2, min_size=MIN_SIZE["convnn2"], preprocessing="zero_one", top_layers=("fc2",), weights=None
    ),
    "basicblocknet": dict(
        cls=BasicBlockNet,
        min_size=MIN_SIZE["basicblocknet"],
        preprocessing="zero_one",
        top_layers=("predictions",),
        weights=None,
    ),
}
