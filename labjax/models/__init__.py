"""Model registry: config name -> constructor taking (model config, num_classes)."""

from collections.abc import Callable

import flax.linen as nn
import ml_collections

from labjax.models.small_cnn import SmallCNN
from labjax.models.unet import MobileNetV2UNet

MODELS: dict[str, Callable[[ml_collections.ConfigDict, int], nn.Module]] = {
    "mobilenetv2_unet": lambda cfg, n: MobileNetV2UNet(
        n, alpha=cfg.alpha, dropout=cfg.dropout, bn_momentum=cfg.bn_momentum
    ),
    "small_cnn": lambda cfg, n: SmallCNN(n, dropout=cfg.dropout),
}

# (smallest input side, required divisor of the side): the U-Net concatenates 1/32-scale
# skips; the small CNN's three 'valid' 3x3 convs and two poolings need 18 pixels.
IMAGE_SIZE_RULES = {"mobilenetv2_unet": (32, 32), "small_cnn": (18, 1)}


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the configured model; unknown names list the valid ones."""
    if model_config.name not in MODELS:
        raise ValueError(f"config.model.name={model_config.name!r} is unknown; valid: {sorted(MODELS)}.")
    return MODELS[model_config.name](model_config, num_classes)
