"""Where a run's starting weights come from: Keras ImageNet files, a local Keras file, another run.

`model.pretrained=imagenet` downloads the file keras.applications uses (same URL, same
hash check) into ~/.cache/labjax/weights (LABJAX_WEIGHTS_DIR) once; `model.pretrained=PATH`
reads a local Keras file: HDF5 `.h5` (what Keras caches in ~/.keras/models), Keras 3
`.weights.h5` or `.keras`. `model.init_from` starts from another labjax run's params and
batch_stats (fine-tuning), optionally without its head when the number of classes changes.
"""

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from labjax.errors import CheckpointError, ConfigError, MissingFileError
from labjax.weights import keras as keras_weights
from labjax.weights import via_keras


def cache_dir() -> Path:
    return Path(os.environ.get("LABJAX_WEIGHTS_DIR", Path.home() / ".cache" / "labjax" / "weights"))


def _hash_ok(path: Path, file_hash: str | None) -> bool:
    if not file_hash:
        return True
    algorithm = hashlib.md5 if len(file_hash) == 32 else hashlib.sha256  # Keras' rule
    digest = algorithm()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == file_hash


def download(url: str, file_hash: str | None) -> Path:
    """The cached file for `url`, downloaded and hash-checked on first use.

    Files without a published hash (Keras publishes none for MobileNetV2) get theirs recorded
    beside them at first use (FILE.sha256) and checked at every later use, so a cached file that
    changed or was damaged is never loaded. A failed download leaves no partial file behind.
    """
    target = cache_dir() / url.rsplit("/", 1)[-1]
    if target.exists() and not (file_hash and not _hash_ok(target, file_hash)):  # a bad published hash: again
        _check_cached(target, file_hash)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
                promised = response.headers.get("Content-Length")
                if promised and int(promised) != tmp.tell():  # the connection closed early: a truncated file
                    raise http.client.IncompleteRead(b"", int(promised) - tmp.tell())
        except (OSError, http.client.HTTPException) as error:  # IncompleteRead is an HTTPException
            Path(tmp.name).unlink(missing_ok=True)
            raise MissingFileError(
                f"cannot download {url} ({type(error).__name__}: {error}); on a machine without internet, fetch that "
                f"file elsewhere and set config.model.pretrained=/path/to/{target.name} (or put it in {target.parent})."
            ) from None
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    if file_hash and not _hash_ok(Path(tmp.name), file_hash):
        Path(tmp.name).unlink()
        raise CheckpointError(f"{url}: the downloaded file's hash is not {file_hash}; try again.")
    Path(tmp.name).replace(target)
    _check_cached(target, file_hash)  # records the hash of a file that has no published one
    return target


def _check_cached(path: Path, file_hash: str | None) -> None:
    """The cached file's hash against the published one, else against the one recorded at its first use."""
    recorded = path.with_name(path.name + ".sha256")
    if not file_hash and not recorded.exists():
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        recorded.write_text(digest.hexdigest() + "\n")
        return
    expected = file_hash or recorded.read_text().strip()
    if not _hash_ok(path, expected):
        raise CheckpointError(
            f"{path}: its hash is not {expected} (the file changed or was damaged since it was downloaded); "
            "delete it to download it again."
        )


def weights_file(model_config, info, input_size: int) -> Path:
    """The Keras file model.pretrained names: imagenet (downloaded) or a path."""
    if model_config.pretrained != "imagenet":
        return Path(model_config.pretrained).expanduser()
    weights = info.weights
    if callable(weights):
        weights = weights(model_config, input_size)
    key = "top" if model_config.head == "original" else "notop"
    if not weights or not weights.get(key):
        raise ConfigError(
            f"config.model.pretrained='imagenet': no ImageNet weights exist for model {model_config.name!r}"
            f"{' with its original top' if key == 'top' else ''}; use pretrained=none or a weights file."
        )
    return download(*weights[key])


def from_keras(model_config, info, variables: dict, input_size: int) -> dict:
    """`variables` with the Keras file's weights in place; a new head (or stem) keeps its initialisation."""
    path = weights_file(model_config, info, input_size)
    ignore, new = set(), set()
    if model_config.head == "new":
        ignore |= set(info.top_layers)
        new |= {"head_dropout", "head_dense"}
    if model_config.get("small_inputs"):  # the small-image stem's 3x3 kernel replaces Keras' 7x7 one
        ignore.add("conv1_conv")
        new.add("conv1_conv")
    layers = read_layers(path, model_config, input_size)
    if info.keras_rename:
        layers = info.keras_rename(layers)
    return keras_weights.assign(variables, layers, ignore_layers=ignore, new_modules=new, source=str(path))


def read_layers(path: Path, model_config, input_size: int) -> dict[str, list[np.ndarray]]:
    """The file's {Keras layer name: arrays}: by name from an HDF5 file, through Keras where Keras
    matches by position (a Keras 3 file, or a family with unnamed layers; see via_keras)."""
    if path.is_file() and via_keras.needs_keras(path, model_config.name):
        return via_keras.read(path, model_config, input_size)
    return keras_weights.read_h5(path)


def merge_from_run(variables: dict, restored: dict, head: tuple[str, ...], keep_head: bool, source: str) -> dict:
    """`variables` overwritten by another run's arrays at the same paths.

    Without keep_head, the `head` module (the output layer, a path inside each collection)
    keeps its fresh values, so a run can continue with another number of classes. Any
    other missing path or shape difference is an error naming it.
    """

    def merge(fresh, old, path):
        if path[1:] == head and not keep_head:
            return fresh
        if isinstance(fresh, dict):
            if not isinstance(old, dict) or set(fresh) - set(old):
                missing = sorted(set(fresh) - set(old or {}))[:5]
                raise ConfigError(f"{source}: no {missing} under {'/'.join(path)}; it was trained with another model.")
            return {key: merge(value, old[key], path + (key,)) for key, value in fresh.items()}
        if np.shape(old) != np.shape(fresh):
            raise ConfigError(
                f"{source}: {'/'.join(path)} has shape {np.shape(old)} there but {np.shape(fresh)} here; init_from "
                "needs the same model (config.model.init_head=false starts a new head for another class count)."
            )
        return np.asarray(old)

    return {name: merge(tree, restored.get(name, {}), (name,)) for name, tree in variables.items()}
