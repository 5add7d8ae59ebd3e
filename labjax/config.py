"""Validation of a config: every user mistake becomes one clear message before any work."""

import ast
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import ml_collections
from absl import flags as absl_flags
from ml_collections.config_flags import config_path, tuple_parser

from labjax import optim
from labjax.errors import ConfigError  # noqa: F401 - config_lib.ConfigError is where callers look

TASKS = ("segmentation", "classification")
COMPUTE_DTYPES = ("float32", "bfloat16")

# Keys a resumed run may change without changing what is trained.
RESUMABLE_CHANGES = re.compile(
    r"^(num_epochs|num_train_steps|log_every_steps|steps_per_execution|profile_steps|eval_batch_size|checkpoint\..*"
    r"|model\.conv_impl|data\.(path|test_path|cache))$"
)


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is invalid: expected {expected}.")


def base_config(task: str) -> ml_collections.ConfigDict:
    """Every key a run reads, at its default; study configs start here and change what they need.

    One place for the keys means `--config.data.KEY=...` works for every config, and a
    mistyped key fails in flag parsing (lock_config) whatever the study.
    """
    config = ml_collections.ConfigDict()
    config.task = task
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.source = "synthetic"  # synthetic | masks | folder | idx | cifar | tiny_imagenet | tfds
    data.path = ""  # the source's folder
    data.test_path = ""  # folder source: a second folder of class folders used as the test split
    data.image_size = 0  # decode/generate at this size (0: the source's own size)
    data.channels = 0  # 1 (gray) or 3 (RGB); 0: the source's own
    data.num_classes = 0  # synthetic and masks: the number of classes; others: 0 = from the data
    data.class_names = ""  # comma-separated: fixes class order (folder) or names the classes (idx)
    data.label_pattern = ""  # folder: regex with a group 'label' read from file names
    data.label_mode = "fine"  # cifar-100: fine | coarse
    data.skip_bad_files = False  # skip undecodable files with a warning instead of failing
    data.cache = "auto"  # file sources: auto | memory | stream (decode every epoch)
    # masks source: images and PNG masks paired by file stem
    data.image_dir = "images"
    data.mask_dir = "masks"
    data.match_regex = ""  # regex whose group 1 pairs image and mask stems; "" = whole stem
    data.mask_values = ""  # e.g. "0:0,255:1" maps raw mask values to class ids
    data.ignore_label = -1  # raw mask value excluded from loss and metrics (-1: none)
    # tfds source
    data.name = ""  # "cifar100" or "cifar100:3.0.2"
    data.data_dir = ""
    data.download = False
    data.tfds_splits = ""  # "train=train[:80%],validation=train[80%:],test=test"; "" = the builder's
    data.image_key = "image"
    data.label_key = "label"
    # synthetic source; masks: train_size first pairs train, the rest validation (0: all train)
    data.train_size = 0
    data.val_size = 0
    # label operations, then splits
    data.merge = ""  # "upper=0,2,3,4,6;lower=1;shoes=5,7,9" (ids or names; unlisted classes dropped)
    data.keep = ""  # "first:20" | "0,5,7" | "apple,bee"
    data.split_fractions = ""  # pool all splits and re-split: "train=0.7,validation=0.15,test=0.15"
    data.val_fraction = 0.0  # carve validation out of train (stratified)
    data.folds = 0  # k-fold cross-validation over train+validation (test stays out) ...
    data.fold = 0  # ... with this fold as validation
    data.balance = "none"  # none | oversample (augmented copies) | weights (class weights in the loss)
    data.copy_fraction = 0.0  # add this fraction of train images again as copies (S4: 0.25)
    data.copy_augment = "flip_lr(p=1.0)"  # ops applied to copies (on top of augment)
    # per-example ops, written "op|op(arg, key=value)"; see labjax/data/augment.py
    data.preprocess = ""  # every split: resize, crops, channels
    data.augment = ""  # train only: flips, rotations, colour, erasing, randaugment ...
    # model (what the model's pretrained weights expect) | none | zero_one | minus_one_one | imagenet | mean_std |
    # caffe | torch | tf
    data.normalize = "model"
    data.mixup = 0.0  # Beta(alpha) of mixup (classification; 0: off)
    data.cutmix = 0.0  # Beta(alpha) of cutmix

    config.model = model = ml_collections.ConfigDict()
    model.name = ""
    model.dropout = 0.0  # the head's dropout (or the model's own, for small nets)
    model.head = "new"  # new: global pooling -> dropout -> dense; original: the Keras model's own top
    model.pooling = "avg"  # avg | max (new head)
    model.pretrained = "none"  # none | imagenet (Keras' file, downloaded once) | PATH: Keras .h5, .weights.h5 or .keras
    model.freeze = "none"  # none | backbone | fraction:F (all but the last F of the backbone) | regex:A,B
    model.init_from = ""  # another run's workdir (or WORKDIR/checkpoints/STEP) to start from
    model.init_head = True  # take the head from init_from too (false: a new head, e.g. other classes)
    model.alpha = 1.0  # width multiplier: MobileNetV2, U-Net (unet: 64 * alpha first-level channels)
    model.small_inputs = False  # ResNets: 3x3 stride-1 stem and no max-pool, for 32-64 px images
    model.bn_momentum = 0.99  # BatchNorm running-average momentum (Keras' default)
    model.layers = ""  # spec_cnn: "conv(32,3,relu)|maxpool(2)|...|dense(classes)"
    model.conv_impl = "auto"  # auto: the CPU rewrites on the CPU backend (labjax.models.layers); lax: lax everywhere

    config.optimizer = opt = ml_collections.ConfigDict()
    opt.name = "adam"  # sgd | adam | adamax | adamw | rmsprop | nadam
    opt.learning_rate = 1e-3  # the peak (after warmup) and starting value of the schedule
    opt.b1 = 0.9  # adam, adamax, adamw, nadam
    opt.b2 = 0.999
    opt.eps = 1e-7  # Keras' default (PyTorch's is 1e-8)
    opt.momentum = 0.0  # sgd (PyTorch's: no dampening), rmsprop
    opt.nesterov = False  # sgd
    opt.rho = 0.9  # rmsprop's squared-gradient average (Keras 0.9; PyTorch's alpha 0.99)
    opt.centered = False  # rmsprop
    # Weight decay, in one of three meanings:
    #   l2:        weight_decay * sum(w^2) added to the loss (Keras' regularizers.l2)
    #   coupled:   weight_decay * w added to the gradient (PyTorch's SGD/Adam weight_decay)
    #   decoupled: w -= learning_rate * weight_decay * w beside the update (AdamW)
    #   auto:      decoupled for adamw, coupled otherwise
    opt.weight_decay = 0.0
    opt.weight_decay_type = "auto"  # auto | l2 | coupled | decoupled
    opt.decay_params = "kernels"  # kernels (conv and dense weights) | all | regex:PATTERN (param paths a/b/c)
    opt.clip_norm = 0.0  # clip gradients to this global norm (0: off)
    # Learning-rate schedule, per epoch; warmup (linear from 0) runs before any of them.
    opt.schedule = "constant"  # constant | step | multistep | exponential | cosine | plateau
    opt.warmup_epochs = 0.0
    opt.step_epochs = 0  # step: multiply by gamma every N epochs (PyTorch StepLR)
    opt.milestones = ""  # multistep: "30,60,80" epochs at which to multiply by gamma
    opt.gamma = 0.1  # step, multistep; exponential: the per-epoch factor
    opt.min_lr = 0.0  # cosine: the final learning rate
    # plateau: ReduceLROnPlateau (PyTorch semantics) on a validation metric, once per epoch
    opt.plateau = ml_collections.ConfigDict()
    opt.plateau.monitor = "val_loss"
    opt.plateau.mode = "min"  # min | max
    opt.plateau.factor = 0.1
    opt.plateau.patience = 10  # epochs without improvement before reducing
    opt.plateau.cooldown = 0  # epochs to wait after a reduction
    opt.plateau.min_lr = 0.0
    opt.plateau.threshold = 1e-4  # improvement needed, relative (rel) or absolute (abs)
    opt.plateau.threshold_mode = "rel"

    config.label_smoothing = 0.0  # classification targets (1 - s) one-hot + s / classes
    config.compute_dtype = "float32"  # float32 | bfloat16 (mixed precision: float32 params, bfloat16 compute)
    # Early stopping on a validation metric, checked every epoch (patience 0: off). With
    # restore_best the run ends with the best epoch's weights: its final checkpoint and
    # evaluation use them.
    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.patience = 0
    config.early_stopping.monitor = "val_loss"
    config.early_stopping.mode = "min"  # min | max
    config.early_stopping.min_delta = 0.0
    config.early_stopping.restore_best = True

    config.batch_size = 32  # global batch, split over all devices
    config.eval_batch_size = 32
    config.eval_positive_class = ""  # two classes: the positive one for TPR/FPR/F1/ROC AUC (name or index; "": second)
    config.num_epochs = 10
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.log_every_steps = 10
    # Train steps per dispatch (Keras' steps_per_execution): a lax.scan over k batches, same results as 1.
    # For small, fast steps (batch 1) where per-step Python and dispatch dominate; logging, the NaN check and
    # SIGINT/SIGTERM then happen every k steps. One compiled program: a short last chunk skips its padding.
    config.steps_per_execution = 1
    # Trace this many train steps after the first (compiling) dispatch into WORKDIR/profile, with a table and a
    # plot of where their time went by layer (labjax/profiling.py); 0: no trace.
    config.profile_steps = 0

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_epochs = 1
    # A periodic checkpoint (every_epochs) waits until this many seconds have passed since the last
    # save: a small model's save costs more than its epoch. The last epoch, a new best, a stop
    # (SIGTERM, early stopping) always save; a kill loses at most this much training. 0: every epoch.
    config.checkpoint.min_interval_s = 30.0
    config.checkpoint.keep = 2  # latest K kept, plus the best below
    config.checkpoint.best_metric = "val_accuracy"
    config.checkpoint.best_mode = "max"
    return config


def parse_arg(
    arg: str | None, where: str, args: tuple[str, ...], keys: tuple[str, ...] = (), one_of: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    """A config's ARG: 'multistep,path=DIR' -> (['multistep'], {'path': 'DIR'}).

    Unknown pieces raise ValueError naming them and listing the valid ones; at most one name of
    `one_of` (e.g. the models of a study) may be given.
    """
    names, values = [], {}
    for token in filter(None, (piece.strip() for piece in (arg or "").split(","))):
        key, sep, value = token.partition("=")
        if (sep and key not in keys) or (not sep and token not in args):
            valid = ", ".join([*args, *(f"{k}=VALUE" for k in keys)])
            raise ConfigError(f"{where}: unknown argument {token!r} in {arg!r}; choose from {valid} (comma-separated).")
        if sep:
            values[key] = value.strip()
        else:
            names.append(token)
    if len(set(names) & set(one_of)) > 1:
        raise ConfigError(f"{where}: {arg!r} names more than one of {', '.join(one_of)}; choose one.")
    return names, values


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ConfigError naming the key, its value and the valid choices."""
    from labjax.models import MODELS, input_rule  # models and data do not import config

    num_devices = num_devices or jax.device_count()
    _check(config.task in TASKS, "task", config.task, f"one of {TASKS}")
    data, opt, model = config.data, config.optimizer, config.model
    _validate_data(data, config.task)
    _check(model.name in MODELS, "model.name", model.name, f"one of {sorted(MODELS)}")
    info = MODELS[model.name]
    _check(
        info.task == config.task, "model.name", model.name, f"a {config.task} model ({model.name} is a {info.task} one)"
    )
    _validate_model(model, info)
    if data.image_size and not data.preprocess:
        smallest, divisor = input_rule(model)
        _check(
            data.image_size >= smallest and data.image_size % divisor == 0,
            "data.image_size",
            data.image_size,
            f"at least {smallest} and a multiple of {divisor} for model {model.name!r}",
        )
    optim.validate(opt, config.num_epochs)
    _check(0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing, "a number in [0, 1)")
    _check(config.compute_dtype in COMPUTE_DTYPES, "compute_dtype", config.compute_dtype, f"one of {COMPUTE_DTYPES}")
    stopping = config.early_stopping
    _check(stopping.patience >= 0, "early_stopping.patience", stopping.patience, "an integer >= 0 (0: off)")
    _check(stopping.mode in ("min", "max"), "early_stopping.mode", stopping.mode, "'min' or 'max'")
    _check(
        stopping.monitor.startswith(("train_", "val_")),
        "early_stopping.monitor",
        stopping.monitor,
        "a logged metric such as val_loss, val_accuracy, val_miou or train_loss",
    )
    _check(0 <= model.dropout < 1, "model.dropout", model.dropout, "a number in [0, 1)")
    if "bn_momentum" in model:
        _check(0 <= model.bn_momentum < 1, "model.bn_momentum", model.bn_momentum, "a number in [0, 1)")
    for key in ("batch_size", "eval_batch_size"):
        _check(
            config[key] > 0 and config[key] % num_devices == 0,
            key,
            config[key],
            f"a positive multiple of the device count ({num_devices})",
        )
    _check(config.num_epochs > 0, "num_epochs", config.num_epochs, "an integer > 0")
    _check(config.log_every_steps > 0, "log_every_steps", config.log_every_steps, "an integer > 0")
    _check(
        isinstance(config.steps_per_execution, int) and config.steps_per_execution >= 1,
        "steps_per_execution",
        config.steps_per_execution,
        "an integer >= 1 (train steps per dispatch; 1: one at a time)",
    )
    _check(
        isinstance(config.profile_steps, int) and config.profile_steps >= 0,
        "profile_steps",
        config.profile_steps,
        "an integer >= 0 (train steps to trace into WORKDIR/profile; 0: none)",
    )
    _check(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "an integer >= 1")
    _validate_monitors(config)
    _check(
        config.checkpoint.best_mode in ("min", "max"),
        "checkpoint.best_mode",
        config.checkpoint.best_mode,
        "'min' or 'max'",
    )


def _validate_monitors(config: ml_collections.ConfigDict) -> None:
    """The metrics that early stopping, the best checkpoint and the plateau schedule watch, and how
    often checkpoints are saved: checked before training, not after the first epoch."""
    from labjax import tasks

    names = tasks.logged_metrics(config.task)
    every = config.checkpoint.every_epochs
    _check(isinstance(every, int) and every >= 1, "checkpoint.every_epochs", every, "an integer >= 1")
    interval = config.checkpoint.get("min_interval_s", 0.0)
    _check(isinstance(interval, int | float) and interval >= 0, "checkpoint.min_interval_s", interval, "seconds >= 0")
    watched = [("checkpoint.best_metric", config.checkpoint.best_metric, True)]
    watched.append(("early_stopping.monitor", config.early_stopping.monitor, config.early_stopping.patience > 0))
    watched.append(
        ("optimizer.plateau.monitor", config.optimizer.plateau.monitor, config.optimizer.schedule == "plateau")
    )
    for key, value, used in watched:
        if used and value:
            _check(value in names, key, value, f"a metric this {config.task} run logs: one of {names}")


def _validate_model(model: ml_collections.ConfigDict, info) -> None:
    """Head, pooling, pretrained weights, freezing and init_from; files are checked to exist."""
    from pathlib import Path

    from labjax.models import HEADS, POOLINGS
    from labjax.models.layers import CONV_IMPLS

    _check(model.head in HEADS, "model.head", model.head, f"one of {HEADS}")
    _check(model.alpha > 0, "model.alpha", model.alpha, "a width multiplier > 0")
    _check(model.pooling in POOLINGS, "model.pooling", model.pooling, f"one of {POOLINGS}")
    conv_impl = model.get("conv_impl", "auto")
    _check(conv_impl in CONV_IMPLS, "model.conv_impl", conv_impl, f"one of {CONV_IMPLS}")
    if model.head == "original" or model.pretrained != "none" or model.freeze != "none":
        _check(
            info.keras_family,
            "model.name",
            model.name,
            "a Keras family (vgg16, resnet50, ...) for head/pretrained/freeze",
        )
    if model.pretrained not in ("none", "imagenet"):
        _check(
            Path(model.pretrained).expanduser().is_file(),
            "model.pretrained",
            model.pretrained,
            "none, imagenet, or the path of an existing Keras .h5 weights file",
        )
    kind, _, value = model.freeze.partition(":")
    if kind == "fraction":
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        _check(0 <= fraction <= 1, "model.freeze", model.freeze, "fraction:F with F in [0, 1] (the trainable share)")
    else:
        _check(
            model.freeze in ("none", "backbone") or kind == "regex",
            "model.freeze",
            model.freeze,
            "none, backbone, fraction:F or regex:PATTERN,PATTERN",
        )
    if model.init_from:
        _check(
            Path(model.init_from).expanduser().exists(),
            "model.init_from",
            model.init_from,
            "the workdir of an earlier run (or WORKDIR/checkpoints/STEP)",
        )
        _check(model.pretrained == "none", "model.pretrained", model.pretrained, "none when init_from is set")


def _validate_data(data: ml_collections.ConfigDict, task: str) -> None:
    """Checks of config.data that need no files; the sources check what they read."""
    from labjax.data import augment, pipeline

    _check(data.source in pipeline.SOURCES, "data.source", data.source, f"one of {tuple(pipeline.SOURCES)}")
    if data.source == "synthetic":
        _check(data.image_size > 0, "data.image_size", data.image_size, "an image size > 0 for synthetic data")
        _check(data.train_size > 0, "data.train_size", data.train_size, "a number of examples > 0")
        _check(data.val_size > 0, "data.val_size", data.val_size, "a number of examples > 0")
    elif data.source == "tfds":
        _check(bool(data.name), "data.name", data.name, "a TFDS data set name such as 'cifar100'")
    else:
        _check(bool(data.path), "data.path", data.path, f"the folder of the {data.source} data")
    if data.source in ("synthetic", "masks"):
        _check(data.num_classes >= 2, "data.num_classes", data.num_classes, "an integer >= 2")
    _check(data.num_classes >= 0, "data.num_classes", data.num_classes, "0 (from the data) or the class count")
    _check(data.image_size >= 0, "data.image_size", data.image_size, "0 (native) or a size in pixels")
    _check(data.channels in (0, 1, 3), "data.channels", data.channels, "0 (native), 1 or 3")
    _check(data.cache in pipeline.CACHE, "data.cache", data.cache, f"one of {pipeline.CACHE}")
    _check(data.balance in pipeline.BALANCE, "data.balance", data.balance, f"one of {pipeline.BALANCE}")
    _check(0 <= data.val_fraction < 1, "data.val_fraction", data.val_fraction, "a fraction in [0, 1)")
    _check(0 <= data.copy_fraction <= 1, "data.copy_fraction", data.copy_fraction, "a fraction in [0, 1]")
    _check(data.folds == 0 or data.folds >= 2, "data.folds", data.folds, "0 (no folds) or k >= 2")
    if data.folds:
        _check(0 <= data.fold < data.folds, "data.fold", data.fold, f"a fold index in [0, {data.folds})")
    modes = ("model", *augment.NORMALIZE_MODES)
    _check(data.normalize in modes, "data.normalize", data.normalize, f"one of {modes}")
    for key in ("preprocess", "augment", "copy_augment"):
        augment.parse(data[key], f"data.{key}")
    for key in ("mixup", "cutmix"):
        _check(data[key] >= 0, f"data.{key}", data[key], "an alpha >= 0 (0: off)")
        if data[key]:
            _check(task == "classification", f"data.{key}", data[key], "0 for segmentation (mixing is per image)")


# How a command-line string becomes a value of the field's type, as ml_collections' config_flags
# parses `--config.KEY=VALUE` (launch.py's train path); other types: a Python literal, else the string.
VALUE_PARSERS = {
    float: absl_flags.FloatParser(),
    int: absl_flags.IntegerParser(),
    bool: absl_flags.BooleanParser(),
    tuple: tuple_parser.TupleParser(),
}


def parse_override(text: str) -> tuple[str, str]:
    """'--config.KEY=VALUE', 'config.KEY=VALUE' or 'KEY=VALUE' -> (KEY, VALUE), the value still a string."""
    flag, equals, value = text.partition("=")
    key = flag.strip().removeprefix("--").removeprefix("config.")
    if not equals or not key:
        raise ConfigError(f"{flag}: write overrides as --config.KEY=VALUE.")
    return key, value


def parse_value(text: str, field_type: type) -> Any:
    """A command-line string as a value of `field_type`, by config_flags' rules; ValueError if it is not one."""
    if field_type is str:
        return text
    if field_type in VALUE_PARSERS:
        return VALUE_PARSERS[field_type].parse(text)
    try:
        return ast.literal_eval(text.capitalize() if text in ("true", "false") else text)
    except (SyntaxError, ValueError):
        return text


def apply_overrides(
    config: ml_collections.ConfigDict,
    overrides: Mapping[str, Any] | Iterable[str],
    *,
    allowed: Iterable[str] | None = None,
    source: str = "--config",
) -> None:
    """Sets dotted keys on `config`: a {KEY: value} mapping or 'KEY=VALUE' strings (strings parsed by parse_value).

    The one override path of sweeps and evaluation. `allowed`: the only keys that may change
    (a key allowed but absent from an older saved config is added as a string). Raises
    ConfigError naming the key, the value and the expected type, or the valid or closest keys.
    """
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    allowed = None if allowed is None else tuple(allowed)
    known = flatten(to_dict(config))
    for key, value in pairs:
        if allowed is not None and key not in allowed:
            raise ConfigError(f"--config.{key}: {key} cannot change here ({source}); only {', '.join(allowed)} can.")
        if key not in known:
            if allowed is None:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{source}: the config has no key {key!r}.{hint}")
            parent, _, leaf = key.rpartition(".")
            (config[parent] if parent else config)[leaf] = value
            continue
        field_type = config_path.get_type(key, config)
        try:
            if isinstance(value, str):
                value = parse_value(value, field_type)
            if isinstance(value, bool) and field_type is not bool:
                raise TypeError(f"{value!r} is a bool")
            config_path.set_value(key, config, value)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"{source}: config.{key}={value!r} is invalid: expected {field_type.__name__} ({error})."
            ) from None


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (what config.json holds)."""
    return json.loads(config.to_json_best_effort())


def from_dict(values: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(values)


def flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ in a way that forbids resuming the saved run."""
    old, new = flatten(saved), flatten(current)
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k) != new.get(k) and not RESUMABLE_CHANGES.match(k)
    ]
