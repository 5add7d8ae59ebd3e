"""What differs between classification and segmentation: loss, metrics and their summary.

Labels are class ids: (B,) for classification, (B,H,W) for segmentation. `mask` marks what
counts: padded examples and the ignore label are excluded from the loss and every metric,
so metrics over a split are exact.
"""

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from labjax import metrics


def label_mask(labels: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
    """True where a label counts: its example is real and its id is a class (not ignored)."""
    valid = valid.reshape(valid.shape + (1,) * (labels.ndim - 1))
    return valid & (labels >= 0) & (labels < num_classes)


def per_label_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy per label (0 where masked); computed in float32.

    With label smoothing s the target is (1 - s) * one_hot + s / classes (Keras' and PyTorch's
    definition), so the loss is logsumexp - (1 - s) * true logit - s * mean logit.
    The true-class logit is picked with a one-hot comparison rather than a gather: on
    CPU the gather's gradient is a scatter, which cost ~7% of a U-Net step at 59 classes.
    """
    logits = logits.astype(jnp.float32)
    classes = jnp.arange(logits.shape[-1])
    picked = jnp.sum(jnp.where(labels[..., None] == classes, logits, 0.0), axis=-1)
    if not (isinstance(smoothing, int | float) and smoothing == 0):  # a traced value (vectorized sweeps) too
        picked = (1 - smoothing) * picked + smoothing * logits.mean(axis=-1)
    loss = jax.nn.logsumexp(logits, axis=-1) - picked
    return jnp.where(mask, loss, 0.0)


def mean_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """The training objective: mean cross-entropy over the labels that count."""
    return per_label_loss(logits, labels, mask).sum() / jnp.maximum(mask.sum(), 1)


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
    """Summed confusion matrix (rows: true class, columns: predicted class)."""

    matrix: jax.Array

    @classmethod
    def from_model_output(cls, *, logits, labels, mask, **_) -> "ConfusionMatrix":
        num_classes = logits.shape[-1]
        pairs = jnp.where(mask, labels, 0) * num_classes + jnp.argmax(logits, -1)
        counts = jnp.bincount(pairs.ravel(), mask.ravel().astype(jnp.int32), length=num_classes**2)
        return cls(counts.reshape(num_classes, num_classes))

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return type(self)(self.matrix + other.matrix)

    def compute(self) -> jax.Array:
        return self.matrix


@flax.struct.dataclass
class Correct(clu_metrics.Average):
    """Fraction of counted labels whose arg-max prediction is right."""

    @classmethod
    def from_model_output(cls, *, logits, labels, mask, **_) -> "Correct":
        hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return super().from_model_output(hits, mask=mask)


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    accuracy: Correct


TOP_K = 5


@flax.struct.dataclass
class TopKCorrect(clu_metrics.Average):
    """Fraction of counted labels whose true class is among the TOP_K highest logits (ties count as hits)."""

    @classmethod
    def from_model_output(cls, *, logits, labels, mask, **_) -> "TopKCorrect":
        classes = jnp.arange(logits.shape[-1])
        true_logit = jnp.sum(jnp.where(labels[..., None] == classes, logits, 0.0), axis=-1)
        higher = jnp.sum(logits > true_logit[..., None], axis=-1)  # the true class's rank, 0-based
        return super().from_model_output((higher < TOP_K).astype(jnp.float32), mask=mask)


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    accuracy: Correct
    top5: TopKCorrect
    confusion: ConfusionMatrix


def summarize_confusion(matrix: np.ndarray) -> dict[str, float]:
    """Accuracy and mean IoU from a confusion matrix (host side, exact), as labjax.metrics computes them.

    mIoU averages over the classes present in labels or predictions, as Keras' MeanIoU and
    scenic do: a class absent from both has no defined IoU. An empty matrix gives 0, not None.
    """
    full = metrics.segmentation_metrics(matrix, [str(i) for i in range(len(matrix))])
    return {
        "accuracy": full["pixel_accuracy"] or 0.0,
        "miou": full["miou"] or 0.0,
        "iou_per_class": full["iou_per_class"],
    }


def _top5(computed: dict) -> float | None:
    """Top-5 accuracy, only where it says something: more than TOP_K classes."""
    return float(computed["top5"]) if len(computed["confusion"]) > TOP_K else None


# The scalars logged after every validation as val_NAME (metrics.jsonl, status.json's `final`, the
# early-stopping and checkpoint monitors), per task: name -> function of a computed EvalMetrics
# (loss, accuracy, top5, confusion); None leaves the scalar out. Cheap by design (logged every
# epoch); evaluation (labjax/evaluate.py) writes these too, beside EVAL_SCALARS.
EPOCH_METRICS: dict[str, dict[str, Callable[[dict], float | None]]] = {
    "classification": {
        "loss": lambda computed: float(computed["loss"]),
        "accuracy": lambda computed: float(computed["accuracy"]),
        "top5": _top5,
    },
    "segmentation": {
        "loss": lambda computed: float(computed["loss"]),
        "accuracy": lambda computed: float(computed["accuracy"]),
        "miou": lambda computed: summarize_confusion(computed["confusion"])["miou"],
    },
}

# The one-number results of evaluating a checkpoint (labjax.metrics' keys), in the column order of
# the eval JSON's printout and all_<split>.csv: per task, and "binary" for two-class classification.
EVAL_SCALARS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "top5", "balanced_accuracy", "macro_f1", "weighted_f1"),
    "binary": ("tpr", "tnr", "fpr", "fnr", "precision", "f1", "roc_auc"),
    "segmentation": ("pixel_accuracy", "mean_class_accuracy", "miou", "fwiou", "mean_dice"),
}

# The report's binary table: its column -> the labjax.metrics key it shows (class 1 positive).
REPORT_BINARY_COLUMNS: dict[str, str] = {
    "TPR": "tpr",
    "TNR": "tnr",
    "FPR": "fpr",
    "FNR": "fnr",
    "accuracy": "accuracy",
    "F1": "f1",
}

# The validation metric a report ranks runs by when the run's checkpoint.best_metric was not logged.
PRIMARY_METRICS = ("val_miou", "val_accuracy")


def logged_metrics(task: str) -> list[str]:
    """The names a run logs each epoch (train_* and val_*): what a monitor or best_metric may name."""
    train = [f"train_{name}" for name in TrainMetrics.__annotations__]
    return train + [f"val_{name}" for name in EPOCH_METRICS[task]]


def eval_summary(task: str, computed: dict) -> dict:
    """Scalars to log from a computed EvalMetrics (names without the 'val_' prefix): EPOCH_METRICS[task]."""
    values = {name: metric(computed) for name, metric in EPOCH_METRICS[task].items()}
    return {name: value for name, value in values.items() if value is not None}
