"""tf.data input: in-memory splits -> shuffled, augmented, batched host arrays.

Every random choice is a pure function of (seed, epoch, example index), so a resumed run
sees exactly the batches an uninterrupted one would, on any number of devices or hosts.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from labjax.data import masks, synthetic

tf.config.set_visible_devices([], "GPU")  # TensorFlow must leave the accelerators to JAX


@dataclasses.dataclass
class Split:
    """One split held in memory: uint8 images (N,H,W,C) and int32 labels (N,) or (N,H,W)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)


def load_splits(config) -> dict[str, Split]:
    """The 'train' and 'validation' splits that config.data describes."""
    data = config.data
    if data.source == "synthetic":
        classify = config.task == "classification"
        # Classification labels the dominant object of a scene, so scenes need one more class.
        scene_classes = data.num_classes + 1 if classify else data.num_classes
        kwargs = dict(seed=config.seed, size=data.image_size, num_classes=scene_classes)
        names = synthetic.segmentation_class_names(scene_classes)
        train = synthetic.make_segmentation_arrays(0, data.train_size, **kwargs)
        val = synthetic.make_segmentation_arrays(data.train_size, data.val_size, **kwargs)
        if classify:
            train, val = (_dominant_object(*arrays, scene_classes) for arrays in (train, val))
            names = names[1:]
        return {
            "train": Split(train[0], train[1].astype(np.int32), names),
            "validation": Split(val[0], val[1].astype(np.int32), names),
        }
    if data.source == "folder":
        images, labels, keys = masks.load_mask_folder(data)
        if len(images) <= data.train_size:
            raise ValueError(
                f"config.data.train_size={data.train_size} leaves no validation images: the folder "
                f"{data.path} holds {len(images)} pairs; lower train_size."
            )
        names = [f"class_{i}" for i in range(data.num_classes)]
        n = data.train_size
        return {
            "train": Split(images[:n], labels[:n], names),
            "validation": Split(images[n:], labels[n:], names),
        }
    raise ValueError(f"config.data.source={data.source!r} is unknown; valid: synthetic, folder.")


def _dominant_object(images: np.ndarray, masks: np.ndarray, scene_classes: int):
    """Classification from the segmentation scenes: the object class covering most pixels.

    Labels are 0..K-1 for scene classes 1..K (background is not a class): telling shapes
    and textures apart in clutter, a real task for a classifier.
    """
    counts = np.stack([(masks == c).sum((1, 2)) for c in range(1, scene_classes)], -1)
    return images, counts.argmax(-1)


def _normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8 -> float32 in [-1, 1], the range MobileNet-family weights expect."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _augment(image, label, seed, flip: bool, dense_labels: bool):
    if flip:
        do_flip = tf.random.stateless_uniform([], seed=seed) < 0.5
        image = tf.where(do_flip, tf.reverse(image, [1]), image)
        if dense_labels:
            label = tf.where(do_flip, tf.reverse(label, [1]), label)
    return image, label


def steps_per_epoch(split: Split, global_batch: int) -> int:
    steps = len(split) // global_batch
    if steps == 0:
        raise ValueError(
            f"config.batch_size={global_batch} exceeds the {len(split)} training examples; lower batch_size."
        )
    return steps


def train_batches(
    split: Split,
    config,
    epoch: int,
    first_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each global training batch of `epoch`, from `first_step` on.

    The epoch's order is a seeded permutation; the last incomplete batch is dropped so that
    every step has the same shape (it is a different one each epoch).
    """
    global_batch = config.batch_size
    steps = steps_per_epoch(split, global_batch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(split))
    order = order[: steps * global_batch].reshape(steps, process_count, -1)
    local = order[first_step:, process_index].reshape(-1)
    images, labels = tf.constant(split.images), tf.constant(split.labels)
    dense = split.labels.ndim > 1
    flip = bool(config.data.flip)

    def load(index):
        seed = tf.stack([tf.constant(config.seed * 1_000_003 + epoch, tf.int64), index])
        image, label = _augment(tf.gather(images, index), tf.gather(labels, index), seed, flip, dense)
        return {"image": _normalize(image), "label": label}

    ds = tf.data.Dataset.from_tensor_slices(local.astype(np.int64))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(global_batch // process_count, drop_remainder=True).prefetch(2)
    return ds.as_numpy_iterator()


def eval_batches(
    split: Split, global_batch: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order; the last batch is padded and marked by 'valid' = False."""
    local_batch = global_batch // process_count
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.map(lambda image, label: {"image": _normalize(image), "label": label})
    for batch in ds.batch(global_batch).prefetch(2).as_numpy_iterator():
        n = len(batch["label"])
        batch["valid"] = np.ones(n, bool)
        if n < global_batch:
            batch = {
                k: np.concatenate([v, np.zeros((global_batch - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()
            }
        lo = process_index * local_batch
        yield {k: v[lo : lo + local_batch] for k, v in batch.items()}
