r"""S2 part 1: Fashion-MNIST merged into 3 classes, a small Keras-style CNN.

Upper body = {T-shirt/top, Pullover, Dress, Coat, Shirt}, lower body = {Trouser}, shoes =
{Sandal, Sneaker, Ankle boot}; Bag is dropped, leaving 63,000 images, pooled and split
70% train / 15% test / 15% validation (stratified, seeded). The minority classes of the
training split are topped up with flipped and rotated copies of their own images.
10 epochs with early stopping on val_loss (patience 3), ending with the best epoch's weights.

The real data, offline, from Debian (`apt-get install dataset-fashion-mnist`):

  python launch.py --mode=data --config=configs/fashion3_cnn.py   # counts and sample grids
  python launch.py --config=configs/fashion3_cnn.py

Elsewhere point `--config.data.path` at a folder of the four `*-idx?-ubyte.gz` files.
Arguments, comma-separated (`:arch10,kfold`, `:proposed,smoke`):
  arch4, arch5, arch10, proposed  the spec_cnn presets of the study's CNN variants
             (labjax/models/small_nets.py S2_PRESETS; arch10 is docs/studies.md's model) instead of
             small_cnn (the same network as arch10, as a fixed module).
  kfold      5-fold cross-validation over train + validation (test stays out), fold 0 as
             validation; `--config.data.fold=K` for the others.
  synthetic  the built-in offline classification set, 10 classes merged the same way; no files needed.
  smoke      tiny synthetic, seconds; for tests.
"""

import ml_collections

from labjax.config import base_config, parse_arg
from labjax.sweep import arg_overrides

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ARCHITECTURES = ("arch4", "arch5", "arch10", "proposed")
ARGS = (*ARCHITECTURES, "kfold", "synthetic", "smoke")
KEYS = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S2 config; `arg` is comma-separated names of ARGS."""
    names, _ = parse_arg(arg, "configs/fashion3_cnn.py", ARGS, one_of=ARCHITECTURES)
    config = base_config("classification")
    data = config.data
    data.source = "idx"
    data.path = FASHION_MNIST
    data.merge = "upper=0,2,3,4,6;lower=1;shoes=5,7,9"  # ids of T-shirt/top, Pullover, ...; Bag (8) dropped
    data.split_fractions = "train=0.7,test=0.15,validation=0.15"
    data.balance = "oversample"
    data.copy_augment = "flip_lr|rotate(0.05)"  # how the minority classes' copies differ from their originals
    data.normalize = "zero_one"  # pixels / 255, as the Keras study did
    if "kfold" in names:
        data.folds, data.fold = 5, 0

    config.model.name = "small_cnn"
    config.model.dropout = 0.2
    for name in set(names) & set(ARCHITECTURES):
        config.model.name, config.model.layers = "spec_cnn", name
        config.model.dropout = 0.0  # 0 keeps each preset's own dropout rates (spec_cnn replaces them otherwise)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.batch_size = 32
    config.eval_batch_size = 256
    config.num_epochs = 10
    config.log_every_steps = 200
    # "10 epochs, then the best epoch chosen from the curves": Keras' EarlyStopping(patience=3,
    # restore_best_weights=True) on val_loss.
    stopping = config.early_stopping
    stopping.monitor, stopping.mode, stopping.patience, stopping.restore_best = "val_loss", "min", 3, True

    if "synthetic" in names or "smoke" in names:
        data.source, data.path = "synthetic", ""
        data.num_classes, data.image_size, data.channels = 10, 28, 1
        data.train_size, data.val_size = (200, 60) if "smoke" in names else (6000, 1000)
    if "smoke" in names:
        config.batch_size, config.eval_batch_size = 16, 32
        config.num_epochs, config.log_every_steps = 2, 5
    return config


# --- S2's studies as named sweeps: the architectures (`--sweep=architectures`), and each over 5 folds ---
FOLDS = 5


def _architectures(arg):
    for name in ARCHITECTURES:
        yield name, arg_overrides(get_config, arg, [name], drop=ARCHITECTURES)


def _architectures_folds(arg):
    for name in ARCHITECTURES:
        overrides = arg_overrides(get_config, arg, [name, "kfold"], drop=ARCHITECTURES)
        for fold in range(FOLDS):
            yield f"{name}_fold{fold}", {**overrides, "data.fold": fold}


SWEEPS = {"architectures": _architectures, "architectures_folds": _architectures_folds}
