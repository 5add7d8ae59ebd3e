"""Evaluation metric arithmetic against independent implementations: sklearn.metrics, NumPy, Keras' MeanIoU.

Random predictions and labels, with classes absent from the labels, from the predictions and
from both, padded examples and ignored labels, through the same device metrics the eval step uses.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

from labjax import metrics, tasks

NAMES = [f"c{i}" for i in range(7)]


def _confusion(labels, preds, num_classes):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


def _classification_case(seed, num_classes=7, n=300):
    """Labels without class 5; predictions without class 2; class 6 in neither."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2, 3, 4], n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    preds = np.where(rng.random(n) < 0.6, labels, rng.choice([0, 1, 3, 4, 5], n))
    preds[preds == 2] = 5
    return labels, preds


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # class 5, on purpose
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    labels, preds = _classification_case(seed)
    ours = metrics.classification_metrics(_confusion(labels, preds, 7), NAMES)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert ours["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, preds))
    # sklearn's defaults: the labels present in y_true or y_pred; 0 for a 0/0 precision or recall
    assert ours["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro", zero_division=0))
    assert ours["weighted_f1"] == pytest.approx(sk.f1_score(labels, preds, average="weighted", zero_division=0))
    assert ours["macro_precision"] == pytest.approx(sk.precision_score(labels, preds, average="macro", zero_division=0))
    assert ours["macro_recall"] == pytest.approx(sk.recall_score(labels, preds, average="macro", zero_division=0))
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, preds, labels=range(7), zero_division=0)
    for i, name in enumerate(NAMES):
        row = ours["per_class"][name]
        assert row["support"] == support[i]
        if i == 6:  # in neither labels nor predictions: undefined, not a zero in the averages
            assert row["precision"] is row["recall"] is row["f1"] is None
        else:
            assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
    assert ours["per_class"]["c5"]["recall"] == 0.0 and ours["per_class"]["c2"]["precision"] == 0.0


@pytest.mark.parametrize("positive", [0, 1])
def test_binary_metrics_match_sklearn_including_roc_auc_with_ties(positive):
    rng = np.random.default_rng(positive)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(0.5 + 0.25 * (labels == positive) + rng.normal(0, 0.3, 400), 0, 1)
    scores = np.round(scores, 1)  # many tied scores: ROC AUC counts a tie as half
    preds = np.where(scores >= 0.5, positive, 1 - positive)
    ours = metrics.binary_metrics(_confusion(labels, preds, 2), positive, scores, labels)
    tpr = sk.recall_score(labels, preds, pos_label=positive)
    tnr = sk.recall_score(labels, preds, pos_label=1 - positive)
    assert ours["tpr"] == pytest.approx(tpr) and ours["fnr"] == pytest.approx(1 - tpr)
    assert ours["tnr"] == pytest.approx(tnr) and ours["fpr"] == pytest.approx(1 - tnr)
    assert ours["precision"] == pytest.approx(sk.precision_score(labels, preds, pos_label=positive))
    assert ours["f1"] == pytest.approx(sk.f1_score(labels, preds, pos_label=positive))
    assert ours["roc_auc"] == pytest.approx(sk.roc_auc_score(labels == positive, scores), abs=1e-12)
    assert 0.5 < ours["roc_auc"] < 1.0


def test_roc_auc_is_undefined_with_one_class_and_exact_at_the_extremes():
    assert metrics.roc_auc(np.ones(5, bool), np.linspace(0, 1, 5)) is None
    assert metrics.roc_auc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.roc_auc(np.array([1, 1, 0, 0], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert metrics.roc_auc(np.array([1, 0], bool), np.array([0.5, 0.5])) == 0.5


def test_binary_rates_without_examples_of_a_class_are_none():
    only_negatives = np.array([[5, 3], [0, 0]])  # positive = 1: no positive examples
    rates = metrics.binary_metrics(only_negatives, 1)
    assert rates["tpr"] is None and rates["fnr"] is None
    assert rates["tnr"] == pytest.approx(5 / 8) and rates["roc_auc"] is None


def test_top5_accuracy_under_masks_matches_sklearn():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(64, 9)).astype(np.float32)
    labels = rng.integers(0, 9, 64)
    valid = rng.random(64) > 0.25  # padded examples must not count
    mask = tasks.label_mask(jnp.asarray(labels), jnp.asarray(valid), 9)
    ours = tasks.TopKCorrect.from_model_output(logits=jnp.asarray(logits), labels=jnp.asarray(labels), mask=mask)
    expected = sk.top_k_accuracy_score(labels[valid], logits[valid], k=5, labels=range(9))
    assert float(ours.compute()) == pytest.approx(expected)
    assert 0.4 < expected < 0.8  # neither trivially 0 nor 1


def test_eval_summary_keeps_its_keys_and_adds_top5_only_beyond_five_classes():
    computed = {"loss": 0.5, "accuracy": 0.75, "top5": 0.9, "confusion": np.eye(3, dtype=int)}
    assert set(tasks.eval_summary("classification", computed)) == {"loss", "accuracy"}
    computed["confusion"] = np.eye(8, dtype=int)
    assert tasks.eval_summary("classification", computed)["top5"] == 0.9
    assert set(tasks.eval_summary("segmentation", computed)) == {"loss", "accuracy", "miou"}


def _segmentation_oracle(labels, preds, num_classes):
    """Per-class IoU, Dice and accuracy computed directly on the pixel arrays (no confusion matrix)."""
    iou, dice, accuracy, support = [], [], [], []
    for c in range(num_classes):
        truth, guess = labels == c, preds == c
        inter, union = np.sum(truth & guess), np.sum(truth | guess)
        iou.append(inter / union if union else np.nan)
        dice.append(2 * inter / (truth.sum() + guess.sum()) if union else np.nan)
        accuracy.append(inter / truth.sum() if truth.sum() else np.nan)
        support.append(truth.sum())
    return np.array(iou), np.array(dice), np.array(accuracy), np.array(support)


@pytest.mark.parametrize("ignore", [255, -1])
def test_segmentation_metrics_match_numpy_and_keras_with_ignored_and_padded_pixels(ignore):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(abs(ignore))
    num_classes, shape = 6, (6, 16, 16)
    labels = rng.choice([0, 1, 2, 3, 5], shape, p=[0.5, 0.2, 0.15, 0.1, 0.05])  # 4 absent from the labels
    logits = rng.normal(size=shape + (num_classes,)).astype(np.float32)
    logits[..., 5] -= 10.0  # 5 never predicted
    logits[..., 1] += 3.0 * (labels == 1)  # some skill, so IoUs differ
    labels[:, :3, :] = ignore  # an ignored band
    valid = np.array([True, True, True, True, False, False])  # two padded examples
    mask = tasks.label_mask(jnp.asarray(labels), jnp.asarray(valid), num_classes)
    confusion = tasks.ConfusionMatrix.from_model_output(logits=logits, labels=jnp.asarray(labels), mask=mask)
    ours = metrics.segmentation_metrics(np.asarray(confusion.compute()), NAMES[:num_classes])

    counted = valid[:, None, None] & (labels >= 0) & (labels < num_classes)
    truth, guess = labels[counted], logits.argmax(-1)[counted]
    iou, dice, accuracy, support = _segmentation_oracle(truth, guess, num_classes)
    assert ours["pixel_accuracy"] == pytest.approx(np.mean(truth == guess))
    assert ours["mean_class_accuracy"] == pytest.approx(np.nanmean(accuracy))
    assert ours["miou"] == pytest.approx(np.nanmean(iou))
    assert ours["fwiou"] == pytest.approx(np.nansum(support / support.sum() * iou))
    assert ours["mean_dice"] == pytest.approx(np.nanmean(dice))
    for got, want in ((ours["iou_per_class"], iou), (ours["dice_per_class"], dice)):
        assert [v is None for v in got] == list(np.isnan(want))
        np.testing.assert_allclose([v for v in got if v is not None], want[~np.isnan(want)])
    assert ours["per_class"]["c4"]["accuracy"] is None and ours["per_class"]["c4"]["support"] == 0
    keras_miou = keras.metrics.MeanIoU(num_classes=num_classes)
    keras_miou.update_state(truth, guess)
    assert ours["miou"] == pytest.approx(float(keras_miou.result()), abs=1e-6)
    assert sum(row["support"] for row in ours["per_class"].values()) == counted.sum() == 4 * 13 * 16


def test_positive_class_resolves_names_and_indices_and_rejects_others():
    names = ["cat", "dog"]
    assert metrics.resolve_positive_class("", names) == 1
    assert metrics.resolve_positive_class("cat", names) == 0
    assert metrics.resolve_positive_class("1", names) == 1
    with pytest.raises(ValueError, match=r"config.eval_positive_class='bird' names no class; use a class name \(cat"):
        metrics.resolve_positive_class("bird", names)
    with pytest.raises(ValueError, match="index 0..1"):
        metrics.resolve_positive_class(2, names)
