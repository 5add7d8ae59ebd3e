r"""S2 part 2: ResNet50 with a new head on your own photos, four settings for a 2x2 table.

ResNet50 without its top, then GlobalAveragePooling -> Dropout(0.2) -> Dense(classes); Adam
1e-3 (Keras' default), up to 20 epochs with early stopping on val_loss (patience 3, the best
epoch's weights kept); 20% of the photos (stratified) for validation. The four settings:

  imagenet_aug  ImageNet weights, backbone frozen, augmentation: random horizontal flip and
                RandomRotation(0.2) (a fraction of a full turn, as Keras: up to +-72 degrees)
  imagenet      ImageNet weights, backbone frozen, no augmentation
  scratch_aug   random initialisation, everything trained, the same augmentation (the default)
  scratch       random initialisation, no augmentation

The ImageNet settings download Keras' ResNet50 weights once (into ~/.cache/labjax/weights),
so they need the internet the first time, or `--config.model.pretrained=PATH/TO/resnet50.h5`.
Without a folder the config runs on the built-in offline synthetic set (3 classes, 128 px,
96 train / 24 validation images, about the size of the study's data set).

Your photos, one sub-folder per class (`photos/pencils/*.jpg`, `photos/pens/...`, ...):

  for s in imagenet_aug imagenet scratch_aug scratch; do
    python launch.py --config=configs/transfer_folder.py:$s,path=$HOME/photos --workdir=runs/transfer_$s
  done

`path=DIR` sets data.source=folder, data.path=DIR, data.val_fraction=0.2, data.num_classes=0
and resizes the photos to 224x224. `smoke` (tiny synthetic data, ResNet18 instead of ResNet50,
never pretrained; seconds) combines with the settings, e.g. `:imagenet,smoke` for tests.
"""

import ml_collections

from labjax.config import base_config, parse_arg

SETTINGS = ("imagenet_aug", "imagenet", "scratch_aug", "scratch")
ARGS = (*SETTINGS, "smoke")
KEYS = ("path",)
AUGMENT = "flip_lr|rotate(0.2)"  # Keras RandomFlip("horizontal"), RandomRotation(0.2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S2 part 2 config; `arg` is comma-separated names of ARGS and key=value pieces of KEYS."""
    names, values = parse_arg(arg, "configs/transfer_folder.py", ARGS, KEYS, one_of=SETTINGS)
    setting = next((name for name in names if name in SETTINGS), "scratch_aug")
    config = base_config("classification")
    data = config.data
    if "path" in values:
        data.source, data.path, data.num_classes = "folder", values["path"], 0
        data.val_fraction = 0.2
        data.image_size, data.channels = 224, 3
    else:
        data.source, data.num_classes, data.channels = "synthetic", 3, 3
        data.image_size, data.train_size, data.val_size = 128, 96, 24
    data.augment = AUGMENT if setting.endswith("_aug") else ""
    data.normalize = "model"  # Keras' resnet50.preprocess_input (caffe: BGR, ImageNet means subtracted)

    model = config.model
    model.name = "resnet50"
    model.head, model.pooling, model.dropout = "new", "avg", 0.2
    if setting.startswith("imagenet"):
        model.pretrained, model.freeze = "imagenet", "backbone"
    # From scratch with a few steps an epoch, Keras' 0.99 would leave BatchNorm's running averages
    # near their initial values for the whole run (see seg_mobilenet.py); a frozen backbone's
    # BatchNorm runs in inference mode, where the momentum plays no part.
    model.bn_momentum = 0.9

    config.optimizer.name, config.optimizer.learning_rate = "adam", 1e-3
    stopping = config.early_stopping
    stopping.monitor, stopping.mode, stopping.patience, stopping.restore_best = "val_loss", "min", 3, True
    config.batch_size, config.eval_batch_size = 32, 32  # Keras' default batch
    config.num_epochs = 20
    config.log_every_steps = 1

    if "smoke" in names:
        model.name, model.pretrained = "resnet18", "none"
        if "path" not in values:
            data.image_size, data.train_size, data.val_size = 32, 16, 8
        config.batch_size, config.eval_batch_size = 8, 8
        config.num_epochs = 2
    return config
