"""Evaluation metrics from a confusion matrix summed over a whole split (host side, exact).

Rows of a confusion matrix are true classes, columns predicted classes; padded examples and
ignored labels never enter it. A metric that is undefined (a class absent from both labels and
predictions, a rate with no examples to count) is None, so JSON holds no NaN. Conventions follow
sklearn.metrics: precision and recall of a class that is never predicted / never present are 0;
macro averages run over the classes present in labels or predictions (sklearn's default labels);
balanced accuracy and mean class accuracy average recall over the classes present in labels.
"""

import numpy as np

from labjax.errors import ConfigError


def _ratio(numerator: np.ndarray, denominator: np.ndarray, undefined=0.0) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), undefined)


def _listed(values: np.ndarray, defined: np.ndarray) -> list[float | None]:
    return [float(v) if ok else None for v, ok in zip(values, defined)]


def _rate(part: float, rest: float) -> float | None:
    """part / (part + rest); None when there is nothing to count."""
    return float(part / (part + rest)) if part + rest else None


def _counts(confusion) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives and support per class."""
    matrix = np.asarray(confusion, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {matrix.shape}")
    true_pos = np.diag(matrix)
    return true_pos, matrix.sum(0) - true_pos, matrix.sum(1) - true_pos, matrix.sum(1)


def classification_metrics(confusion, class_names: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, macro and weighted averages, balanced accuracy."""
    true_pos, false_pos, false_neg, support = _counts(confusion)
    total = support.sum()
    present = true_pos + false_pos + false_neg > 0  # in labels or predictions
    precision = _ratio(true_pos, true_pos + false_pos)
    recall = _ratio(true_pos, support)
    f1 = _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg)
    labelled = support > 0
    per_class = {
        name: {
            "precision": float(p) if ok else None,
            "recall": float(r) if ok else None,
            "f1": float(f) if ok else None,
            "support": int(s),
        }
        for name, p, r, f, s, ok in zip(class_names, precision, recall, f1, support, present)
    }
    return {
        "accuracy": float(true_pos.sum() / total) if total else None,
        "balanced_accuracy": float(recall[labelled].mean()) if labelled.any() else None,
        "macro_precision": float(precision[present].mean()) if present.any() else None,
        "macro_recall": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "weighted_f1": float((f1 * support).sum() / total) if total else None,
        "per_class": per_class,
    }


def binary_metrics(confusion, positive: int, scores=None, labels=None) -> dict:
    """Rates with `positive` as the positive class (the other class negative), F1 and ROC AUC.

    `scores` are the positive class's probabilities and `labels` the class ids of every example
    of the split (ROC AUC needs them all; None without them or when only one class occurs).
    """
    matrix = np.asarray(confusion, np.float64)
    if matrix.shape != (2, 2):
        raise ValueError(f"binary metrics need a 2x2 confusion matrix, got shape {matrix.shape}")
    negative = 1 - positive
    tp, fn = matrix[positive, positive], matrix[positive, negative]
    fp, tn = matrix[negative, positive], matrix[negative, negative]
    auc = None
    if scores is not None and labels is not None:
        auc = roc_auc(np.asarray(labels) == positive, np.asarray(scores))
    return {
        "tpr": _rate(tp, fn),
        "tnr": _rate(tn, fp),
        "fpr": _rate(fp, tn),
        "fnr": _rate(fn, tp),
        "precision": _rate(tp, fp) or 0.0,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None,
        "roc_auc": auc,
    }


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: the Mann-Whitney U statistic, ties counted half (sklearn's value).

    None when the examples hold only one of the two classes (the curve is undefined).
    """
    is_positive = np.asarray(is_positive, bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if is_positive.shape != scores.shape:
        raise ValueError(f"roc_auc: {is_positive.size} labels but {scores.size} scores")
    num_pos = int(is_positive.sum())
    num_neg = is_positive.size - num_pos
    if not num_pos or not num_neg:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2  # 1-based rank of each distinct score, ties averaged
    rank_sum = average_rank[inverse][is_positive].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def segmentation_metrics(confusion, class_names: list[str]) -> dict:
    """Pixel accuracy, mean class accuracy, IoU and Dice per class and their means, frequency-weighted IoU.

    IoU and Dice of a class absent from both labels and predictions are undefined (None) and left
    out of the means, as Keras' MeanIoU and scenic do.
    """
    true_pos, false_pos, false_neg, support = _counts(confusion)
    total = support.sum()
    union = true_pos + false_pos + false_neg
    present = union > 0
    labelled = support > 0
    iou = _ratio(true_pos, union)
    dice = _ratio(2 * true_pos, true_pos + union)
    class_accuracy = _ratio(true_pos, support)
    return {
        "pixel_accuracy": float(true_pos.sum() / total) if total else None,
        "mean_class_accuracy": float(class_accuracy[labelled].mean()) if labelled.any() else None,
        "miou": float(iou[present].mean()) if present.any() else None,
        "fwiou": float((support * iou).sum() / total) if total else None,
        "mean_dice": float(dice[present].mean()) if present.any() else None,
        "iou_per_class": _listed(iou, present),
        "dice_per_class": _listed(dice, present),
        "per_class": {
            name: {
                "iou": float(i) if ok else None,
                "dice": float(d) if ok else None,
                "accuracy": float(a) if has else None,
                "support": int(s),
            }
            for name, i, d, a, s, ok, has in zip(class_names, iou, dice, class_accuracy, support, present, labelled)
        },
    }


def resolve_positive_class(value, class_names: list[str], key: str = "config.eval_positive_class") -> int:
    """'' -> 1 (the second class), a class name or an index -> its index; anything else a clear error."""
    text = str(value).strip()
    if text == "":
        return 1
    if text in class_names:
        return class_names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
        return int(text)
    raise ConfigError(
        f"{key}={value!r} names no class; use a class name ({', '.join(class_names)}), an index "
        f"0..{len(class_names) - 1}, or '' for the second class."
    )
