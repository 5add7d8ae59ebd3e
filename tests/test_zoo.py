"""The registry, the new head, freezing, Keras weight files, init_from and --mode=summary."""

import hashlib
import http.server
import os
import threading

import jax
import numpy as np
import pytest

from configs import fashion3_cnn
from labjax import checkpoints, models, optim, parallel, summary, train
from labjax import config as config_lib
from labjax.weights import keras as keras_weights
from labjax.weights import pretrained

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")


def _model_config(name: str, **overrides):
    config = config_lib.base_config("classification")
    config.data.update(dict(num_classes=4, image_size=32, train_size=8, val_size=4))
    config.model.name = name
    config.model.update(overrides)
    return config


def test_every_registered_model_builds_and_unknown_names_list_the_valid_ones():
    from labjax.data import augment

    for name, info in models.MODELS.items():
        assert info.preprocessing in augment.NORMALIZE_MODES and info.min_size >= 1, name
        model = models.create_model(_model_config(name).model, 3)
        if info.keras_family:  # a new head on the family without its top, or the family's own top
            assert isinstance(model, models.Classifier) and model.num_classes == 3, name
            assert model.backbone.include_top is False, name
            original = models.create_model(_model_config(name, head="original").model, 3)
            assert original.include_top is True and original.num_classes == 3, name
        else:
            assert getattr(model, "num_classes", 3) == 3, name
    with pytest.raises(ValueError, match=r"model.name='resnet9' is unknown; valid: \[.*'resnet50'"):
        models.create_model(_model_config("resnet9").model, 3)


def _one_step(config, input_shape, num_classes=3):
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, frozen = models.build(config.model, num_classes, input_shape)
    state = train.create_train_state(config, model, mesh, input_shape, frozen)
    before = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(4, *input_shape)).astype(np.float32),
        "label": rng.integers(0, num_classes, 4).astype(np.int32),
    }
    state, _ = train.make_train_step(mesh, num_classes)(state, parallel.to_global(batch, mesh))
    after = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    return model, frozen, state, before, after


def _changed(before, after) -> dict[tuple, bool]:
    flat_b = jax.tree_util.tree_flatten_with_path(before)[0]
    flat_a = jax.tree_util.tree_leaves(after)
    return {tuple(p.key for p in path): not np.array_equal(b, a) for (path, b), a in zip(flat_b, flat_a)}


@pytest.mark.slow
def test_freezing_the_backbone_trains_only_the_head_and_keeps_batchnorm_statistics():
    config = _model_config("resnet18", freeze="backbone", small_inputs=True, dropout=0.2)
    _, frozen, state, before, after = _one_step(config, (32, 32, 3))
    changed = _changed(before, after)
    head = {path: c for path, c in changed.items() if "head_dense" in path}
    rest = {path: c for path, c in changed.items() if "head_dense" not in path}
    assert head and all(head.values())
    assert rest and not any(rest.values())  # backbone weights and BN statistics untouched
    # frozen parameters have no optimizer state: Adam's moments cover the head only
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) > 0)
    head_size = sum(x.size for x in jax.tree.leaves(state.params["head_dense"]))
    assert moments == 2 * head_size
    assert optim.current_learning_rate(state.opt_state) == pytest.approx(1e-3)


@pytest.mark.slow
def test_freezing_a_fraction_keeps_the_last_layers_trainable():
    config = _model_config("resnet18", freeze="fraction:0.25", small_inputs=True)
    model, frozen, _, before, after = _one_step(config, (32, 32, 3))
    order = models.module_order(model, (32, 32, 3))
    backbone = [p for p in order if p[-1] not in models.HEAD_MODULES]
    assert frozen == set(backbone[: len(backbone) - round(0.25 * len(backbone))])
    for path, changed in _changed(before, after).items():
        module = path[1:-1]
        if module in frozen:
            assert not changed, path  # weights and running statistics of frozen layers stay
        elif path[0] == "params":
            assert changed, path
    with pytest.raises(config_lib.ConfigError, match="model.freeze='fraction:2'"):
        config_lib.validate(_model_config("resnet18", freeze="fraction:2"), num_devices=1)


@pytest.mark.slow
def test_frozen_layers_are_constants_of_the_gradient_and_run_their_inference_forward(monkeypatch):
    """The trainable layers' update equals that of differentiating every parameter, while the frozen
    convolutions run their inference forward (on the CPU lax's convolution, not the im2col patches
    that only a backward pass needs)."""
    config = _model_config("resnet18", freeze="fraction:0.5", small_inputs=True)
    config.optimizer.update(name="sgd", learning_rate=0.1)

    def step_and_program():
        _, frozen, state, before, after = _one_step(config, (32, 32, 3))
        mesh = parallel.make_mesh(jax.devices()[:1])
        batch = {"image": np.zeros((4, 32, 32, 3), np.float32), "label": np.zeros(4, np.int32)}
        program = train.make_train_step(mesh, 3).lower(state, parallel.to_global(batch, mesh)).as_text()
        return frozen, before, after, program.count("convolution(")

    frozen, before, after, convolutions = step_and_program()
    monkeypatch.setattr(train, "_without_frozen_gradients", lambda params, frozen: params)
    _, _, reference, reference_convolutions = step_and_program()
    assert frozen and reference_convolutions == 0 and convolutions > 0
    for (path, new), old, start in zip(
        jax.tree_util.tree_flatten_with_path(after)[0], jax.tree.leaves(reference), jax.tree.leaves(before)
    ):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6, err_msg=str(path))
        if path[0].key == "params" and tuple(p.key for p in path[1:-1]) not in frozen:
            assert not np.array_equal(new, start), path


@pytest.fixture(scope="module")
def keras_mobilenet(tmp_path_factory):
    """A Keras MobileNetV2 with random weights and BatchNorm statistics, saved as HDF5 with and without its top."""
    root = tmp_path_factory.mktemp("keras")
    files = {}
    for top in (True, False):
        keras.utils.set_random_seed(1)
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=top, classes=5, classifier_activation=None
        )
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.moving_mean.shape[0]
                layer.moving_mean.assign(np.random.default_rng(0).normal(size=n).astype("float32") * 0.1)
                layer.moving_variance.assign(np.random.default_rng(1).uniform(0.5, 1.5, n).astype("float32"))
        files[top] = root / f"mobilenet_{'top' if top else 'notop'}.h5"
        model.save(files[top])
        files[(top, "model")] = model
    model.save_weights(root / "keras3.weights.h5")
    files["keras3"] = root / "keras3.weights.h5"
    return files


def _fresh_variables(model, size=32):
    """Random values in the model's variable shapes (no compilation: these tests need shapes and values only)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False)
    )
    rng = np.random.default_rng(5)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def _inference(model, variables, x):
    """The model's inference output, compiled quickly (XLA's backend optimisation off: a test, not a benchmark)."""
    forward = jax.jit(lambda v, images: model.apply(v, images, train=False)).lower(variables, x)
    return np.asarray(forward.compile({"xla_backend_optimization_level": 0})(variables, x))


@pytest.mark.slow
def test_keras_file_with_its_top_reproduces_the_keras_model(keras_mobilenet):
    config = _model_config("mobilenetv2", alpha=0.35, head="original", pretrained=str(keras_mobilenet[True]))
    model = models.create_model(config.model, 5)
    variables = pretrained.from_keras(config.model, models.model_info("mobilenetv2"), _fresh_variables(model), 32)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    expected = keras_mobilenet[(True, "model")](x, training=False).numpy()
    np.testing.assert_allclose(_inference(model, variables, x), expected, atol=1e-4 * max(1, np.abs(expected).max()))


def test_no_top_file_loads_the_backbone_and_keeps_the_new_head(keras_mobilenet):
    config = _model_config("mobilenetv2", alpha=0.35, pretrained=str(keras_mobilenet[False]))
    model = models.create_model(config.model, 3)
    fresh = _fresh_variables(model)
    variables = pretrained.from_keras(config.model, models.model_info("mobilenetv2"), fresh, 32)
    keras_model = keras_mobilenet[(False, "model")]
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["Conv1"]["kernel"], keras_model.get_layer("Conv1").kernel.numpy()
    )
    np.testing.assert_array_equal(variables["params"]["head_dense"]["kernel"], fresh["params"]["head_dense"]["kernel"])
    # a file with a top also serves a model with a new head: the top is left out
    with_top = pretrained.from_keras(
        _model_config("mobilenetv2", alpha=0.35, pretrained=str(keras_mobilenet[True])).model,
        models.model_info("mobilenetv2"),
        fresh,
        32,
    )
    np.testing.assert_array_equal(
        with_top["params"]["backbone"]["Conv1"]["kernel"], variables["params"]["backbone"]["Conv1"]["kernel"]
    )


def test_wrong_weight_files_get_errors_that_name_the_problem(keras_mobilenet, tmp_path):
    fresh_resnet = _fresh_variables(models.create_model(_model_config("resnet18").model, 3))
    with pytest.raises(ValueError, match="no counterpart in the model"):
        keras_weights.assign(fresh_resnet, keras_weights.read_h5(keras_mobilenet[False]))
    with pytest.raises(ValueError, match="Keras 3 '.weights.h5' file"):
        keras_weights.read_h5(keras_mobilenet["keras3"])
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        keras_weights.read_h5(tmp_path / "broken.h5")
    wide = models.create_model(_model_config("mobilenetv2", alpha=1.0).model, 3)
    with pytest.raises(ValueError, match=r"layer 'Conv1' tensor 'kernel': Keras shape \(3, 3, 3, 16\)"):
        keras_weights.assign(_fresh_variables(wide), keras_weights.read_h5(keras_mobilenet[False]))
    with pytest.raises(config_lib.ConfigError, match="model.pretrained='/nowhere.h5'"):
        config_lib.validate(_model_config("mobilenetv2", pretrained="/nowhere.h5"), num_devices=1)


def test_imagenet_download_is_hash_checked_and_cached(tmp_path, monkeypatch):
    source = tmp_path / "weights.h5"
    source.write_bytes(b"weights")
    monkeypatch.setenv("LABJAX_WEIGHTS_DIR", str(tmp_path / "cache"))
    md5 = "3b3d0f3a3b1b0d1c2ed2c3f0bf4b0b8a"  # not the file's hash
    with pytest.raises(ValueError, match="hash"):
        pretrained.download(source.as_uri(), md5)
    good = hashlib.sha256(b"weights").hexdigest()
    path = pretrained.download(source.as_uri(), good)
    assert path.read_bytes() == b"weights" and path.parent == tmp_path / "cache"
    source.unlink()  # cached: no second download
    assert pretrained.download(source.as_uri(), good) == path
    with pytest.raises(FileNotFoundError, match="config.model.pretrained=/path/to/gone.h5"):
        pretrained.download((tmp_path / "gone.h5").as_uri(), None)


def test_a_download_without_a_published_hash_is_checked_against_its_first_use(tmp_path, monkeypatch):
    source = tmp_path / "mobilenet_v2_no_top.h5"
    source.write_bytes(b"weights")
    monkeypatch.setenv("LABJAX_WEIGHTS_DIR", str(tmp_path / "cache"))
    path = pretrained.download(source.as_uri(), None)
    recorded = path.with_name(path.name + ".sha256")
    assert recorded.read_text().strip() == hashlib.sha256(b"weights").hexdigest()
    assert pretrained.download(source.as_uri(), None) == path  # unchanged: used as it is
    path.write_bytes(b"weightz")  # damaged (or replaced) after its first use
    with pytest.raises(checkpoints.CheckpointError, match="mobilenet_v2_no_top.h5: its hash is not .*delete it"):
        pretrained.download(source.as_uri(), None)


class _CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Promises 1,000 bytes and sends 10: the client's read ends in http.client.IncompleteRead."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_download_cut_short_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LABJAX_WEIGHTS_DIR", str(tmp_path / "cache"))
    server = http.server.HTTPServer(("127.0.0.1", 0), _CutShortHandler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/weights.h5"
    try:
        with pytest.raises(FileNotFoundError, match=r"cannot download .*IncompleteRead"):
            pretrained.download(url, None)
    finally:
        thread.join(timeout=10)
        server.server_close()
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow
def test_init_from_starts_from_another_run_with_or_without_its_head(tmp_path):
    first = fashion3_cnn.get_config("smoke")
    first.num_epochs = 1
    train.train_and_evaluate(first, tmp_path / "first")
    checkpoints, step = train.ckpt.resolve_init_from(str(tmp_path / "first"))
    trained = checkpoints.restore_arrays(step)
    checkpoints.close()

    second = fashion3_cnn.get_config("smoke")
    second.model.init_from = str(tmp_path / "first")
    second.optimizer.learning_rate = 1e-12  # so the final weights are the starting ones
    train.train_and_evaluate(second, tmp_path / "second")
    checkpoints, step = train.ckpt.resolve_init_from(str(tmp_path / "second"))
    started = checkpoints.restore_arrays(step)
    checkpoints.close()
    for a, b in zip(jax.tree.leaves(trained["params"]), jax.tree.leaves(started["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6)

    fewer = fashion3_cnn.get_config("smoke")
    fewer.data.keep = "upper,shoes"  # two classes: the head cannot come along
    fewer.model.init_from = str(tmp_path / "first")
    with pytest.raises(ValueError, match="init_head=false"):
        train.train_and_evaluate(fewer, tmp_path / "fewer")
    fewer.model.init_head = False
    assert set(train.train_and_evaluate(fewer, tmp_path / "fewer")) == {"loss", "accuracy"}


@pytest.mark.slow
def test_summary_counts_parameters_flops_and_memory(tmp_path):
    config = _model_config("resnet18", small_inputs=True, freeze="backbone")
    config.batch_size = 4
    result = summary.summarize(config, tmp_path)
    assert result["input_shape"] == [32, 32, 3] and result["num_classes"] == 4
    head = 512 * 4 + 4
    assert result["trainable_params"] == head
    assert result["total_params"] == result["trainable_params"] + result["non_trainable_params"]
    assert result["total_params"] > 11_000_000
    # ResNet18's 1.8 GMAC at 224 px run on 56x56 after the stem; here the stride-1 stem keeps 32x32: ~(32/56)^2 of it
    assert 0.8e9 < result["flops_per_image"] < 1.3e9
    assert result["train_step_peak_memory_mb"] > result["params_mb"]
    assert (tmp_path / "summary.json").exists()
