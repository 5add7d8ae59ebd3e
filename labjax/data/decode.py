"""Decoding image files, eagerly or inside tf.data: JPEG/PNG/BMP/GIF by TensorFlow, PGM/PPM by read_pnm.

TensorFlow has no PNM decoder, and data sets such as the CMU faces come as PGM files, so
read_pnm parses them in NumPy and decode_file calls it through tf.numpy_function, picking the
decoder in-graph from the file's suffix. Every image comes out uint8 with the asked channels
and, when asked, resized bilinearly (antialiased) to a square.
"""

import logging
import re
from pathlib import Path

import numpy as np

from labjax.errors import DataError, MissingFileError
from labjax.tf_import import tf

PNM_SUFFIXES = (".pgm", ".ppm", ".pnm")
_PNM_CHANNELS = {b"P2": 1, b"P5": 1, b"P3": 3, b"P6": 3}
_WHITESPACE = b" \t\r\n\v\f"
_SKIP_HINT = "set config.data.skip_bad_files=true to skip such files"


def _pnm_header(data: bytes, path: str) -> tuple[int, int, int, int]:
    """(width, height, maxval, offset of the first pixel byte) of a PNM file; '#' comments allowed."""
    fields, pos = [], 2
    while len(fields) < 3:
        while pos < len(data) and (data[pos] in _WHITESPACE or data[pos] == ord("#")):
            if data[pos] == ord("#"):
                end = data.find(b"\n", pos)
                pos = len(data) if end < 0 else end
            pos += 1
        start = pos
        while pos < len(data) and 48 <= data[pos] <= 57:
            pos += 1
        if start == pos:
            raise DataError(f"{path}: corrupt or truncated PNM header (expected width, height and maxval).")
        fields.append(int(data[start:pos]))
    if pos >= len(data) or data[pos] not in _WHITESPACE:
        raise DataError(f"{path}: corrupt PNM header (no whitespace after maxval) or no pixel data.")
    width, height, maxval = fields
    if width < 1 or height < 1 or not 1 <= maxval <= 65535:
        raise DataError(f"{path}: invalid PNM header (width {width}, height {height}, maxval {maxval}).")
    return width, height, maxval, pos + 1


def read_pnm(data: bytes, path: str = "") -> np.ndarray:
    """A PGM or PPM file (P2, P5, P3, P6) as uint8 (H,W,1) or (H,W,3), values scaled from 0..maxval to 0..255."""
    data = bytes(data)
    magic = data[:2]
    if magic not in _PNM_CHANNELS:
        raise DataError(f"{path}: not a PGM/PPM file (magic {magic!r}; only P2, P3, P5 and P6 are supported).")
    channels = _PNM_CHANNELS[magic]
    width, height, maxval, offset = _pnm_header(data, path)
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        if len(data) - offset < count * dtype.itemsize:
            raise DataError(
                f"{path}: truncated PNM file ({len(data) - offset} pixel bytes for a {width}x{height}x{channels} "
                f"image of {dtype.itemsize}-byte samples)."
            )
        values = np.frombuffer(data, dtype, count, offset).astype(np.int64)
    else:
        tokens = re.sub(rb"#[^\n]*", b" ", data[offset:]).split()
        if len(tokens) < count or not all(token.isdigit() for token in tokens[:count]):
            raise DataError(f"{path}: truncated or corrupt plain PNM file (expected {count} decimal samples).")
        values = np.array(tokens[:count]).astype(np.int64)
    if values.max(initial=0) > maxval:
        raise DataError(f"{path}: corrupt PNM file (a sample exceeds maxval {maxval}).")
    if maxval != 255:
        values = (values * 510 + maxval) // (2 * maxval)  # round(v * 255 / maxval) in integers
    return values.astype(np.uint8).reshape(height, width, channels)


def _jpeg_channels(file) -> int:
    """Components in the first SOF segment of a JPEG stream positioned after its SOI marker."""
    while True:
        marker = file.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return 3
        while marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + file.read(1)
        length = file.read(2)
        if len(length) < 2:
            return 3
        if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
            frame = file.read(6)
            return 1 if len(frame) == 6 and frame[5] == 1 else 3
        file.seek(int.from_bytes(length, "big") - 2, 1)


def file_channels(path: str) -> int:
    """1 for a grayscale PNG, JPEG or PGM file, else 3; reads only the file's header."""
    try:
        with open(path, "rb") as file:
            head = file.read(26)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) == 26:
                return 1 if head[25] in (0, 4) else 3  # IHDR colour type: gray, gray + alpha
            if head.startswith(b"\xff\xd8"):
                file.seek(2)
                return _jpeg_channels(file)
    except OSError as error:
        raise MissingFileError(f"{path}: cannot read the file ({error.strerror}).") from None
    return _PNM_CHANNELS.get(head[:2], 3)


def _read_pnm_for_tf(data: np.ndarray, path: np.ndarray) -> np.ndarray:
    """read_pnm on the arrays tf.numpy_function passes: the file's bytes as uint8 and its path."""
    return read_pnm(data.tobytes(), np.asarray(path).item().decode(errors="replace"))


def decode_file(path: tf.Tensor, channels: int, size: int) -> tf.Tensor:
    """uint8 (size, size, channels) image of the file at `path` (native size if size == 0); graph-compatible.

    Gray images are repeated to RGB and RGB turned gray (ITU-R 601 luma) as asked; alpha is dropped.
    """
    if channels not in (1, 3):
        raise DataError(f"decode_file: channels must be 1 or 3, not {channels}.")
    path = tf.convert_to_tensor(path, tf.string)
    data = tf.io.read_file(path)
    is_pnm = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.(pgm|ppm|pnm)")

    def pnm():
        # as uint8, since NumPy strips trailing zero bytes from a bytes scalar inside tf.data
        raw = tf.io.decode_raw(data, tf.uint8)
        image = tf.numpy_function(_read_pnm_for_tf, [raw, path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, [None, None, None])

    def other():
        return tf.io.decode_image(data, channels=0, expand_animations=False)

    image = tf.cond(is_pnm, pnm, other)
    image = image[..., : tf.where(tf.shape(image)[-1] >= 3, 3, 1)]  # drop alpha
    image = tf.cast(image, tf.float32)
    if channels == 3:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    else:
        image = tf.cond(
            tf.shape(image)[-1] == 3,
            lambda: tf.reduce_sum(image * tf.constant([0.2989, 0.587, 0.114]), -1, keepdims=True),
            lambda: image,
        )
    if size:
        image = tf.image.resize(image, [size, size], "bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, [size or None, size or None, channels])


def _failure(path: str, channels: int, size: int) -> str:
    """Why one file cannot be decoded, in one line."""
    try:
        if path.lower().endswith(PNM_SUFFIXES):
            read_pnm(Path(path).read_bytes(), path)
        else:
            decode_file(tf.constant(path), channels, size)
    except OSError as error:
        return f"{path}: cannot read the file ({error.strerror})"
    except ValueError as error:
        return str(error).rstrip(".")
    except tf.errors.OpError as error:
        message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", error.message.splitlines()[0])
        return f"{path}: cannot decode the file ({message})"
    return f"{path}: cannot decode the file"


def _indexed_image(index: tf.Tensor, path: tf.Tensor, channels: int, size: int):
    image = decode_file(path, channels, size)
    return index, image, tf.shape(image)


def decode_files(files: np.ndarray, channels: int, size: int, skip_bad: bool) -> tuple[np.ndarray, np.ndarray]:
    """All files decoded in parallel: uint8 (N, size, size, channels) and the int64 indices of the files kept.

    A file that fails to decode is an error, or with skip_bad is left out with one warning.
    """
    files = np.asarray(files).astype(str)
    indices = np.arange(len(files), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((indices, files)).map(
        lambda index, path: _indexed_image(index, path, channels, size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    batches = list(dataset.ignore_errors().padded_batch(256).prefetch(2).as_numpy_iterator())
    kept = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0, np.int64)
    bad = np.setdiff1d(indices, kept)
    if len(bad) and not skip_bad:
        raise DataError(f"{_failure(files[bad[0]], channels, size)}; fix or remove the file, or {_SKIP_HINT}.")
    if len(bad) == len(files) and len(files):
        raise DataError(f"none of the {len(files)} files can be decoded, e.g. {_failure(files[0], channels, size)}.")
    if len(bad):
        names = ", ".join(files[bad[:3]]) + (", ..." if len(bad) > 3 else "")
        logging.warning("Skipped %d of %d files that cannot be decoded: %s", len(bad), len(files), names)
    shapes = np.concatenate([b[2] for b in batches]) if batches else np.zeros((0, 3), np.int32)
    differ = np.flatnonzero(np.any(shapes != shapes[:1], axis=1))
    if len(differ):
        (h, w, _), (h2, w2, _) = shapes[0], shapes[differ[0]]
        raise DataError(
            f"the images differ in size ({files[kept[0]]} is {w}x{h}, {files[kept[differ[0]]]} is {w2}x{h2}) "
            "and config.data.image_size=0 keeps each image's size; set config.data.image_size to resize them."
        )
    images = np.concatenate([b[1] for b in batches]) if batches else np.zeros((0, size, size, channels), np.uint8)
    return images, kept
