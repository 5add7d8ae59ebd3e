"""labjax: JAX/Flax image classification and segmentation studies.

The Python API (docs/api.md), for notebooks and scripts; `import labjax` stays light (JAX,
TensorFlow and the models load when a function first needs them):

    config = labjax.get_config("fashion3_cnn:smoke", {"num_epochs": 2})
    summary = labjax.train(config, "runs/first")      # final and best metrics, times
    metrics = labjax.evaluate("runs/first", checkpoint="best")
    result = labjax.predict("runs/first", "photos/*.jpg")
    runs = labjax.sweep("fashion3_cnn:smoke", "runs/lr", sweep=["optimizer.learning_rate=1e-3,1e-2"])
    labjax.report("runs/lr"); labjax.load_runs("runs/lr")   # an HTML report; a pandas DataFrame

`labjax.train`, `.evaluate`, `.predict`, `.sweep` and `.report` are also the modules of those
names (labjax/train.py, ...): calling one calls the function of labjax/api.py of that name.
"""

import os
import sys
import types

from labjax import xla_flags
from labjax.version import __version__  # noqa: F401

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data; keep its logs quiet
xla_flags.apply()  # before JAX starts a backend, which reads XLA_FLAGS once

CALLABLE_MODULES = ("train", "evaluate", "predict", "sweep", "report")  # submodules that are API functions too
FUNCTIONS = ("get_config", "load_runs")


class _CallableModule(types.ModuleType):
    """A labjax submodule that is also the API function of its name: labjax.train(config, workdir)."""

    def __call__(self, *args, **kwargs):
        from labjax import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    """The labjax package: a submodule named in CALLABLE_MODULES becomes callable when it is imported.

    Python sets `labjax.train = <module labjax.train>` whenever that module is first imported
    (by labjax itself or a user), so a plain function of that name would be replaced by the module.
    """

    def __setattr__(self, name, value):
        if name in CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    """The API, imported when first used: labjax.get_config, labjax.train, ... ."""
    import importlib

    if name in CALLABLE_MODULES:
        return importlib.import_module(f"labjax.{name}")
    if name in FUNCTIONS:
        return getattr(importlib.import_module("labjax.api"), name)
    raise AttributeError(f"module 'labjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *CALLABLE_MODULES, *FUNCTIONS})
