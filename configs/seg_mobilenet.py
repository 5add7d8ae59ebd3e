r"""S0: MobileNetV2 encoder + pix2pix decoder (U-Net) for semantic segmentation.

The study's single run (800 train / 200 validation images, 128x128, 40 epochs, Adam 1e-3)
on the built-in offline synthetic data set:

  python launch.py --config=configs/seg_mobilenet.py

Variants: `:quick` (8 epochs, a first look), `:smoke` (tiny sizes, seconds; for tests).
The study's 21 runs (`get_sweep`: SGD, Adam, Adamax x learning rates 0.001, 0.01, 0.5, and
for Adam and Adamax (beta_1, beta_2) in (0.9, 0.999), (0.8, 0.999), (0.8, 0.85)) are named
like `sgd_0.01` and `adam_0.001_0.8_0.85`.
On the real People Clothing Segmentation data (59 classes; stems `img_0001` / `seg_0001`):

  python launch.py --config=configs/seg_mobilenet.py --config.data.source=masks \
    --config.data.path=DIR --config.data.image_dir=png_images/IMAGES \
    --config.data.mask_dir=png_masks/MASKS --config.data.match_regex='(\d+)$' \
    --config.data.num_classes=59
"""

import itertools
import string

import ml_collections

from labjax.config import base_config

# A sweep member's run name: dotted keys of its overrides. SGD members set no betas, and a key
# absent from the overrides is dropped with its separator, so SGD runs are named `sgd_0.01`.
RUN_NAME = "{optimizer.name}_{optimizer.learning_rate}_{optimizer.b1}_{optimizer.b2}"
LEARNING_RATES = (0.001, 0.01, 0.5)
BETAS = ((0.9, 0.999), (0.8, 0.999), (0.8, 0.85))
ARGS = ("quick", "smoke")  # get_config's variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S0 config; `arg` is None, 'quick' or 'smoke'."""
    config = base_config("segmentation")
    config.data.source = "synthetic"  # or masks (your images + PNG masks), tfds
    config.data.num_classes = 6
    config.data.image_size = 128
    config.data.train_size = 800  # synthetic: examples; masks: the first N pairs train, the rest validation
    config.data.val_size = 200  # synthetic only
    config.data.augment = "flip_lr"  # image and mask flipped together
    config.data.normalize = "minus_one_one"  # what MobileNetV2 expects

    config.model.name = "mobilenetv2_unet"
    config.model.alpha = 1.0
    config.model.dropout = 0.0  # decoder dropout (the TF tutorial uses none)
    # BatchNorm running-average momentum. Keras' MobileNetV2 uses 0.999, right for pretrained
    # statistics; from scratch, with 25 steps an epoch, the averages would still carry their
    # initial variance of 1 after hundreds of steps while depthwise outputs have variance
    # ~1e-3, and evaluation would predict background everywhere. 0.9 is PyTorch's default.
    config.model.bn_momentum = 0.9

    config.optimizer.name = "adam"  # the S0 sweep: sgd | adam | adamax (any of labjax.optim.OPTIMIZERS works)
    config.optimizer.learning_rate = 1e-3

    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 40
    config.log_every_steps = 5
    config.checkpoint.best_metric = "val_miou"

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


def get_sweep(arg: str | None = None):
    """S0's 21 runs as override dicts: SGD x 3 learning rates, Adam and Adamax x 3 rates x 3 beta pairs."""
    del arg  # the same runs for every variant (`:quick` sweeps the shorter runs)
    for learning_rate in LEARNING_RATES:
        yield {"optimizer.name": "sgd", "optimizer.learning_rate": learning_rate}
    for name, learning_rate, (b1, b2) in itertools.product(("adam", "adamax"), LEARNING_RATES, BETAS):
        yield {"optimizer.name": name, "optimizer.learning_rate": learning_rate, "optimizer.b1": b1, "optimizer.b2": b2}


def run_name(overrides: dict) -> str:
    """RUN_NAME filled from a member's overrides, absent keys dropped: `sgd_0.01`, `adam_0.001_0.8_0.85`."""
    keys = [field for _, field, _, _ in string.Formatter().parse(RUN_NAME) if field]
    return "_".join(str(overrides[key]) for key in keys if key in overrides)


SWEEPS = {"optimizers": get_sweep}  # the same 21 runs by name (`--sweep=optimizers`)
