"""Per-example preprocessing and augmentation ops for tf.data, built from a config string.

A spec is a '|'-separated list of calls, e.g. "flip_lr|rotate(0.2)|randaugment(2, 9)". Each op works
on float32 (H, W, C) images in [0, 255] with C in {1, 3}; geometric ops move a dense int32 (H, W)
mask with the image (nearest interpolation, fill `ignore_label`), photometric ops touch the image only.
Randomness is stateless: op number i draws from a seed folded from (seed, i), so an example's output
depends only on its seed, eagerly or inside `tf.data.Dataset.map`.

On 1-channel images saturation, hue and grayscale are no-ops (a gray image has no colour to change),
as are Color in randaugment and saturation/hue in color_jitter.
"""

import ast
import dataclasses
import difflib
import inspect
import math
from collections.abc import Callable

from labjax.errors import ConfigError, DataError
from labjax.tf_import import tf

# An op: (image, mask or None, seed, context) -> (image, mask or None).
Op = Callable[..., tuple]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORMALIZE_MODES = ("none", "zero_one", "minus_one_one", "imagenet", "mean_std", "tf", "torch", "caffe")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")


@dataclasses.dataclass(frozen=True)
class Context:
    """What ops need to know about the data beyond the op's own arguments."""

    dense_labels: bool = False
    ignore_label: int = -1
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


# ----------------------------------------------------------------------------- random helpers


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return [tf.random.experimental.stateless_fold_in(seed, j) for j in range(n)]


def _uniform(seed, lo, hi, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi)


def _randint(seed, lo, hi) -> tf.Tensor:
    """Integer uniform in [lo, hi] (inclusive), scalar int32."""
    return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)


def _with_p(p: float, op: Op) -> Op:
    """Apply `op` with probability p (static shortcuts for p <= 0 and p >= 1)."""

    def apply(image, mask, seed, ctx):
        if p >= 1:
            return op(image, mask, seed, ctx)
        if p <= 0:
            return image, mask
        coin, sub = _seeds(seed, 2)
        out = tf.cond(
            _uniform(coin, 0.0, 1.0) < p, lambda: _pack(*op(image, mask, sub, ctx)), lambda: _pack(image, mask)
        )
        return _unpack(out, mask)

    return apply


def _pack(image, mask) -> tuple:
    return (image,) if mask is None else (image, mask)


def _unpack(out, mask) -> tuple:
    return (out[0], None) if mask is None else (out[0], out[1])


# ----------------------------------------------------------------------------- argument checks


def _check_p(p) -> None:
    if not isinstance(p, int | float) or not 0 <= p <= 1:
        raise DataError(f"p={p!r} must be a probability in [0, 1]")


def _size(size, width=None) -> tuple[int, int]:
    pair = (size, width) if width is not None else (size, size) if isinstance(size, int) else size
    if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(s, int) and s > 0 for s in pair)):
        given = size if width is None else (size, width)
        raise ConfigError(f"size={given!r} must be a positive int or a (height, width) pair of them")
    return int(pair[0]), int(pair[1])


def _range(value, name: str, center: float = 0.0, lo: float = -math.inf, hi: float = math.inf) -> tuple[float, float]:
    """f -> (center - f, center + f) clipped to [lo, hi]; a (a, b) pair is taken as is."""
    if isinstance(value, int | float):
        if value < 0:
            raise DataError(f"{name}={value!r} must be >= 0")
        a, b = max(lo, center - value), min(hi, center + value)
    elif isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        a, b = float(value[0]), float(value[1])
        if not lo <= a <= b <= hi:
            raise DataError(f"{name}={value!r} must be a pair (low, high) with {lo} <= low <= high <= {hi}")
    else:
        raise DataError(f"{name}={value!r} must be a number or a (low, high) pair")
    return float(a), float(b)


def _check_fill_mode(fill_mode: str) -> str:
    if fill_mode not in FILL_MODES:
        raise DataError(f"fill_mode={fill_mode!r} is not one of {', '.join(FILL_MODES)}")
    return fill_mode.upper()


def _channels(image: tf.Tensor) -> int:
    c = image.shape[-1]
    if c not in (1, 3):
        raise DataError(f"augmentation needs images with 1 or 3 channels (static), got shape {image.shape}")
    return c


# ----------------------------------------------------------------------------- geometry


def _hw(image) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)


def _about_center(image, matrix, shift=(0.0, 0.0)) -> tf.Tensor:
    """Projective transform (output -> input coords, x = column) for in = M (out - c) + c - shift."""
    h, w = _hw(image)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    (a, b), (c, d) = matrix
    ox = cx - a * cx - b * cy - shift[0]
    oy = cy - c * cx - d * cy - shift[1]
    return _vector(a, b, ox, c, d, oy)


def _vector(a, b, ox, c, d, oy) -> tf.Tensor:
    """The 8-vector of an affine map for ImageProjectiveTransformV3."""
    return tf.stack([tf.cast(v, tf.float32) for v in (a, b, ox, c, d, oy, 0.0, 0.0)])


def _transform(image, mask, transform, ctx: Context, fill=0.0, fill_mode="CONSTANT") -> tuple:
    """Warp image (bilinear) and mask (nearest) with one 8-vector transform, keeping static shapes."""

    def warp(x, interpolation, value):
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=transform[None],
            output_shape=tf.shape(x)[:2],
            fill_value=tf.constant(value, tf.float32),
            interpolation=interpolation,
            fill_mode=fill_mode,
        )[0]
        return tf.ensure_shape(out, x.shape)

    image = warp(image, "BILINEAR", float(fill))
    if mask is not None:
        mask = tf.cast(warp(tf.cast(mask, tf.float32)[..., None], "NEAREST", float(ctx.ignore_label))[..., 0], tf.int32)
    return image, mask


def _rotation(image, angle) -> tf.Tensor:
    """Counter-clockwise rotation by `angle` radians about the centre (Keras RandomRotation)."""
    cos, sin = tf.cos(angle), tf.sin(angle)
    return _about_center(image, ((cos, -sin), (sin, cos)))


def _crop_or_pad(image, mask, height, width, ctx: Context) -> tuple:
    """Centre crop / zero-pad to (height, width); the mask is padded with ignore_label."""
    image = tf.image.resize_with_crop_or_pad(image, height, width)
    if mask is not None:
        shifted = tf.image.resize_with_crop_or_pad((mask - ctx.ignore_label)[..., None], height, width)
        mask = shifted[..., 0] + ctx.ignore_label
    return image, mask


def _resize(image, mask, size) -> tuple:
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    if mask is not None:
        mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def _slice(image, mask, y, x, h, w) -> tuple:
    image = tf.slice(image, tf.stack([y, x, 0]), tf.stack([h, w, image.shape[-1]]))
    if mask is not None:
        mask = tf.slice(mask, tf.stack([y, x]), tf.stack([h, w]))
    return image, mask


# ----------------------------------------------------------------------------- colour


def _gray(image) -> tf.Tensor:
    """(H, W, 1) luma of an RGB or gray image."""
    return image if image.shape[-1] == 1 else tf.image.rgb_to_grayscale(image)


def _blend(image, other, factor) -> tf.Tensor:
    return tf.clip_by_value(factor * image + (1 - factor) * other, 0.0, 255.0)


def _adjust_brightness(image, factor):
    return tf.clip_by_value(image * factor, 0.0, 255.0)


def _adjust_contrast(image, factor):
    return _blend(image, tf.reduce_mean(_gray(image)), factor)


def _adjust_saturation(image, factor):
    return image if image.shape[-1] == 1 else _blend(image, _gray(image), factor)


def _adjust_hue(image, delta):
    return image if image.shape[-1] == 1 else tf.image.adjust_hue(image / 255.0, delta) * 255.0


def _depthwise(image, kernel_hw, padding="VALID") -> tf.Tensor:
    c = image.shape[-1]
    kernel = tf.tile(kernel_hw[:, :, None, None], [1, 1, c, 1])
    return tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], padding)[0]


def _sharpness(image, factor):
    """torchvision adjust_sharpness: blend with a 3x3 smoothed copy, borders left as they are."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    smooth = _depthwise(image, kernel)
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    inner = tf.pad(tf.ones_like(smooth[..., :1]), [[1, 1], [1, 1], [0, 0]]) > 0
    degenerate = tf.where(inner, degenerate, image)
    return _blend(image, degenerate, factor)


def _posterize(image, bits):
    shift = tf.cast(8 - bits, tf.uint8)
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(pixels, shift), shift), tf.float32)


def _solarize(image, threshold):
    return tf.where(image >= threshold, 255.0 - image, image)


def _autocontrast(image):
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    lo = tf.where(hi > lo, lo, 0.0)
    return tf.clip_by_value((image - lo) * scale, 0.0, 255.0)


def _equalize(image):
    """torchvision equalize: per-channel histogram equalisation of the uint8 values."""
    c = image.shape[-1]
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.int32)
    flat = tf.reshape(pixels + 256 * tf.range(c), [-1])
    hist = tf.reshape(tf.math.bincount(flat, minlength=256 * c, maxlength=256 * c), [c, 256])
    top = tf.reduce_max(tf.reshape(pixels, [-1, c]), axis=0)
    last = tf.gather(hist, top, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last) // 255
    safe = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(hist, axis=1) + safe // 2) // safe
    lut = tf.clip_by_value(tf.pad(lut, [[0, 0], [1, 0]])[:, :256], 0, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None])
    out = tf.gather(lut, tf.transpose(pixels, [2, 0, 1]), batch_dims=1)
    return tf.cast(tf.transpose(out, [1, 2, 0]), tf.float32)


# ----------------------------------------------------------------------------- op factories
# Each factory takes the user's arguments (its signature is what parse() binds against), checks
# them, and returns an Op. Values are checked here so that a bad config fails before tracing.


def _op_resize(size, width=None) -> Op:
    target = _size(size, width)

    def apply(image, mask, seed, ctx):
        return _resize(image, mask, target)

    return apply


def _op_center_crop(size) -> Op:
    h, w = _size(size)

    def apply(image, mask, seed, ctx):
        return _crop_or_pad(image, mask, h, w, ctx)

    return apply


def _op_pad_to(size) -> Op:
    """Zero-pad (mask: ignore_label) to at least size x size, centred; never crops."""
    h, w = _size(size)

    def apply(image, mask, seed, ctx):
        height, width = image.shape[0], image.shape[1]
        th = max(h, height) if height is not None else tf.maximum(h, tf.shape(image)[0])
        tw = max(w, width) if width is not None else tf.maximum(w, tf.shape(image)[1])
        return _crop_or_pad(image, mask, th, tw, ctx)

    return apply


def _op_channels(n) -> Op:
    if n not in (1, 3):
        raise DataError(f"n={n!r} must be 1 or 3")

    def apply(image, mask, seed, ctx):
        c = _channels(image)
        if c == n:
            return image, mask
        return (tf.tile(image, [1, 1, 3]) if n == 3 else tf.image.rgb_to_grayscale(image)), mask

    return apply


def _op_flip_lr(p=0.5) -> Op:
    _check_p(p)
    return _with_p(p, lambda image, mask, seed, ctx: (tf.reverse(image, [1]), _maybe(mask, tf.reverse, [1])))


def _op_flip_ud(p=0.5) -> Op:
    _check_p(p)
    return _with_p(p, lambda image, mask, seed, ctx: (tf.reverse(image, [0]), _maybe(mask, tf.reverse, [0])))


def _maybe(mask, fn, *args):
    return None if mask is None else fn(mask, *args)


def _op_rotate(factor, p=1.0, fill=0.0, fill_mode="constant") -> Op:
    """Keras RandomRotation: angle uniform in [lo, hi] turns; a number f means [-f, f]."""
    lo, hi = _range(factor, "factor")
    _check_p(p)
    mode = _check_fill_mode(fill_mode)

    def apply(image, mask, seed, ctx):
        angle = _uniform(seed, lo, hi) * 2 * math.pi
        return _transform(image, mask, _rotation(image, angle), ctx, fill, mode)

    return _with_p(p, apply)


def _op_zoom(factor, p=1.0, fill=0.0, fill_mode="constant") -> Op:
    """Keras RandomZoom (aspect kept): input coords scaled by s = 1 + z, z uniform in [-f, f] or [lo, hi].

    z > 0 zooms out (the image shrinks), z < 0 zooms in.
    """
    lo, hi = _range(factor, "factor", lo=-1.0)
    if hi <= -1:
        raise DataError(f"factor={factor!r} leaves no positive scale 1 + z")
    _check_p(p)
    mode = _check_fill_mode(fill_mode)

    def apply(image, mask, seed, ctx):
        scale = tf.maximum(1.0 + _uniform(seed, lo, hi), 1e-3)
        return _transform(image, mask, _about_center(image, ((scale, 0.0), (0.0, scale))), ctx, fill, mode)

    return _with_p(p, apply)


def _op_translate(factor, p=1.0, fill=0.0, fill_mode="constant") -> Op:
    """Keras RandomTranslation: shift by up to factor * H rows and factor * W columns.

    `factor` is a number f (both axes in [-f, f]) or a pair (height_factor, width_factor).
    """
    if isinstance(factor, tuple | list) and len(factor) == 2:
        fy, fx = _range(factor[0], "height factor")[1], _range(factor[1], "width factor")[1]
    else:
        fy = fx = _range(factor, "factor")[1]
    _check_p(p)
    mode = _check_fill_mode(fill_mode)

    def apply(image, mask, seed, ctx):
        sy, sx = _seeds(seed, 2)
        h, w = _hw(image)
        shift = (_uniform(sx, -fx, fx) * w, _uniform(sy, -fy, fy) * h)
        return _transform(image, mask, _about_center(image, ((1.0, 0.0), (0.0, 1.0)), shift), ctx, fill, mode)

    return _with_p(p, apply)


def _op_random_crop(size, padding=0) -> Op:
    """torchvision RandomCrop: zero-pad (mask: ignore_label) by `padding`, then crop at a random spot."""
    h, w = _size(size)
    if not isinstance(padding, int) or padding < 0:
        raise DataError(f"padding={padding!r} must be an int >= 0")

    def apply(image, mask, seed, ctx):
        height, width = image.shape[0], image.shape[1]
        if height is not None and width is not None and (height + 2 * padding < h or width + 2 * padding < w):
            raise ConfigError(f"size={size!r} with padding={padding} is larger than the {height}x{width} images")
        if padding:
            image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
            if mask is not None:
                mask = tf.pad(mask, [[padding, padding], [padding, padding]], constant_values=ctx.ignore_label)
        sy, sx = _seeds(seed, 2)
        shape = tf.shape(image)
        image, mask = _slice(image, mask, _randint(sy, 0, shape[0] - h), _randint(sx, 0, shape[1] - w), h, w)
        image = tf.ensure_shape(image, [h, w, image.shape[-1]])
        return image, None if mask is None else tf.ensure_shape(mask, [h, w])

    return apply


def _op_random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Op:
    """torchvision RandomResizedCrop, rejection-free: area and log-ratio sampled once, box clipped."""
    target = _size(size)
    s_lo, s_hi = _range(scale, "scale", lo=0.0, hi=1.0)
    r_lo, r_hi = _range(ratio, "ratio", lo=1e-6)
    if s_hi <= 0:
        raise DataError(f"scale={scale!r} must allow a positive area")

    def apply(image, mask, seed, ctx):
        sa, sr, sy, sx = _seeds(seed, 4)
        shape = tf.shape(image)
        h, w = _hw(image)
        area = _uniform(sa, s_lo, s_hi) * h * w
        aspect = tf.exp(_uniform(sr, math.log(r_lo), math.log(r_hi)))
        cw = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, shape[1])
        ch = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, shape[0])
        image, mask = _slice(image, mask, _randint(sy, 0, shape[0] - ch), _randint(sx, 0, shape[1] - cw), ch, cw)
        return _resize(image, mask, target)

    return apply


def _photometric(p, fn: Callable, lo: float, hi: float) -> Op:
    def apply(image, mask, seed, ctx):
        return fn(image, _uniform(seed, lo, hi)), mask

    return _with_p(p, apply)


def _op_brightness(factor, p=1.0) -> Op:
    """torchvision brightness: multiply by a factor in [max(0, 1 - f), 1 + f]."""
    _check_p(p)
    return _photometric(p, _adjust_brightness, *_range(factor, "factor", center=1.0, lo=0.0))


def _op_contrast(factor, p=1.0) -> Op:
    """torchvision contrast: blend with the mean gray level, factor in [max(0, 1 - f), 1 + f]."""
    _check_p(p)
    return _photometric(p, _adjust_contrast, *_range(factor, "factor", center=1.0, lo=0.0))


def _op_saturation(factor, p=1.0) -> Op:
    """torchvision saturation: blend with the gray image; no-op on 1 channel."""
    _check_p(p)
    return _photometric(p, _adjust_saturation, *_range(factor, "factor", center=1.0, lo=0.0))


def _op_hue(factor, p=1.0) -> Op:
    """torchvision hue: shift hue by a fraction of the circle in [-f, f], f <= 0.5; no-op on 1 channel."""
    _check_p(p)
    return _photometric(p, _adjust_hue, *_range(factor, "factor", lo=-0.5, hi=0.5))


def _op_color_jitter(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0) -> Op:
    """torchvision ColorJitter: the four adjustments in a random order, each with its own factor."""
    _check_p(p)
    ranges = [
        _range(brightness, "brightness", center=1.0, lo=0.0),
        _range(contrast, "contrast", center=1.0, lo=0.0),
        _range(saturation, "saturation", center=1.0, lo=0.0),
        _range(hue, "hue", lo=-0.5, hi=0.5),
    ]
    fns = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)
    identity = (1.0, 1.0, 1.0, 0.0)

    def apply(image, mask, seed, ctx):
        order_seed, *factor_seeds = _seeds(seed, 5)
        order = tf.argsort(_uniform(order_seed, 0.0, 1.0, [4]))
        factors = [_uniform(s, lo, hi) for s, (lo, hi) in zip(factor_seeds, ranges)]
        active = [ranges[i] != (identity[i], identity[i]) for i in range(4)]
        for k in range(4):
            current = image
            branches = [
                (lambda i=i, x=current: fns[i](x, factors[i])) if active[i] else (lambda x=current: x) for i in range(4)
            ]
            image = tf.ensure_shape(tf.switch_case(order[k], branches), current.shape)
        return image, mask

    return _with_p(p, apply)


def _op_grayscale(p=0.1) -> Op:
    """Gray with C channels kept (torchvision RandomGrayscale); no-op on 1 channel."""
    _check_p(p)

    def apply(image, mask, seed, ctx):
        return tf.tile(_gray(image), [1, 1, image.shape[-1]]), mask

    return _with_p(p, apply)


def _op_gaussian_blur(kernel_size=3, sigma=(0.1, 2.0), p=1.0) -> Op:
    """torchvision GaussianBlur: separable kernel, reflect padding, sigma uniform in its range."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise DataError(f"kernel_size={kernel_size!r} must be a positive odd int")
    lo, hi = _range(sigma, "sigma", lo=0.0) if isinstance(sigma, tuple | list) else (float(sigma), float(sigma))
    if lo <= 0:
        raise DataError(f"sigma={sigma!r} must be > 0")
    _check_p(p)
    radius = kernel_size // 2

    def apply(image, mask, seed, ctx):
        sig = _uniform(seed, lo, hi)
        x = tf.range(-radius, radius + 1, dtype=tf.float32)
        k = tf.exp(-(x**2) / (2 * sig**2))
        k = k / tf.reduce_sum(k)
        padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
        out = _depthwise(_depthwise(padded, k[None, :]), k[:, None])
        return tf.ensure_shape(out, image.shape), mask

    return _with_p(p, apply)


def _op_gaussian_noise(std, p=1.0) -> Op:
    """Add N(0, std^2) noise (std in [0, 255] units), clipped to [0, 255]."""
    if not isinstance(std, int | float) or std < 0:
        raise DataError(f"std={std!r} must be a number >= 0")
    _check_p(p)

    def apply(image, mask, seed, ctx):
        noise = tf.random.stateless_normal(tf.shape(image), seed, stddev=std)
        return tf.clip_by_value(image + noise, 0.0, 255.0), mask

    return _with_p(p, apply)


def _op_random_erasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0) -> Op:
    """torchvision RandomErasing, rejection-free: area and log-ratio sampled once, box clipped to the image."""
    _check_p(p)
    s_lo, s_hi = _range(scale, "scale", lo=0.0, hi=1.0)
    r_lo, r_hi = _range(ratio, "ratio", lo=1e-6)
    if value != "random" and not (isinstance(value, int | float) and 0 <= value <= 255):
        raise DataError(f"value={value!r} must be a number in [0, 255] or 'random'")

    def apply(image, mask, seed, ctx):
        sa, sr, sy, sx, sv = _seeds(seed, 5)
        shape = tf.shape(image)
        h, w = _hw(image)
        area = _uniform(sa, s_lo, s_hi) * h * w
        aspect = tf.exp(_uniform(sr, math.log(r_lo), math.log(r_hi)))
        eh = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, shape[0])
        ew = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, shape[1])
        y, x = _randint(sy, 0, shape[0] - eh), _randint(sx, 0, shape[1] - ew)
        rows, cols = tf.range(shape[0])[:, None, None], tf.range(shape[1])[None, :, None]
        box = (rows >= y) & (rows < y + eh) & (cols >= x) & (cols < x + ew)
        fill = _uniform(sv, 0.0, 255.0, tf.shape(image)) if value == "random" else tf.constant(float(value))
        return tf.where(box, fill, image), mask

    return _with_p(p, apply)


def _trunc(x: tf.Tensor) -> tf.Tensor:
    """Round towards zero, as torchvision's int() of the translation."""
    return tf.sign(x) * tf.floor(tf.abs(x))


def _randaugment_branches(image, mask, signed, frac: float, bits: int, ctx: Context) -> list[Callable]:
    """torchvision RandAugment's 14 ops as switch_case branches; `signed` is +-magnitude/(bins-1)."""
    h, w = _hw(image)
    eye = ((1.0, 0.0), (0.0, 1.0))

    def geo(transform):
        return lambda: _pack(*_transform(image, mask, transform, ctx))

    def col(fn):
        return lambda: _pack(fn(image), mask)

    return [
        col(lambda x: x),
        geo(_vector(1.0, 0.3 * signed, 0.0, 0.0, 1.0, 0.0)),
        geo(_vector(1.0, 0.0, 0.0, 0.3 * signed, 1.0, 0.0)),
        geo(_about_center(image, eye, (_trunc(signed * 150.0 / 331.0 * w), 0.0))),
        geo(_about_center(image, eye, (0.0, _trunc(signed * 150.0 / 331.0 * h)))),
        geo(_rotation(image, signed * 30.0 * math.pi / 180.0)),
        col(lambda x: _adjust_brightness(x, 1 + 0.9 * signed)),
        col(lambda x: _adjust_saturation(x, 1 + 0.9 * signed)),
        col(lambda x: _adjust_contrast(x, 1 + 0.9 * signed)),
        col(lambda x: _sharpness(x, 1 + 0.9 * signed)),
        col(lambda x: _posterize(x, bits)),
        col(lambda x: _solarize(x, 255.0 * (1 - frac))),
        col(_autocontrast),
        col(_equalize),
    ]


def _op_randaugment(num_ops=2, magnitude=9, num_magnitude_bins=31) -> Op:
    """torchvision RandAugment: num_ops ops drawn uniformly from 14 at magnitude bin `magnitude`, random sign."""
    for name, v in (("num_ops", num_ops), ("magnitude", magnitude), ("num_magnitude_bins", num_magnitude_bins)):
        if not isinstance(v, int) or v < 0:
            raise DataError(f"{name}={v!r} must be an int >= 0")
    if num_magnitude_bins < 2 or magnitude >= num_magnitude_bins:
        raise DataError(f"need 0 <= magnitude={magnitude} < num_magnitude_bins={num_magnitude_bins} (>= 2)")
    frac = magnitude / (num_magnitude_bins - 1)
    bits = 8 - int(round(magnitude / ((num_magnitude_bins - 1) / 4)))

    def apply(image, mask, seed, ctx):
        for op_seed in _seeds(seed, num_ops):
            pick, flip = _seeds(op_seed, 2)
            signed = tf.where(_uniform(flip, 0.0, 1.0) < 0.5, -frac, frac)
            branches = _randaugment_branches(image, mask, signed, frac, bits, ctx)
            new_image, new_mask = _unpack(tf.switch_case(_randint(pick, 0, len(branches) - 1), branches), mask)
            image = tf.ensure_shape(new_image, image.shape)
            mask = None if mask is None else tf.ensure_shape(new_mask, mask.shape)
        return image, mask

    return apply


OPS: dict[str, Callable[..., Op]] = {
    "resize": _op_resize,
    "center_crop": _op_center_crop,
    "pad_to": _op_pad_to,
    "channels": _op_channels,
    "flip_lr": _op_flip_lr,
    "flip_ud": _op_flip_ud,
    "rotate": _op_rotate,
    "zoom": _op_zoom,
    "translate": _op_translate,
    "random_crop": _op_random_crop,
    "random_resized_crop": _op_random_resized_crop,
    "brightness": _op_brightness,
    "contrast": _op_contrast,
    "saturation": _op_saturation,
    "hue": _op_hue,
    "color_jitter": _op_color_jitter,
    "grayscale": _op_grayscale,
    "gaussian_blur": _op_gaussian_blur,
    "gaussian_noise": _op_gaussian_noise,
    "random_erasing": _op_random_erasing,
    "randaugment": _op_randaugment,
}


# ----------------------------------------------------------------------------- spec parsing


def _split_top_level(spec: str) -> list[str]:
    """Split on '|' outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(spec):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return [part.strip() for part in parts]


def _parse_call(text: str, spec: str, key: str) -> tuple[str, tuple, dict]:
    bad = f"config.{key}={spec!r}: cannot parse {text!r}; write ops as name or name(args), e.g. 'flip_lr|rotate(0.2)'"
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise DataError(bad) from None
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise DataError(bad)
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError:
        raise DataError(f"{bad} (arguments must be literals: numbers, strings, tuples)") from None
    return node.func.id, args, kwargs


def _make(name: str, args: tuple, kwargs: dict, key: str) -> Op:
    """The op for one parsed call, with errors that name the config key, the op and its signature."""
    if name not in OPS:
        close = difflib.get_close_matches(name, OPS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config.{key}: unknown op {name!r}{hint} valid ops: {', '.join(OPS)}")
    factory = OPS[name]
    signature = f"{name}{inspect.signature(factory).replace(return_annotation=inspect.Signature.empty)}"
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"config.{key}: bad arguments for {signature}: {e}") from None
    try:
        return factory(*args, **kwargs)
    except ValueError as e:
        raise ConfigError(f"config.{key}: {signature}: {e}") from None


def parse(spec: str, key: str) -> list[tuple[str, tuple, dict]]:
    """'flip_lr|rotate(0.2)' -> [('flip_lr', (), {}), ('rotate', (0.2,), {})], each op's arguments checked."""
    if not spec.strip():
        return []
    calls = []
    for text in _split_top_level(spec):
        if not text:
            raise ConfigError(f"config.{key}={spec!r}: empty op between '|'; write ops like 'flip_lr|rotate(0.2)'")
        call = _parse_call(text, spec, key)
        _make(*call, key)
        calls.append(call)
    return calls


def build(spec: str, key: str, context: Context) -> Callable[[dict, tf.Tensor], dict]:
    """fn(features, seed) -> features applying the ops of `spec` in order; other keys pass through."""
    ops = [(call[0], _make(*call, key)) for call in parse(spec, key)]

    def fn(features: dict, seed: tf.Tensor) -> dict:
        image = features["image"]
        if image.dtype != tf.float32:
            raise ConfigError(f"config.{key}: augmentation expects float32 images in [0, 255], got {image.dtype.name}")
        _channels(image)
        mask = features["label"] if context.dense_labels else None
        if mask is not None and (mask.dtype != tf.int32 or mask.shape.rank != 2):
            raise ConfigError(
                f"config.{key}: dense labels must be int32 (H, W) masks, got {mask.dtype.name} {mask.shape}"
            )
        seed = tf.cast(seed, tf.int64)
        for i, (name, op) in enumerate(ops):
            try:
                image, mask = op(image, mask, tf.random.experimental.stateless_fold_in(seed, i), context)
            except ValueError as e:
                raise ConfigError(f"config.{key}: {name}: {e}") from None
        out = {**features, "image": image}
        if mask is not None:
            out["label"] = mask
        return out

    return fn


# ----------------------------------------------------------------------------- normalisation


def normalize(image: tf.Tensor, mode: str, context: Context, key: str = "data.normalize") -> tf.Tensor:
    """float32 [0, 255] -> the model's input range (Keras applications' 'tf', 'torch', 'caffe' included)."""
    if mode not in NORMALIZE_MODES:
        raise ConfigError(f"config.{key}={mode!r} is unknown; valid modes: {', '.join(NORMALIZE_MODES)}")
    image = tf.cast(image, tf.float32)
    c = image.shape[-1]
    if mode in ("imagenet", "torch", "caffe") and c != 3:
        raise ConfigError(f"config.{key}={mode!r} needs 3-channel images, got {c}; set config.data.channels=3")
    if mode == "none":
        return image
    if mode == "zero_one":
        return image / 255.0
    if mode in ("minus_one_one", "tf"):
        return image / 127.5 - 1.0
    if mode in ("imagenet", "torch"):
        return (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if mode == "caffe":
        return tf.reverse(image, [-1]) - CAFFE_MEAN_BGR
    if context.mean is None or context.std is None:
        raise ConfigError(
            f"config.{key}='mean_std' needs the train split's per-channel mean and std (Context.mean/std)"
        )
    if len(context.mean) not in (1, c) or len(context.std) not in (1, c):
        raise ConfigError(
            f"config.{key}='mean_std': mean {context.mean} / std {context.std} do not match {c}-channel images"
        )
    if any(s <= 0 for s in context.std):
        raise ConfigError(f"config.{key}='mean_std': std {context.std} must be > 0")
    return (image - tf.constant(context.mean, tf.float32)) / tf.constant(context.std, tf.float32)


# ----------------------------------------------------------------------------- batch mixing


def _beta(seed, alpha: float, n) -> tf.Tensor:
    s1, s2 = _seeds(seed, 2)
    a = tf.random.stateless_gamma([n], s1, alpha=alpha)
    b = tf.random.stateless_gamma([n], s2, alpha=alpha)
    return tf.where(a + b > 0, a / tf.maximum(a + b, 1e-30), 0.5)


def mix_batch(batch: dict, seed, mixup: float, cutmix: float) -> dict:
    """MixUp / CutMix on a classification batch, chosen per example (50/50 when both alphas > 0).

    Adds "label_b" (the partner's label) and "mix" (weight of "label"), so the loss is
    mix * CE(label) + (1 - mix) * CE(label_b). CutMix's weight is the actual area left after clipping.
    """
    image, label = batch["image"], batch["label"]
    if label.shape.rank != 1:
        raise ConfigError("config.data.mixup/cutmix: only for classification (labels of shape (B,)), not masks")
    if mixup < 0 or cutmix < 0:
        raise ConfigError(f"config.data.mixup={mixup} / cutmix={cutmix} must be >= 0")
    n = tf.shape(label)[0]
    if mixup == 0 and cutmix == 0:
        return {**batch, "label_b": tf.cast(label, tf.int32), "mix": tf.ones([n], tf.float32)}
    s_perm, s_mix, s_cut, s_choice, s_y, s_x = _seeds(tf.cast(seed, tf.int64), 6)
    perm = tf.argsort(_uniform(s_perm, 0.0, 1.0, [n]))
    image = tf.cast(image, tf.float32)
    other = tf.gather(image, perm)
    if mixup > 0:
        lam_mix = _beta(s_mix, mixup, n)
        mixed = lam_mix[:, None, None, None] * image + (1 - lam_mix[:, None, None, None]) * other
    if cutmix > 0:
        shape = tf.shape(image)
        h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        cut = tf.sqrt(1.0 - _beta(s_cut, cutmix, n))
        cy, cx = _uniform(s_y, 0.0, h, [n]), _uniform(s_x, 0.0, w, [n])
        y0 = tf.clip_by_value(tf.round(cy - cut * h / 2), 0, h)
        y1 = tf.clip_by_value(tf.round(cy + cut * h / 2), 0, h)
        x0 = tf.clip_by_value(tf.round(cx - cut * w / 2), 0, w)
        x1 = tf.clip_by_value(tf.round(cx + cut * w / 2), 0, w)
        rows = tf.range(h)[None, :, None, None]
        cols = tf.range(w)[None, None, :, None]

        def col(v):
            return v[:, None, None, None]

        box = (rows >= col(y0)) & (rows < col(y1)) & (cols >= col(x0)) & (cols < col(x1))
        pasted = tf.where(box, other, image)
        lam_cut = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    if mixup > 0 and cutmix > 0:
        use_cut = _uniform(s_choice, 0.0, 1.0, [n]) < 0.5
        out = tf.where(use_cut[:, None, None, None], pasted, mixed)
        lam = tf.where(use_cut, lam_cut, lam_mix)
    elif mixup > 0:
        out, lam = mixed, lam_mix
    else:
        out, lam = pasted, lam_cut
    return {**batch, "image": out, "label_b": tf.cast(tf.gather(label, perm), tf.int32), "mix": lam}
