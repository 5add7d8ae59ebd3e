"""TFDS source: a tensorflow_datasets data set read into memory as NumPy arrays.

Labels are class ids (a ClassLabel or integer feature) or segmentation masks (an image
feature, (H,W,1) -> int32 (H,W)). Nothing is downloaded unless config.data.download is true,
so a run on a machine without internet fails early with a clear message instead of hanging.
"""

import numpy as np
import tensorflow_datasets as tfds

from labjax.data.examples import Examples
from labjax.data.masks import parse_mask_values
from labjax.errors import ConfigError, DataError, MissingFileError
from labjax.tf_import import tf

SPLIT_NAMES = ("train", "validation", "test")


def _builder(data) -> tfds.core.DatasetBuilder:
    if not data.name:
        raise ConfigError("config.data.name is empty; set it to a TFDS name such as 'mnist' or 'cifar100:3.0.2'.")
    try:
        builder = tfds.builder(data.name, data_dir=data.data_dir or None)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"config.data.name={data.name!r} (config.data.data_dir={data.data_dir!r}): no such TFDS data set or "
            f"version ({str(error).splitlines()[0]})."
        ) from None
    if data.download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise MissingFileError(
            f"The TFDS data set config.data.name={data.name!r} is not prepared in config.data.data_dir="
            f"{data.data_dir!r} (looked in {builder.data_dir}); set config.data.download=true on a machine with "
            "internet, or point config.data.data_dir at a prepared copy."
        )
    return builder


def _splits(data, builder: tfds.core.DatasetBuilder) -> dict[str, str]:
    """Our split name -> TFDS split spec, from config.data.tfds_splits or the builder's own splits."""
    available = list(builder.info.splits)
    if not data.tfds_splits:
        chosen = {name: name for name in SPLIT_NAMES if name in available}
        if not chosen:
            raise ConfigError(
                f"config.data.name={data.name!r} has the splits {available}, none named {list(SPLIT_NAMES)}; set "
                "config.data.tfds_splits, e.g. 'train=train[:80%],validation=train[80%:]'."
            )
        return chosen
    chosen = {}
    for item in filter(None, (part.strip() for part in data.tfds_splits.split(","))):
        name, sep, spec = (text.strip() for text in item.partition("="))
        if not sep or not spec or name not in SPLIT_NAMES or name in chosen:
            raise ConfigError(
                f"config.data.tfds_splits={data.tfds_splits!r}: {item!r} is not 'name=tfds_split' with a new name "
                f"among {list(SPLIT_NAMES)} (e.g. 'train=train[:80%],validation=train[80%:],test=test')."
            )
        chosen[name] = spec
    return chosen


def _label_kind(data, features) -> str:
    """'class' for one id per example, 'mask' for a per-pixel image feature."""
    for key in (data.image_key, data.label_key):
        if key not in features:
            which = "image_key" if key == data.image_key else "label_key"
            raise ConfigError(
                f"config.data.{which}={key!r} is not a feature of {data.name!r}; its features are {sorted(features)}."
            )
    label = features[data.label_key]
    if isinstance(label, tfds.features.Image) or len(label.shape) == 3:
        return "mask"
    if len(label.shape) == 0 and np.issubdtype(np.dtype(label.np_dtype), np.integer):
        return "class"
    raise ConfigError(
        f"config.data.label_key={data.label_key!r} is a {type(label).__name__} of shape {label.shape}; it must be "
        "a class id (ClassLabel or integer) or a segmentation mask image."
    )


def _read(builder: tfds.core.DatasetBuilder, spec: str, data, mask: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N,H,W,C) and labels of one split, resized to config.data.image_size if their sizes vary."""
    image_shape = builder.info.features[data.image_key].shape
    size = data.image_size if None in image_shape else 0

    def select(example):
        image, label = example[data.image_key], example[data.label_key]
        if size:
            image = tf.image.resize(tf.cast(image, tf.float32), [size, size], "bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            if mask:
                label = tf.image.resize(label, [size, size], "nearest")
        return image, label

    try:
        ds = builder.as_dataset(split=spec, shuffle_files=False).map(select, num_parallel_calls=tf.data.AUTOTUNE)
    except (ValueError, KeyError, AssertionError) as error:
        raise ConfigError(
            f"config.data.tfds_splits: {spec!r} is not a split of {data.name!r} (its splits: "
            f"{list(builder.info.splits)}): {str(error).splitlines()[0]}"
        ) from None
    if not ds.cardinality():
        raise ConfigError(f"config.data.tfds_splits: the split {spec!r} of {data.name!r} is empty.")
    if all(s.shape.is_fully_defined() for s in ds.element_spec):
        batches = list(ds.batch(1024).prefetch(2).as_numpy_iterator())
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
    else:
        pairs = list(ds.prefetch(64).as_numpy_iterator())
        for what, index in (("images", 0), ("masks", 1)):
            shapes = sorted({p[index].shape for p in pairs})
            if len(shapes) > 1:
                raise DataError(
                    f"The {what} of {data.name!r} split {spec!r} differ in size (e.g. {shapes[:3]}); set "
                    "config.data.image_size to resize them."
                )
        images, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if mask:
        labels = labels[..., 0]
        if labels.shape[1:] != images.shape[1:3]:
            raise DataError(
                f"The masks of {data.name!r} ({labels.shape[1:]}) differ in size from its images ({images.shape[1:3]})."
            )
    return images, labels.astype(np.int64)


def _class_ids(masks: np.ndarray, data) -> np.ndarray:
    """Raw mask values -> class ids through config.data.mask_values, when set."""
    mapping = parse_mask_values(data.mask_values)
    if not mapping:
        return masks
    unknown = sorted(set(np.unique(masks).tolist()) - set(mapping) - {data.ignore_label})
    if unknown:
        raise DataError(
            f"mask values {unknown[:10]} of {data.name!r} are not in config.data.mask_values={data.mask_values!r}; "
            "add them to the mapping."
        )
    lut = np.full(max(max(mapping), int(masks.max(initial=0))) + 1, data.ignore_label, np.int64)
    for raw, class_id in mapping.items():
        lut[raw] = class_id
    return np.where(masks == data.ignore_label, data.ignore_label, lut[np.maximum(masks, 0)])


def _class_names(data, label_feature, labels: list[np.ndarray]) -> list[str]:
    num = max(int(y.max(initial=-1)) + 1 for y in labels)
    if isinstance(label_feature, tfds.features.ClassLabel):
        names = list(label_feature.names)
    else:
        names = [str(i) for i in range(max(num, data.num_classes))]
    if data.class_names:
        given = [name.strip() for name in data.class_names.split(",")]
        if len(given) != len(names):
            raise ConfigError(
                f"config.data.class_names gives {len(given)} names for the {len(names)} classes of {data.name!r}; "
                "give one name per class in label order, or leave it empty."
            )
        names = given
    if num > len(names):
        raise DataError(f"{data.name!r} has labels up to {num - 1} but only {len(names)} class names.")
    return names


def load(data) -> dict[str, Examples]:
    """The splits config.data.tfds_splits names (default: the builder's train/validation/test) in memory."""
    builder = _builder(data)
    features = builder.info.features
    mask = _label_kind(data, features) == "mask"
    arrays = {name: _read(builder, spec, data, mask) for name, spec in _splits(data, builder).items()}
    if mask:
        arrays = {name: (images, _class_ids(labels, data)) for name, (images, labels) in arrays.items()}
    names = _class_names(data, features[data.label_key], [labels for _, labels in arrays.values()])
    return {
        name: Examples(labels=labels.astype(np.int32), class_names=list(names), images=images)
        for name, (images, labels) in arrays.items()
    }
