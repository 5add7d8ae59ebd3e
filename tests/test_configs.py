"""The study configs: every argument builds, validates and instantiates its model; every smoke variant trains.

The variants come from each config's own ARGS (names) and KEYS (key=value pieces), so a
variant added to a config is tested without touching this file.
"""

import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from labjax import config as config_lib
from labjax import models, train
from labjax.data import augment, pipeline

ROOT = Path(__file__).resolve().parents[1]
CONFIG_NAMES = sorted(path.stem for path in (ROOT / "configs").glob("*.py") if not path.stem.startswith("_"))
# One example value for each key=value argument of each config (a config's new key fails
# test_every_key_argument_has_an_example until it has one here).
KEY_EXAMPLES = {
    ("cls_basicblock", "path"): "path=/data/tiny-imagenet-200",
    ("cls_resnet_small", "path"): "path=/data/tiny-imagenet-200",
    ("transfer_folder", "path"): "path=/data/photos",
    ("cifar100_transfer", "model"): "model=xception",
    ("cifar100_transfer", "size"): "size=128",
    ("cifar100_transfer", "classes"): "classes=40",
    ("cifar100_transfer", "freeze"): "freeze=fraction:0.1",
    ("cifar100_transfer", "path"): "path=/data/cifar-100-python",
    ("sunglasses_cnn", "dropout"): "dropout=0.25",
    ("sunglasses_cnn", "path"): "path=/data/cmu_faces_4",
}
# Input (H, W, C) of the real data sets the configs read at their native size.
NATIVE_SHAPES = {"idx": (28, 28, 1), "cifar": (32, 32, 3), "tfds": (32, 32, 3), "folder": (30, 32, 1)}


def _module(name: str):
    return importlib.import_module(f"configs.{name}")


def _arguments(name: str) -> list[str | None]:
    """None, every variant alone and with smoke, and every key=value example alone."""
    module = _module(name)
    args = [None, *module.ARGS, *(f"{arg},smoke" for arg in module.ARGS if arg != "smoke")]
    args += [KEY_EXAMPLES[(name, key)] for key in getattr(module, "KEYS", ())]
    return args


def _combinable(name: str, arg: str | None) -> bool:
    """seg_mobilenet (one variant at a time) takes no combinations; the others take `X,smoke`."""
    return not (name == "seg_mobilenet" and arg and "," in arg)


CASES = [(name, arg) for name in CONFIG_NAMES for arg in _arguments(name) if _combinable(name, arg)]


def _input_shape(config) -> tuple[int, int, int]:
    """One example's shape after config.data.preprocess (what the model sees)."""
    data = config.data
    if data.image_size:
        shape = (data.image_size, data.image_size, data.channels or 3)
    else:
        shape = NATIVE_SHAPES[data.source]
    features = {"image": tf.zeros(shape, tf.float32), "label": tf.constant(0)}
    pre = augment.build(data.preprocess, "data.preprocess", augment.Context())
    return tuple(pre(features, tf.zeros([2], tf.int64))["image"].shape)


_SHAPES: dict[str, tuple] = {}


def _logits_shape(config, num_classes: int) -> tuple:
    """The model's output shape on one zero input, without compute.

    Cached by what decides the shapes: many variants differ only in settings that do not
    (BatchNorm momentum, freezing, pretrained weights, dropout rates).
    """
    shape = _input_shape(config)
    cfg = config.model
    key = json.dumps([cfg.name, cfg.layers, cfg.small_inputs, cfg.alpha, cfg.head, cfg.pooling, shape, num_classes])
    if key not in _SHAPES:
        model = models.create_model(cfg, num_classes)
        init = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
        _SHAPES[key] = init[0].shape
    return _SHAPES[key]


def test_every_config_declares_its_arguments():
    assert {"cls_basicblock", "cls_resnet_small", "fashion3_cnn", "transfer_folder", "cifar100_transfer"} <= set(
        CONFIG_NAMES
    )
    assert {"sunglasses_cnn", "seg_mobilenet"} <= set(CONFIG_NAMES)
    for name in CONFIG_NAMES:
        module = _module(name)
        assert "smoke" in module.ARGS, name
        assert callable(module.get_config)


def test_every_key_argument_has_an_example():
    declared = {(name, key) for name in CONFIG_NAMES for key in getattr(_module(name), "KEYS", ())}
    assert declared == set(KEY_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", CASES, ids=[f"{n}:{a}" for n, a in CASES])
def test_argument_builds_validates_and_instantiates_its_model(name, arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (finetune's runs/...) resolve in an empty folder
    config = _module(name).get_config(arg)
    if config.model.init_from:  # finetune: the run it continues must exist before it starts
        with pytest.raises(config_lib.ConfigError, match="model.init_from"):
            config_lib.validate(config, 4)
        config.model.init_from = str(tmp_path)
    if config.batch_size == 1:  # S4's batch 1 runs on one device only, and says so on more
        with pytest.raises(config_lib.ConfigError, match="batch_size=1 is invalid"):
            config_lib.validate(config, 4)
        config_lib.validate(config, 1)
    else:
        config_lib.validate(config, 4)
    num_classes = config.data.num_classes or 5
    output = _logits_shape(config, num_classes)
    expected = (1, config.data.image_size, config.data.image_size, num_classes)
    assert output == (expected if config.task == "segmentation" else (1, num_classes))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_unknown_argument_raises_naming_it_and_the_valid_ones(name):
    module = _module(name)
    with pytest.raises(ValueError, match="unknown argument 'bogus'") as error:
        module.get_config("bogus")
    for arg in module.ARGS:
        assert arg in str(error.value)


@pytest.mark.parametrize(
    "name, arg, message",
    [
        ("fashion3_cnn", "arch4,arch10", "more than one"),
        ("transfer_folder", "imagenet,scratch", "more than one"),
        ("sunglasses_cnn", "convnn1,convnn2", "more than one"),
        ("sunglasses_cnn", "dropout=1.5", "dropout='1.5' must be a rate"),
        ("cifar100_transfer", "model=resnet9", "model='resnet9' is unknown; choose from basicblocknet"),
        ("cifar100_transfer", "size=0", "size='0' must be a positive integer"),
        ("cifar100_transfer", "model=xception,size=32", "below xception's smallest input"),
        ("cifar100_transfer", "model=lenet5,freeze=backbone", "needs a Keras family"),
        ("cifar100_transfer", "tfds,path=/x", "two sources"),
        ("cls_basicblock", "randaugment,finetune", "choose one"),
        ("cls_resnet_small", "bogus=1", "unknown argument 'bogus=1'"),
    ],
)
def test_conflicting_or_bad_arguments_raise(name, arg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _module(name).get_config(arg)


def test_conv_impl_is_auto_or_lax():
    config = _module("seg_mobilenet").get_config("smoke")
    assert config.model.conv_impl == "auto"
    config_lib.validate(config, 4)
    config.model.conv_impl = "fast"  # a layer's impl, not a process-wide choice
    with pytest.raises(
        config_lib.ConfigError, match=r"model\.conv_impl='fast' is invalid: expected one of \('auto', 'lax'\)"
    ):
        config_lib.validate(config, 4)


def test_s0_sweep_has_the_21_named_runs():
    seg = _module("seg_mobilenet")
    members = list(seg.get_sweep())
    names = [seg.run_name(member) for member in members]
    assert len(members) == 21 and len(set(names)) == 21
    assert {"sgd_0.01", "adam_0.001_0.8_0.85", "adamax_0.5_0.9_0.999"} <= set(names)
    assert sum(name.startswith("sgd_") for name in names) == 3
    for member in members:  # every override is a key of the config, with a value it accepts
        config = seg.get_config()
        for key, value in member.items():
            section, field = key.split(".")
            config[section][field] = value
        config_lib.validate(config, 4)


def test_s3_every_classifier_of_the_registry_is_a_model_choice():
    cifar = _module("cifar100_transfer")
    assert set(cifar.MODEL_NAMES) == {name for name in models.MODELS if models.task_of(name) == "classification"}
    for name in cifar.MODEL_NAMES:
        config = cifar.get_config(f"model={name},path=/data/cifar-100-python")
        config_lib.validate(config, 4)
        info = models.MODELS[name]
        # ImageNet weights on real data wherever Keras publishes them; never on the offline default
        assert (config.model.pretrained == "imagenet") == (info.keras_family and info.weights is not None)
        assert cifar.get_config(f"model={name}").model.pretrained == "none"


def test_s3_simple_cnn_has_the_tensorflow_tutorials_parameter_count():
    config = _module("cifar100_transfer").get_config("model=spec_cnn")
    model, _ = models.build(config.model, 10, (32, 32, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert sum(x.size for x in jax.tree.leaves(params)) == 122_570  # the tutorial's model.summary()


@pytest.mark.slow
def test_s2_presets_train_with_their_own_dropout():
    """model.dropout 0 must keep a preset's dropout ops (spec_cnn replaces every rate with a rate > 0)."""
    config = _module("fashion3_cnn").get_config("arch5")
    model = models.create_model(config.model, 3)
    x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
    variables = model.init(jax.random.key(0), x, train=False)

    @jax.jit
    def run(seed):
        return model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)})

    assert float(jnp.abs(run(1) - run(2)).max()) > 0  # dropout is active in training


@pytest.mark.slow
def test_s2_kfold_folds_hold_out_disjoint_validation_sets_and_the_same_test_set():
    fashion = _module("fashion3_cnn")
    loaded = []
    for fold in (0, 1):
        config = fashion.get_config("kfold,smoke")
        config.data.fold = fold
        loaded.append(pipeline.load(config, "zero_one"))
    first, second = ({split: {e.tobytes() for e in d.splits[split].images} for split in d.splits} for d in loaded)
    assert first["test"] == second["test"]
    assert not first["validation"] & second["validation"]
    pool = first["train"] | first["validation"]
    assert pool == second["train"] | second["validation"] and not pool & first["test"]
    assert len(loaded[0].splits["validation"]) == pytest.approx(len(pool) / 5, abs=3)  # stratified fifths


def test_s4_flip_adds_a_quarter_of_the_training_images_as_copies():
    sunglasses = _module("sunglasses_cnn")
    plain = pipeline.load(sunglasses.get_config("smoke"), "zero_one")
    flipped = pipeline.load(sunglasses.get_config("flip,smoke"), "zero_one")
    assert len(plain.copies) == 0
    assert len(flipped.copies) == round(0.25 * len(flipped.splits["train"])) > 0
    assert flipped.input_shape == (30, 32, 1)


def _write_pgm(path: Path, value: int, width: int = 32, height: int = 30, maxval: int = 156) -> None:
    path.write_bytes(f"P5\n{width} {height}\n{maxval}\n".encode() + bytes([value]) * (width * height))


def test_s4_reads_eyes_from_cmu_file_names_in_person_folders(tmp_path):
    """Labels come from `..._open_4.pgm` / `..._sunglasses_4.pgm` in nested person folders; open is 0."""
    for user in ("an2i", "at33"):
        (tmp_path / user).mkdir()
        for i, expression in enumerate(("angry", "happy", "neutral", "sad", "surprised")):
            _write_pgm(tmp_path / user / f"{user}_left_{expression}_open_4.pgm", 30 + i)
            _write_pgm(tmp_path / user / f"{user}_left_{expression}_sunglasses_4.pgm", 120 + i)
    config = _module("sunglasses_cnn").get_config(f"path={tmp_path}")
    data = pipeline.load(config, "zero_one")
    assert data.class_names == ["open", "sunglasses"]
    assert data.input_shape == (30, 32, 1)
    assert len(data.splits["validation"]) == 4 and len(data.splits["train"]) == 16  # 80/20, stratified
    for split in data.splits.values():
        dark = split.images.reshape(len(split), -1).mean(1) < 80  # open eyes were written dark
        np.testing.assert_array_equal(split.labels, np.where(dark, 0, 1))
    assert np.bincount(data.splits["validation"].labels).tolist() == [2, 2]


def test_transfer_folder_reads_class_folders_and_keeps_a_fifth_for_validation(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("markers", "pencils", "pens"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), np.uint8)).save(tmp_path / name / f"{i}.jpg")
    config = _module("transfer_folder").get_config(f"imagenet_aug,path={tmp_path}")
    data = pipeline.load(config, models.MODELS[config.model.name].preprocessing)
    assert data.class_names == ["markers", "pencils", "pens"]
    assert data.input_shape == (224, 224, 3)
    assert np.bincount(data.splits["validation"].labels).tolist() == [1, 1, 1]
    assert config.model.pretrained == "imagenet" and config.model.freeze == "backbone"


def _train_smoke(config, workdir: Path) -> dict:
    config.num_train_steps = 2  # compiling dominates; more steps add seconds each (ResNet18 on CPU)
    summary = train.train_and_evaluate(config, workdir)
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "finished"
    assert np.isfinite(summary["loss"]) and 0 <= summary["accuracy"] <= 1
    return summary


# cls_basicblock trains in the finetune test below; seg_mobilenet:smoke in tests/test_train.py
# (trained, interrupted, resumed and evaluated there).
SMOKE_TRAINED = [name for name in CONFIG_NAMES if name not in ("cls_basicblock", "seg_mobilenet")]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKE_TRAINED)
def test_smoke_variant_trains_end_to_end(name, tmp_path):
    _train_smoke(_module(name).get_config("smoke"), tmp_path / name)


@pytest.mark.slow
def test_s1_finetune_continues_the_smoke_run_from_its_default_workdir(tmp_path, monkeypatch, capsys):
    """`:finetune,smoke` starts from runs/cls_basicblock_smoke, where `:smoke` trains by default."""
    s1 = _module("cls_basicblock")
    monkeypatch.chdir(tmp_path)
    _train_smoke(s1.get_config("smoke"), Path("runs/cls_basicblock_smoke"))
    config = s1.get_config("finetune,smoke")
    assert config.optimizer.learning_rate == 0.2 and config.data.augment != s1.get_config("smoke").data.augment
    capsys.readouterr()
    _train_smoke(config, tmp_path / "finetuned")
    assert "Starting from runs/cls_basicblock_smoke" in capsys.readouterr().out


OVERRIDE_CONFIG = """
from labjax.config import base_config


def get_config():
    config = base_config("classification")
    config.model.name = "small_cnn"
    config.data.sizes = (32, 64)  # a tuple-valued key (base_config has none)
    return config
"""
OVERRIDES = [
    "optimizer.learning_rate=1e-3",
    "model.name=resnet50",
    "data.augment=flip_lr|rotate(0.1, fill=0)",
    "model.small_inputs=true",
    "data.skip_bad_files=False",
    "num_epochs=3",
    "data.sizes=(48, 96)",
]


def test_overrides_parse_as_config_flags_parses_launch_flags(tmp_path):
    from absl import flags
    from ml_collections import config_flags

    path = tmp_path / "override_config.py"
    path.write_text(OVERRIDE_CONFIG)
    argv = ["launch.py", f"--config={path}", *(f"--config.{text}" for text in OVERRIDES)]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    spec = importlib.util.spec_from_file_location("override_config", path)
    ours = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ours)
    config = ours.get_config()
    config_lib.apply_overrides(config, OVERRIDES)
    assert config_lib.to_dict(config) == config_lib.to_dict(flag_values.config)
    assert (config.optimizer.learning_rate, config.model.small_inputs, config.data.sizes) == (1e-3, True, (48, 96))


def test_override_errors_name_the_key_the_value_and_the_type_or_the_valid_keys():
    config = config_lib.base_config("classification")
    with pytest.raises(config_lib.ConfigError, match=r"config.num_epochs='many' is invalid: expected int"):
        config_lib.apply_overrides(config, ["--config.num_epochs=many"])
    with pytest.raises(config_lib.ConfigError, match="no key 'optimizer.learnig_rate'. Did you mean"):
        config_lib.apply_overrides(config, {"optimizer.learnig_rate": 0.1})
    with pytest.raises(config_lib.ConfigError, match=r"--config.seed: seed cannot change here \(eval\); only data"):
        config_lib.apply_overrides(config, ["seed=1"], allowed=("data.path",), source="eval")
    with pytest.raises(config_lib.ConfigError, match="write overrides as --config.KEY=VALUE"):
        config_lib.apply_overrides(config, ["--config.seed"])
