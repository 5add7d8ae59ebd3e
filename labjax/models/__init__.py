"""Model registry: config name -> what the model is and how to build it.

Every entry of `MODELS` is a `ModelInfo`: its task, input rules, preprocessing, Keras weight
information and ONE builder `(model config, num_classes, frozen) -> nn.Module` that knows which
config fields its family takes. Family files end with a `VARIANTS` dict (name -> cls, min_size,
preprocessing, top_layers, weights); the tables below turn those into entries, so a family is
added by writing its file and one line here, and an unknown name lists the valid ones.

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

from labjax.errors import ConfigError
from labjax.models import densenet, efficientnet, inception_v3, mobilenet_v2, resnet, small_nets, vgg, xception
from labjax.models.layers import set_conv_impl
from labjax.models.small_cnn import SmallCNN
from labjax.models.unet import MobileNetV2UNet, ResNet50UNet, UNet
from labjax.weights import via_keras

HEAD_MODULES = ("head_dropout", "head_dense")  # the new head's modules (never in a Keras file)
POOLINGS = ("avg", "max")
HEADS = ("new", "original")
CLASSIFICATION, SEGMENTATION = "classification", "segmentation"

Builder = Callable[[ml_collections.ConfigDict, int, tuple[str, ...]], nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the rest of labjax needs to know about one registered model."""

    build: Builder  # (model config, num_classes, frozen BatchNorm names) -> module
    task: str  # CLASSIFICATION (logits per image) or SEGMENTATION (logits per pixel)
    min_size: int
    divisor: int = 1
    min_size_of: Callable[[ml_collections.ConfigDict], int] | None = None  # a smallest input that follows the config
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


def _mobilenetv2_unet(cfg: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
    return MobileNetV2UNet(num_classes, alpha=cfg.alpha, dropout=cfg.dropout, bn_momentum=cfg.bn_momentum)


def _resnet50_unet(cfg: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
    return ResNet50UNet(num_classes, dropout=cfg.dropout, bn_momentum=cfg.bn_momentum)


def _unet(cfg: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
    """The classic U-Net; model.alpha scales the paper's 64 first-level channels."""
    features = max(1, round(64 * cfg.alpha))
    return UNet(num_classes, features=features, dropout=cfg.dropout, bn_momentum=cfg.bn_momentum)


def _small_cnn(cfg: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
    return SmallCNN(num_classes, dropout=cfg.dropout)


def _small_net(cls: type[nn.Module], takes_layers: bool) -> Builder:
    """A small_nets class: model.dropout, and for spec nets model.layers when set.

    A spec's dropout ops keep their own rates unless model.dropout > 0 replaces them all
    (spec_cnn); the other nets take model.dropout as it is.
    """
    keeps_own_dropout = cls is small_nets.SpecCNN

    def build(cfg: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
        kwargs = {"num_classes": num_classes}
        if cfg.dropout or not keeps_own_dropout:
            kwargs["dropout"] = cfg.dropout
        if takes_layers and cfg.get("layers"):
            kwargs["layers"] = cfg.layers
        return cls(**kwargs)

    return build


def _spec_min_size(variant: dict) -> Callable[[ml_collections.ConfigDict], int]:
    """A spec net's smallest input follows from its layers (model.layers, a spec or a preset name)."""

    def min_size(cfg: ml_collections.ConfigDict) -> int:
        if not cfg.get("layers"):
            return variant["min_size"]
        return variant["min_size_of"](variant["presets"].get(cfg.layers, cfg.layers))

    return min_size


def _fields(*keys: str) -> Callable[[ml_collections.ConfigDict], dict]:
    """The model config fields a family's classes take, those the config has."""
    return lambda cfg: {key: cfg[key] for key in keys if key in cfg}


def _efficientnet_fields(cfg: ml_collections.ConfigDict) -> dict:
    """bn_momentum, and Keras' extra Rescaling layer, which Keras adds only with ImageNet weights."""
    rescaling = {"imagenet_rescaling": True} if cfg.get("pretrained", "none") != "none" else {}
    return {**_fields("bn_momentum")(cfg), **rescaling}


# Keras families: their module and the config fields (model.KEY) their classes take.
KERAS_FAMILIES = (
    (resnet, _fields("small_inputs", "bn_momentum")),
    (densenet, _fields("bn_momentum")),
    (efficientnet, _efficientnet_fields),
    (vgg, _fields()),
    (xception, _fields("bn_momentum")),
    (inception_v3, _fields("bn_momentum")),
    (mobilenet_v2, _fields("alpha", "bn_momentum")),
)


def _keras_builder(
    cls: Callable[..., nn.Module], config_fields: Callable[[ml_collections.ConfigDict], dict]
) -> Builder:
    """A Keras family class with its own top (model.head=original) or as the backbone of a new `Classifier`."""

    def build(cfg: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
        kwargs = config_fields(cfg)
        if cfg.head == "original":
            return cls(num_classes=num_classes, include_top=True, frozen=frozen, **kwargs)
        return Classifier(
            cls(include_top=False, frozen=frozen, **kwargs),
            num_classes,
            pooling=cfg.pooling,
            dropout=cfg.dropout,
            frozen_backbone=cfg.freeze == "backbone",
        )

    return build


def _family_models() -> dict[str, ModelInfo]:
    models = {}
    for family, config_fields in KERAS_FAMILIES:
        for name, variant in family.VARIANTS.items():
            models[name] = ModelInfo(
                build=_keras_builder(variant["cls"], config_fields),
                task=CLASSIFICATION,
                min_size=variant["min_size"],
                preprocessing=variant["preprocessing"],
                keras_family=True,
                top_layers=tuple(variant.get("top_layers", ())),
                weights=variant.get("weights"),
                keras_rename=variant.get("keras_rename"),
            )
    for name, variant in small_nets.VARIANTS.items():
        cls = variant["cls"]
        models[name] = ModelInfo(
            build=_small_net(cls, takes_layers=issubclass(cls, small_nets.SpecCNN)),
            task=CLASSIFICATION,
            min_size=variant["min_size"],
            min_size_of=_spec_min_size(variant) if "min_size_of" in variant else None,
            preprocessing="zero_one",
        )
    return models


MODELS: dict[str, ModelInfo] = {
    "mobilenetv2_unet": ModelInfo(_mobilenetv2_unet, SEGMENTATION, 32, divisor=32, preprocessing="minus_one_one"),
    "resnet50_unet": ModelInfo(_resnet50_unet, SEGMENTATION, 32, divisor=32, preprocessing="caffe"),
    "unet": ModelInfo(_unet, SEGMENTATION, 16, divisor=16, preprocessing="zero_one"),
    "small_cnn": ModelInfo(_small_cnn, CLASSIFICATION, 18, preprocessing="zero_one"),
    **_family_models(),
}


def model_info(name: str) -> ModelInfo:
    """The registry entry of config.model.name; an unknown name lists the valid ones."""
    if name not in MODELS:
        raise ConfigError(f"config.model.name={name!r} is unknown; valid: {sorted(MODELS)}.")
    return MODELS[name]


def task_of(name: str) -> str:
    """CLASSIFICATION or SEGMENTATION: what the registered model predicts (one label per image or per pixel)."""
    return model_info(name).task


def input_rule(model_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(smallest input side, required divisor of the side) of the configured model."""
    info = model_info(model_config.name)
    smallest = info.min_size_of(model_config) if info.min_size_of else info.min_size
    return smallest, info.divisor


def create_model(model_config: ml_collections.ConfigDict, num_classes: int, frozen: tuple[str, ...] = ()) -> nn.Module:
    """Builds the configured model with its entry's builder; unknown names list the valid ones.

    `frozen`: BatchNorm modules of the backbone that stay in inference mode (model.freeze).
    Sets the process-wide convolution choice from model.conv_impl (read when jit traces the model).
    """
    set_conv_impl(model_config.get("conv_impl", "auto"))
    return model_info(model_config.name).build(model_config, num_classes, frozen)


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
    raise ConfigError(f"config.model.freeze={spec!r} is unknown; valid: none, backbone, fraction:F, regex:A,B.")


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
