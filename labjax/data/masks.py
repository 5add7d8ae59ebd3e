"""Segmentation source: a folder of images and a folder of PNG masks with matching stems."""

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def parse_mask_values(text: str) -> dict[int, int]:
    """'0:0,255:1' -> {0: 0, 255: 1}; raw mask values -> class ids."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            raw, class_id = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(
                f"config.data.mask_values={text!r}: {item!r} is not 'raw:class' (e.g. '0:0,255:1')."
            ) from None
        mapping[raw] = class_id
    return mapping


def _pair_key(stem: str, pattern: re.Pattern | None, path: Path) -> str:
    if pattern is None:
        return stem
    match = pattern.search(stem)
    if not match:
        raise ValueError(
            f"{path}: the file name does not match config.data.match_regex={pattern.pattern!r}; "
            "fix the regex or remove the file."
        )
    return match.group(1) if pattern.groups else match.group(0)


def _index(folder: Path, suffixes: tuple[str, ...], pattern: re.Pattern | None) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder; set config.data.path / image_dir / mask_dir to where the files are."
        )
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes:
            key = _pair_key(path.stem, pattern, path)
            if key in files:
                raise ValueError(f"{path} and {files[key]} both pair under the key {key!r}.")
            files[key] = path
    if not files:
        raise FileNotFoundError(f"{folder}: no files ending in {', '.join(suffixes)}.")
    return files


def _decode(path: Path, decoder) -> np.ndarray:
    try:
        return decoder(tf.io.read_file(str(path))).numpy()
    except tf.errors.OpError as error:
        raise ValueError(f"{path}: cannot decode the file ({error.message.splitlines()[0]}).") from None


def _to_class_ids(mask: np.ndarray, path: Path, config) -> np.ndarray:
    if mask.shape[-1] > 1:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[-1])):
            raise ValueError(
                f"{path}: the mask has {mask.shape[-1]} differing channels; masks must hold one class "
                "id per pixel (a grayscale or palette PNG)."
            )
    mask = mask[..., 0].astype(np.int64)
    mapping = parse_mask_values(config.mask_values)
    if mapping:
        unknown = sorted(set(np.unique(mask).tolist()) - set(mapping) - {config.ignore_label})
        if unknown:
            raise ValueError(
                f"{path}: mask values {unknown[:10]} are not in config.data.mask_values="
                f"{config.mask_values!r}; add them to the mapping."
            )
        lut = np.full(max(max(mapping), mask.max()) + 1, config.ignore_label, np.int64)
        for raw, class_id in mapping.items():
            lut[raw] = class_id
        mask = lut[mask]
    valid = (mask >= 0) & (mask < config.num_classes)
    if not np.all(valid | (mask == config.ignore_label)):
        bad = sorted(set(np.unique(mask[~valid]).tolist()) - {config.ignore_label})
        raise ValueError(
            f"{path}: mask values {bad[:10]} are not class ids below config.data.num_classes="
            f"{config.num_classes}; raise num_classes or map them with config.data.mask_values."
        )
    return mask


def load_mask_folder(config) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N,S,S,3) uint8, masks (N,S,S) int32 at config.image_size, and the pair keys.

    Images are resized bilinearly and masks by nearest neighbour, so class ids stay ids.
    """
    root = Path(config.path).expanduser()
    pattern = re.compile(config.match_regex) if config.match_regex else None
    images = _index(root / config.image_dir, IMAGE_SUFFIXES, pattern)
    masks = _index(root / config.mask_dir, (".png",), pattern)
    unpaired = sorted(set(images) ^ set(masks))
    if unpaired:
        where = [str(images.get(k) or masks.get(k)) for k in unpaired[:5]]
        raise ValueError(
            f"{len(unpaired)} files have no partner image/mask with the same stem, e.g. {where}; "
            "remove them or set config.data.match_regex to pair differently named files."
        )
    size = (config.image_size, config.image_size)
    out_images, out_masks = [], []
    for key in sorted(images):
        image = _decode(images[key], lambda b: tf.io.decode_image(b, 3, expand_animations=False))
        mask = _decode(masks[key], lambda b: tf.io.decode_png(b, 0, tf.uint8))
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(
                f"{masks[key]}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                f"{images[key]} ({image.shape[1]}x{image.shape[0]}); masks must match their images."
            )
        mask = _to_class_ids(mask, masks[key], config)
        image = tf.image.resize(image, size, "bilinear", antialias=True)
        out_images.append(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
        mask = tf.image.resize(mask[..., None], size, "nearest")[..., 0]
        out_masks.append(mask.numpy().astype(np.int32))
    return np.stack(out_images), np.stack(out_masks), sorted(images)
