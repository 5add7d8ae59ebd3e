"""CIFAR source: the python pickle folders cifar-10-batches-py and cifar-100-python, read into memory.

Unpickling can run any code a file names, so the files are read by an unpickler that builds
only dicts, lists, strings, numbers and plain NumPy arrays (numbers, bytes, text: rebuilt from
their raw bytes by labjax, never by NumPy's own unpickling) and refuses every other global.
"""

import pickle
from pathlib import Path

import numpy as np

from labjax.data.examples import Examples
from labjax.errors import ConfigError, DataError, MissingFileError

CIFAR10_FILES = ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
CIFAR100_FILES = ["meta", "train", "test"]
FOLDERS = {"cifar-10-batches-py": CIFAR10_FILES, "cifar-100-python": CIFAR100_FILES}


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What `_codecs.encode` does in Python 3 pickles of bytes (protocol 2), for the latin1 codec only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with the codec {encoding!r}")
    return text.encode("latin1")


# Types an array in a data file may have: booleans, integers, floats, complex, bytes and text. Never
# objects (their bytes would be read as pointers), records or subarrays.
_PLAIN_KINDS = frozenset("biufcSU")
_NDARRAY = object()  # what the file's numpy.ndarray global resolves to: only a tag for _SafeArray


class _SafeDtype:
    """Stands in for numpy.dtype while unpickling: a plain type named by a string; the pickled state
    (flags, sizes, fields) is checked, never applied, so it cannot turn bytes into object pointers."""

    def __init__(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):  # Python 2 pickles (the real CIFAR files) name the type in bytes
            spec = spec.decode("ascii", "replace")
        try:
            self.dtype = np.dtype(spec) if isinstance(spec, str) else None
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.kind not in _PLAIN_KINDS:
            raise pickle.UnpicklingError(f"refused an array of type {spec!r} (only numbers, bytes and text)")

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("refused an array type with fields or subarrays")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"refused the byte order {order!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _SafeArray:
    """Stands in for numpy's array reconstruction: the array is rebuilt from its raw bytes as a copy,
    with the size checked against its shape and plain type."""

    def __init__(self, cls, shape=(0,), code=b"b"):
        if cls is not _NDARRAY:
            raise pickle.UnpicklingError("refused to reconstruct something other than a NumPy array")
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("refused an array state of an unknown form")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _SafeDtype) or not isinstance(raw, bytes):
            raise pickle.UnpicklingError("refused an array that is not plain numbers, bytes or text")
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"refused the array shape {shape!r}")
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"an array of shape {shape} holds {len(raw)} bytes: truncated or forged")
        self.array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _SafeArray,  # files written by NumPy < 2 (the real ones)
    ("numpy._core.multiarray", "_reconstruct"): _SafeArray,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _SafeDtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): lambda: b"",  # how protocol 2 writes empty bytes (an empty array's data)
    ("builtins", "bytes"): lambda: b"",
}


class _SafeUnpickler(pickle.Unpickler):
    """Builds plain containers and plain NumPy arrays; any other class or function in the file is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}")


def _unwrap(value):
    """The loaded structure with each stand-in replaced by the NumPy value it describes."""
    if isinstance(value, _SafeArray):
        if value.array is None:
            raise pickle.UnpicklingError("an array without its data")
        return value.array
    if isinstance(value, _SafeDtype):
        return value.dtype
    if isinstance(value, dict):
        return {_unwrap(k): _unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_unwrap(v) for v in value)
    return value


def read_pickle(path: Path) -> dict:
    """One CIFAR pickle as a dict with str keys; a file that needs anything but arrays and containers is refused."""
    try:
        with open(path, "rb") as file:
            content = _unwrap(_SafeUnpickler(file, encoding="bytes").load())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file; the CIFAR folder is incomplete, download it again.") from None
    except pickle.UnpicklingError as error:
        raise DataError(
            f"{path}: not a CIFAR data file ({error}); CIFAR files hold only arrays, lists and strings, so this "
            "file was not loaded. Download the data again from its official site."
        ) from None
    except Exception as error:  # a corrupt pickle raises many kinds of errors
        raise DataError(f"{path}: corrupt or truncated pickle ({type(error).__name__}: {error}).") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a dict, found {type(content).__name__}; not a CIFAR file.")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()}


def _field(content: dict, key: str, path: Path):
    if key not in content:
        raise DataError(f"{path}: no {key!r} entry (it has {sorted(content)}); not a CIFAR file of this kind.")
    return content[key]


def _names(content: dict, key: str, path: Path) -> list[str]:
    return [name.decode() if isinstance(name, bytes) else str(name) for name in _field(content, key, path)]


def _batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,32,32,3) uint8 from the rows of R, G, B planes, and int32 labels of one batch file."""
    content = read_pickle(path)
    data = np.asarray(_field(content, "data", path))
    labels = np.asarray(_field(content, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 (N, 3072).")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {labels.shape} {labels.dtype} {label_key!r} for {len(data)} images.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels.astype(np.int32)


def _find_folder(root: Path) -> Path:
    """`root` itself when it holds CIFAR files, else its one cifar-10-batches-py or cifar-100-python child."""
    if (root / "batches.meta").is_file() or (root / "meta").is_file():
        return root
    found = [root / name for name in FOLDERS if (root / name).is_dir()]
    if len(found) > 1:
        raise ConfigError(
            f"config.data.path={str(root)!r} holds both {found[0].name} and {found[1].name}; point it at one of them."
        )
    if not found:
        raise MissingFileError(
            f"config.data.path={str(root)!r} holds neither a CIFAR-10 folder cifar-10-batches-py "
            f"({', '.join(CIFAR10_FILES)}) nor a CIFAR-100 folder cifar-100-python ({', '.join(CIFAR100_FILES)})."
        )
    return found[0]


def _rename(class_names: list[str], data) -> list[str]:
    """config.data.class_names, when set, renames the classes (same count, same order)."""
    if not data.class_names:
        return class_names
    names = [name.strip() for name in data.class_names.split(",")]
    if len(names) != len(class_names):
        raise ConfigError(
            f"config.data.class_names gives {len(names)} names for the {len(class_names)} classes of the data; "
            "give one name per class in label order, or leave it empty."
        )
    return names


def load(data) -> dict[str, Examples]:
    """{"train", "test"} of CIFAR-10 or CIFAR-100 (fine or coarse labels per config.data.label_mode)."""
    root = Path(data.path).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"config.data.path={data.path!r}: no such folder; point it at the CIFAR folder.")
    folder = _find_folder(root)
    if (folder / "batches.meta").is_file():
        names_key, label_key = "label_names", "labels"
        meta, train_files, test_file = "batches.meta", CIFAR10_FILES[1:6], "test_batch"
    else:
        if data.label_mode not in ("fine", "coarse"):
            raise ConfigError(f"config.data.label_mode={data.label_mode!r} is unknown; valid: 'fine', 'coarse'.")
        names_key, label_key = f"{data.label_mode}_label_names", f"{data.label_mode}_labels"
        meta, train_files, test_file = "meta", ["train"], "test"
    class_names = _names(read_pickle(folder / meta), names_key, folder / meta)
    train = [_batch(folder / name, label_key, len(class_names)) for name in train_files]
    test_images, test_labels = _batch(folder / test_file, label_key, len(class_names))
    class_names = _rename(class_names, data)
    return {
        "train": Examples(
            labels=np.concatenate([labels for _, labels in train]),
            class_names=class_names,
            images=np.concatenate([images for images, _ in train]),
        ),
        "test": Examples(labels=test_labels, class_names=list(class_names), images=test_images),
    }
