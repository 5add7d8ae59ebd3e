"""IDX source: MNIST-format files (MNIST, Fashion-MNIST, ...) read into memory, plain or gzipped."""

import gzip
from pathlib import Path

import numpy as np

from labjax.data.examples import Examples
from labjax.errors import ConfigError, DataError, MissingFileError

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type code -> big-endian element type
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{a}[.gz]" for pair in FILES.values() for a in pair)
    raise MissingFileError(
        f"{folder / name}[.gz]: no such file; config.data.path={str(folder)!r} must hold the IDX files {expected}."
    )


def read_idx(path: Path) -> np.ndarray:
    """The array in one IDX file (gzipped if its name ends in .gz), checked against its header."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read the file ({error}); download it again.") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}); download it again.")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path}: truncated IDX header; download it again.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataError(
            f"{path}: {len(data) - offset} data bytes where the header's shape {shape} needs {expected}; "
            "the file is truncated or corrupt, download it again."
        )
    return np.frombuffer(data, dtype, offset=offset).reshape(shape)


def _split(folder: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = _find(folder, images_name), _find(folder, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images (N,H,W), found {images.dtype} {images.shape}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected integer labels (N,), found {labels.dtype} {labels.shape}.")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels.")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{labels_path}: negative label {labels.min()}.")
    return images[..., None].copy(), labels.astype(np.int32)


def load(data) -> dict[str, Examples]:
    """{"train", "test"} from the four IDX files in config.data.path; images uint8 (N,H,W,1)."""
    folder = Path(data.path).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"config.data.path={data.path!r}: no such folder; point it at the IDX files.")
    splits = {name: _split(folder, *names) for name, names in FILES.items()}
    num_classes = max(int(labels.max(initial=-1)) + 1 for _, labels in splits.values())
    if data.class_names:
        class_names = [name.strip() for name in data.class_names.split(",")]
        if len(class_names) < num_classes:
            raise ConfigError(
                f"config.data.class_names names {len(class_names)} classes but the labels go up to "
                f"{num_classes - 1}; give {num_classes} names."
            )
    elif "fashion" in str(folder).lower():
        class_names = FASHION_CLASSES
    else:
        class_names = [str(i) for i in range(num_classes)]
    if num_classes > len(class_names):
        raise DataError(f"{folder}: labels go up to {num_classes - 1} but there are {len(class_names)} classes.")
    return {
        name: Examples(labels=labels, class_names=list(class_names), images=images)
        for name, (images, labels) in splits.items()
    }
