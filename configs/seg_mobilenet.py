r"""S0: MobileNetV2 encoder + pix2pix decoder (U-Net) for semantic segmentation.

The study's single run (800 train / 200 validation images, 128x128, 40 epochs, Adam 1e-3)
on the built-in offline synthetic data set:

  python launch.py --config=configs/seg_mobilenet.py

Variants: `:quick` (8 epochs, a first look), `:smoke` (tiny sizes, seconds; for tests).
On the real People Clothing Segmentation data (59 classes; stems `img_0001` / `seg_0001`):

  python launch.py --config=configs/seg_mobilenet.py --config.data.source=folder \
    --config.data.path=DIR --config.data.image_dir=png_images/IMAGES \
    --config.data.mask_dir=png_masks/MASKS --config.data.match_regex='(\d+)$' \
    --config.data.num_classes=59
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S0 config; `arg` is None, 'quick' or 'smoke'."""
    config = ml_collections.ConfigDict()
    config.task = "segmentation"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "synthetic"  # synthetic | folder
    config.data.path = ""  # folder source: root folder holding image_dir and mask_dir
    config.data.image_dir = "images"
    config.data.mask_dir = "masks"
    config.data.match_regex = ""  # regex whose group 1 pairs image and mask stems; "" = whole stem
    config.data.mask_values = ""  # e.g. "0:0,255:1" maps raw mask values to class ids
    config.data.ignore_label = -1  # mask value excluded from loss and metrics (-1: none)
    config.data.num_classes = 6
    config.data.image_size = 128
    config.data.train_size = 800  # first N examples train, the rest validation
    config.data.val_size = 200  # synthetic source only: validation examples
    config.data.flip = True  # random horizontal flip of image and mask together
    config.data.shuffle_buffer = 1000

    config.model = ml_collections.ConfigDict()
    config.model.name = "mobilenetv2_unet"
    config.model.alpha = 1.0
    config.model.dropout = 0.0  # decoder dropout (the TF tutorial uses none)
    # BatchNorm running-average momentum. Keras' MobileNetV2 uses 0.999, right for pretrained
    # statistics; from scratch, with 25 steps an epoch, the averages would still carry their
    # initial variance of 1 after hundreds of steps while depthwise outputs have variance
    # ~1e-3, and evaluation would predict background everywhere. 0.9 is PyTorch's default.
    config.model.bn_momentum = 0.9

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # sgd | adam | adamax
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-7  # Keras' default, as the study used
    config.optimizer.momentum = 0.0  # sgd only
    config.optimizer.nesterov = False  # sgd only

    config.batch_size = 32  # global batch, split over all devices
    config.eval_batch_size = 32
    config.num_epochs = 40
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.log_every_steps = 5

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_epochs = 1
    config.checkpoint.keep = 2  # latest K kept, plus the best below
    config.checkpoint.best_metric = "val_miou"
    config.checkpoint.best_mode = "max"

    if arg == "quick":
        config.num_epochs = 8
    elif arg == "smoke":
        config.data.image_size = 32
        config.data.train_size = 16
        config.data.val_size = 6
        config.data.num_classes = 3
        config.model.alpha = 0.35
        config.batch_size = 4
        config.eval_batch_size = 4
        config.num_epochs = 2
        config.log_every_steps = 2
    elif arg:
        raise ValueError(f"configs/seg_mobilenet.py: unknown argument {arg!r}; choose quick or smoke.")
    return config
