"""What differs between classification and segmentation: loss, metrics and their summary.

Labels are class ids: (B,) for classification, (B,H,W) for segmentation. `mask` marks what
counts: padded examples and the ignore label are excluded from the loss and every metric,
so metrics over a split are exact.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics


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
class ConfusionMatrix(metrics.Metric):
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
class Correct(metrics.Average):
    """Fraction of counted labels whose arg-max prediction is right."""

    @classmethod
    def from_model_output(cls, *, logits, labels, mask, **_) -> "Correct":
        hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return super().from_model_output(hits, mask=mask)


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: Correct


TOP_K = 5


@flax.struct.dataclass
class TopKCorrect(metrics.Average):
    """Fraction of counted labels whose true class is among the TOP_K highest logits (ties count as hits)."""

    @classmethod
    def from_model_output(cls, *, logits, labels, mask, **_) -> "TopKCorrect":
        classes = jnp.arange(logits.shape[-1])
        true_logit = jnp.sum(jnp.where(labels[..., None] == classes, logits, 0.0), axis=-1)
        higher = jnp.sum(logits > true_logit[..., None], axis=-1)  # the true class's rank, 0-based
        return super().from_model_output((higher < TOP_K).astype(jnp.float32), mask=mask)


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: Correct
    top5: TopKCorrect
    confusion: ConfusionMatrix


def summarize_confusion(matrix: np.ndarray) -> dict[str, float]:
    """Accuracy and mean IoU from a confusion matrix (host side, exact).

    mIoU averages over the classes present in labels or predictions, as Keras' MeanIoU and
    scenic do: a class absent from both has no defined IoU.
    """
    matrix = np.asarray(matrix, np.float64)
    true_pos = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - true_pos
    present = union > 0
    iou = np.where(present, true_pos / np.maximum(union, 1), np.nan)
    return {
        "accuracy": float(true_pos.sum() / max(matrix.sum(), 1)),
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "iou_per_class": [None if np.isnan(v) else float(v) for v in iou],
    }


def eval_summary(task: str, computed: dict) -> dict:
    """Scalars to log from a computed EvalMetrics (names without the 'val_' prefix).

    Cheap by design (train.py logs them every epoch); labjax.metrics derives the full set.
    top5 only where it says something: classification with more than TOP_K classes.
    """
    summary = {"loss": float(computed["loss"]), "accuracy": float(computed["accuracy"])}
    if task == "segmentation":
        summary["miou"] = summarize_confusion(computed["confusion"])["miou"]
    elif len(computed["confusion"]) > TOP_K:
        summary["top5"] = float(computed["top5"])
    return summary
