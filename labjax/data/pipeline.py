"""The data of a run: source -> label ops -> splits -> balancing -> tf.data batches.

`load(config)` reads and prepares everything that does not change between epochs (the
splits in memory or as files, class names, copies for balancing, class weights, data set
statistics, the input shape). `train_batches` and `eval_batches` then stream host batches.
Every random choice is a pure function of (seed, epoch, example), so a resumed run sees
exactly the batches an uninterrupted one would, on any number of devices or hosts.
"""

import dataclasses
import importlib
from collections.abc import Callable, Iterator

import numpy as np

from labjax.data import augment, decode, labels, splits
from labjax.data.examples import Examples
from labjax.errors import ConfigError
from labjax.tf_import import tf

tf.config.set_visible_devices([], "GPU")  # TensorFlow must leave the accelerators to JAX

BALANCE = ("none", "oversample", "weights")
CACHE = ("auto", "memory", "stream")
EVAL_CACHE_BYTES = 256 << 20  # evaluation splits up to this many float32 pixels keep their batches
MEMORY_LIMIT_BYTES = 4 << 30  # file sources whose decoded pixels fit stay in memory (cache=auto)
_SEED_STRIDE = 1_000_003  # per-epoch seed word: seed * stride + epoch


@dataclasses.dataclass
class Data:
    """Everything a run needs from its data, fixed for the whole run."""

    splits: dict[str, Examples]
    class_names: list[str]
    channels: int
    context: augment.Context
    copies: np.ndarray  # train indices added again as augmented copies (balancing, copy_fraction)
    class_weights: np.ndarray | None  # per-class loss weights (balance=weights)
    normalize: str = "minus_one_one"  # data.normalize, with "model" resolved to the model's own mode
    input_shape: tuple[int, int, int] = (0, 0, 0)  # one example after preprocessing (H, W, C)
    # Prepared evaluation batches by (split, batch, process index, count): see eval_batches.
    eval_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def task(self) -> str:
        return "segmentation" if self.splits["train"].dense_labels else "classification"

    def num_train(self) -> int:
        """Training examples per epoch, copies included."""
        return len(self.splits["train"]) + len(self.copies)


def _synthetic(config) -> dict[str, Examples]:
    """Generated train and validation splits (labjax.data.synthetic) of the config's task."""
    from labjax.data import synthetic

    data = config.data
    ranges = [(0, data.train_size), (data.train_size, data.val_size)]
    size, classes = data.image_size, data.num_classes
    if config.task == "segmentation":
        names = synthetic.segmentation_class_names(classes)
        parts = [
            synthetic.make_segmentation_arrays(start, n, seed=config.seed, size=size, num_classes=classes)
            for start, n in ranges
        ]
    else:
        names = synthetic.classification_class_names(classes)
        parts = [
            synthetic.make_classification_arrays(
                config.seed, start, n, size=size, num_classes=classes, channels=data.channels or 3
            )
            for start, n in ranges
        ]
    return {
        name: Examples(labels=np.asarray(y, np.int32), class_names=names, images=x)
        for name, (x, y) in zip(("train", "validation"), parts)
    }


def _module_source(module: str) -> Callable:
    """A source whose module's `load(config.data)` reads it; imported on first use (some import TensorFlow Datasets)."""
    return lambda config: importlib.import_module(f"labjax.data.{module}").load(config.data)


# config.data.source -> loader(config) -> {split name: Examples}. Config validation takes its choices from here.
SOURCES: dict[str, Callable] = {
    "synthetic": _synthetic,
    "masks": _module_source("masks"),
    "folder": _module_source("folders"),
    "idx": _module_source("idx"),
    "cifar": _module_source("cifar"),
    "tiny_imagenet": _module_source("tiny_imagenet"),
    "tfds": _module_source("tfds_source"),
}


def _load_source(config) -> dict[str, Examples]:
    if config.data.source not in SOURCES:
        raise ConfigError(f"config.data.source={config.data.source!r} is unknown; valid: {tuple(SOURCES)}.")
    return SOURCES[config.data.source](config)


def _decode_into_memory(examples: Examples, data, channels: int, name: str) -> Examples:
    """Decodes a file split into memory when it fits (config.data.cache), dropping bad files if asked."""
    if examples.files is None:
        return examples
    size = data.image_size
    per_image = (size * size if size else 256 * 256) * channels
    if data.cache == "stream" or (data.cache == "auto" and per_image * len(examples) > MEMORY_LIMIT_BYTES):
        if not size:
            raise ConfigError(
                f"config.data.cache={data.cache!r} streams the {name} images from disk, which needs one image "
                "size: set config.data.image_size."
            )
        return examples
    images, kept = decode.decode_files(examples.files, channels, size, data.skip_bad_files)
    examples = examples.take(kept)
    return Examples(labels=examples.labels, class_names=examples.class_names, images=images)


def _native_channels(examples: Examples) -> int:
    if examples.images is not None:
        return examples.images.shape[-1]
    return decode.file_channels(str(examples.files[0]))


def load(config, model_preprocessing: str = "zero_one") -> Data:
    """Reads, relabels, splits and balances the data config.data describes; checks it fits the task.

    `model_preprocessing` is what data.normalize="model" means: the normalisation the model
    (and its pretrained weights) expects.
    """
    data = config.data
    normalize = model_preprocessing if data.normalize == "model" else data.normalize
    source = _load_source(config)
    source = {name: labels.apply(examples, data.merge, data.keep) for name, examples in source.items()}
    first = next(iter(source.values()))
    channels = data.channels or _native_channels(first)
    source = {name: _decode_into_memory(ex, data, channels, name) for name, ex in source.items()}
    parts = splits.make_splits(source, data, config.seed)
    train = parts["train"]
    class_names = train.class_names
    generated = data.source in ("synthetic", "masks")  # there num_classes is the source's own, before merge/keep
    if data.num_classes and not generated and data.num_classes != len(class_names):
        raise ConfigError(
            f"config.data.num_classes={data.num_classes} but the data has {len(class_names)} classes "
            f"({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''}); set num_classes=0 "
            "(take it from the data) or fix class_names / merge / keep."
        )
    dense = train.dense_labels
    if dense != (config.task == "segmentation"):
        raise ConfigError(
            f"config.task={config.task!r} but config.data.source={data.source!r} gives "
            f"{'per-pixel masks' if dense else 'one label per image'}; use a "
            f"{'segmentation' if dense else 'classification'} config or another source."
        )
    copies = np.zeros(0, np.int64)
    weights = None
    if data.balance == "oversample":
        if dense:
            raise ConfigError("config.data.balance='oversample' needs one class per image; use 'weights' for masks.")
        copies = splits.oversample(train.labels, config.seed)
    elif data.balance == "weights":
        weights = splits.class_weights(train.labels, len(class_names))
    if data.copy_fraction:
        copies = np.concatenate([copies, splits.extra_copies(len(train), data.copy_fraction, config.seed)])
    mean = std = None
    if normalize == "mean_std":
        mean, std = _mean_std(train, data, channels)
    context = augment.Context(dense_labels=dense, ignore_label=-1, mean=mean, std=std)
    result = Data(parts, class_names, channels, context, copies, weights, normalize)
    result.input_shape = _input_shape(result, config)
    return result


def _mean_std(train: Examples, data, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the train split after preprocessing, in [0, 255] units."""
    sample = train.take(np.arange(min(len(train), 5000)))
    pre = augment.build(data.preprocess, "data.preprocess", augment.Context(dense_labels=sample.dense_labels))
    ds = _examples_dataset(sample, np.arange(len(sample)), channels, data.image_size)
    ds = ds.map(lambda f: pre(f, tf.zeros([2], tf.int64))["image"], num_parallel_calls=tf.data.AUTOTUNE)
    total, total_sq, count = 0.0, 0.0, 0
    for images in ds.batch(256).as_numpy_iterator():
        pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
        total, total_sq, count = total + pixels.sum(0), total_sq + (pixels**2).sum(0), count + len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _input_shape(data: Data, config) -> tuple[int, int, int]:
    batch = next(eval_batches(data, "validation", config, global_batch=1))
    return tuple(int(d) for d in batch["image"].shape[1:])


def _examples_dataset(examples: Examples, order: np.ndarray, channels: int, size: int) -> tf.data.Dataset:
    """{"image": float32 (H,W,C) in [0,255], "label"} for examples[order], decoding files if needed."""
    labels_ds = tf.data.Dataset.from_tensor_slices(examples.labels[order])
    if examples.images is not None:
        images_ds = tf.data.Dataset.from_tensor_slices(examples.images[order])
    else:
        images_ds = tf.data.Dataset.from_tensor_slices(examples.files[order].astype(str)).map(
            lambda path: decode.decode_file(path, channels, size), num_parallel_calls=tf.data.AUTOTUNE
        )

    def to_features(image, label):
        image = tf.cast(image, tf.float32)
        if image.shape[-1] != channels:  # e.g. a gray data set feeding an RGB model
            image = tf.image.grayscale_to_rgb(image) if channels == 3 else tf.image.rgb_to_grayscale(image)
        return {"image": image, "label": tf.cast(label, tf.int32)}

    return tf.data.Dataset.zip(images_ds, labels_ds).map(to_features, num_parallel_calls=tf.data.AUTOTUNE)


def steps_per_epoch(data: Data, global_batch: int) -> int:
    steps = data.num_train() // global_batch
    if steps == 0:
        raise ConfigError(
            f"config.batch_size={global_batch} exceeds the {data.num_train()} training examples; lower batch_size."
        )
    return steps


def epoch_order(data: Data, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sequence of entries: 0..N-1 are train examples, N.. their copies."""
    return np.random.default_rng([seed, epoch]).permutation(data.num_train())


def train_batches(
    data: Data,
    config,
    epoch: int,
    first_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    steps_per_chunk: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each global training batch of `epoch`, from `first_step` on.

    The last incomplete batch is dropped so every step has the same shape (it is a
    different one each epoch). Copies go through config.data.copy_augment as well.
    With `steps_per_chunk` k > 1, k consecutive batches come stacked (k, B, ...), the
    epoch's last chunk shorter: one host round trip per chunk (steps_per_execution).
    """
    global_batch = config.batch_size
    steps = steps_per_epoch(data, global_batch)
    order = epoch_order(data, config.seed, epoch)[: steps * global_batch].reshape(steps, process_count, -1)
    entries = order[first_step:, process_index].reshape(-1)
    train = data.splits["train"]
    n = len(train)
    sources = np.concatenate([np.arange(n), data.copies]).astype(np.int64)  # entry -> the example it shows
    example_ids = sources[entries]
    cfg = config.data
    pre = augment.build(cfg.preprocess, "data.preprocess", data.context)
    aug = augment.build(cfg.augment, "data.augment", data.context)
    copy_aug = augment.build(cfg.copy_augment, "data.copy_augment", data.context)
    epoch_word = tf.constant(config.seed * _SEED_STRIDE + epoch, tf.int64)

    def transform(features, entry):
        seed = tf.stack([epoch_word, entry])
        features = aug(pre(features, seed), seed)
        if len(data.copies):
            features = tf.cond(entry >= n, lambda: copy_aug(features, seed + [0, 1 << 40]), lambda: features)
        features["image"] = augment.normalize(features["image"], data.normalize, data.context)
        return features

    ds = tf.data.Dataset.zip(
        _examples_dataset(train, example_ids, data.channels, cfg.image_size),
        tf.data.Dataset.from_tensor_slices(entries.astype(np.int64)),
    )
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(global_batch // process_count, drop_remainder=True)
    if cfg.mixup or cfg.cutmix:
        ds = ds.enumerate(first_step).map(
            lambda step, batch: augment.mix_batch(batch, tf.stack([epoch_word, -1 - step]), cfg.mixup, cfg.cutmix),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if steps_per_chunk > 1:
        ds = ds.batch(steps_per_chunk)
    return ds.prefetch(2).as_numpy_iterator()


def eval_batches(
    data: Data, split: str, config, global_batch: int | None = None, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` once, in order; the last batch is padded and marked by 'valid' = False.

    The batches never change within a run (no augmentation, a fixed order), so a split whose
    pixels take at most EVAL_CACHE_BYTES is prepared once and kept: a small model's epoch
    otherwise spends longer building the validation pipeline than validating.
    """
    global_batch = global_batch or config.eval_batch_size
    key = (split, global_batch, process_index, process_count)
    if key in data.eval_cache:
        return iter(data.eval_cache[key])
    batches = _eval_batches(data, split, config, global_batch, process_index, process_count)
    pixels = len(data.splits[split]) * int(np.prod(data.input_shape)) * 4
    if pixels > EVAL_CACHE_BYTES or not all(data.input_shape):
        return batches
    data.eval_cache[key] = list(batches)
    return iter(data.eval_cache[key])


def _eval_batches(data: Data, split: str, config, global_batch: int, process_index: int, process_count: int):
    local_batch = global_batch // process_count
    examples = data.splits[split]
    cfg = config.data
    pre = augment.build(cfg.preprocess, "data.preprocess", data.context)

    def transform(features):
        features = pre(features, tf.zeros([2], tf.int64))
        features["image"] = augment.normalize(features["image"], data.normalize, data.context)
        return features

    ds = _examples_dataset(examples, np.arange(len(examples)), data.channels, cfg.image_size)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for batch in ds.batch(global_batch).prefetch(2).as_numpy_iterator():
        n = len(batch["label"])
        batch["valid"] = np.ones(n, bool)
        if n < global_batch:
            batch = {
                k: np.concatenate([v, np.zeros((global_batch - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()
            }
        lo = process_index * local_batch
        yield {k: v[lo : lo + local_batch] for k, v in batch.items()}


def class_counts(examples: Examples, num_classes: int) -> list[int]:
    """Examples per class (pixels per class for masks)."""
    valid = examples.labels[(examples.labels >= 0) & (examples.labels < num_classes)]
    return np.bincount(valid.ravel(), minlength=num_classes).tolist()
