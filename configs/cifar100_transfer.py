r"""S3: the model zoo on CIFAR-100: transfer learning from ImageNet, and small CNNs from scratch.

Every classification model of the registry (`model=NAME`): the Keras families (vgg16,
xception, efficientnetb7, resnet50, resnet152v2, densenet121/169/201, mobilenetv2,
inceptionv3, ...) get a new head (global average pooling -> dropout -> dense; Keras' S3 head
dropped before the pooling, labjax drops after it); the small nets (spec_cnn: the TensorFlow
tutorial's simple CNN unless --config.model.layers gives a custom one, lenet5, ...) train from
scratch. Defaults are the study's final values: DenseNet201, images resized 32 -> 96, dropout
0.5, Adam 2.5e-5, batch 128, early stopping on val_loss with patience 7 (best weights kept),
nothing frozen (freeze=backbone or freeze=fraction:0.1 for the study's other settings).

Offline by default: the built-in synthetic set (20 classes at 32 px, the synthetic set's
largest) and no pretrained weights, so nothing is downloaded:

  python launch.py --config=configs/cifar100_transfer.py

On CIFAR-100, with ImageNet weights for the Keras families (downloaded once into
~/.cache/labjax/weights; `--config.model.pretrained=none` trains from scratch), 20% of the
training images (stratified) for validation, the test images held out:

  python launch.py --config=configs/cifar100_transfer.py:path=/data/cifar-100-python
  python launch.py --config=configs/cifar100_transfer.py:tfds --config.data.data_dir=~/tensorflow_datasets

`path=DIR` reads the python pickles (data.source=cifar); `tfds` the prepared TFDS `cifar100`
(train[:80%] / train[80%:] / test). The study's axes, comma-separated with those:
  model=NAME    one of MODEL_NAMES                        (`:model=vgg16,path=DIR`)
  size=N        input side after resizing (default 96; 32 for the small nets: their own size)
  classes=K     the first K classes only (data.keep=first:K; the study: 20, 40, 60, 80)
  freeze=SPEC   none | backbone | fraction:F (the last F of the backbone trainable)
  smoke         tiny synthetic data at 32 px, 2 epochs; LeNet-5 unless model= names another.
Other axes are plain flags: --config.model.dropout, --config.early_stopping.patience,
--config.optimizer.learning_rate, --config.batch_size, --config.optimizer.name,
--config.data.augment='flip_lr|rotate(0.1)|zoom(0.1)|contrast(0.1)'.
"""

import ml_collections

from labjax.config import base_config, parse_arg
from labjax.models import CLASSIFICATION, MODELS, task_of
from labjax.sweep import arg_overrides

ARGS = ("tfds", "smoke")
KEYS = ("model", "size", "classes", "freeze", "path")
MODEL_NAMES = tuple(sorted(name for name in MODELS if task_of(name) == CLASSIFICATION))
DEFAULT_MODEL = "densenet201"
# The TensorFlow CNN tutorial's model for CIFAR: S3's "simple CNN".
SIMPLE_CNN = (
    "conv(32,3,relu)|maxpool(2)|conv(64,3,relu)|maxpool(2)|conv(64,3,relu)|flatten|dense(64,relu)|dense(classes)"
)


def _parse(arg: str | None) -> tuple[list[str], dict[str, str]]:
    names, values = parse_arg(arg, "configs/cifar100_transfer.py", ARGS, KEYS)
    if "path" in values and "tfds" in names:
        raise ValueError(f"configs/cifar100_transfer.py: {arg!r}: path=DIR and tfds are two sources; choose one.")
    if values.get("model", DEFAULT_MODEL) not in MODEL_NAMES:
        raise ValueError(
            f"configs/cifar100_transfer.py: model={values['model']!r} is unknown; choose from {', '.join(MODEL_NAMES)}."
        )
    return names, values


def _positive_int(values: dict[str, str], key: str, default: int) -> int:
    text = values.get(key, str(default))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"configs/cifar100_transfer.py: {key}={text!r} must be a positive integer.")
    return int(text)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S3 config; `arg` is comma-separated names of ARGS and key=value pieces of KEYS."""
    names, values = _parse(arg)
    smoke = "smoke" in names
    name = values.get("model", "lenet5" if smoke else DEFAULT_MODEL)
    info = MODELS[name]
    real = "path" in values or "tfds" in names
    size = _positive_int(values, "size", 96 if info.keras_family and not smoke else 32)
    if size < info.min_size:
        raise ValueError(f"configs/cifar100_transfer.py: size={size} is below {name}'s smallest input {info.min_size}.")

    config = base_config("classification")
    data = config.data
    if "path" in values:
        data.source, data.path, data.num_classes = "cifar", values["path"], 0
        data.val_fraction = 0.2
    elif real:
        data.source, data.name, data.num_classes = "tfds", "cifar100", 0
        data.tfds_splits = "train=train[:80%],validation=train[80%:],test=test"
    else:
        data.source, data.num_classes = "synthetic", 20  # the synthetic set's largest
        data.image_size, data.channels = 32, 3
        data.train_size, data.val_size = (32, 16) if smoke else (5000, 1000)
    # CIFAR's arrays keep their 32x32 (data.image_size resizes files only): resize as an op.
    data.preprocess = f"resize({size})" if size != 32 else ""
    if "classes" in values:
        data.keep = f"first:{_positive_int(values, 'classes', 0)}"
    data.normalize = "model"  # what the model's ImageNet weights expect; zero_one for the small nets

    model = config.model
    model.name = name
    if name == "spec_cnn":
        model.layers = SIMPLE_CNN
    if info.keras_family:
        model.head, model.pooling = "new", "avg"
        model.pretrained = "imagenet" if real and info.weights is not None else "none"
        model.freeze = values.get("freeze", "none")
        model.bn_momentum = 0.99 if model.pretrained != "none" else 0.9  # from scratch: see seg_mobilenet.py
    elif values.get("freeze", "none") != "none":
        raise ValueError(f"configs/cifar100_transfer.py: freeze={values['freeze']!r} needs a Keras family, not {name}.")
    model.dropout = 0.5 if info.keras_family else 0.0  # small nets: 0 keeps their own (spec_cnn replaces every rate)

    config.optimizer.name, config.optimizer.learning_rate = "adam", 2.5e-5
    stopping = config.early_stopping
    stopping.monitor, stopping.mode, stopping.patience, stopping.restore_best = "val_loss", "min", 7, True
    config.batch_size, config.eval_batch_size = 128, 256
    config.num_epochs = 50
    config.log_every_steps = 20

    if smoke:
        config.batch_size, config.eval_batch_size = 8, 8
        config.num_epochs, config.log_every_steps = 2, 2
        config.optimizer.learning_rate = 1e-3  # 2.5e-5 barely moves a from-scratch model in 2 epochs
    return config


# --- S3's studies as named sweeps: `--mode=sweep --config=configs/cifar100_transfer.py[:ARG] --sweep=NAME` ---
# The zoo: the simple CNN (TensorFlow's tutorial), the custom CNN (small_cnn: S2's Keras-style net), LeNet-5, and
# the ImageNet families with a new head; each member the config of `:model=NAME` (its own input size).
ZOO = (
    "spec_cnn",
    "small_cnn",
    "lenet5",
    "vgg16",
    "xception",
    "efficientnetb7",
    "resnet50",
    "resnet152v2",
    "densenet121",
    "densenet169",
    "densenet201",
    "mobilenetv2",
    "inceptionv3",
)
CLASSES = (20, 40, 60, 80)  # the final model on the first K classes
AUGMENT = "flip_lr|rotate(0.1)|zoom(0.1)|contrast(0.1)"  # S3's augmentation: 10% each


def _zoo(arg):
    smoke = "smoke" in (arg or "").split(",")
    for name in ZOO:
        pieces = [f"model={name}"]
        if smoke and MODELS[name].min_size > 32:  # smoke images are 32 px: resize to what the model takes
            pieces.append(f"size={MODELS[name].min_size}")
        yield name, arg_overrides(get_config, arg, pieces)


def _freeze(arg):
    freezes = (("frozen", "backbone"), ("last10", "fraction:0.1"), ("last20", "fraction:0.2"), ("none", "none"))
    for name, spec in freezes:
        yield f"freeze_{name}", arg_overrides(get_config, arg, [f"freeze={spec}"])


SWEEPS = {
    "zoo": _zoo,
    "size": lambda arg: ((f"size_{n}", arg_overrides(get_config, arg, [f"size={n}"])) for n in (32, 78, 96, 128)),
    "augment": lambda arg: [("no_augment", {"data.augment": ""}), ("augment", {"data.augment": AUGMENT})],
    "freeze": _freeze,
    "dropout": lambda arg: ((f"dropout_{d}", {"model.dropout": d}) for d in (0.15, 0.25, 0.3, 0.5, 0.7)),
    "patience": lambda arg: ((f"patience_{p}", {"early_stopping.patience": p}) for p in (3, 7, 10)),
    "lr": lambda arg: ((f"lr_{r}", {"optimizer.learning_rate": r}) for r in (5e-6, 2.5e-5, 5e-5, 5e-4, 5e-3)),
    "batch": lambda arg: ((f"batch_{b}", {"batch_size": b}) for b in (32, 64, 128, 256)),
    "optimizer": lambda arg: ((name, {"optimizer.name": name}) for name in ("adam", "adamax", "sgd")),
    "classes": lambda arg: ((f"classes_{k}", arg_overrides(get_config, arg, [f"classes={k}"])) for k in CLASSES),
}
