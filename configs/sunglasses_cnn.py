r"""S4: eyes open or sunglasses in the CMU faces (30x32 gray), small PyTorch CNNs against overfitting.

ConvNN_1 (default) or ConvNN_2 (labjax/models/small_nets.py), pixels scaled to [0, 1], 80/20
stratified train/validation split, Adam 0.002 (PyTorch's eps 1e-8), cross-entropy, 40 epochs,
batch 1 for training, as the study. A batch must be a multiple of the device count, so batch 1
needs one device (CUDA_VISIBLE_DEVICES=0); elsewhere set --config.batch_size to the device count.
Validation runs in batches of 16 (the study's 15 only sets how many examples an evaluation step
holds, not the metrics; 16 is a multiple of 1, 2, 4, 8 and 16 devices).

By default it runs on the built-in offline synthetic set (2 classes, generated at 32x32 gray and
centre-cropped to 30x32; 500 train / 124 validation), no files needed:

  python launch.py --config=configs/sunglasses_cnn.py

On the CMU faces, one folder per person holding `<user>_<pose>_<expression>_<eyes>_4.pgm`
files (32 wide x 30 high; one resolution in the folder), labelled by the `open`/`sunglasses`
in the file names:

  python launch.py --config=configs/sunglasses_cnn.py:path=PATH/TO/cmu_faces_4

`path=DIR` sets data.source=folder, data.path=DIR, data.label_pattern, data.class_names
(open = 0, sunglasses = 1: the positive class of TP/FP rates), data.val_fraction=0.2 and the
native size. The study's settings, comma-separated (`:convnn2,l2,flip,path=DIR`):
  convnn1, convnn2  the model
  l2                L2 penalty weight * sum(w^2) on the kernels in the loss: 1e-4 for ConvNN_1,
                    5e-6 for ConvNN_2 (optimizer.weight_decay, weight_decay_type=l2)
  dropout=R         dropout after the first dense layer's ReLU (the study: 0.25 and 0.5)
  flip              25% of the training images added again, mirrored left-right
  kfold             5-fold cross-validation (fold 0 as validation; --config.data.fold=K)
  smoke             tiny synthetic data, batch 4, 2 epochs; seconds, for tests
"""

import ml_collections

from labjax.config import base_config, parse_arg
from labjax.sweep import arg_overrides

MODELS = ("convnn1", "convnn2")
ARGS = (*MODELS, "l2", "flip", "kfold", "smoke")
KEYS = ("dropout", "path")
L2 = {"convnn1": 1e-4, "convnn2": 5e-6}  # the study's penalty per model
LABEL_PATTERN = r"_(?P<label>open|sunglasses)_"  # an2i_left_angry_open_4


def _dropout(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate < 1:
        raise ValueError(f"configs/sunglasses_cnn.py: dropout={text!r} must be a rate in [0, 1), e.g. dropout=0.25.")
    return rate


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S4 config; `arg` is comma-separated names of ARGS and key=value pieces of KEYS."""
    names, values = parse_arg(arg, "configs/sunglasses_cnn.py", ARGS, KEYS, one_of=MODELS)
    config = base_config("classification")
    data = config.data
    if "path" in values:
        data.source, data.path = "folder", values["path"]
        data.label_pattern, data.class_names = LABEL_PATTERN, "open,sunglasses"
        data.channels, data.image_size = 1, 0  # gray, each file's own 32x30
        data.val_fraction = 0.2
    else:
        data.source, data.num_classes = "synthetic", 2
        data.image_size, data.channels = 32, 1  # the synthetic set's smallest side is 32 ...
        data.preprocess = "center_crop((30, 32))"  # ... so crop to the faces' 30 rows x 32 columns
        data.train_size, data.val_size = 500, 124
    data.normalize = "zero_one"  # torchvision's ToTensor
    if "flip" in names:
        data.copy_fraction, data.copy_augment = 0.25, "flip_lr(p=1.0)"
    if "kfold" in names:
        data.folds, data.fold, data.val_fraction = 5, 0, 0.0  # the folds split train + validation themselves

    model = config.model
    model.name = next((name for name in names if name in MODELS), "convnn1")
    model.dropout = _dropout(values.get("dropout", "0"))
    opt = config.optimizer
    opt.name, opt.learning_rate, opt.eps = "adam", 0.002, 1e-8
    opt.weight_decay_type = "l2"
    opt.weight_decay = L2[model.name] if "l2" in names else 0.0

    config.batch_size, config.eval_batch_size = 1, 16
    config.num_epochs = 40
    config.log_every_steps = 100
    # At batch 1 a step is ~2 MFLOP: launching it (a tf.data element, Python, dispatch, the metric
    # merge) costs about twice computing it. 50 steps a dispatch, same results (about 2x the steps/s
    # here); an epoch (~500 steps) is 10 dispatches; progress, SIGTERM and the NaN check every 50 steps.
    config.steps_per_execution = 50

    if "smoke" in names:
        if "path" not in values:
            data.train_size, data.val_size = 24, 10
        config.batch_size, config.eval_batch_size = 4, 16
        config.num_epochs, config.log_every_steps = 2, 2
    return config


# --- S4's studies as named sweeps (`--sweep=settings`, `--sweep=settings_folds`), for the arg's model ---
SETTINGS = {"base": [], "flip": ["flip"], "l2": ["l2"], "dropout0.25": ["dropout=0.25"], "dropout0.5": ["dropout=0.5"]}
FOLDS = 5


def _settings(arg):
    for name, pieces in SETTINGS.items():
        yield name, arg_overrides(get_config, arg, pieces)


def _settings_folds(arg):
    for name, pieces in SETTINGS.items():
        overrides = arg_overrides(get_config, arg, [*pieces, "kfold"])
        for fold in range(FOLDS):
            yield f"{name}_fold{fold}", {**overrides, "data.fold": fold}


SWEEPS = {"settings": _settings, "settings_folds": _settings_folds}
