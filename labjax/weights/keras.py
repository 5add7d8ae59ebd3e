"""Keras weights -> Flax variables, matched by layer name and checked tensor by tensor.

labjax's Keras-family models name every module with weights after its Keras layer ('/' in
a Keras name becomes '_'), and keep each layer's variables in Keras' order once sorted by
`CANONICAL_ORDER`: Conv2D/Dense [kernel, bias], DepthwiseConv2D [depthwise kernel, bias],
SeparableConv2D [depthwise, pointwise, bias], BatchNormalization [gamma, beta, moving mean,
moving variance] (-> scale, bias, batch_stats mean, var), Normalization [mean, variance,
count]. So one generic import serves every family, and any leftover or missing tensor is
an error naming it.

Files: the HDF5 layout of Keras' ImageNet weight files and of `model.save("x.h5")` (layer
groups with `weight_names`, at the root or under `model_weights`). Keras 3's `.weights.h5`
stores layers by position (`layers/conv2d_12`), not by name: `labjax.weights.via_keras` reads
those through Keras into named layers.
"""

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from labjax.errors import CheckpointError, ConfigError, MissingFileError

CANONICAL_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "scale", "bias", "mean", "var", "count")


def flax_name(keras_name: str) -> str:
    """The Flax module name of a Keras layer ('conv1/bn' -> 'conv1_bn')."""
    return keras_name.replace("/", "_")


def layers_from_model(model) -> dict[str, list[np.ndarray]]:
    """{layer name: its weight arrays in Keras order} of an in-memory Keras model."""
    return {layer.name: [np.asarray(w) for w in layer.weights] for layer in model.layers if layer.weights}


def read_h5(path: str | Path) -> dict[str, list[np.ndarray]]:
    """{layer name: weight arrays in Keras order} from a Keras HDF5 weights or model file."""
    import h5py

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{path}: no such weights file; set config.model.pretrained to a Keras .h5 file.")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({error}); is it a Keras weights file?") from None
    with file:
        root = file["model_weights"] if "model_weights" in file else file
        if "layer_names" not in root.attrs:
            if "layers" in root and "vars" in root:
                raise CheckpointError(
                    f"{path}: a Keras 3 '.weights.h5' file, whose layers are stored by position, not by name; "
                    "read it with labjax.weights.via_keras.read (what config.model.pretrained=PATH does)."
                )
            raise CheckpointError(f"{path}: not a Keras HDF5 weights file (no 'layer_names').")
        layers = {}
        for raw_name in root.attrs["layer_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            group = root[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
            if weight_names:
                layers[name] = [np.asarray(group[w]) for w in weight_names]
        return layers


def _modules(variables: dict) -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """Innermost module name -> [(path of a variable, its leaf name)] over all collections."""
    modules: dict[str, list] = {}
    owners: dict[str, tuple] = {}

    def walk(tree, path):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, path + (key,))
            else:
                module = path[-1]
                if owners.setdefault(module, path[1:]) != path[1:]:
                    raise CheckpointError(f"two modules are named {module!r} ({owners[module]} and {path[1:]}).")
                modules.setdefault(module, []).append((path + (key,), key))

    walk(variables, ())
    for entries in modules.values():
        entries.sort(key=lambda entry: CANONICAL_ORDER.index(entry[1]) if entry[1] in CANONICAL_ORDER else 99)
    return modules


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _converted(array: np.ndarray, target_shape: tuple, where: str) -> np.ndarray:
    """Keras' array in the Flax layout: depthwise (kh,kw,C,M) kernels become (kh,kw,1,C*M)."""
    if array.shape == tuple(target_shape):
        return array
    if array.ndim == 4 and len(target_shape) == 4 and target_shape[2] == 1 and array.shape[:2] == target_shape[:2]:
        if array.shape[2] * array.shape[3] == target_shape[3]:
            return array.reshape(target_shape)
    raise ConfigError(f"{where}: Keras shape {array.shape} does not fit the model's {tuple(target_shape)}.")


def assign(
    variables: dict,
    keras_layers: dict[str, list[np.ndarray]],
    *,
    ignore_layers: Iterable[str] = (),
    new_modules: Iterable[str] = (),
    source: str = "the weights file",
) -> dict:
    """Variables with every Keras layer's weights put in place; exact shapes, nothing left over.

    `ignore_layers`: Keras layers not wanted (an original top when the model has a new head).
    `new_modules`: Flax modules the file need not cover (that new head).
    """
    modules = _modules(variables)
    ignore, new = set(ignore_layers), set(new_modules)
    result = _copy(variables)
    leftover, used = [], set()
    for keras_name, arrays in keras_layers.items():
        if keras_name in ignore:
            continue
        name = flax_name(keras_name)
        if name not in modules:
            leftover.append(keras_name)
            continue
        entries = modules[name]
        if len(entries) != len(arrays):
            raise ConfigError(
                f"{source}: layer {keras_name!r} has {len(arrays)} tensors but the model's {name!r} has "
                f"{len(entries)} ({[leaf for _, leaf in entries]}); the file is for another architecture."
            )
        for (path, leaf), array in zip(entries, arrays):
            target = _get(result, path)
            where = f"{source}: layer {keras_name!r} tensor {leaf!r}"
            _get(result, path[:-1])[path[-1]] = _converted(np.asarray(array), target.shape, where).astype(target.dtype)
        used.add(name)
    if leftover:
        raise ConfigError(
            f"{source}: {len(leftover)} Keras layers have no counterpart in the model, e.g. {leftover[:5]}; "
            "the file is for another architecture (or model.include_top differs)."
        )
    missing = sorted(set(modules) - used - new)
    if missing:
        raise ConfigError(
            f"{source}: no weights for {len(missing)} model layers, e.g. {missing[:5]}; "
            "the file is for another architecture (or a no-top file for a model with its original top)."
        )
    return result


def _copy(tree):
    return {k: _copy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}
