"""Weight files that are matched by position, not by name: read by Keras itself.

Keras 3's `.weights.h5` (also inside a `.keras` file) stores each layer under a class-name
counter in the order of `model.layers` (`layers/conv2d_3/vars/0`), and Keras' loader of legacy
HDF5 files (`model.load_weights("x.h5")`) pairs the file's layers with weights with the
model's by order, whatever their names. So these files are read as Keras reads them: the
keras.applications model of the configured family is built with weights=None (its top and
class count as the file says, the config's input side and width), Keras' `load_weights` fills
it, and its layers, now under the model's own names, go to `labjax.weights.keras.assign`, which
checks every tensor. Xception and InceptionV3 leave layers unnamed, so their legacy files
(the ImageNet ones included) take this way too.
"""

import contextlib
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from labjax.errors import CheckpointError, ConfigError
from labjax.weights.keras import flax_name, layers_from_model

BY_ORDER = ("xception", "inceptionv3")  # families with unnamed layers: legacy files are read by order
KERAS3_WEIGHTS = "model.weights.h5"  # the weights inside a .keras archive


def is_keras3(path: str | Path) -> bool:
    """Whether `path` is a Keras 3 weights file (`.weights.h5` layout) or a `.keras` model archive."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return KERAS3_WEIGHTS in archive.namelist()
    try:
        with h5py.File(path, "r") as file:
            return "layers" in file and "layer_names" not in file.attrs and "model_weights" not in file
    except OSError:
        return False


def needs_keras(path: str | Path, model_name: str) -> bool:
    """Whether the file must be read through Keras (a Keras 3 file, or a family matched by order)."""
    return model_name in BY_ORDER or is_keras3(path)


def read(path: str | Path, model_config, input_size: int) -> dict[str, list[np.ndarray]]:
    """{Keras layer name: weight arrays} of the file, placed by Keras into the configured family's model."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # as the tests; any backend reads weights alike
    import keras

    path = Path(path).expanduser()
    keras3 = is_keras3(path)
    include_top, classes = _keras3_top(path) if keras3 else _legacy_top(path)
    model = _application(keras, model_config, input_size, include_top, classes)
    if keras3:
        leftover = _keras3_groups(path) - set(_keras3_paths(model))
        if leftover:
            raise CheckpointError(
                f"{path}: {len(leftover)} layers of the file have no place in the model {model_config.name!r} "
                f"(include_top={include_top}), e.g. {sorted(leftover)[:5]}; the file is for another architecture."
            )
    with _named_for_keras(path, keras3) as keras_path:
        try:
            model.load_weights(keras_path)
        except ValueError as error:
            reason = " ".join(line for line in str(error).splitlines()[:3] if line)  # Keras' count and first error
            raise CheckpointError(
                f"{path}: Keras cannot load it into {model_config.name!r} (include_top={include_top}, "
                f"{input_size}x{input_size} input): {reason} The file is for another architecture."
            ) from None
    return layers_from_model(model)


def base_layers(model_config, input_size: int, rename: Callable | None = None) -> list[tuple[str, bool]] | None:
    """(module name, has weights) of every layer of the family's Keras base (include_top=False), activations
    and pooling included, in `model.layers` order; None for a model keras.applications lacks.

    `rename`: the family's `keras_rename`, mapping this session's generated names onto labjax's.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if not _builder(keras, model_config.name):
        return None
    model = _application(keras, model_config, input_size, include_top=False, classes=0)
    weighted = {layer.name: layer.weights for layer in model.layers if layer.weights}
    names = dict(zip(weighted, rename(weighted) if rename else weighted))
    return [(flax_name(names.get(layer.name, layer.name)), bool(layer.weights)) for layer in model.layers]


def _builder(keras, name: str) -> str | None:
    """The keras.applications builder of a registry name: the same name up to case ("mobilenetv2" -> MobileNetV2)."""
    builders = {n.lower(): n for n in dir(keras.applications) if callable(getattr(keras.applications, n))}
    return builders.get(name)


def _application(keras, model_config, input_size: int, include_top: bool, classes: int):
    """The keras.applications model of the configured family, with weights=None."""
    builder = _builder(keras, model_config.name)
    if not builder:
        raise ConfigError(
            f"config.model.pretrained={model_config.pretrained!r}: a Keras 3 file is read through its "
            f"keras.applications model, and model {model_config.name!r} has none; use a Keras HDF5 (.h5) file."
        )
    kwargs = dict(weights=None, include_top=include_top, input_shape=(input_size, input_size, 3))
    if include_top:
        kwargs["classes"] = classes
    if "alpha" in model_config and model_config.name == "mobilenetv2":
        kwargs["alpha"] = model_config.alpha
    return getattr(keras.applications, builder)(**kwargs)


def _open_keras3(path: Path) -> h5py.File:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return h5py.File(io.BytesIO(archive.read(KERAS3_WEIGHTS)), "r")
    return h5py.File(path, "r")


def _keras3_top(path: Path) -> tuple[bool, int]:
    """(include_top, classes): a keras.applications model has Dense layers only in its top, the last the output."""
    with _open_keras3(path) as file:
        dense = [name for name in file["layers"] if re.fullmatch(r"dense(_\d+)?", name)]
        if not dense:
            return False, 0
        last = max(dense, key=lambda name: int(name.rpartition("_")[2]) if "_" in name else 0)
        return True, int(file["layers"][last]["vars"]["0"].shape[-1])


def _legacy_top(path: Path) -> tuple[bool, int]:
    """(include_top, classes) of a legacy HDF5 file: its last layer with weights is a Dense in the top."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({error}); is it a Keras weights file?") from None
    with file:
        root = file["model_weights"] if "model_weights" in file else file
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs.get("layer_names", [])]
        for name in reversed(names):
            weight_names = root[name].attrs.get("weight_names", [])
            if len(weight_names):
                kernel = root[name][weight_names[0]]
                return (True, int(kernel.shape[-1])) if kernel.ndim == 2 else (False, 0)
    raise CheckpointError(f"{path}: not a Keras HDF5 weights file (no layers with weights).")


def _keras3_groups(path: Path) -> set[str]:
    """The file's layer groups that hold tensors (`layers/conv2d_3`)."""
    with _open_keras3(path) as file:
        return {f"layers/{name}" for name, group in file["layers"].items() if _holds_tensors(group)}


def _holds_tensors(group: h5py.Group) -> bool:
    return any(isinstance(item, h5py.Dataset) or _holds_tensors(item) for item in group.values())


def _keras3_paths(model) -> list[str]:
    """Where Keras 3 stores each layer of `model`: its class name in snake case, counted in model.layers order."""
    from keras.src.utils import naming

    counts: dict[str, int] = {}
    paths = []
    for layer in model.layers:
        base = naming.to_snake_case(type(layer).__name__)
        counts[base] = counts.get(base, -1) + 1
        paths.append(f"layers/{base}" if counts[base] == 0 else f"layers/{base}_{counts[base]}")
    return paths


@contextlib.contextmanager
def _named_for_keras(path: Path, keras3: bool) -> Iterator[Path]:
    """The path under a name Keras dispatches on (`.keras`, `.weights.h5`, `.h5`): a link when it has another."""
    suffix = (".keras" if zipfile.is_zipfile(path) else ".weights.h5") if keras3 else ".h5"
    if path.name.endswith(suffix) and (keras3 or not path.name.endswith(".weights.h5")):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / f"weights{suffix}"
        link.symlink_to(path.resolve())
        yield link
