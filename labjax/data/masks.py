"""Segmentation source "masks": a folder of images and a folder of PNG masks paired by name.

Masks hold one class id per pixel: gray (8 or 16 bit) PNGs, palette PNGs (as in PASCAL VOC:
the palette indices are the class ids, the colours only show them), or RGB PNGs whose three
channels are equal. `config.data.mask_values` maps other raw values to class ids and
`config.data.ignore_label` marks pixels left out of loss and metrics (-1 in the labels).
"""

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from labjax.data.examples import Examples
from labjax.errors import ConfigError, DataError, MissingFileError
from labjax.tf_import import tf

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CLASSES_FILE = "classes.txt"
IGNORED = -1  # label of pixels excluded from loss and metrics
_SKIP_HINT = "set config.data.skip_bad_files=true to skip such pairs"


def load(data) -> dict[str, Examples]:
    """{"train": the first data.train_size pairs in sorted name order, "validation": the rest}.

    data.train_size=0 puts every pair in "train" for a later split step.
    """
    images, masks, keys = load_mask_folder(data)
    names = class_names(data)
    n = data.train_size
    if n == 0:
        return {"train": Examples(labels=masks, class_names=names, images=images)}
    if n >= len(keys):
        raise ConfigError(
            f"config.data.train_size={n} leaves no validation pairs: {Path(data.path).expanduser()} holds "
            f"{len(keys)} image/mask pairs; lower config.data.train_size (0 keeps all for a later split)."
        )
    return {
        "train": Examples(labels=masks[:n], class_names=names, images=images[:n]),
        "validation": Examples(labels=masks[n:], class_names=names, images=images[n:]),
    }


def class_names(data) -> list[str]:
    """Names from classes.txt in data.path (line i names class i), else class_0, class_1, ..."""
    path = Path(data.path).expanduser() / CLASSES_FILE
    if not path.is_file():
        return [f"class_{i}" for i in range(data.num_classes)]
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the class names ({error}); fix or remove the file.") from None
    if len(names) != data.num_classes:
        raise DataError(
            f"{path} names {len(names)} classes but config.data.num_classes={data.num_classes}; "
            "make them agree (one name per line, line i = class i)."
        )
    return names


def parse_mask_values(text: str) -> dict[int, int]:
    """'0:0,255:1' -> {0: 0, 255: 1}; raw mask values -> class ids."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            raw, class_id = (int(v) for v in item.split(":"))
        except ValueError:
            raise ConfigError(
                f"config.data.mask_values={text!r}: {item!r} is not 'raw:class' (e.g. '0:0,255:1')."
            ) from None
        mapping[raw] = class_id
    return mapping


def load_mask_folder(config) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N,S,S,C) uint8, masks (N,S,S) int32 (-1 = ignored) at config.image_size, and the pair keys.

    Images are resized bilinearly and masks by nearest neighbour, so class ids stay ids;
    config.image_size=0 keeps the native size, which all pairs must then share. C is 1 when
    config.channels=1, else 3 (gray images are repeated to RGB).
    """
    root = Path(config.path).expanduser()
    pattern = re.compile(config.match_regex) if config.match_regex else None
    images = _index(root / config.image_dir, IMAGE_SUFFIXES, pattern)
    masks = _index(root / config.mask_dir, (".png",), pattern)
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        where = [str(images.get(k) or masks.get(k)) for k in unpaired[:5]]
        raise DataError(
            f"{len(unpaired)} files have no partner image/mask with the same stem, e.g. {where}; "
            "remove them or set config.data.match_regex to pair differently named files."
        )
    lookup = _class_lookup(config)
    channels = 1 if config.channels == 1 else 3
    out_images, out_masks, keys, bad = [], [], [], []
    for key in sorted(images):
        try:
            image = _decode_image(images[key], channels)
            mask = _read_mask(masks[key])
        except ValueError as error:
            if not config.skip_bad_files:
                raise DataError(f"{error}; fix or remove the pair, or {_SKIP_HINT}.") from None
            bad.append(key)
            continue
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{masks[key]}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"{images[key]} ({image.shape[1]}x{image.shape[0]}); masks must match their images."
            )
        mask = _to_class_ids(mask, masks[key], config, lookup)
        image, mask = _resize(image, mask, config.image_size)
        if out_images and image.shape != out_images[0].shape:
            raise DataError(
                f"{images[key]} is {image.shape[1]}x{image.shape[0]} but {images[keys[0]]} is "
                f"{out_images[0].shape[1]}x{out_images[0].shape[0]}, and config.data.image_size=0 keeps each "
                "image's size; set config.data.image_size to resize them."
            )
        out_images.append(image)
        out_masks.append(mask)
        keys.append(key)
    if bad:
        logging.warning("Skipped %d of %d pairs that cannot be decoded: %s", len(bad), len(images), ", ".join(bad[:3]))
    if not keys:
        raise DataError(f"{root}: none of the {len(images)} image/mask pairs can be decoded.")
    return np.stack(out_images), np.stack(out_masks), keys


def _pair_key(stem: str, pattern: re.Pattern | None, path: Path) -> str:
    if pattern is None:
        return stem
    match = pattern.search(stem)
    if not match:
        raise DataError(
            f"{path}: the file name does not match config.data.match_regex={pattern.pattern!r}; "
            "fix the regex or remove the file."
        )
    return match.group(1) if pattern.groups else match.group(0)


def _index(folder: Path, suffixes: tuple[str, ...], pattern: re.Pattern | None) -> dict[str, Path]:
    if not folder.is_dir():
        raise MissingFileError(
            f"{folder}: no such folder; set config.data.path / image_dir / mask_dir to where the files are."
        )
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes:
            key = _pair_key(path.stem, pattern, path)
            if key in files:
                raise DataError(f"{path} and {files[key]} both pair under the key {key!r}.")
            files[key] = path
    if not files:
        raise MissingFileError(f"{folder}: no files ending in {', '.join(suffixes)}.")
    return files


def _decode_image(path: Path, channels: int) -> np.ndarray:
    try:
        return tf.io.decode_image(tf.io.read_file(str(path)), channels, expand_animations=False).numpy()
    except tf.errors.OpError as error:
        raise DataError(f"{path}: cannot decode the image ({error.message.splitlines()[0]})") from None


def _read_mask(path: Path) -> np.ndarray:
    """The mask's per-pixel values (H, W): palette indices for palette PNGs, gray values otherwise."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.array(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode the mask ({error})") from None
    if mode in ("LA", "PA", "RGBA"):
        values = values[..., :-1]  # the alpha channel carries no class
    if values.ndim == 3:
        if not all(np.array_equal(values[..., 0], values[..., c]) for c in range(1, values.shape[-1])):
            raise DataError(
                f"{path}: the mask has {values.shape[-1]} differing channels; masks must hold one class "
                "id per pixel (a grayscale or palette PNG)."
            )
        values = values[..., 0]
    if values.dtype.kind not in "biu":
        raise DataError(f"{path}: a mask of mode {mode!r} holds no integer class ids; save it as a gray PNG.")
    return values.astype(np.int64)


def _class_lookup(config) -> dict[int, int] | None:
    """Raw mask value -> label from config.mask_values, the ignore label mapped to -1; None without mapping."""
    mapping = parse_mask_values(config.mask_values)
    if not mapping:
        return None
    if config.ignore_label in mapping:
        raise ConfigError(
            f"config.data.ignore_label={config.ignore_label} is also a raw value in config.data.mask_values="
            f"{config.mask_values!r}; map it to -1 there or drop the ignore label."
        )
    bad = sorted({c for c in mapping.values() if not IGNORED <= c < config.num_classes})
    if bad:
        raise ConfigError(
            f"config.data.mask_values={config.mask_values!r} maps to {bad}, not class ids below "
            f"config.data.num_classes={config.num_classes} (or -1 to ignore); fix the mapping."
        )
    return {**mapping, config.ignore_label: IGNORED}


def _to_class_ids(mask: np.ndarray, path: Path, config, lookup: dict[int, int] | None) -> np.ndarray:
    """int32 labels: class ids, -1 for the ignore label; other values are an error naming the file."""
    present = np.unique(mask).tolist()
    if lookup is not None:
        unknown = [v for v in present if v not in lookup]
        if unknown:
            raise DataError(
                f"{path}: mask values {unknown[:10]} are not in config.data.mask_values="
                f"{config.mask_values!r}; add them to the mapping."
            )
    else:
        lookup = {v: v for v in present if 0 <= v < config.num_classes} | {config.ignore_label: IGNORED}
        unknown = [v for v in present if v not in lookup]
        if unknown:
            raise DataError(
                f"{path}: mask values {unknown[:10]} are not class ids below config.data.num_classes="
                f"{config.num_classes} (nor config.data.ignore_label={config.ignore_label}); raise num_classes, "
                "map them with config.data.mask_values or set config.data.ignore_label."
            )
    if present == [lookup.get(v) for v in present]:
        return mask.astype(np.int32)
    table = np.zeros(max(present) - min(present) + 1, np.int32)
    for value in present:
        table[value - min(present)] = lookup[value]
    return table[mask - min(present)]


def _resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Both at size x size (bilinear image, nearest-neighbour mask); size 0 or the same size: unchanged."""
    if size == 0 or image.shape[:2] == (size, size):
        return image, mask
    image = tf.image.resize(image, (size, size), "bilinear", antialias=True).numpy()
    mask = tf.image.resize(mask[..., None], (size, size), "nearest")[..., 0].numpy()
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask
