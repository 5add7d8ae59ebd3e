"""Validation of a config: every user mistake becomes one clear message before any work."""

import json
import re

import jax
import ml_collections

TASKS = ("segmentation", "classification")
OPTIMIZERS = ("sgd", "adam", "adamax")
DATA_SOURCES = ("synthetic", "folder")

# Keys a resumed run may change without changing what is trained.
RESUMABLE_CHANGES = re.compile(
    r"^(num_epochs|num_train_steps|log_every_steps|eval_batch_size|checkpoint\..*|data\.path)$"
)


class ConfigError(ValueError):
    """A user's config mistake; launch.py prints it without a traceback."""


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}={value!r} is invalid: expected {expected}.")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ConfigError naming the key, its value and the valid choices."""
    from labjax.models import IMAGE_SIZE_RULES, MODELS  # models do not import config

    num_devices = num_devices or jax.device_count()
    _check(config.task in TASKS, "task", config.task, f"one of {TASKS}")
    data, opt, model = config.data, config.optimizer, config.model
    _check(data.source in DATA_SOURCES, "data.source", data.source, f"one of {DATA_SOURCES}")
    if data.source == "folder":
        _check(bool(data.path), "data.path", data.path, "the folder holding the images and masks")
    _check(data.num_classes >= 2, "data.num_classes", data.num_classes, "an integer >= 2")
    _check(model.name in MODELS, "model.name", model.name, f"one of {sorted(MODELS)}")
    smallest, divisor = IMAGE_SIZE_RULES[model.name]
    _check(
        data.image_size >= smallest and data.image_size % divisor == 0,
        "data.image_size",
        data.image_size,
        f"at least {smallest} and a multiple of {divisor} for model {model.name!r}",
    )
    _check(opt.name in OPTIMIZERS, "optimizer.name", opt.name, f"one of {OPTIMIZERS}")
    _check(opt.learning_rate > 0, "optimizer.learning_rate", opt.learning_rate, "a number > 0")
    for beta in ("b1", "b2"):
        _check(0 <= opt[beta] < 1, f"optimizer.{beta}", opt[beta], "a number in [0, 1)")
    _check(opt.eps > 0, "optimizer.eps", opt.eps, "a number > 0")
    _check(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "a number in [0, 1)")
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
    _check(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "an integer >= 1")
    _check(
        config.checkpoint.best_mode in ("min", "max"),
        "checkpoint.best_mode",
        config.checkpoint.best_mode,
        "'min' or 'max'",
    )


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
