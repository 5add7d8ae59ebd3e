"""Keras 3 weight files, files Keras matches by position, the ImageNet file table and freeze=fraction's
layer count, against Keras.

Keras models are built with weights=None at small inputs, their biases and BatchNorm variables
randomised (so a misplaced tensor shows), saved as Keras saves them, imported the way a run
imports `model.pretrained=PATH` (models.build, then the pretrained loader), and compared with
Keras in inference mode.
"""

import ast
import importlib
import inspect
import os

import h5py
import jax
import numpy as np
import pytest

from labjax import config as config_lib
from labjax import models
from labjax.models import densenet
from labjax.models.xception import rename_keras_layers
from labjax.weights import keras as keras_weights
from labjax.weights import pretrained

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

SIZE = 32
CLASSES = 5
# registry name -> (keras.applications builder, include_top of the saved file, extra builder arguments)
FAMILIES = {
    "mobilenetv2": ("MobileNetV2", True, dict(alpha=0.35)),
    "resnet50": ("ResNet50", False, {}),
    "densenet121": ("DenseNet121", True, {}),
}


def randomise(model, seed: int) -> None:
    """Random biases and BatchNorm gamma/beta/moving statistics (Keras initialises them to constants)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):  # positive scales and variances
            positive = [v.name in ("gamma", "moving_variance") for v in layer.weights]
            weights = [
                rng.uniform(0.5, 1.5, w.shape) if p else rng.normal(0, 0.2, w.shape) for w, p in zip(weights, positive)
            ]
        elif getattr(layer, "use_bias", False):
            weights[-1] = rng.normal(0, 0.1, weights[-1].shape)
        layer.set_weights([np.asarray(w, np.float32) for w in weights])


def keras_model(name: str, seed: int = 0):
    builder, include_top, kwargs = FAMILIES[name]
    if include_top:
        kwargs = dict(kwargs, classes=CLASSES, classifier_activation=None)
    model = getattr(keras.applications, builder)(
        weights=None, include_top=include_top, input_shape=(SIZE, SIZE, 3), **kwargs
    )
    randomise(model, seed)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (Keras model, its `save_weights("m.weights.h5")` file)."""
    root = tmp_path_factory.mktemp("keras3")
    files = {}
    for seed, name in enumerate(FAMILIES):
        model = keras_model(name, seed)
        files[name] = (model, root / f"{name}.weights.h5")
        model.save_weights(files[name][1])
    return files


def model_config(name: str, path, **overrides):
    config = config_lib.base_config("classification")
    config.model.name = name
    config.model.pretrained = str(path)
    config.model.update(overrides)
    return config.model


def imported(config, num_classes: int, size: int = SIZE):
    """(model, variables) as a run starts: models.build, then the pretrained loader on fresh variables."""
    model, _ = models.build(config, num_classes, (size, size, 3))
    x = np.zeros((1, size, size, 3), np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return model, pretrained.from_keras(config, models.model_info(config.name), fresh, size)


def inference(module, variables, x) -> np.ndarray:
    forward = jax.jit(lambda v, images: module.apply(v, images, train=False)).lower(variables, x)
    return np.asarray(forward.compile({"xla_backend_optimization_level": 0})(variables, x))


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Same shape, max abs difference within 1e-4 of the largest Keras value (the family parity tests' bound)."""
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 1e-2
    assert np.abs(ours - theirs).max() <= 1e-4 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_keras3_weights_file_reproduces_the_keras_model(saved, name):
    keras_net, path = saved[name]
    include_top = FAMILIES[name][1]
    overrides = dict(FAMILIES[name][2], head="original" if include_top else "new")
    model, variables = imported(model_config(name, path, **overrides), CLASSES)
    x = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    if include_top:
        ours = inference(model, variables, x)
    else:  # a no-top file: the backbone is Keras' model, the new head keeps its initialisation
        assert not variables["params"]["head_dense"]["kernel"].any()
        inner = {collection: tree["backbone"] for collection, tree in variables.items()}
        ours = inference(model.backbone, inner, x)
    assert_close(ours, keras_net(x, training=False).numpy())


def test_keras_archive_loads_like_its_weights_file(saved, tmp_path):
    keras_net, path = saved["mobilenetv2"]
    keras_net.save(tmp_path / "model.keras")
    config = model_config("mobilenetv2", tmp_path / "model.keras", alpha=0.35)  # a new head: the top is left out
    _, variables = imported(config, 3)
    # the same tensors as an import of the in-memory Keras model by layer name (the family tests' path)
    by_name = keras_weights.layers_from_model(keras_net)
    expected = keras_weights.assign(
        jax.tree.map(np.zeros_like, variables), by_name, ignore_layers=["predictions"], new_modules=models.HEAD_MODULES
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        if "head_dense" not in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(leaf, _get(expected, path), err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_a_file_for_another_architecture_gets_an_error_naming_it(saved):
    _, mobilenet_file = saved["mobilenetv2"]

    def load(config):  # the file is refused before any variable is touched
        return pretrained.from_keras(config, models.model_info(config.name), {}, SIZE)

    with pytest.raises(ValueError, match=r"no place in the model 'resnet50'.*'layers/depthwise_conv2d"):
        load(model_config("resnet50", mobilenet_file))
    with pytest.raises(ValueError, match=r"Keras cannot load it into 'mobilenetv2' \(include_top=True.*Conv1.*another"):
        load(model_config("mobilenetv2", mobilenet_file, alpha=1.0, head="original"))
    with pytest.raises(ValueError, match=r"model 'resnet18' has none"):
        load(model_config("resnet18", mobilenet_file))


@pytest.mark.slow
def test_legacy_files_of_unnamed_layers_are_matched_by_order_as_keras_does(tmp_path):
    """Xception's residual layers are unnamed: a file saved in another session carries other names."""
    for _ in range(40):  # layers made first: the model's generated names start at conv2d_40 or later
        keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization()
    size = 71
    keras_net = keras.applications.Xception(weights=None, include_top=False, input_shape=(size, size, 3))
    randomise(keras_net, 7)
    unnamed = [layer.name for layer in keras_net.layers if layer.weights and not layer.name.startswith("block")]
    assert len(unnamed) == 8 and all(int(name.rsplit("_", 1)[1]) >= 40 for name in unnamed)
    keras_net.save(tmp_path / "xception.h5")  # Keras' legacy HDF5 format
    with h5py.File(tmp_path / "xception.h5", "r+") as file:  # and a name no Keras session would give
        root = file["model_weights"]
        root.move(unnamed[0], "convolution2d_7")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs["layer_names"]]
        root.attrs["layer_names"] = ["convolution2d_7" if n == unnamed[0] else n for n in names]
    _, variables = imported(model_config("xception", tmp_path / "xception.h5"), 3, size)
    # the same tensors as an import of the in-memory Keras model by its names (the family tests' path)
    expected = keras_weights.assign(
        jax.tree.map(np.zeros_like, variables),
        rename_keras_layers(keras_weights.layers_from_model(keras_net)),
        new_modules=models.HEAD_MODULES,
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        if "head_dense" not in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(leaf, _get(expected, path), err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["conv2d_1"]["kernel"], keras_net.get_layer(unnamed[0]).kernel.numpy()
    )


def _get(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return tree


# ---- ImageNet files: URL and hash as keras.applications' own code computes them ----

# registry name -> (keras.src.applications module, the local values its weight-loading block reads)
KERAS_DOWNLOADS = {
    **{n: ("resnet", dict(weights_name=n)) for n in (f"resnet{d}{v}" for d in (50, 101, 152) for v in ("", "v2"))},
    **{
        n: ("densenet", dict(blocks=list(getattr(densenet, n.replace("densenet", "DenseNet")).keywords["blocks"])))
        for n in ("densenet121", "densenet169", "densenet201")
    },
    **{f"efficientnetb{i}": ("efficientnet", dict(name=f"efficientnetb{i}", weights_name=f"b{i}")) for i in range(8)},
    "vgg16": ("vgg16", {}),
    "vgg19": ("vgg19", {}),
    "xception": ("xception", {}),
    "inceptionv3": ("inception_v3", {}),
}
MOBILENET_CASES = [(alpha, rows) for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4) for rows in (96, 128, 160, 192, 224)]


class _Recorder:
    """Stands in for keras' file_utils and the model: records get_file's URL and hash, loads nothing."""

    def __init__(self):
        self.calls = []

    def get_file(self, fname, origin, cache_subdir="datasets", file_hash=None, **_):
        self.calls.append((origin, file_hash))
        return fname

    def load_weights(self, path):
        pass


def keras_download(module_name: str, include_top: bool, **local_values) -> tuple[str, str | None]:
    """(URL, hash) that keras.applications.<module> fetches for ImageNet weights: the module's own
    weight-loading block (the `if weights == "imagenet"` that calls get_file), run with a recorder."""
    module = importlib.import_module(f"keras.src.applications.{module_name}")
    tree = ast.parse(inspect.getsource(module))
    blocks = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and "weights == 'imagenet'" in ast.unparse(node.test)
        and "get_file" in ast.unparse(node)
    ]
    assert len(blocks) == 1, module_name
    recorder = _Recorder()
    namespace = {**vars(module), "file_utils": recorder, "model": recorder, "weights": "imagenet"}
    namespace.update(include_top=include_top, **local_values)
    exec(compile(ast.Module(blocks, type_ignores=[]), module.__file__, "exec"), namespace)
    assert len(recorder.calls) == 1, (module_name, local_values)
    return recorder.calls[0]


def test_imagenet_urls_and_hashes_are_the_ones_keras_uses():
    table = {name: info for name, info in models.MODELS.items() if info.keras_family and info.weights}
    assert set(table) == set(KERAS_DOWNLOADS) | {"mobilenetv2"}
    for name, (module_name, local_values) in KERAS_DOWNLOADS.items():
        for key in ("top", "notop"):
            theirs = keras_download(module_name, key == "top", **local_values)
            assert tuple(table[name].weights[key]) == theirs, (name, key)
    for alpha, rows in MOBILENET_CASES:
        config = model_config("mobilenetv2", "imagenet", alpha=alpha)
        ours = table["mobilenetv2"].weights(config, rows)
        for key in ("top", "notop"):
            url, file_hash = keras_download("mobilenet_v2", key == "top", alpha=alpha, rows=rows)
            assert tuple(ours[key]) == (url, file_hash), (alpha, rows, key)


def test_freeze_fraction_counts_every_keras_layer_of_the_base(saved):
    """fraction:F leaves trainable the last F of Keras' `base_model.layers` (activations and pooling included)."""
    keras_net, _ = saved["mobilenetv2"]
    *base, pooling, dense = keras_net.layers  # the file's model has the top; its base is everything before it
    assert isinstance(pooling, keras.layers.GlobalAveragePooling2D) and dense.name == "predictions"
    config = model_config("mobilenetv2", "none", alpha=0.35, freeze="fraction:0.2")
    _, frozen = models.build(config, 3, (SIZE, SIZE, 3))
    keras_frozen = {layer.name for layer in base[: len(base) - round(0.2 * len(base))] if layer.weights}
    assert {path[-1] for path in frozen} == keras_frozen
    assert all(path[0] == "backbone" for path in frozen)
    # the last 31 of 154 layers hold 22 of the 104 with weights; counting only those would leave 21 trainable
    weighted = [layer for layer in base if layer.weights]
    assert (len(base), len(weighted)) == (154, 104)
    assert len(weighted) - len(keras_frozen) == 22 != round(0.2 * len(weighted))
