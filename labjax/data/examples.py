"""Examples: what every data source returns for one split, before any pipeline step.

A split holds its labels in memory and its images either decoded in memory (array sources
such as IDX, CIFAR, TFDS, synthetic) or as file paths decoded on the fly by tf.data (folder
sources whose decoded images would not fit in memory). Label operations, splits, folds and
balancing work on indices, so they never need the pixels.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Examples:
    """One split: int32 labels (N,) class ids or (N,H,W) masks, class names, and images or files."""

    labels: np.ndarray
    class_names: list[str]
    images: np.ndarray | None = None  # uint8 (N,H,W,C), decoded
    files: np.ndarray | None = None  # str paths (N,), decoded by labjax.data.decode

    def __post_init__(self):
        if (self.images is None) == (self.files is None):
            raise ValueError("Examples needs exactly one of images or files")
        if len(self.labels) != len(self.images if self.images is not None else self.files):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dense_labels(self) -> bool:
        """True for segmentation masks, False for one class id per example."""
        return self.labels.ndim > 1

    def take(self, indices: np.ndarray) -> "Examples":
        """The examples at `indices` (in that order; repeats allowed)."""
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self,
            labels=self.labels[indices],
            images=None if self.images is None else self.images[indices],
            files=None if self.files is None else self.files[indices],
        )

    @staticmethod
    def concatenate(parts: list["Examples"]) -> "Examples":
        """Pools splits of one source (same class names, same storage kind)."""
        first = parts[0]
        if any(p.class_names != first.class_names for p in parts):
            raise ValueError("cannot pool splits with different class names")
        return Examples(
            labels=np.concatenate([p.labels for p in parts]),
            class_names=first.class_names,
            images=None if first.images is None else np.concatenate([p.images for p in parts]),
            files=None if first.files is None else np.concatenate([p.files for p in parts]),
        )
