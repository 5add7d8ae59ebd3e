r"""S1b: ResNet50 adapted to 64x64 images (Tiny ImageNet), with S1a's training.

`model.small_inputs`: a 3x3 stride-1 stem convolution and no max-pool, so a 64x64 image
keeps 8x8 features in the last stage instead of 2x2; dropout 0.7 before the new classifier
(global average pooling, dropout, dense). From scratch, BatchNorm momentum 0.9 (PyTorch's).
Data, optimizer (SGD 0.1, momentum 0.9, weight decay 1e-4), plateau schedule, augmentation,
epochs and the arguments are S1a's: see configs/cls_basicblock.py.

  python launch.py --config=configs/cls_resnet_small.py             # offline synthetic, 20 classes
  python launch.py --config=configs/cls_resnet_small.py:path=/data/tiny-imagenet-200

Arguments, comma-separated, as cls_basicblock's (randaugment, multistep, finetune, smoke,
path=DIR), plus:
  original  ResNet50 as is (7x7 stride-2 stem and max-pool: 32x downsampling). It takes inputs
            of 32 px and more; a 64x64 image leaves 2x2 features for the classifier.
`smoke` trains ResNet18 with small_inputs instead of ResNet50: the same family and head,
which compiles in a fraction of the time (for tests).
"""

import ml_collections

try:
    from configs import cls_basicblock  # a clone: configs/ beside labjax/
except ImportError:  # installed: pip ships configs/ as the package labjax.configs
    from labjax.configs import cls_basicblock

ARGS = ("original", *cls_basicblock.ARGS)
KEYS = cls_basicblock.KEYS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S1b config; `arg` is comma-separated names of ARGS and key=value pieces of KEYS."""
    config, names = cls_basicblock.s1_config(arg, "cls_resnet_small", ARGS)
    model = config.model
    model.name = "resnet18" if "smoke" in names else "resnet50"
    model.small_inputs = "original" not in names
    model.head, model.pooling, model.dropout = "new", "avg", 0.7
    model.bn_momentum = 0.9  # from scratch: Keras' 0.99 leaves the running averages far from the data for long
    return config


SWEEPS = cls_basicblock.s1_sweeps(get_config)  # S1's schedule and augmentation variants (`--sweep=schedule`, ...)
