"""Model registry: config name -> how to build it, its input rules, preprocessing and weights.

Every family file ends with a `VARIANTS` dict (name -> cls, min_size, preprocessing,
top_layers, weights); this module turns those into one registry, so an unknown name lists
the valid ones and a family is added by writing its file and one import here.

Classification models are a backbone (a Keras family with include_top=False, returning
its last feature map) plus a new head `Classifier` (global pooling -> dropout -> dense),
or the backbone's original Keras top (`model.head=original`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from labjax.models import densenet, efficientnet, inception_v3, mobilenet_v2, resnet, small_nets, vgg, xception
from labjax.models.layers import set_conv_impl
from labjax.models.small_cnn import SmallCNN
from labjax.models.unet import MobileNetV2UNet, ResNet50UNet, UNet
from labjax.weights import via_keras

HEAD_MODULES = ("head_dropout", "head_dense")  # the new head's modules (never in a Keras file)
POOLINGS = ("avg", "max")
HEADS = ("new", "original")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the rest of labjax needs to know about one registered model."""

    build: Callable[..., nn.Module]  # (model config, num_classes, frozen BatchNorm names) -> module
    min_size: int
    divisor: int = 1
    preprocessing: str = "zero_one"  # the normalize mode the model (and its pretrained weights) expects
    keras_family: bool = False  # backbone + head, Keras weights importable
    top_layers: tuple[str, ...] = ()  # Keras layers of the original top
    weights: Any = None  # {"top": (url, hash), "notop": (url, hash)} or a function of the config
    keras_rename: Callable | None = None  # maps a file's generated layer names to the model's (Xception)


class Classifier(nn.Module):
    """A backbone's feature map -> global pooling -> dropout -> dense logits.

    `frozen_backbone` runs the backbone in inference mode (BatchNorm statistics fixed,
    no dropout), as Keras does for a base with trainable=False.
    """

    backbone: nn.Module
    num_classes: int
    pooling: str = "avg"
    dropout: float = 0.0
    frozen_backbone: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = self.backbone(x, train=train and not self.frozen_backbone)
        pooled = features.mean((1, 2)) if self.pooling == "avg" else features.max((1, 2))
        pooled = nn.Dropout(self.dropout, deterministic=not train, name="head_dropout")(pooled)
        return nn.Dense(self.num_classes, name="head_dense")(pooled.astype(jnp.float32))


def _keras_family(variant: dict) -> ModelInfo:
    return ModelInfo(
        build=variant["cls"],
        min_size=variant["min_size"],
        preprocessing=variant["preprocessing"],
        keras_family=True,
        top_layers=tuple(variant.get("top_layers", ())),
        weights=variant.get("weights"),
        keras_rename=variant.get("keras_rename"),
    )


def _family_models() -> dict[str, ModelInfo]:
    models = {}
    for family in (resnet, densenet, efficientnet, vgg, xception, inception_v3, mobilenet_v2):
        for name, variant in family.VARIANTS.items():
            models[name] = _keras_family(variant)
    for name, variant in small_nets.VARIANTS.items():
        models[name] = ModelInfo(build=variant["cls"], min_size=variant["min_size"], preprocessing="zero_one")
    return models


MODELS: dict[str, ModelInfo] = {
    "mobilenetv2_unet": ModelInfo(build=None, min_size=32, divisor=32, preprocessing="minus_one_one"),
    "resnet50_unet": ModelInfo(build=None, min_size=32, divisor=32, preprocessing="caffe"),
    "unet": ModelInfo(build=None, min_size=16, divisor=16, preprocessing="zero_one"),
    "small_cnn": ModelInfo(build=None, min_size=18, preprocessing="zero_one"),
    **_family_models(),
}


def input_rule(model_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(smallest input side, required divisor of the side) of the configured model.

    A spec_cnn's smallest input follows from its layers (model.layers, a spec or a preset name).
    """
    info = model_info(model_config.name)
    if model_config.name == "spec_cnn" and model_config.get("layers"):
        layers = small_nets.S2_PRESETS.get(model_config.layers, model_config.layers)
        return small_nets.min_input_size(layers), info.divisor
    return info.min_size, info.divisor


def model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise ValueError(f"config.model.name={name!r} is unknown; valid: {sorted(MODELS)}.")
    return MODELS[name]


def _family_kwargs(cfg: ml_collections.ConfigDict, name: str) -> dict:
    """Config fields a family class takes (alpha, small_inputs, bn_momentum, ...), when the config has them."""
    kwargs = {}
    for key in ("alpha", "small_inputs", "bn_momentum"):
        if key in cfg and _accepts(MODELS[name].build, key):
            kwargs[key] = cfg[key]
    if _accepts(MODELS[name].build, "imagenet_rescaling") and cfg.get("pretrained", "none") != "none":
        kwargs["imagenet_rescaling"] = True  # EfficientNet: Keras adds it with ImageNet weights
    return kwargs


def _accepts(build: Callable, field: str) -> bool:
    target = getattr(build, "func", build)
    return field in getattr(target, "__dataclass_fields__", {}) or field in getattr(build, "keywords", {})


def create_model(model_config: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
    """Builds the configured model; unknown names list the valid ones.

    `frozen`: BatchNorm modules of the backbone that stay in inference mode (model.freeze).
    Sets the process-wide convolution choice from model.conv_impl (read when jit traces the model).
    """
    set_conv_impl(model_config.get("conv_impl", "auto"))
    name = model_config.name
    info = model_info(name)
    if name == "mobilenetv2_unet":
        return MobileNetV2UNet(
            num_classes, alpha=model_config.alpha, dropout=model_config.dropout, bn_momentum=model_config.bn_momentum
        )
    if name == "resnet50_unet":
        return ResNet50UNet(num_classes, dropout=model_config.dropout, bn_momentum=model_config.bn_momentum)
    if name == "unet":  # alpha scales the paper's 64 first-level channels
        return UNet(
            num_classes,
            features=max(1, round(64 * model_config.alpha)),
            dropout=model_config.dropout,
            bn_momentum=model_config.bn_momentum,
        )
    if name == "small_cnn":
        return SmallCNN(num_classes, dropout=model_config.dropout)
    if not info.keras_family:
        kwargs = {"num_classes": num_classes}
        # A spec's dropout ops keep their own rates unless model.dropout > 0 replaces them all.
        if _accepts(info.build, "dropout") and (model_config.dropout or name != "spec_cnn"):
            kwargs["dropout"] = model_config.dropout
        if _accepts(info.build, "layers") and model_config.get("layers"):
            kwargs["layers"] = model_config.layers
        return info.build(**kwargs)
    kwargs = _family_kwargs(model_config, name)
    if model_config.head == "original":
        return info.build(num_classes=num_classes, include_top=True, frozen=frozen, **kwargs)
    backbone = info.build(include_top=False, frozen=frozen, **kwargs)
    return Classifier(
        backbone,
        num_classes,
        pooling=model_config.pooling,
        dropout=model_config.dropout,
        frozen_backbone=model_config.freeze == "backbone",
    )


def module_order(
    module: nn.Module, input_shape: tuple[int, ...], collections: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Paths of the modules holding variables (of `collections`; default all), in the order they are applied.

    Flax fills its variable dicts in call order; jax.tree flattening would sort the keys,
    so the dicts are walked directly. No compilation (eval_shape).
    """
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
    order: dict[tuple[str, ...], None] = {}

    def walk(tree, path):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, path + (key,))
            else:
                order.setdefault(path, None)

    for collection in collections or ("params", *sorted(set(variables) - {"params"})):
        walk(dict(variables.get(collection, {})), ())
    return list(order)


def frozen_modules(
    model_config: ml_collections.ConfigDict,
    order: list[tuple[str, ...]],
    keras_layers: list[tuple[str, bool]] | None = None,
) -> set[tuple[str, ...]]:
    """Module paths `model.freeze` freezes: none | backbone | fraction:F (all but the last F) | regex:A,B.

    fraction:F counts the layers of `keras_layers` ((name, has weights) of the Keras base, activations
    and pooling included, as Keras' `base_model.layers`) where given, else the modules with weights.
    """
    import re

    spec = model_config.freeze
    head = {p for p in order if p[-1] in HEAD_MODULES or p[-1] in MODELS[model_config.name].top_layers}
    backbone = [p for p in order if p not in head]
    if spec == "none":
        return set()
    if spec == "backbone":
        return set(backbone)
    kind, _, value = spec.partition(":")
    if kind == "fraction":
        fraction = float(value)
        if keras_layers:
            cut = len(keras_layers) - round(fraction * len(keras_layers))
            names = {name for name, has_weights in keras_layers[:cut] if has_weights}
            return {p for p in backbone if p[-1] in names}
        trainable = round(fraction * len(backbone))
        return set(backbone[: len(backbone) - trainable])
    if kind == "regex":
        patterns = [re.compile(p) for p in value.split(",") if p]
        return {p for p in order if any(pattern.fullmatch(p[-1]) for pattern in patterns)}
    raise ValueError(f"config.model.freeze={spec!r} is unknown; valid: none, backbone, fraction:F, regex:A,B.")


def build(
    model_config: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, ...]
) -> tuple[nn.Module, set[tuple[str, ...]]]:
    """The model and the paths of its frozen modules (their BatchNorms run in inference mode)."""
    model = create_model(model_config, num_classes)
    if model_config.get("freeze", "none") == "none":
        return model, set()
    order = module_order(model, input_shape)
    info = MODELS[model_config.name]
    keras_layers = None
    if info.keras_family and model_config.freeze.startswith("fraction:"):  # count layers as Keras' base does
        keras_layers = via_keras.base_layers(model_config, input_shape[0], info.keras_rename)
    frozen = frozen_modules(model_config, order, keras_layers)
    if not info.keras_family:
        return model, frozen
    return create_model(model_config, num_classes, tuple(sorted(p[-1] for p in frozen))), frozen
