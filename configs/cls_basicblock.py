r"""S1a: BasicBlockNet on 64x64 images of 200 classes (Tiny ImageNet), PyTorch-style training.

SGD lr 0.1, momentum 0.9, weight decay 1e-4 (PyTorch's: added to the gradient of every
parameter), ReduceLROnPlateau on val_loss (factor 0.1, patience 5, cooldown 2: docs/studies.md
records a patience and a cooldown but not their values), 30 epochs, batch 128; random
horizontal and vertical flips and RandomErasing, pixels normalised with the train split's
per-channel mean/std; dropout 0.7 before the classifier.

By default it runs on the built-in offline synthetic set at 64x64, which has at most 20
classes (so 20, not 200): no files needed.

  python launch.py --config=configs/cls_basicblock.py

On Tiny ImageNet (the `tiny-imagenet-200` folder: wnids.txt, train/, val/):

  python launch.py --config=configs/cls_basicblock.py:path=/data/tiny-imagenet-200

`path=DIR` sets data.source=tiny_imagenet, data.path=DIR and data.num_classes=0 (from the
data); the same with flags: `--config.data.source=tiny_imagenet --config.data.path=DIR
--config.data.num_classes=0`.

Arguments, comma-separated (`:multistep,path=DIR`):
  randaugment  RandAugment(2, 9) instead of RandomErasing (flips kept).
  multistep    MultiStepLR: lr x 0.1 at epochs 10 and 20, instead of the plateau schedule.
  finetune     continue a finished run from its weights (fresh optimizer) for 5 epochs at lr 0.2
               with other augmentation (flips, ColorJitter, RandomGrayscale, GaussianBlur). It
               starts from the run the same arguments without `finetune` train into their default
               workdir (`:finetune` from runs/cls_basicblock, `:finetune,smoke` from
               runs/cls_basicblock_smoke, `:finetune,path=DIR` from the `:path=DIR` run);
               `--config.model.init_from=WORKDIR` picks another.
  smoke        tiny synthetic data (32 px, 4 classes), seconds; for tests.
  path=DIR     the real data, as above.
"""

import ml_collections

from labjax.cli import default_workdir
from labjax.config import base_config, parse_arg
from labjax.sweep import arg_overrides

ARGS = ("randaugment", "multistep", "finetune", "smoke")  # variants, combinable with each other except as noted
KEYS = ("path",)  # key=value arguments

FLIPS = "flip_lr|flip_ud"
# RandomErasing fills with 0 in [0, 255] pixels (black), before normalisation; torchvision
# erases after Normalize, where its 0 is the data set's mean colour.
ERASING = f"{FLIPS}|random_erasing(p=0.5)"
RANDAUGMENT = f"{FLIPS}|randaugment(2, 9)"
FINETUNE_AUGMENT = f"{FLIPS}|color_jitter(0.4, 0.4, 0.4)|grayscale(p=0.1)|gaussian_blur(3, p=0.2)"


def s1_config(
    arg: str | None, config_name: str, args: tuple[str, ...] = ARGS
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """S1's data, optimizer, schedule and variants (shared by cls_basicblock and cls_resnet_small).

    Returns the config (model left to the caller) and the parsed argument names.
    """
    names, values = parse_arg(arg, f"configs/{config_name}.py", args, KEYS)
    if "randaugment" in names and "finetune" in names:
        raise ValueError(
            f"configs/{config_name}.py: {arg!r}: randaugment and finetune both set the augmentation; choose one."
        )
    config = base_config("classification")
    data = config.data
    data.source = "synthetic"
    data.num_classes = 20  # the synthetic set's largest; Tiny ImageNet has 200
    data.image_size, data.channels = 64, 3
    data.train_size, data.val_size = 5000, 1000
    data.augment = RANDAUGMENT if "randaugment" in names else ERASING
    data.normalize = "mean_std"  # the train split's per-channel mean and std, as transforms.Normalize
    if "path" in values:
        data.source, data.path, data.num_classes = "tiny_imagenet", values["path"], 0
        data.image_size = 64  # its JPEGs are 64x64; a size lets a large set stream from disk (data.cache)

    opt = config.optimizer
    opt.name, opt.learning_rate, opt.momentum = "sgd", 0.1, 0.9
    opt.weight_decay, opt.weight_decay_type = 1e-4, "coupled"
    opt.decay_params = "all"  # PyTorch's SGD decays every parameter of its group, BatchNorm and biases too
    opt.schedule = "plateau"
    opt.plateau.monitor, opt.plateau.mode = "val_loss", "min"
    opt.plateau.factor, opt.plateau.patience, opt.plateau.cooldown = 0.1, 5, 2
    if "multistep" in names:
        opt.schedule, opt.milestones, opt.gamma = "multistep", "10,20", 0.1

    config.batch_size, config.eval_batch_size = 128, 256
    config.num_epochs = 30
    config.log_every_steps = 50
    config.checkpoint.best_metric, config.checkpoint.best_mode = "val_accuracy", "max"

    if "finetune" in names:
        base_arg = ",".join(piece for piece in (arg or "").split(",") if piece.strip() != "finetune")
        config.model.init_from = str(default_workdir(f"configs/{config_name}.py:{base_arg}"))
        opt.learning_rate = 0.2
        data.augment = FINETUNE_AUGMENT
        config.num_epochs = 5
    if "smoke" in names:
        if "path" not in values:
            data.num_classes, data.image_size = 4, 32
            data.train_size, data.val_size = 32, 16
        config.batch_size, config.eval_batch_size = 8, 8
        config.num_epochs, config.log_every_steps = 2, 2
    return config, names


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the S1a config; `arg` is comma-separated names of ARGS and key=value pieces of KEYS."""
    config, _ = s1_config(arg, "cls_basicblock")
    config.model.name = "basicblocknet"  # widths 32, 64, 128: 64x64 -> 16x16x128 before pooling
    config.model.dropout = 0.7
    return config


def s1_sweeps(config_function) -> dict:
    """S1's studies as named sweeps of a config: the schedule (plateau, multistep), the augmentation (flips and
    RandomErasing, or RandAugment), and both (`--sweep=variants`)."""

    def member(arg, name, pieces):
        return name, arg_overrides(config_function, arg, pieces, drop=("multistep", "randaugment"))

    schedules = {"plateau": [], "multistep": ["multistep"]}
    augments = {"erasing": [], "randaugment": ["randaugment"]}
    return {
        "schedule": lambda arg: [member(arg, name, pieces) for name, pieces in schedules.items()],
        "augmentation": lambda arg: [member(arg, name, pieces) for name, pieces in augments.items()],
        "variants": lambda arg: [
            member(arg, f"{s}_{a}", [*sp, *ap]) for s, sp in schedules.items() for a, ap in augments.items()
        ],
    }


SWEEPS = s1_sweeps(get_config)
