"""The CPU formulations behind ``labjax.models.layers``: convolutions and max pools rewritten as slices,
multiply-adds and matrix multiplies, with hand-written gradients (``jax.custom_vjp``).

XLA:CPU lowers grouped convolutions and the gradients of strided / transposed convolutions and of
max pools one to two orders of magnitude slower than the same arithmetic written so. Inputs are NHWC,
kernels HWIO. Why each rewrite, with the measurements behind every threshold: ``benchmarks/README.md``
("Convolution formulations on the CPU"); ``benchmarks/conv_layers.py`` re-checks the thresholds.
"""

import functools
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int]]

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Deepest patch (kh*kw*cin) that im2col forwards: beyond it lax's convolution is the faster forward.
IM2COL_MAX_DEPTH = 36
# Winograd pays from this many input channels, 2x2 output tiles and FLOPs up (below, its transforms cost more).
WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_TILES, WINOGRAD_MIN_FLOPS = 64, 32, 5e8


def conv_pads(padding: Padding, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int]) -> Pads:
    """Explicit (before, after) pads of a forward convolution, XLA/TF "SAME" rule."""
    if padding == "VALID":
        return (0, 0), (0, 0)
    if padding == "SAME":
        pads = []
        for n, k, s in zip(spatial, kernel, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return _explicit_pads(padding)


def transpose_pads(padding: Padding, kernel: Sequence[int], strides: Sequence[int]) -> Pads:
    """Pads of the dilated input in ``lax.conv_transpose`` (strings name the forward conv's padding)."""
    if padding not in ("SAME", "VALID"):
        return _explicit_pads(padding)
    pads = []
    for k, s in zip(kernel, strides):
        if padding == "SAME":
            total = k + s - 2
            before = k - 1 if s > k - 1 else -(-total // 2)
        else:
            total = k + s - 2 + max(k - s, 0)
            before = k - 1
        pads.append((before, total - before))
    return tuple(pads)


def _explicit_pads(padding: Padding) -> Pads:
    if isinstance(padding, str) or len(padding) != 2 or any(len(p) != 2 for p in padding):
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)), got {padding!r}")
    (top, bottom), (left, right) = padding
    return (int(top), int(bottom)), (int(left), int(right))


def live_taps(x: Array, kernel: Array, strides: tuple[int, int], padding: Padding) -> tuple[Array, Array, Pads]:
    """(x, kernel, explicit pads) of a convolution with ``padding``, without the kernel's edge rows /
    columns that only ever multiply padding.

    On maps smaller than the kernel's reach (a 3x3 "same" convolution of a 1x1 map is its centre tap)
    those taps add exact zeros: dropping them leaves the output unchanged and skips their work, on every
    backend. A dropped tap's gradient is zero either way.
    """
    pads = conv_pads(padding, x.shape[1:3], kernel.shape[:2], strides)
    kept, new_pads = [], []
    for n, k, s, (lo, hi) in zip(x.shape[1:3], kernel.shape[:2], strides, pads):
        out = (n + lo + hi - k) // s + 1
        live = [i for i in range(k) if any(0 <= i - lo + s * t < n for t in range(out))]
        if not live:  # no output reads the input (or there is no output): nothing to save
            return x, kernel, pads
        first, last = live[0], live[-1]
        kept.append(slice(first, last + 1))
        # Tap `first` becomes tap 0, and the far pad is what keeps `out` outputs.
        new_pads.append((lo - first, (out - 1) * s + last + 1 - n - lo))
    if kernel.shape[:2] == tuple(sl.stop - sl.start for sl in kept):
        return x, kernel, pads
    (top, bottom), (left, right) = new_pads
    # A negative far pad (strided windows that never reach the last rows) drops those rows.
    x = x[:, : x.shape[1] + min(bottom, 0), : x.shape[2] + min(right, 0)]
    return x, kernel[kept[0], kept[1]], ((top, max(bottom, 0)), (left, max(right, 0)))


def _pad_spatial(x: Array, pads: Pads) -> Array:
    """Zero-pads (or, for negative pads, crops) the H and W axes of an NHWC array."""
    (top, bottom), (left, right) = pads
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))


def _windows(x: Array, kernel_size: tuple[int, int], strides: tuple[int, int], pads: Pads) -> list[Array]:
    """The kh*kw strided views of the padded input that each kernel tap multiplies, row-major."""
    xp = _pad_spatial(x, pads)
    (kh, kw), (sh, sw) = kernel_size, strides
    n, hp, wp, c = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kernel_size} does not fit the padded input {(hp, wp)}")
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]


def _acc_dtype(dtype: Any) -> Any:
    """Accumulate bfloat16/float16 in float32, like XLA's convolutions do."""
    return jnp.promote_types(dtype, jnp.float32)


def _matmul(x: Array, w: Array) -> Array:
    """(..., K) @ (K, F) as one 2-D dot (the N-D form is several times slower to differentiate on XLA:CPU)."""
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w, preferred_element_type=_acc_dtype(x.dtype))
    return y.reshape(x.shape[:-1] + (w.shape[-1],))


def conv_lax(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads, groups: int = 1) -> Array:
    """lax's convolution, NHWC / HWIO."""
    return lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=DIMENSION_NUMBERS, feature_group_count=groups
    )


def conv_fast(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """Dense conv as im2col + matmul, or as lax's convolution (or Winograd) with a matmul gradient."""
    features, cin = kernel.shape[3], kernel.shape[2]
    if uses_im2col(kernel):
        return conv_im2col(x, kernel, strides, pads)
    if strides == (1, 1) and features < cin:
        return _conv_lax_taps_grad(x, kernel, pads)
    if winograd_pays(x, kernel, strides, pads):
        return conv_winograd(x, kernel, pads)
    return conv_lax_im2col_grad(x, kernel, strides, pads)


def uses_im2col(kernel: Array) -> bool:
    """Whether a convolution's forward is im2col (1x1, or a shallow patch) rather than lax's."""
    kh, kw, cin, _ = kernel.shape
    return kh * kw == 1 or (kh * kw * cin <= IM2COL_MAX_DEPTH and not _gray_and_wide(kernel))


def _gray_and_wide(kernel: Array) -> bool:
    """A convolution of a one-channel image to 32 or more channels: XLA's forward was faster there."""
    kh, kw, cin, features = kernel.shape
    return kh * kw > 1 and cin == 1 and features >= 32


def _im2col_patches(x: Array, kernel_size: tuple[int, int], strides: tuple[int, int], pads: Pads) -> Array:
    """Each output pixel's receptive field, taps row-major then channels: (n, out_h, out_w, kh*kw*cin)."""
    cols = _windows(x, kernel_size, strides, pads)
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv_im2col(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """A convolution as one matmul of the input's patches with the flattened kernel."""
    kh, kw, cin, features = kernel.shape
    patches = _im2col_patches(x, (kh, kw), strides, pads)
    return _matmul(patches, kernel.reshape(kh * kw * cin, features)).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_lax_im2col_grad(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """lax's convolution (the fastest forward for wide inputs); when differentiated, im2col instead,
    whose value + gradient is faster than XLA:CPU's convolution gradients. Inference never builds
    the patches."""
    return conv_lax(x, kernel, strides, pads)


def _conv_lax_im2col_grad_fwd(x, kernel, strides, pads):
    # jax.vjp's function is a pytree (a Partial holding the patches), so it can be the residual.
    return jax.vjp(lambda x, kernel: conv_im2col(x, kernel, strides, pads), x, kernel)


def _conv_lax_im2col_grad_bwd(strides, pads, vjp, g):
    return vjp(g)


conv_lax_im2col_grad.defvjp(_conv_lax_im2col_grad_fwd, _conv_lax_im2col_grad_bwd)


def winograd_pays(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> bool:
    """Whether a convolution runs faster as Winograd F(2x2, 3x3) than as XLA's own (inference) and
    than im2col (training): 3x3 stride 1, float32 (the transforms add and halve values, which
    bfloat16 would round), and enough channels, tiles and work for its 2.25x fewer multiplies to
    pay for the transforms."""
    n, h, w, cin = x.shape
    out_h, out_w, tiles_h, tiles_w = _winograd_tiling(h, w, pads)
    tiles = n * tiles_h * tiles_w
    flops = 2 * 9 * n * out_h * out_w * cin * kernel.shape[-1]
    return (
        kernel.shape[:2] == (3, 3)
        and strides == (1, 1)
        and x.dtype == jnp.float32
        and cin >= WINOGRAD_MIN_CHANNELS
        and tiles >= WINOGRAD_MIN_TILES
        and flops >= WINOGRAD_MIN_FLOPS
    )


def _winograd_tiling(h: int, w: int, pads: Pads) -> tuple[int, int, int, int]:
    """A 3x3 stride-1 convolution's output size and its 2x2 output tiles: (out_h, out_w, tiles_h, tiles_w)."""
    (top, bottom), (left, right) = pads
    out_h, out_w = h + top + bottom - 2, w + left + right - 2
    return out_h, out_w, -(-out_h // 2), -(-out_w // 2)


# Winograd F(2x2, 3x3) (Lavin & Gray, 2015): a 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for
# its 4x4 input tile d and the 3x3 kernel g, 16 multiplies in place of 36. Each transform is applied
# along one axis at a time; these are its matrices' rows.
def _winograd_bt(d: list[Array]) -> list[Array]:
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _winograd_g(g: list[Array]) -> list[Array]:
    return [g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]]


def _winograd_at(m: list[Array]) -> list[Array]:
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _winograd_taps(kernel: Array) -> list[Array]:
    """G g G^T: the 16 transformed taps of a 3x3 kernel, each (cin, features), row-major."""
    return [u for r in _winograd_g([kernel[i] for i in range(3)]) for u in _winograd_g([r[j] for j in range(3)])]


# G applied to a reversed 3-vector gives G's output with its first and last rows swapped, so the
# spatially flipped kernel's taps (the input gradient's) are a permutation of the forward's.
_WINOGRAD_FLIP = (3, 1, 2, 0)


def _winograd_conv(x: Array, taps: list[Array], pads: Pads, transposed_taps: bool = False) -> Array:
    """A 3x3 stride-1 convolution as Winograd F(2x2, 3x3): 16 matmuls (tiles x cin) @ (cin x features)
    (with ``transposed_taps`` the taps are (features, cin)).

    Every transformed tile element and kernel tap is its own array and its own matmul: stacked into one
    batched matmul, XLA:CPU wrote the transformed input through a slow concatenate.
    """
    n, h, w, cin = x.shape
    (top, _), (left, _) = pads
    out_h, out_w, tiles_h, tiles_w = _winograd_tiling(h, w, pads)
    # Tile (i, j) reads padded rows 2i..2i+3 and columns 2j..2j+3; pad up to whole tiles.
    xp = _pad_spatial(x, ((top, 2 * tiles_h + 2 - h - top), (left, 2 * tiles_w + 2 - w - left)))
    rows = [xp[:, i : i + 2 * tiles_h : 2] for i in range(4)]
    inputs = [
        t.reshape(-1, cin)
        for r in _winograd_bt(rows)
        for t in _winograd_bt([r[:, :, j : j + 2 * tiles_w : 2] for j in range(4)])
    ]
    contract = (((1,), (1 if transposed_taps else 0,)), ((), ()))
    features = taps[0].shape[0 if transposed_taps else 1]
    m = [
        lax.dot_general(v, u, contract, preferred_element_type=_acc_dtype(x.dtype)).reshape(
            n, tiles_h, tiles_w, features
        )
        for v, u in zip(inputs, taps, strict=True)
    ]
    by_column = [_winograd_at([m[4 * a + b] for a in range(4)]) for b in range(4)]  # [b][p]
    y = [_winograd_at([by_column[b][p] for b in range(4)]) for p in range(2)]  # [p][q]
    y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)  # n, tiles_h, p, tiles_w, q, features
    return y.reshape(n, 2 * tiles_h, 2 * tiles_w, features)[:, :out_h, :out_w].astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_winograd(x: Array, kernel: Array, pads: Pads) -> Array:
    """A 3x3 stride-1 convolution as Winograd's, forward and input gradient (a 3x3 convolution of the
    output gradient with the flipped kernel); the kernel gradient is im2col's patch matmul, the
    patches rebuilt in the backward pass."""
    return _winograd_conv(x, _winograd_taps(kernel), pads)


def _conv_winograd_fwd(x, kernel, pads):
    taps = _winograd_taps(kernel)
    return _winograd_conv(x, taps, pads), (x, taps)


def _conv_winograd_bwd(pads, residuals, g):
    x, taps = residuals
    (top, bottom), (left, right) = pads
    flipped = [taps[4 * _WINOGRAD_FLIP[a] + _WINOGRAD_FLIP[b]] for a in range(4) for b in range(4)]
    dx = _winograd_conv(g, flipped, ((2 - top, 2 - bottom), (2 - left, 2 - right)), transposed_taps=True)
    patches = _im2col_patches(x, (3, 3), (1, 1), pads)
    dkernel = jnp.dot(
        patches.reshape(-1, patches.shape[-1]).T, g.reshape(-1, g.shape[-1]), preferred_element_type=_acc_dtype(x.dtype)
    )
    return dx, dkernel.reshape(3, 3, *taps[0].shape).astype(taps[0].dtype)


conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_lax_taps_grad(x: Array, kernel: Array, pads: Pads) -> Array:
    """A stride-1 conv to fewer channels than its input (DenseNet's 128 -> 32): lax's convolution,
    differentiated as tap products (one matmul of the input with all taps, whose product is
    kh*kw*features wide per pixel, narrower than im2col's kh*kw*cin here)."""
    return conv_lax(x, kernel, (1, 1), pads)


def _conv_lax_taps_grad_fwd(x, kernel, pads):
    return conv_lax(x, kernel, (1, 1), pads), (x, kernel)


def _conv_lax_taps_grad_bwd(pads, residuals, g):
    """The product's cotangent: g shifted back once per tap, concatenated; then two matmuls.

    Autodiff's version adds kh*kw zero-padded full-width copies, and XLA:CPU fuses whatever computed
    g into each of them (in DenseNet, the BatchNorm gradients of every later layer): the barrier makes
    g be computed once.
    """
    x, kernel = residuals
    kh, kw, cin, features = kernel.shape
    (h, w), (out_h, out_w) = x.shape[1:3], g.shape[1:3]
    (top, _), (left, _) = pads
    g = lax.optimization_barrier(g)
    shifted = [
        _pad_spatial(g, ((i - top, h + top - i - out_h), (j - left, w + left - j - out_w)))
        for i in range(kh)
        for j in range(kw)
    ]
    dz = jnp.concatenate(shifted, axis=-1).reshape(-1, kh * kw * features)
    dx, dtaps = _product_grads(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * features), dz)
    dkernel = dtaps.reshape(cin, kh, kw, features).transpose(1, 2, 0, 3)
    return dx, dkernel.astype(kernel.dtype)


def _product_grads(x: Array, taps: Array, dz: Array) -> tuple[Array, Array]:
    """Gradients of z = x @ taps (x flattened to pixels x cin) given dz: (dx in x's shape and dtype, dtaps)."""
    acc = _acc_dtype(x.dtype)
    dx = jnp.dot(dz, taps.T, preferred_element_type=acc).reshape(x.shape)
    return dx.astype(x.dtype), jnp.dot(x.reshape(-1, x.shape[-1]).T, dz, preferred_element_type=acc)


_conv_lax_taps_grad.defvjp(_conv_lax_taps_grad_fwd, _conv_lax_taps_grad_bwd)


def depthwise_fast(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """Depthwise conv as kh*kw shifted multiply-adds of the padded input, with a hand-written gradient."""
    out_features = kernel.shape[-1]
    multiplier = out_features // x.shape[-1]
    if multiplier > 1:  # output channel o reads input channel o // multiplier, as in lax's grouping
        x = jnp.repeat(x, multiplier, axis=-1)
    return _depthwise_taps(x, kernel, strides, pads)


def _depthwise_value(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    kh, kw, _, features = kernel.shape
    acc = _acc_dtype(x.dtype)
    taps = kernel.reshape(kh * kw, features).astype(acc)
    y = sum(win.astype(acc) * taps[t] for t, win in enumerate(_windows(x, (kh, kw), strides, pads)))
    return y.astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_taps(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    return _depthwise_value(x, kernel, strides, pads)


def _depthwise_taps_fwd(x, kernel, strides, pads):
    # Only x is kept: XLA fuses the forward into one loop, where autodiff would
    # keep all kh*kw shifted windows of x alive until the backward pass.
    return _depthwise_value(x, kernel, strides, pads), (x, kernel)


def _depthwise_taps_bwd(strides, pads, residuals, g):
    x, kernel = residuals
    kh, kw, _, features = kernel.shape
    if strides == (1, 1):
        # dx is g correlated with the flipped kernel: the same fused multiply-adds as the forward
        # (autodiff's transpose, a sum of kh*kw padded copies, is slower on XLA:CPU).
        (top, _), (left, _) = pads
        (h, w), (gh, gw) = x.shape[1:3], g.shape[1:3]
        dx_pads = ((kh - 1 - top, h - gh + top), (kw - 1 - left, w - gw + left))
        dx = _depthwise_value(g, kernel[::-1, ::-1], strides, dx_pads)
    else:  # strided: correlating the dilated g wastes most products and measured no faster
        _, x_vjp = jax.vjp(lambda x: _depthwise_value(x, kernel, strides, pads), x)
        (dx,) = x_vjp(g)
    # Kernel gradient: per tap, sum over pixels of window * g. One reduce with kh*kw outputs over the
    # W axis (XLA:CPU fuses the windows into it; separate jnp.sums copy each window first), then a
    # small sum over N and H.
    acc = _acc_dtype(x.dtype)
    products = [win.astype(acc) * g.astype(acc) for win in _windows(x, (kh, kw), strides, pads)]
    zeros = [jnp.zeros((), acc)] * len(products)
    per_row = lax.reduce(products, zeros, lambda a, b: [u + v for u, v in zip(a, b)], (2,))
    dkernel = jnp.stack(per_row).sum(axis=(1, 2)).reshape(kh, kw, 1, features)
    return dx, dkernel.astype(kernel.dtype)


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


def _phase_taps(n: int, k: int, s: int, pads: tuple[int, int]) -> tuple[int, int, list[list[tuple[int, int]]]]:
    """Sub-pixel plan of one spatial axis of a transposed convolution.

    Output position s*q + r receives x[q + e] * kernel[j] for every tap j with
    (r + j - pad_before) % s == 0, e = (r + j - pad_before) // s. Returns the
    output size, the phase length ceil(out / s) and per phase r its taps (e, j).
    """
    out = (n - 1) * s + 1 + pads[0] + pads[1] - k + 1
    if out <= 0:
        raise ValueError(f"transposed convolution of size {n} with kernel {k}, stride {s}, pads {pads} is empty")
    phases = [[((r + j - pads[0]) // s, j) for j in range(k) if (r + j - pads[0]) % s == 0] for r in range(s)]
    return out, -(-out // s), phases


def conv_transpose_fast(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """Transposed conv as one matmul with all taps, then per output phase a sum of shifted slices.

    Every product x[i] @ kernel[j] is used exactly once (no zeros from input dilation), and its
    gradient is again slices, pads and two large matmuls, where XLA:CPU's gradient of an
    input-dilated convolution is far slower.
    """
    if strides == (1, 1):  # no dilation: an ordinary convolution
        return conv_fast(x, kernel, strides, pads)
    return _conv_transpose_taps(x, kernel, strides, pads)


def _conv_transpose_value(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    kh, kw, cin, features = kernel.shape
    n, h, w, _ = x.shape
    out_h, qh, phases_h = _phase_taps(h, kh, strides[0], pads[0])
    out_w, qw, phases_w = _phase_taps(w, kw, strides[1], pads[1])
    z = _matmul(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * features))  # every pixel times every tap
    rows = []
    for phase_h in phases_h:
        cols = []
        for phase_w in phases_w:
            terms = []
            for eh, jh in phase_h:
                for ew, jw in phase_w:
                    tap = (jh * kw + jw) * features
                    # rows eh .. eh+qh-1 and columns ew .. ew+qw-1 of this tap's product, zero outside;
                    # one pad per term lets XLA fuse it into the sum instead of materialising a padded z.
                    term = z[..., tap : tap + features]
                    terms.append(_pad_spatial(term, ((-eh, eh + qh - h), (-ew, ew + qw - w))))
            cols.append(sum(terms) if terms else jnp.zeros((n, qh, qw, features), z.dtype))
        rows.append(jnp.stack(cols, axis=3))  # (n, qh, qw, sw, f)
    y = jnp.stack(rows, axis=2).reshape(n, qh * strides[0], qw * strides[1], features)
    return y[:, :out_h, :out_w].astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transpose_taps(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    return _conv_transpose_value(x, kernel, strides, pads)


def _conv_transpose_taps_fwd(x, kernel, strides, pads):
    return _conv_transpose_value(x, kernel, strides, pads), (x, kernel)


def _conv_transpose_taps_bwd(strides, pads, residuals, g):
    """Output pixel s*i + pad - j took x[i] @ kernel[j], so the product's cotangent is im2col of g:
    one concatenate of g's strided windows (taps in flipped order), where autodiff's transpose of
    the forward's slices is a slower sum of kh*kw full-width pads."""
    x, kernel = residuals
    kh, kw, cin, features = kernel.shape
    (h, w), (out_h, out_w) = x.shape[1:3], g.shape[1:3]
    (sh, sw), ((top, _), (left, _)) = strides, pads
    g_pads = (
        (kh - 1 - top, sh * (h - 1) + 1 - out_h + top),
        (kw - 1 - left, sw * (w - 1) + 1 - out_w + left),
    )
    windows = _windows(g, (kh, kw), strides, g_pads)  # tap (kh-1-jh, kw-1-jw) first
    dz = jnp.concatenate(windows, axis=-1).reshape(-1, kh * kw * features)
    flipped = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, kh * kw * features)
    dx, dflipped = _product_grads(x, flipped, dz)
    dkernel = dflipped.reshape(cin, kh, kw, features).transpose(1, 2, 0, 3)[::-1, ::-1]
    return dx, dkernel.astype(kernel.dtype)


_conv_transpose_taps.defvjp(_conv_transpose_taps_fwd, _conv_transpose_taps_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose_lax_taps_grad(x: Array, kernel: Array, strides: tuple[int, int], pads: Pads) -> Array:
    """lax's transposed convolution (cuDNN's backward-data kernels on a GPU), differentiated as the taps
    one: XLA:GPU writes the kernel gradient of an input-dilated convolution as a whole-image-window
    convolution that cuDNN runs slowly; the taps gradient is two matmuls."""
    return lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=DIMENSION_NUMBERS)


def _conv_transpose_lax_taps_grad_fwd(x, kernel, strides, pads):
    return conv_transpose_lax_taps_grad(x, kernel, strides, pads), (x, kernel)


conv_transpose_lax_taps_grad.defvjp(_conv_transpose_lax_taps_grad_fwd, _conv_transpose_taps_bwd)


def max_pool_fast(
    x: Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding, views_in_inference: bool
) -> Array:
    """An NHWC max pool as the elementwise maximum of the window's strided views, with a gradient from
    a compare with it (autodiff's gradient of lax's pool carries argmax index arrays); non-overlapping
    windows keep lax's pool in inference unless ``views_in_inference``."""
    h, w = x.shape[1:3]
    divides = h % window[0] == 0 and w % window[1] == 0
    if strides == window and (padding == "VALID" or (padding == "SAME" and divides)):
        return _max_pool_blocks(x, window, views_in_inference)
    return _max_pool_views(x, window, strides, conv_pads(padding, (h, w), window, strides))


def _strided_views(x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads) -> list[Array]:
    """The window's strided views of x padded with -inf (lax's pool pads so)."""
    (top, bottom), (left, right) = pads
    padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    return _windows(padded, window, strides, ((0, 0), (0, 0)))


def _views_maximum(x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads) -> Array:
    """The pool's output: the elementwise maximum of the window's strided views."""
    return functools.reduce(jnp.maximum, _strided_views(x, window, strides, pads))


def _gradient_per_view(views: list[Array], g: Array) -> list[Array]:
    """Each view's part of the pool's gradient: g where the view holds its window's maximum, shared
    equally between tied maxima (any share is a valid subgradient; lax gives it all to the first).

    The views must come from one materialised x (behind a barrier): XLA may recompute x's producer
    (bias + ReLU) in the backward with other rounding, and the forward's output would then match no
    element of its window (0 hits: the window's gradient lost)."""
    top = functools.reduce(jnp.maximum, views)
    hits = [view == top for view in views]
    share = g / jnp.maximum(sum(hit.astype(g.dtype) for hit in hits), 1)
    return [jnp.where(hit, share, jnp.zeros((), g.dtype)) for hit in hits]


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_views(x: Array, window: tuple[int, int], strides: tuple[int, int], pads: Pads) -> Array:
    return _views_maximum(x, window, strides, pads)


def _max_pool_views_fwd(x, window, strides, pads):
    return _views_maximum(x, window, strides, pads), x


def _max_pool_views_bwd(window, strides, pads, x, g):
    # The barrier on g: autodiff's gradient (one zero-interleaved pad per view) made XLA:CPU compute
    # g's producer once per view, at the input's resolution.
    x, g = lax.optimization_barrier((x, g))
    views, unpad = jax.vjp(lambda x: _strided_views(x, window, strides, pads), x)
    return unpad(_gradient_per_view(views, g))


_max_pool_views.defvjp(_max_pool_views_fwd, _max_pool_views_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_blocks(x: Array, window: tuple[int, int], views_in_inference: bool) -> Array:
    if views_in_inference:
        return _views_maximum(x, window, window, ((0, 0), (0, 0)))
    return nn.max_pool(x, window, window, "VALID")


def _max_pool_blocks_fwd(x, window, views_in_inference):
    # Training takes the views' maximum (the same values): XLA:CPU's reduction of lax's pool, over
    # tiny inner axes, cost more at small batches.
    return _views_maximum(x, window, window, ((0, 0), (0, 0))), x


def _max_pool_blocks_bwd(window, views_in_inference, x, g):
    # Windows that do not overlap: the views' parts interleave into dx (a reshape), no per-view pads.
    x = lax.optimization_barrier(x)
    (kh, kw), (n, h, w, c), (ho, wo) = window, x.shape, g.shape[1:3]
    parts = _gradient_per_view(_strided_views(x, window, window, ((0, 0), (0, 0))), g)
    parts = jnp.stack(parts, axis=3)  # (n, ho, wo, kh*kw, c)
    dx = parts.reshape(n, ho, wo, kh, kw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, ho * kh, wo * kw, c)
    return (_pad_spatial(dx, ((0, h - ho * kh), (0, w - wo * kw))),)


_max_pool_blocks.defvjp(_max_pool_blocks_fwd, _max_pool_blocks_bwd)
