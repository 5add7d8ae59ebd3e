"""Built-in, offline, deterministic synthetic segmentation and classification data.

Every example is a cluttered, noisy RGB image holding 2 to 5 labelled objects
plus 1 to 3 unlabelled distractors (proportionally more in wide or tall images).  An object class is a fixed (shape,
texture) pair such as "striped disk" or "checkered square"; colours, size,
position, rotation, aspect ratio, texture orientation, period and phase are
random per object, so colour carries no class information.  Distractors use
(shape, texture) pairs that belong to no active class (e.g. "dotted disk" when
"striped disk" and "dotted triangle" are classes) and are labelled background,
so a model has to recognise the *combination* of shape and texture.  Objects
and distractors are drawn in random depth order; the mask follows what is
visible.

Each example depends only on ``(seed, index)`` through
``np.random.default_rng([seed, index])``, so splits are index ranges (e.g.
train ``0..799``, validation ``800..999``) and any subset can be regenerated
anywhere.  Mask decisions use only IEEE arithmetic, ``sqrt`` and ``floor`` on
arrays (no vectorised transcendental functions, whose SIMD versions differ
between CPUs), so arrays are reproducible across machines for a given NumPy
random stream.  NumPy only.

The classification set (``make_classification_arrays``) reuses the shapes,
textures and drawing: each image shows one large object whose (shape, texture)
pair is its class, over the same kind of clutter and smaller distractors of
pairs that are no class.  Its label is ``index % num_classes``, so any
``num_classes`` consecutive examples are balanced.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from labjax.errors import ConfigError, DataError

__all__ = [
    "MAX_CLASSIFICATION_CLASSES",
    "MAX_NUM_CLASSES",
    "SHAPES",
    "SYNTHETIC_SEGMENTATION_CLASSES",
    "TEXTURES",
    "classification_class_names",
    "make_classification_arrays",
    "make_segmentation_arrays",
    "make_segmentation_example",
    "segmentation_class_names",
]

SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "ring", "cross", "ellipse")
TEXTURES: tuple[str, ...] = ("striped", "checkered", "dotted", "bordered", "zigzag")

# Object classes 1, 2, ... in order; ``num_classes`` uses the first
# ``num_classes - 1``.  The early classes share shapes and textures (e.g. two
# disks, two squares, two striped and two checkered classes), so neither the
# shape nor the texture alone identifies a class even for small num_classes.
_CLASS_TABLE: tuple[tuple[str, str], ...] = (
    ("disk", "striped"),
    ("square", "checkered"),
    ("triangle", "dotted"),
    ("disk", "checkered"),
    ("square", "striped"),
    ("ring", "bordered"),
    ("ellipse", "dotted"),
    ("cross", "zigzag"),
    ("triangle", "bordered"),
    ("disk", "zigzag"),
    ("ring", "striped"),
    ("ellipse", "checkered"),
    ("cross", "dotted"),
    ("square", "zigzag"),
    ("ellipse", "bordered"),
    ("cross", "striped"),
    ("ring", "checkered"),
    ("triangle", "zigzag"),
    ("square", "dotted"),
    ("disk", "bordered"),
)

#: Largest supported ``num_classes`` (background + all table classes).  The 10
#: (shape, texture) pairs outside the table stay available as distractors.
MAX_NUM_CLASSES: int = len(_CLASS_TABLE) + 1

#: Names of all classes for ``MAX_NUM_CLASSES``; index 0 is background.
SYNTHETIC_SEGMENTATION_CLASSES: tuple[str, ...] = ("background",) + tuple(
    f"{texture} {shape}" for shape, texture in _CLASS_TABLE
)

_ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((s, t) for s in SHAPES for t in TEXTURES)

# Object size: "radius" r as a fraction of min(H, W).  Shape extents below are
# tuned so that all shapes cover a similar area (about 2.2-2.9 r^2).
_RADIUS_RANGE = (0.12, 0.22)
_MIN_SIZE = 32


def segmentation_class_names(num_classes: int) -> list[str]:
    """Names of ``num_classes`` classes: ``["background", "striped disk", ...]``."""
    _check_num_classes(num_classes)
    return list(SYNTHETIC_SEGMENTATION_CLASSES[:num_classes])


def _check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= MAX_NUM_CLASSES:
        raise DataError(f"num_classes must be in [2, {MAX_NUM_CLASSES}], got {num_classes}")


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if min(h, w) < _MIN_SIZE:
        raise DataError(f"size must be >= {_MIN_SIZE} in both dimensions, got {(h, w)}")
    return h, w


# --------------------------------------------------------------------------
# Signed distance functions in the object frame (negative inside, pixels).
# --------------------------------------------------------------------------


def _sdf_box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx = np.abs(u) - hx
    qy = np.abs(v) - hy
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, p: dict[str, float]) -> np.ndarray:
    if shape == "disk":
        return np.sqrt(u * u + v * v) - p["r"]
    if shape == "ring":
        return np.abs(np.sqrt(u * u + v * v) - p["rm"]) - p["hw"]
    if shape == "square":
        return _sdf_box(u, v, p["hx"], p["hy"])
    if shape == "cross":
        return np.minimum(_sdf_box(u, v, p["arm"], p["hw"]), _sdf_box(u, v, p["hw"], p["arm"]))
    if shape == "triangle":
        # Equilateral triangle, apex at +v; edge normals point away from vertices.
        h = 0.5 * math.sqrt(3.0)
        d = np.maximum(-v, h * u + 0.5 * v)
        d = np.maximum(d, -h * u + 0.5 * v)
        return d - p["inr"]
    if shape == "ellipse":
        a, b = p["a"], p["b"]
        k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        grad = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2)
        # First-order distance estimate (k - 1) / |grad k|, exact on the axes.
        return (k - 1.0) * k / np.maximum(grad, 1e-6)
    raise ValueError(shape)


def _shape_params(shape: str, r: float, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    """Random shape parameters and the bounding radius (pixels)."""
    if shape == "disk":
        return {"r": r}, r
    if shape == "ring":
        ro = 1.12 * r
        ri = ro * rng.uniform(0.42, 0.55)
        return {"rm": 0.5 * (ro + ri), "hw": 0.5 * (ro - ri)}, ro
    if shape == "square":
        hx = 0.86 * r
        hy = hx * rng.uniform(0.75, 1.0)
        return {"hx": hx, "hy": hy}, math.hypot(hx, hy)
    if shape == "cross":
        arm = 1.12 * r
        hw = arm * rng.uniform(0.27, 0.33)
        return {"arm": arm, "hw": hw}, math.hypot(arm, hw)
    if shape == "triangle":
        circ = 1.32 * r
        return {"inr": 0.5 * circ}, circ
    if shape == "ellipse":
        a = 1.4 * r
        b = a / rng.uniform(1.8, 2.3)
        return {"a": a, "b": b}, a
    raise ValueError(shape)


# --------------------------------------------------------------------------
# Textures: boolean "second colour" maps in a rotated texture frame.
# --------------------------------------------------------------------------


def _texture_map(
    texture: str,
    u: np.ndarray,
    v: np.ndarray,
    sdf: np.ndarray,
    r: float,
    rng: np.random.Generator,
) -> np.ndarray:
    if texture == "bordered":
        bw = max(1.5, r * rng.uniform(0.17, 0.26))
        return sdf > -bw
    period = max(3.0, r * rng.uniform(0.32, 0.5))
    ang = rng.uniform(0.0, math.pi)
    c, s = math.cos(ang), math.sin(ang)
    x = (c * u + s * v) / period + rng.uniform()
    y = (-s * u + c * v) / period + rng.uniform()
    if texture == "striped":
        return np.floor(x) % 2 == 1
    if texture == "checkered":
        return (np.floor(x) + np.floor(y)) % 2 == 1
    if texture == "dotted":
        fx = x - np.floor(x) - 0.5
        fy = y - np.floor(y) - 0.5
        rad = rng.uniform(0.26, 0.34)
        return fx * fx + fy * fy <= rad * rad
    if texture == "zigzag":
        q = y / rng.uniform(1.3, 2.0)
        tri = np.abs(q - np.floor(q) - 0.5)  # triangle wave in [0, 0.5]
        xs = x + rng.uniform(1.2, 1.8) * tri
        return np.floor(xs) % 2 == 1
    raise ValueError(texture)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with clearly visible contrast."""
    c1 = rng.uniform(0.0, 255.0, 3)
    c2 = rng.uniform(0.0, 255.0, 3)
    for _ in range(20):
        if np.linalg.norm(c1 - c2) >= 110.0:
            break
        c2 = rng.uniform(0.0, 255.0, 3)
    return c1.astype(np.float32), c2.astype(np.float32)


# --------------------------------------------------------------------------
# Drawing.
# --------------------------------------------------------------------------


def _bbox(cy: float, cx: float, extent: float, h: int, w: int) -> tuple[int, int, int, int]:
    """Clipped pixel box [y0, y1) x [x0, x1) around a centre."""
    y0 = max(0, math.floor(cy - extent - 1))
    y1 = min(h, math.ceil(cy + extent + 1))
    x0 = max(0, math.floor(cx - extent - 1))
    x1 = min(w, math.ceil(cx + extent + 1))
    return y0, y1, x0, x1


@functools.cache
def _distractors(num_classes: int) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """(shape, texture) pairs of no active class and their sampling probabilities.

    Near misses are favoured: a pair whose shape and texture both occur in
    active classes (e.g. "dotted disk" next to "striped disk" and "dotted
    triangle") has weight 3, one sharing only its shape or texture weight 2,
    others weight 1.
    """
    classes = set(_CLASS_TABLE[: num_classes - 1])
    shapes = {s for s, _ in classes}
    textures = {t for _, t in classes}
    pairs = tuple(p for p in _ALL_PAIRS if p not in classes)
    weights = np.array([1.0 + (s in shapes) + (t in textures) for s, t in pairs])
    return pairs, weights / weights.sum()


def _draw_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour gradient plus low-contrast clutter blobs and lines."""
    ca = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    cb = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(ang), math.sin(ang)
    ys = np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1)
    xs = np.arange(w, dtype=np.float32)[None, :] / max(w - 1, 1)
    lo = min(c, 0.0) + min(s, 0.0)
    hi = max(c, 0.0) + max(s, 0.0)
    t = (c * xs + s * ys - lo) / max(hi - lo, 1e-6)
    img = ca + (cb - ca) * t[..., None]

    scale = min(h, w)
    aspect = min(max(h, w) / scale, 4.0)
    # Soft blobs (random ellipses with quadratic fall-off).
    for _ in range(int(rng.integers(round(3 * aspect), round(8 * aspect) + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ra = scale * rng.uniform(0.05, 0.22)
        rb = ra * rng.uniform(0.4, 1.0)
        ang = rng.uniform(0.0, math.pi)
        alpha_max = rng.uniform(0.12, 0.35)
        col = rng.uniform(0.0, 255.0, 3).astype(np.float32)
        y0, y1, x0, x1 = _bbox(cy, cx, ra, h, w)
        if y1 <= y0 or x1 <= x0:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        c, s = math.cos(ang), math.sin(ang)
        u = (c * dx + s * dy) / ra
        v = (-s * dx + c * dy) / rb
        a = np.clip(1.0 - (u * u + v * v), 0.0, 1.0) * alpha_max
        patch = img[y0:y1, x0:x1]
        patch += a[..., None] * (col - patch)
    # Thin low-contrast line segments.
    for _ in range(int(rng.integers(round(2 * aspect), round(6 * aspect) + 1))):
        py, px = rng.uniform(0, h), rng.uniform(0, w)
        length = scale * rng.uniform(0.15, 0.6)
        ang = rng.uniform(0.0, 2.0 * math.pi)
        qy, qx = py + length * math.sin(ang), px + length * math.cos(ang)
        width = rng.uniform(0.6, 1.8)
        alpha_max = rng.uniform(0.15, 0.4)
        col = rng.uniform(0.0, 255.0, 3).astype(np.float32)
        y0 = max(0, int(min(py, qy) - width - 1))
        y1 = min(h, int(max(py, qy) + width + 2))
        x0 = max(0, int(min(px, qx) - width - 1))
        x1 = min(w, int(max(px, qx) + width + 2))
        if y1 <= y0 or x1 <= x0:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - py
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - px
        ex, ey = qx - px, qy - py
        tt = np.clip((xx * ex + yy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.sqrt((xx - tt * ex) ** 2 + (yy - tt * ey) ** 2)
        a = np.clip(width + 0.5 - d, 0.0, 1.0) * alpha_max
        patch = img[y0:y1, x0:x1]
        patch += a[..., None] * (col - patch)
    return img


def _draw_object(
    img: np.ndarray,
    mask: np.ndarray | None,
    label: int,
    shape: str,
    texture: str,
    cy: float,
    cx: float,
    r: float,
    params: dict[str, float],
    extent: float,
    rng: np.random.Generator,
    colours: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Paints one object into ``img`` (3, H, W) and its ``label`` into ``mask`` (if given).

    ``img`` is channel-first (an HWC image's ``transpose(2, 0, 1)`` view works too), which
    keeps the per-pixel blending fast.  ``colours`` (the two texture colours) are drawn with
    ``_colour_pair`` when not given.
    """
    h, w = img.shape[1:]
    y0, y1, x0, x1 = _bbox(cy, cx, extent, h, w)
    if y1 <= y0 or x1 <= x0:
        return
    ang = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(ang), math.sin(ang)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    u = c * dx + s * dy
    v = -s * dx + c * dy
    sdf = _shape_sdf(shape, u, v, params)
    second = _texture_map(texture, u, v, sdf, r, rng)
    c1, c2 = _colour_pair(rng) if colours is None else colours
    col = np.where(second, c2[:, None, None], c1[:, None, None])
    # Gentle linear shading across the object.
    gy, gx = (float(g) for g in rng.uniform(-0.2, 0.2, 2))
    shade = 1.0 + (gx * dx + gy * dy) / extent
    col = col * shade
    alpha = np.minimum(np.maximum(0.5 - sdf, 0.0), 1.0)  # ~1 px anti-aliased edge
    patch = img[:, y0:y1, x0:x1]
    patch += alpha * (col - patch)
    if mask is not None:
        m = mask[y0:y1, x0:x1]
        m[sdf <= 0.0] = label


def make_segmentation_example(
    index: int,
    *,
    seed: int,
    size: int | tuple[int, int] = 128,
    num_classes: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """Example ``index`` of the data set ``seed``.

    Returns image uint8 (H, W, 3) and mask uint8 (H, W) with values in
    ``[0, num_classes)``; class 0 is background.  ``size`` is an int (square)
    or ``(H, W)``, each at least 32.
    """
    _check_num_classes(num_classes)
    h, w = _parse_size(size)
    rng = np.random.default_rng([int(seed), int(index)])
    scale = min(h, w)

    img = _draw_background(rng, h, w)
    mask = np.zeros((h, w), dtype=np.uint8)

    classes = _CLASS_TABLE[: num_classes - 1]
    distractor_pairs, distractor_p = _distractors(num_classes)

    # 2-5 objects and 1-3 distractors for square images; wide or tall images
    # get proportionally more so that the foreground share does not depend on
    # the aspect ratio (object size follows min(H, W)).
    aspect = min(max(h, w) / scale, 4.0)
    n_obj = int(rng.integers(round(2 * aspect), round(5 * aspect) + 1))
    n_dis = int(rng.integers(round(1 * aspect), round(3 * aspect) + 1))
    items: list[tuple[int, str, str]] = []
    for _ in range(n_obj):
        k = int(rng.integers(len(classes)))
        items.append((k + 1, *classes[k]))
    for _ in range(n_dis):
        shape, texture = distractor_pairs[int(rng.choice(len(distractor_pairs), p=distractor_p))]
        items.append((0, shape, texture))
    order = rng.permutation(len(items))

    placed: list[tuple[float, float, float]] = []
    for i in order:
        label, shape, texture = items[int(i)]
        r = scale * rng.uniform(*_RADIUS_RANGE)
        params, extent = _shape_params(shape, r, rng)
        # Rejection-sample the centre to limit (not forbid) heavy overlap.
        for _ in range(12):
            cy = rng.uniform(0.08, 0.92) * h
            cx = rng.uniform(0.08, 0.92) * w
            if all(math.hypot(cy - py, cx - px) >= 0.7 * (r + pr) for py, px, pr in placed):
                break
        placed.append((cy, cx, r))
        _draw_object(img.transpose(2, 0, 1), mask, label, shape, texture, cy, cx, r, params, extent, rng)

    sigma = rng.uniform(4.0, 12.0)
    img += sigma * rng.standard_normal((h, w, 3), dtype=np.float32)
    np.clip(img, 0.0, 255.0, out=img)
    image = np.rint(img, out=img).astype(np.uint8)
    return image, mask


def make_segmentation_arrays(
    start: int,
    count: int,
    *,
    seed: int,
    size: int | tuple[int, int] = 128,
    num_classes: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """Examples ``start .. start+count-1`` stacked.

    Returns images (N, H, W, 3) uint8 and masks (N, H, W) uint8.
    """
    _check_num_classes(num_classes)
    h, w = _parse_size(size)
    images = np.empty((count, h, w, 3), dtype=np.uint8)
    masks = np.empty((count, h, w), dtype=np.uint8)
    for j in range(count):
        images[j], masks[j] = make_segmentation_example(start + j, seed=seed, size=(h, w), num_classes=num_classes)
    return images, masks


# --------------------------------------------------------------------------
# Classification: one large object of the image's class in clutter.
# --------------------------------------------------------------------------

#: Most classes of the classification set: one per (shape, texture) pair of the table.
MAX_CLASSIFICATION_CLASSES: int = len(_CLASS_TABLE)

_CLASSIFICATION_MIN_SIZE = 8
_CLASSIFICATION_STREAM = 1  # third seed word, so a classification image never repeats a segmentation one
_MAIN_RADIUS_RANGE = (0.26, 0.34)
_DISTRACTOR_RADIUS_RANGE = (0.1, 0.17)


def classification_class_names(num_classes: int) -> list[str]:
    """Names of ``num_classes`` classes: ``["striped disk", "checkered square", ...]``."""
    _check_classification_classes(num_classes)
    return [f"{texture} {shape}" for shape, texture in _CLASS_TABLE[:num_classes]]


def _check_classification_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= MAX_CLASSIFICATION_CLASSES:
        raise ConfigError(
            f"num_classes={num_classes}: the synthetic classification set has 2 to {MAX_CLASSIFICATION_CLASSES} "
            "classes (one per (shape, texture) pair); set config.data.num_classes in that range."
        )


@functools.cache
def _distractor_cdf(num_classes: int) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """The (shape, texture) pairs of none of the ``num_classes`` classes and their cumulative probabilities."""
    pairs, probs = _distractors(num_classes + 1)
    return pairs, np.cumsum(probs)


def _cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and sines with the scalar ``math`` functions (identical on every CPU)."""
    return (
        np.array([math.cos(a) for a in angles], np.float32),
        np.array([math.sin(a) for a in angles], np.float32),
    )


def _composite(img: np.ndarray, alphas: np.ndarray, colours: np.ndarray) -> None:
    """Paints layers of opacity ``alphas`` (K, H, W) and colours (K, 3) over ``img`` (3, H, W) in order.

    Closed form of the K "over" operations: layer k is seen through the layers above it.
    """
    clear = 1.0 - alphas
    above = np.empty_like(alphas)  # product of (1 - alpha) over the layers above layer k
    above[-1] = 1.0
    for k in range(len(alphas) - 2, -1, -1):
        np.multiply(above[k + 1], clear[k + 1], out=above[k])
    weights = alphas * above
    through = clear[0] * above[0]
    for channel in range(3):
        img[channel] = img[channel] * through + (weights * colours[:, channel, None, None]).sum(0)


def _clutter_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(3, H, W): ``_draw_background``'s gradient, soft blobs and thin lines, in whole-image arrays.

    The same kind of clutter, but all blobs and lines are computed at once over the full
    image instead of one bounding box at a time, several times faster at small sizes.
    """
    ca, cb = rng.uniform(0.0, 255.0, (2, 3, 1, 1)).astype(np.float32)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(ang), math.sin(ang)
    ys = np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1)
    xs = np.arange(w, dtype=np.float32)[None, :] / max(w - 1, 1)
    lo = min(c, 0.0) + min(s, 0.0)
    hi = max(c, 0.0) + max(s, 0.0)
    img = ca + (cb - ca) * ((c * xs + s * ys - lo) / max(hi - lo, 1e-6))

    scale = min(h, w)
    aspect = min(max(h, w) / scale, 4.0)
    n_blobs = int(rng.integers(round(3 * aspect), round(8 * aspect) + 1))
    n_lines = int(rng.integers(round(2 * aspect), round(6 * aspect) + 1))
    n = n_blobs + n_lines
    p = rng.uniform(size=(7, n)).astype(np.float32)
    colours = rng.uniform(0.0, 255.0, (n, 3)).astype(np.float32)
    # Pixel centres relative to each blob centre or line start: (K, H, 1) and (K, 1, W).
    dy = np.arange(h, dtype=np.float32)[None, :, None] + (0.5 - h * p[0])[:, None, None]
    dx = np.arange(w, dtype=np.float32)[None, None, :] + (0.5 - w * p[1])[:, None, None]
    c, s = _cos_sin(2.0 * math.pi * p[2])
    amax = (0.12 + 0.23 * p[3])[:n_blobs, None, None], (0.15 + 0.25 * p[3])[n_blobs:, None, None]

    # Soft blobs: ellipses with quadratic fall-off; u^2 + v^2 as a quadratic form in (dx, dy).
    ra = scale * (0.05 + 0.17 * p[4, :n_blobs])
    rb = ra * (0.4 + 0.6 * p[5, :n_blobs])
    cb, sb = c[:n_blobs], s[:n_blobs]
    qa, qb = 1.0 / (ra * ra), 1.0 / (rb * rb)
    kxx = (cb * cb * qa + sb * sb * qb)[:, None, None]
    kyy = (sb * sb * qa + cb * cb * qb)[:, None, None]
    kxy = (2.0 * cb * sb * (qa - qb))[:, None, None]
    bx, by = dx[:n_blobs], dy[:n_blobs]
    q = (kxx * bx) * bx + (kyy * by) * by + (kxy * bx) * by
    blobs = np.minimum(np.maximum(1.0 - q, 0.0), 1.0) * amax[0]

    # Thin line segments: distance to the segment from its start along (ex, ey).
    length = scale * (0.15 + 0.45 * p[4, n_blobs:])
    ex, ey = (length * c[n_blobs:])[:, None, None], (length * s[n_blobs:])[:, None, None]
    inv_len2 = (1.0 / (length * length))[:, None, None]
    lx, ly = dx[n_blobs:], dy[n_blobs:]
    along = lx * (ex * inv_len2) + ly * (ey * inv_len2)  # position along the line, 1 at its end
    tt = np.minimum(np.maximum(along, 0.0), 1.0)
    # |p - tt e|^2 = |p|^2 + tt (tt - 2 along) |e|^2, with p the pixel relative to the start.
    dist2 = (lx * lx + ly * ly) + tt * (tt - 2.0 * along) * (length * length)[:, None, None]
    dist = np.sqrt(np.maximum(dist2, 0.0))
    width = (1.1 + 1.2 * p[5, n_blobs:])[:, None, None]  # half-width 0.6..1.8 px plus 0.5
    lines = np.minimum(np.maximum(width - dist, 0.0), 1.0) * amax[1]
    _composite(img, np.concatenate([blobs, lines]), colours)
    return img


def _contrast_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours that differ clearly in RGB and in luminance.

    The luminance gap keeps the texture visible in the gray (``channels=1``) rendering.
    """
    candidates = rng.uniform(0.0, 255.0, (8, 6))
    for r1, g1, b1, r2, g2, b2 in candidates.tolist():  # the first good pair; almost always one of 8
        dr, dg, db = r1 - r2, g1 - g2, b1 - b2
        if dr * dr + dg * dg + db * db >= 110.0**2 and abs(0.299 * dr + 0.587 * dg + 0.114 * db) >= 60.0:
            break
    return np.array([r1, g1, b1], np.float32), np.array([r2, g2, b2], np.float32)


def _classification_image(seed: int, index: int, label: int, h: int, w: int, num_classes: int) -> np.ndarray:
    """RGB uint8 (H, W, 3): a large object of class ``label`` plus smaller distractors in clutter."""
    rng = np.random.default_rng([int(seed), int(index), _CLASSIFICATION_STREAM])
    scale = min(h, w)
    aspect = min(max(h, w) / scale, 4.0)
    img = _clutter_background(rng, h, w)

    # Distractors use the (shape, texture) pairs of no class, near misses favoured.
    pairs, cdf = _distractor_cdf(num_classes)
    n_dis = int(rng.integers(round(1 * aspect), round(3 * aspect) + 1))
    picks = np.minimum(np.searchsorted(cdf, rng.uniform(size=n_dis), side="right"), len(pairs) - 1)
    r_main = scale * rng.uniform(*_MAIN_RADIUS_RANGE)
    placed = [(rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w, r_main)]
    radii = scale * rng.uniform(*_DISTRACTOR_RADIUS_RANGE, n_dis)
    candidates = rng.uniform(0.05, 0.95, (n_dis, 12, 2)) * (h, w)
    behind, in_front = [], []
    for k in range(n_dis):
        r = float(radii[k])
        # The first candidate centre clear of the objects so far keeps the main object mostly visible.
        for cy, cx in candidates[k].tolist():
            if all(math.hypot(cy - py, cx - px) >= 0.75 * (r + pr) for py, px, pr in placed):
                break
        placed.append((cy, cx, r))
        (in_front if rng.uniform() < 0.5 else behind).append((*pairs[picks[k]], cy, cx, r))
    main = (*_CLASS_TABLE[label], *placed[0])
    for shape, texture, cy, cx, r in [*behind, main, *in_front]:
        params, extent = _shape_params(shape, r, rng)
        _draw_object(img, None, 0, shape, texture, cy, cx, r, params, extent, rng, _contrast_colours(rng))

    img += rng.uniform(4.0, 12.0) * rng.standard_normal((3, h, w), dtype=np.float32)
    np.clip(img, 0.0, 255.0, out=img)
    return np.rint(img, out=img).astype(np.uint8).transpose(1, 2, 0)


def make_classification_arrays(
    seed: int,
    start: int,
    count: int,
    *,
    size: int | tuple[int, int],
    num_classes: int,
    channels: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Classification examples ``start .. start+count-1`` of the data set ``seed``.

    Returns images uint8 (N, H, W, channels) and labels int32 (N,).  Example ``i`` shows one
    large object of class ``i % num_classes`` (exactly balanced over any ``num_classes``
    consecutive indices; class ``c`` is the ``c``-th (shape, texture) pair, see
    ``classification_class_names``) at a random place, rotation, size, colour and texture
    phase, over clutter and 1 to 3 smaller distractors whose (shape, texture) pair is no class.
    The pixels depend only on ``(seed, index)``.  ``channels=1`` is the rounded luminance
    (ITU-R 601 weights) of the RGB rendering.
    """
    _check_classification_classes(num_classes)
    h, w = _parse_classification_size(size)
    if channels not in (1, 3):
        raise ConfigError(f"channels={channels}: the synthetic classification set has 1 (gray) or 3 (RGB) channels.")
    labels = ((start + np.arange(count)) % num_classes).astype(np.int32)
    images = np.empty((count, h, w, 3), np.uint8)
    for j, label in enumerate(labels):
        images[j] = _classification_image(seed, start + j, int(label), h, w, num_classes)
    if channels == 1:
        rgb = images.astype(np.uint32)
        luma = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
        images = luma.astype(np.uint8)[..., None]
    return images, labels


def _parse_classification_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if min(h, w) < _CLASSIFICATION_MIN_SIZE:
        raise ConfigError(
            f"size={size}: synthetic classification images need at least {_CLASSIFICATION_MIN_SIZE} pixels "
            "per side; set config.data.image_size to 8 or more."
        )
    return h, w
