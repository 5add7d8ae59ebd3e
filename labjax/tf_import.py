"""TensorFlow (tf.data) and clu's TensorBoard writers, imported without the Keras they load eagerly.

TensorFlow's __init__ imports `keras.src.optimizers` (Keras, and scikit-learn with it) for a
SavedModel registry labjax never uses, and catches the ImportError; clu's writers import
TensorBoard's hparams API, whose Keras callback class loads Keras again. Together about 3 s of
every run's start-up, and of every sweep member's. Stand-ins take their place for the moment of
these imports only and are then forgotten, so a later `import keras`, `tf.keras` or
`from tensorboard.plugins.hparams import api` gets the real modules. Every labjax module that
needs TensorFlow or clu's writers imports them from here.
"""

import contextlib
import sys
import types

_KERAS_OPTIMIZERS = "keras.src.optimizers"
_HPARAMS = "tensorboard.plugins.hparams"


@contextlib.contextmanager
def _standing_in(name: str, module):
    """`module` is sys.modules[name] inside the block (None: importing `name` raises ImportError);
    nothing is stood in when `name` was imported already."""
    if name in sys.modules:
        yield False
        return
    sys.modules[name] = module
    try:
        yield True
    finally:
        if sys.modules.get(name, False) is module:
            del sys.modules[name]


def _forget(package: str, *names: str) -> None:
    """Drops modules built on a stand-in, so the next import builds them again from the real ones."""
    parent = sys.modules.get(package)
    for name in names:
        sys.modules.pop(f"{package}.{name}", None)
        if parent is not None and name in vars(parent):
            delattr(parent, name)


with _standing_in(_KERAS_OPTIMIZERS, None):
    import tensorflow as tf

_keras_callback = types.ModuleType(f"{_HPARAMS}._keras")
_keras_callback.Callback = None  # the hparams API's KerasCallback, which clu does not use
with _standing_in(f"{_HPARAMS}._keras", _keras_callback) as stood_in:
    from clu import metric_writers
if stood_in:
    _forget(_HPARAMS, "_keras", "api")

__all__ = ["metric_writers", "tf"]
