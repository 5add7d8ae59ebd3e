"""Convolution layers that pick a fast formulation per backend.

XLA:CPU lowers convolutions poorly, so on the CPU backend these layers run the rewrites of
``labjax.models.cpu_conv`` (slices, multiply-adds and matmuls with hand-written gradients); on GPU/TPU
they call ``lax.conv_general_dilated`` / ``lax.conv_transpose``. Parameters have the names, shapes and
layout of ``flax.linen.Conv`` / ``flax.linen.ConvTranspose``, so checkpoints move freely between
backends and between these layers and the flax ones. Inputs are NHWC. Every layer takes ``impl``:
"auto" (rewrites on the CPU backend, lax elsewhere), "fast" or "lax", and ``dtype`` / ``param_dtype``
with flax's meaning. ``set_conv_impl("lax")`` (``config.model.conv_impl``) makes every "auto" layer
use lax. Why each rewrite, measured: ``benchmarks/README.md``; ``benchmarks/conv_layers.py`` re-checks it.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from labjax.models import cpu_conv
from labjax.models.cpu_conv import Padding

Array = jax.Array
Initializer = Callable[..., Array]

CONV_IMPLS = ("auto", "lax")  # config.model.conv_impl's values
_conv_impl = "auto"


def set_conv_impl(impl: str) -> str:
    """Sets the process-wide choice for layers with ``impl="auto"`` and returns the previous one.

    "auto": the CPU rewrites on the CPU backend, lax elsewhere; "lax": lax's convolutions and flax's
    pool everywhere, as a layer's ``impl="lax"`` (kernel taps that only see padding are still sliced
    off: exact), to check a JAX upgrade or work around a rewrite. Read when a layer is traced: set
    it before jit traces the model (``labjax.models.create_model`` sets it from the config); functions
    already traced keep the choice they were traced with.
    """
    global _conv_impl
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    previous, _conv_impl = _conv_impl, impl
    return previous


def conv_impl() -> str:
    """The process-wide choice for ``impl="auto"`` layers: "auto" or "lax" (``set_conv_impl``)."""
    return _conv_impl


def _resolve(impl: str) -> str:
    """A layer's ``impl`` after the process-wide switch: "auto" becomes "lax" when it is forced."""
    return "lax" if impl == "auto" and _conv_impl == "lax" else impl


def fast_convs_enabled(impl: str) -> bool:
    """Whether ``impl`` selects the CPU rewrites ("auto": only on the CPU backend, unless forced to lax)."""
    impl = _resolve(impl)
    if impl == "auto":
        return jax.default_backend() == "cpu"
    if impl in ("fast", "lax"):
        return impl == "fast"
    raise ValueError(f"impl must be 'auto', 'fast' or 'lax', got {impl!r}")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    h, w = (v, v) if isinstance(v, int) else tuple(v)
    return int(h), int(w)


def max_pool(
    x: Array,
    window: tuple[int, int],
    strides: tuple[int, int] | None = None,
    padding: str = "VALID",
    impl: str = "auto",
    views_in_inference: bool = False,
) -> Array:
    """``nn.max_pool`` (NHWC); with the CPU rewrites, the elementwise maximum of the window's strided
    views and a gradient from a compare with it (autodiff's gradient of lax's pool carries argmax index
    arrays). Where a window holds several equal maxima they share its gradient (lax gives it all to the
    first); any share is a valid subgradient.

    Non-overlapping windows keep lax's pool in inference (faster on big batches) unless
    ``views_in_inference``: where a network is nothing but convolutions and pools (VGG) the views ran
    faster.
    """
    window = _pair(window)
    strides = window if strides is None else _pair(strides)
    if not (x.ndim == 4 and fast_convs_enabled(impl)):
        return nn.max_pool(x, window, strides, padding)
    return cpu_conv.max_pool_fast(x, window, strides, padding, views_in_inference)


def _check_nhwc(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC input, got shape {x.shape}")


class Conv(nn.Module):
    """2-D convolution, parameter-compatible with ``nn.Conv`` (kernel (kh, kw, cin, features), bias)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_nhwc(x)
        ksize, strides = _pair(self.kernel_size), _pair(self.strides)
        kernel = self.param("kernel", self.kernel_init, ksize + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        x, kernel, pads = cpu_conv.live_taps(x, kernel, strides, self.padding)
        conv = cpu_conv.conv_fast if fast_convs_enabled(self.impl) else cpu_conv.conv_lax
        y = conv(x, kernel, strides, pads)
        return y if bias is None else y + bias


class DepthwiseConv(nn.Module):
    """Depthwise 2-D convolution, parameter-compatible with ``nn.Conv(features=cin * depth_multiplier,
    feature_group_count=cin)`` (kernel (kh, kw, 1, cin * depth_multiplier))."""

    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
    use_bias: bool = False
    depth_multiplier: int = 1
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_nhwc(x)
        ksize, strides = _pair(self.kernel_size), _pair(self.strides)
        cin = x.shape[-1]
        features = cin * self.depth_multiplier
        kernel = self.param("kernel", self.kernel_init, ksize + (1, features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        x, kernel, pads = cpu_conv.live_taps(x, kernel, strides, self.padding)
        if fast_convs_enabled(self.impl):
            y = cpu_conv.depthwise_fast(x, kernel, strides, pads)
        else:
            y = cpu_conv.conv_lax(x, kernel, strides, pads, groups=cin)
        return y if bias is None else y + bias


class ConvTranspose(nn.Module):
    """Transposed 2-D convolution with the semantics and parameters of ``nn.ConvTranspose``
    (``transpose_kernel=False``, i.e. ``lax.conv_transpose``). With "SAME" padding the output is
    ``strides * input`` in size, like Keras' ``Conv2DTranspose(padding="same")``; explicit pads
    are those of the stride-1 convolution over the dilated input, as in ``lax.conv_transpose``."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (2, 2)
    padding: Padding = "SAME"
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_nhwc(x)
        ksize, strides = _pair(self.kernel_size), _pair(self.strides)
        kernel = self.param("kernel", self.kernel_init, ksize + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        pads = cpu_conv.transpose_pads(self.padding, ksize, strides)
        if fast_convs_enabled(self.impl):
            y = cpu_conv.conv_transpose_fast(x, kernel, strides, pads)
        elif _resolve(self.impl) == "auto" and strides != (1, 1):
            y = cpu_conv.conv_transpose_lax_taps_grad(x, kernel, strides, pads)
        else:
            y = lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=cpu_conv.DIMENSION_NUMBERS)
        return y if bias is None else y + bias


class SeparableConv(nn.Module):
    """Depthwise then pointwise convolution, as Keras' ``SeparableConv2D`` (Xception).

    Parameters: ``depthwise_kernel`` (kh, kw, 1, cin * depth_multiplier), ``pointwise_kernel``
    (1, 1, cin * depth_multiplier, features) and ``bias``; the padding and strides apply to the
    depthwise step.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
    use_bias: bool = True
    depth_multiplier: int = 1
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_nhwc(x)
        ksize, strides = _pair(self.kernel_size), _pair(self.strides)
        cin = x.shape[-1]
        middle = cin * self.depth_multiplier
        depthwise = self.param("depthwise_kernel", self.kernel_init, ksize + (1, middle), self.param_dtype)
        pointwise = self.param("pointwise_kernel", self.kernel_init, (1, 1, middle, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, depthwise, pointwise, bias = promote_dtype(x, depthwise, pointwise, bias, dtype=self.dtype)
        x, depthwise, pads = cpu_conv.live_taps(x, depthwise, strides, self.padding)
        if fast_convs_enabled(self.impl):
            y = cpu_conv.depthwise_fast(x, depthwise, strides, pads)
            y = cpu_conv.conv_fast(y, pointwise, (1, 1), ((0, 0), (0, 0)))
        else:
            y = cpu_conv.conv_lax(x, depthwise, strides, pads, groups=cin)
            y = cpu_conv.conv_lax(y, pointwise, (1, 1), ((0, 0), (0, 0)))
        return y if bias is None else y + bias
