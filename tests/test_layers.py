"""labjax.models.layers and cpu_conv: the CPU rewrites equal lax and flax in value and gradient, with flax's params."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from labjax.models import cpu_conv, layers
from labjax.models.layers import Conv, ConvTranspose, DepthwiseConv, fast_convs_enabled, max_pool

EXPLICIT = ((1, 0), (2, 1))


def _value_and_grads(module, params, x, cotangent):
    """Output and gradients w.r.t. params and input of <module(x), cotangent>."""
    y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, x)
    return y, *vjp(cotangent)


def _check(layer, reference, x_shape, rtol=1e-4, atol=1e-4, dtype=jnp.float32):
    """fast, lax and the flax reference agree given the same params.

    Data and params come from numpy: jax.random would cost seconds of XLA:CPU compilation per case.
    """
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert shapes == jax.eval_shape(reference.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
    y = jax.eval_shape(reference.apply, {"params": params}, x)
    cotangent = jnp.asarray(rng.standard_normal(y.shape), y.dtype)
    modules = (layer.clone(impl="fast"), layer.clone(impl="lax"), reference)
    run = jax.jit(lambda params, x, cotangent: [_value_and_grads(m, params, x, cotangent) for m in modules])
    fast, lax_, flax_ref = run(params, x, cotangent)
    for got, want in ((fast, lax_), (lax_, flax_ref)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, np.abs(b).max()))
    return fast[0]


CONV_CASES = [
    # (input NHWC, features, kernel, strides, padding, use_bias)
    ((2, 7, 6, 5), 4, (1, 1), (1, 1), "SAME", True),  # 1x1 -> matmul
    ((2, 7, 8, 6), 3, (1, 1), (2, 2), "SAME", False),  # strided 1x1 -> subsample + matmul
    ((2, 7, 6, 5), 4, (1, 1), (2, 1), EXPLICIT, True),
    ((2, 9, 8, 3), 5, (3, 3), (2, 2), "SAME", False),  # RGB stem -> im2col
    ((2, 8, 7, 3), 5, (3, 3), (1, 1), "SAME", True),
    ((2, 9, 8, 2), 4, (3, 3), (2, 2), "VALID", True),
    ((2, 8, 9, 3), 2, (3, 3), (2, 1), EXPLICIT, False),
    ((2, 10, 10, 1), 3, (5, 5), (2, 2), "SAME", True),
    ((2, 8, 8, 3), 4, (2, 2), (2, 2), "SAME", True),  # even kernel: SAME pads after
    ((2, 7, 8, 8), 6, (3, 3), (2, 2), "SAME", True),  # wide input: lax forward, im2col gradient
    ((2, 7, 6, 40), 8, (3, 3), (1, 1), "SAME", False),  # narrower output: a tap-products gradient (DenseNet's 3x3)
    ((2, 7, 6, 40), 8, (3, 3), (1, 1), "VALID", True),
    ((2, 9, 6, 40), 8, (3, 2), (1, 1), ((2, 0), (0, 3)), True),  # uneven explicit pads, rectangular kernel
    ((2, 8, 8, 40), 8, (4, 4), (1, 1), "SAME", False),  # even kernel: SAME pads more after
    ((2, 6, 6, 40), 40, (3, 3), (1, 1), "SAME", False),  # as wide as the input: lax forward, im2col gradient
    # maps smaller than the kernel's reach: taps that only see padding are dropped
    ((2, 1, 1, 40), 8, (3, 3), (1, 1), "SAME", True),  # a 1x1 map: the centre tap
    ((2, 3, 1, 12), 12, (1, 3), (1, 1), "SAME", False),  # InceptionV3's 1x3 on a 1-wide map
    ((2, 2, 3, 40), 40, (5, 5), (1, 1), "SAME", False),  # 3 of 5 rows live, all 5 columns
    ((2, 2, 2, 8), 6, (3, 3), (2, 2), "SAME", True),  # strided: the last row and column dead
    ((2, 3, 4, 8), 6, (3, 3), (2, 2), ((3, 0), (0, 0)), True),  # first row dead, the input's last row unread
]


@pytest.mark.parametrize("x_shape, features, kernel, strides, padding, use_bias", CONV_CASES)
def test_conv(x_shape, features, kernel, strides, padding, use_bias):
    kwargs = dict(kernel_size=kernel, strides=strides, padding=padding, use_bias=use_bias)
    _check(Conv(features, **kwargs), nn.Conv(features, **kwargs), x_shape)


DEPTHWISE_CASES = [
    # (input NHWC, kernel, strides, padding, depth_multiplier, use_bias)
    ((2, 8, 8, 4), (3, 3), (1, 1), "SAME", 1, False),
    ((2, 9, 7, 4), (3, 3), (2, 2), "SAME", 1, True),
    ((2, 8, 9, 3), (3, 3), (2, 2), "SAME", 2, False),
    ((2, 9, 8, 3), (3, 3), (1, 2), "VALID", 2, True),
    ((2, 7, 8, 4), (3, 3), (2, 2), EXPLICIT, 1, False),
    ((2, 7, 6, 3), (1, 1), (2, 2), "SAME", 2, True),
    ((2, 10, 9, 2), (5, 5), (2, 2), "SAME", 1, False),
    # stride 1: the gradient w.r.t. the input is a correlation with the flipped kernel
    ((2, 8, 7, 3), (3, 3), (1, 1), EXPLICIT, 2, True),
    ((2, 7, 8, 4), (2, 4), (1, 1), "SAME", 1, False),  # even kernel: SAME pads more after
    ((2, 6, 6, 3), (3, 3), (1, 1), "VALID", 1, True),
    ((2, 9, 8, 3), (5, 3), (1, 1), ((3, 0), (0, 2)), 1, False),
    ((2, 1, 1, 4), (3, 3), (1, 1), "SAME", 2, False),  # a 1x1 map: the centre tap (EfficientNet at 32 px)
    ((2, 2, 3, 3), (5, 5), (2, 2), "SAME", 1, True),
]


@pytest.mark.parametrize("x_shape, kernel, strides, padding, multiplier, use_bias", DEPTHWISE_CASES)
def test_depthwise_conv(x_shape, kernel, strides, padding, multiplier, use_bias):
    cin = x_shape[-1]
    kwargs = dict(kernel_size=kernel, strides=strides, padding=padding, use_bias=use_bias)
    layer = DepthwiseConv(depth_multiplier=multiplier, **kwargs)
    _check(layer, nn.Conv(cin * multiplier, feature_group_count=cin, **kwargs), x_shape)


TRANSPOSE_CASES = [
    # (input NHWC, features, kernel, strides, padding, use_bias)
    ((2, 4, 4, 6), 5, (3, 3), (2, 2), "SAME", True),  # the U-Net upsampling block
    ((2, 5, 3, 4), 3, (3, 3), (2, 2), "SAME", False),
    ((2, 4, 5, 3), 4, (3, 3), (2, 2), "VALID", True),
    ((2, 4, 5, 3), 4, (3, 3), (2, 1), EXPLICIT, True),
    ((2, 3, 4, 3), 2, (4, 4), (2, 2), "SAME", False),
    ((2, 3, 4, 3), 2, (2, 2), (2, 2), "VALID", True),
    ((2, 3, 3, 4), 3, (1, 1), (2, 2), "SAME", True),  # kernel smaller than stride: empty phases
    ((2, 3, 4, 2), 3, (3, 3), (3, 3), "SAME", False),
    ((2, 5, 4, 3), 4, (3, 3), (2, 2), ((3, 2), (0, -1)), True),  # large and negative pads
    ((2, 5, 6, 3), 4, (3, 3), (1, 1), "SAME", True),  # stride 1: an ordinary convolution
]


@pytest.mark.parametrize("x_shape, features, kernel, strides, padding, use_bias", TRANSPOSE_CASES)
def test_conv_transpose(x_shape, features, kernel, strides, padding, use_bias):
    kwargs = dict(kernel_size=kernel, strides=strides, padding=padding, use_bias=use_bias)
    y = _check(ConvTranspose(features, **kwargs), nn.ConvTranspose(features, **kwargs), x_shape)
    if padding == "SAME":
        assert y.shape == (x_shape[0], x_shape[1] * strides[0], x_shape[2] * strides[1], features)


@pytest.mark.slow
@pytest.mark.parametrize("x_shape, features, kernel, strides, padding, use_bias", TRANSPOSE_CASES[:-1])
def test_gpu_conv_transpose_keeps_lax_forward_and_differentiates_through_taps(
    x_shape, features, kernel, strides, padding, use_bias
):
    """The GPU path ("auto" off the CPU): lax's transposed convolution, with the taps formulation's
    gradient (matmuls; XLA:GPU's own kernel gradient is a whole-image-window convolution)."""
    del use_bias
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal((*kernel, x_shape[-1], features)), jnp.float32)
    pads = cpu_conv.transpose_pads(padding, kernel, strides)

    def reference(x, k):
        return jax.lax.conv_transpose(x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def hybrid(x, k):
        return cpu_conv.conv_transpose_lax_taps_grad(x, k, strides, pads)

    want, want_vjp = jax.vjp(reference, x, k)
    got, got_vjp = jax.vjp(hybrid, x, k)
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_vjp(g), want_vjp(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert "conv_general_dilated" in str(jax.make_jaxpr(hybrid)(x, k))
    assert "conv_general_dilated" in str(jax.make_jaxpr(want_vjp)(g))  # lax's gradient: convolutions
    assert "conv_general_dilated" not in str(jax.make_jaxpr(got_vjp)(g))  # the taps gradient: matmuls


@pytest.mark.parametrize(
    "layer, reference",
    [
        (Conv(4, dtype=jnp.bfloat16), nn.Conv(4, (3, 3), dtype=jnp.bfloat16)),
        (Conv(4, (1, 1), dtype=jnp.bfloat16), nn.Conv(4, (1, 1), dtype=jnp.bfloat16)),
        (
            DepthwiseConv(dtype=jnp.bfloat16),
            nn.Conv(3, (3, 3), feature_group_count=3, use_bias=False, dtype=jnp.bfloat16),
        ),
        (ConvTranspose(4, dtype=jnp.bfloat16), nn.ConvTranspose(4, (3, 3), (2, 2), dtype=jnp.bfloat16)),
    ],
)
def test_bfloat16(layer, reference):
    y = _check(layer, reference, (2, 6, 6, 3), rtol=3e-2, atol=3e-2, dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16


def test_fast_convs_enabled():
    assert fast_convs_enabled("auto") == (jax.default_backend() == "cpu")
    assert fast_convs_enabled("fast") and not fast_convs_enabled("lax")
    with pytest.raises(ValueError):
        fast_convs_enabled("cudnn")


@pytest.mark.parametrize("layer", [Conv(6, (1, 1), (2, 2)), DepthwiseConv(strides=(2, 2)), ConvTranspose(6)])
def test_batch_sharded(layer):
    """Under a batch-sharded jit (as in training) the rewrites stay data parallel: no all-gather, same numbers."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2 * len(jax.devices()), 6, 6, 4)), jnp.float32)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
    module = layer.clone(impl="fast")
    grads = jax.grad(lambda p, x: jnp.mean(module.apply({"params": p}, x) ** 2), argnums=(0, 1))
    sharded = jax.jit(grads, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
    assert "all-gather" not in sharded.lower(params, x).compile().as_text()
    for a, b in zip(jax.tree.leaves(sharded(params, x)), jax.tree.leaves(jax.jit(grads)(params, x)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "x_shape, kernel, strides, padding, live_kernel, live_pads, rows_read",
    [
        ((1, 1, 1, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), ((0, 0), (0, 0)), (1, 1)),
        ((1, 2, 5, 1), (5, 5), (1, 1), ((2, 2), (2, 2)), (3, 5), ((1, 1), (2, 2)), (2, 5)),
        ((1, 1, 4, 1), (1, 7), (1, 1), ((0, 0), (3, 3)), (1, 7), ((0, 0), (3, 3)), (1, 4)),  # nothing dead
        ((1, 2, 2, 1), (3, 3), (2, 2), ((0, 1), (0, 1)), (2, 2), ((0, 0), (0, 0)), (2, 2)),
        ((1, 3, 3, 1), (3, 3), (2, 2), ((3, 0), (0, 0)), (2, 3), ((2, 0), (0, 0)), (2, 3)),
    ],
)
def test_live_taps_drops_the_kernel_edges_that_only_see_padding(
    x_shape, kernel, strides, padding, live_kernel, live_pads, rows_read
):
    x, w = jnp.ones(x_shape), jnp.arange(kernel[0] * kernel[1], dtype=jnp.float32).reshape(*kernel, 1, 1)
    x_live, w_live, pads = cpu_conv.live_taps(x, w, strides, padding)
    assert w_live.shape[:2] == live_kernel and pads == live_pads and x_live.shape[1:3] == rows_read
    want = cpu_conv.conv_lax(x, w, strides, padding)
    np.testing.assert_array_equal(cpu_conv.conv_lax(x_live, w_live, strides, pads), want)


def test_conv_of_a_one_pixel_map_is_a_matmul_over_its_channels():
    """A 3x3 'same' conv of ResNet's last 1x1 maps (32 px inputs) multiplies only its centre tap."""
    layer = Conv(64, impl="fast")
    x = jnp.zeros((2, 1, 1, 128))
    params = layer.init(jax.random.key(0), x)
    grad = jax.make_jaxpr(jax.grad(lambda p: layer.apply(p, x).sum()))(params)
    dots = [e for e in grad.jaxpr.eqns if e.primitive.name == "dot_general"]
    dims = {d for e in dots for v in e.invars for d in v.aval.shape}
    assert dots and not dims & {9 * 128, 9 * 64}  # no im2col patches (9 * cin), no tap products (9 * features)
    assert "conv_general_dilated" not in str(grad)


@pytest.mark.parametrize("features, patch_width, forward_convs", [(8, 9 * 8, 1), (40, 9 * 40, 0)])
def test_stride_one_conv_to_fewer_channels_differentiates_through_tap_products(features, patch_width, forward_convs):
    """Training's gradient is matmuls, never lax's: tap products (9 * features wide) after lax's forward
    where the output is narrower than the input (DenseNet's 128 -> 32), im2col (9 * cin) where not."""
    layer = Conv(features, impl="fast")
    x = jnp.zeros((2, 7, 6, 40))
    params = layer.init(jax.random.key(0), x)
    grad = jax.make_jaxpr(jax.grad(lambda p, x: layer.apply(p, x).sum(), argnums=(0, 1)))(params, x)
    widths = {v.aval.shape[-1] for e in grad.jaxpr.eqns if e.primitive.name == "dot_general" for v in e.invars}
    assert patch_width in widths and str(grad).count("conv_general_dilated") == forward_convs


@pytest.mark.parametrize(
    "cin, features, padding, inference_forward",
    [
        (40, 40, "VALID", "lax"),
        (12, 30, "VALID", "lax"),
        (96, 96, "VALID", "lax"),
        (40, 8, "SAME", "lax"),  # DenseNet's 3x3 (a tap-products gradient in training)
        (1, 32, "VALID", "lax"),  # a gray image to 32+ channels (S2): lax
        (1, 32, "SAME", "lax"),
        (1, 8, "SAME", "im2col"),  # narrower (S4's ConvNN): im2col
        (3, 32, "SAME", "im2col"),  # RGB stems: im2col
    ],
)
def test_inference_forward_of_a_conv_is_lax_but_for_shallow_inputs(cin, features, padding, inference_forward):
    """Without gradients a convolution runs XLA's, except the shallow ones (patch depth up to 36)
    that im2col makes one small matmul of."""
    layer = Conv(features, padding=padding, impl="fast")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 6, cin)), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params))
    used = "lax" if "conv_general_dilated" in jaxpr else "im2col" if "concatenate" in jaxpr else "other"
    assert used == inference_forward
    want = layer.clone(impl="lax").apply(params, x)
    np.testing.assert_allclose(layer.apply(params, x), want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.slow
def test_wide_conv_runs_lax_for_inference_and_im2col_when_differentiated():
    """XLA's convolution is the fastest forward here; its gradient is not, so training goes through im2col."""
    layer = Conv(40, impl="fast")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 7, 6, 40)), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params))
    loss = lambda p, x: jnp.sum(layer.apply(p, x) ** 2)  # noqa: E731
    grad_jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x))
    assert "conv_general_dilated" not in grad_jaxpr and "dot_general" in grad_jaxpr
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharded = jax.jit(
        jax.grad(loss, argnums=(0, 1)), in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))
    )
    assert "all-gather" not in sharded.lower(params, x).compile().as_text()
    reference = jax.grad(lambda p, x: jnp.sum(layer.clone(impl="lax").apply(p, x) ** 2), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(sharded(params, x)), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "x_shape, pads",
    [
        ((2, 8, 6, 5), ((1, 1), (1, 1))),  # 'same', whole tiles
        ((1, 7, 9, 3), ((1, 1), (1, 1))),  # odd sizes: the last tile row and column are half outside
        ((2, 9, 8, 4), ((0, 0), (0, 0))),  # 'valid'
        ((1, 6, 5, 2), ((2, 0), (0, 1))),  # uneven explicit pads
    ],
)
def test_winograd_conv_equals_lax_in_value_and_gradient(x_shape, pads):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, x_shape[-1], 7)), jnp.float32)
    want, want_vjp = jax.vjp(lambda x, k: cpu_conv.conv_lax(x, k, (1, 1), pads), x, kernel)
    got, got_vjp = jax.vjp(lambda x, k: cpu_conv.conv_winograd(x, k, pads), x, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    for a, b in zip(got_vjp(g), want_vjp(g), strict=True):  # dx (a flipped-kernel Winograd), dkernel
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.slow
def test_big_3x3_conv_runs_winograd_and_its_kernel_gradient_im2col():
    """VGG16's 24x24x256 convolution at batch 8: inference is 16 matmuls of transformed tiles and no
    XLA convolution; training adds 16 for the input gradient and im2col's kernel gradient (one 9 * cin
    wide patch matmul); values and gradients equal lax's."""
    layer = Conv(256, impl="fast")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 24, 24, 256)), jnp.float32)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape) / 48, s.dtype),
        jax.eval_shape(layer.init, jax.random.key(0), x),
    )
    inference = str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params))
    dots = [line.split("=")[0] for line in inference.splitlines() if "dot_general" in line]
    assert "conv_general_dilated" not in inference
    assert len(dots) == 16 and all(f"f32[{8 * 12 * 12},256]" in d for d in dots)  # one per tile element
    want = jax.jit(layer.clone(impl="lax").apply)(params, x)
    np.testing.assert_allclose(jax.jit(layer.apply)(params, x), want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharded = jax.jit(layer.apply, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))))
    assert "all-gather" not in sharded.lower(params, x).compile().as_text()  # data parallel as it was
    small = x[:1, :8, :8]  # 0.08 GFLOP: XLA's convolution is as fast, without the transforms
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda p: layer.apply(p, small))(params))

    def grads(module):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2)))

    training = str(jax.make_jaxpr(grads(layer))(params, x[:2]))
    tile_products = [line for line in training.splitlines() if "dot_general" in line and "[288,256]" in line]
    assert "conv_general_dilated" not in training and len(tile_products) == 32
    assert f",{9 * 256}]" in training  # im2col's patches for the kernel gradient
    got, want = grads(layer)(params, x[:2]), grads(layer.clone(impl="lax"))(params, x[:2])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.parametrize(
    "x_shape, kernel_shape, strides, dtype, pays",
    [
        ((8, 24, 24, 256), (3, 3, 256, 256), (1, 1), jnp.float32, True),
        ((8, 24, 24, 256), (3, 3, 256, 256), (2, 2), jnp.float32, False),  # strided
        ((8, 24, 24, 256), (5, 5, 256, 256), (1, 1), jnp.float32, False),  # not 3x3
        ((8, 24, 24, 256), (3, 3, 256, 256), (1, 1), jnp.bfloat16, False),  # the transforms would round
        ((8, 96, 96, 32), (3, 3, 32, 64), (1, 1), jnp.float32, False),  # 32 channels: 0.75x measured
        ((8, 24, 24, 64), (3, 3, 64, 64), (1, 1), jnp.float32, False),  # 0.34 GFLOP
        ((1, 8, 8, 1024), (3, 3, 1024, 1024), (1, 1), jnp.float32, False),  # 1.2 GFLOP, but 16 tiles
        ((2, 8, 8, 1024), (3, 3, 1024, 1024), (1, 1), jnp.float32, True),  # 32 tiles
    ],
)
def test_winograd_is_chosen_only_where_it_was_measured_faster(x_shape, kernel_shape, strides, dtype, pays):
    x, kernel = jax.ShapeDtypeStruct(x_shape, dtype), jax.ShapeDtypeStruct(kernel_shape, dtype)
    assert cpu_conv.winograd_pays(x, kernel, strides, ((1, 1), (1, 1))) == pays


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, window, strides, padding",
    [
        ((2, 6, 8, 3), (2, 2), None, "VALID"),
        ((2, 7, 5, 3), (2, 2), (2, 2), "VALID"),  # odd sizes: the last row and column are dropped
        ((2, 9, 6, 2), (3, 2), (3, 2), "SAME"),  # SAME that needs no padding
        ((2, 7, 6, 2), (2, 2), (2, 2), "SAME"),  # SAME that pads (-inf)
        ((2, 7, 7, 2), (3, 3), (2, 2), "VALID"),  # overlapping windows
        ((2, 8, 9, 2), (3, 3), (2, 2), "SAME"),  # overlapping and padded (Xception)
        ((1, 6, 5, 3), (3, 2), (1, 2), ((1, 2), (0, 1))),  # explicit pads, stride 1 on one axis
    ],
)
def test_max_pool_equals_flax_in_value_and_gradient(shape, window, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    want, want_vjp = jax.vjp(lambda x: nn.max_pool(x, window, strides or window, padding), x)
    got, got_vjp = jax.vjp(lambda x: max_pool(x, window, strides, padding, impl="fast"), x)
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    np.testing.assert_array_equal(got, want)  # training's forward
    np.testing.assert_array_equal(max_pool(x, window, strides, padding, impl="fast"), want)  # inference's
    np.testing.assert_allclose(got_vjp(g)[0], want_vjp(g)[0], rtol=1e-6, atol=1e-6)
    gradient = str(jax.make_jaxpr(got_vjp)(g))
    assert "select_and_scatter" not in gradient
    lax_only = str(
        jax.make_jaxpr(lambda x: jax.vjp(lambda x: max_pool(x, window, strides, padding, impl="lax"), x)[1](g))(x)
    )
    assert "custom_vjp" not in lax_only


@pytest.mark.parametrize("views_in_inference", [False, True])
def test_max_pool_views_in_inference_keeps_values_and_gradient_and_drops_the_reduce_window(views_in_inference):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 8, 3)), jnp.float32)
    pool = functools.partial(max_pool, window=(2, 2), impl="fast", views_in_inference=views_in_inference)
    want, want_vjp = jax.vjp(lambda x: nn.max_pool(x, (2, 2), (2, 2)), x)
    got, got_vjp = jax.vjp(pool, x)
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    np.testing.assert_array_equal(pool(x), want)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_vjp(g)[0], want_vjp(g)[0], rtol=1e-6, atol=1e-6)
    # inference: lax's pool (a reduce-window, which XLA:CPU fuses with neighbouring convolutions)
    # unless asked for the views
    assert ("reduce_window" in str(jax.make_jaxpr(pool)(x))) != views_in_inference


def test_max_pool_ties_share_the_gradient():
    x = jnp.asarray([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    dx = jax.grad(lambda x: max_pool(x, (2, 2), impl="fast").sum())(x)
    np.testing.assert_array_equal(dx.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])


@pytest.mark.slow
def test_overlapping_max_pool_ties_share_each_window_gradient():
    # 2x2 windows at stride 1 over a constant 3x3 map: every window's four cells tie and take a quarter
    # of it, so a cell gets a quarter per window it is in.
    dx = jax.grad(lambda x: max_pool(x, (2, 2), (1, 1), impl="fast").sum())(jnp.ones((1, 3, 3, 1)))
    np.testing.assert_allclose(dx.reshape(3, 3), [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])


@pytest.fixture
def lax_convs():
    """config.model.conv_impl=lax for one test; the process-wide choice is back to "auto" after it."""
    previous = layers.set_conv_impl("lax")
    try:
        yield
    finally:
        layers.set_conv_impl(previous)


class _EveryLayer(nn.Module):
    """One of each layer and both max-pool paths (non-overlapping blocks, overlapping padded views)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(Conv(8, (3, 3), (2, 2))(x))  # RGB stem: im2col
        x = max_pool(x, (3, 3), (1, 1), "SAME")  # overlapping: the views
        x = nn.relu(Conv(12)(x))  # wide: lax forward, im2col gradient
        x = DepthwiseConv(strides=(2, 2))(x)
        x = layers.SeparableConv(6)(x)
        x = max_pool(x, (2, 2))  # non-overlapping: the blocks
        return ConvTranspose(4)(x)


CONVS_IN_EVERY_LAYER = 6  # the SeparableConv is two; lax.conv_transpose is a conv_general_dilated too


def _model_value_and_grads(model, params, x):
    loss = lambda p, x: jnp.sum(model.apply(p, x) ** 2)  # noqa: E731 (a new function: traced afresh)
    forward = jax.make_jaxpr(lambda p, x: model.apply(p, x))(params, x)
    gradient = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x), str(forward), str(gradient)


@pytest.mark.slow
def test_conv_impl_lax_makes_every_auto_layer_lax_with_the_same_values():
    model = _EveryLayer()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 3)), jnp.float32)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
        jax.eval_shape(model.init, jax.random.key(0), x),
    )
    auto, auto_forward, auto_gradient = _model_value_and_grads(model, params, x)
    assert layers.conv_impl() == "auto"  # the CPU rewrites on this backend, their custom gradients inlined
    assert "custom_vjp_call" in auto_forward and "optimization_barrier" in auto_gradient
    previous = layers.set_conv_impl("lax")
    try:
        assert previous == "auto" and layers.conv_impl() == "lax" and not fast_convs_enabled("auto")
        forced, forward, gradient = _model_value_and_grads(model, params, x)
    finally:
        layers.set_conv_impl(previous)
    assert forward.count("conv_general_dilated") == CONVS_IN_EVERY_LAYER
    assert forward.count("reduce_window_max") == 2  # flax's pool, both times
    assert "custom_vjp_call" not in forward
    # the rewrites' hand-written gradients are the only barriers; lax's gradients are convolutions
    assert gradient.count("conv_general_dilated") >= CONVS_IN_EVERY_LAYER and "optimization_barrier" not in gradient
    assert fast_convs_enabled("fast")  # an explicit impl is kept
    for a, b in zip(jax.tree.leaves(forced), jax.tree.leaves(auto), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_set_conv_impl_takes_auto_or_lax_only(lax_convs):
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        layers.set_conv_impl("fast")
    assert layers.conv_impl() == "lax"


@pytest.mark.slow
def test_a_run_with_conv_impl_lax_trains(tmp_path, lax_convs):
    """config.model.conv_impl=lax end to end: the model is built, trained and evaluated through lax."""
    from configs import seg_mobilenet
    from labjax import train

    config = seg_mobilenet.get_config("smoke")
    config.task, config.model.name = "classification", "small_cnn"
    config.checkpoint.best_metric = "val_accuracy"
    config.model.conv_impl = "lax"
    layers.set_conv_impl("auto")  # train_and_evaluate sets it from the config
    summary = train.train_and_evaluate(config, tmp_path)
    assert layers.conv_impl() == "lax"
    assert set(summary) == {"loss", "accuracy"} and np.isfinite(summary["loss"])
