"""Metric arithmetic against independent oracles (NumPy and Keras' MeanIoU)."""

import jax.numpy as jnp
import numpy as np
import pytest

from labjax import tasks


def _random_case(seed, num_classes=5, shape=(6, 8, 8)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape)
    labels[labels == 3] = 0  # class 3 absent from the labels
    logits = rng.normal(size=shape + (num_classes,)).astype(np.float32)
    valid = rng.random(shape[0]) > 0.3
    return logits, labels, valid


def test_confusion_matrix_matches_numpy_and_excludes_padding_and_ignored():
    logits, labels, valid = _random_case(0)
    labels[0, 0, :4] = 255  # ignore label: not a class id
    mask = tasks.label_mask(jnp.asarray(labels), jnp.asarray(valid), 5)
    matrix = tasks.ConfusionMatrix.from_model_output(logits=logits, labels=jnp.asarray(labels), mask=mask).compute()
    expected = np.zeros((5, 5), np.int64)
    preds = logits.argmax(-1)
    for i in np.flatnonzero(valid):
        for t, p in zip(labels[i].ravel(), preds[i].ravel()):
            if t < 5:
                expected[t, p] += 1
    np.testing.assert_array_equal(np.asarray(matrix), expected)


def test_miou_matches_keras_mean_iou():
    keras = pytest.importorskip("keras")
    logits, labels, _ = _random_case(1)
    matrix = np.zeros((5, 5))
    np.add.at(matrix, (labels.ravel(), logits.argmax(-1).ravel()), 1)
    keras_metric = keras.metrics.MeanIoU(num_classes=5)
    keras_metric.update_state(labels.ravel(), logits.argmax(-1).ravel())
    ours = tasks.summarize_confusion(matrix)
    assert ours["miou"] == pytest.approx(float(keras_metric.result()), abs=1e-6)
    assert ours["accuracy"] == pytest.approx(np.mean(labels == logits.argmax(-1)))


@pytest.mark.slow
def test_masked_loss_and_accuracy_are_exact_means_over_counted_labels():
    logits, labels, valid = _random_case(2)
    mask = tasks.label_mask(jnp.asarray(labels), jnp.asarray(valid), 5)
    per = tasks.per_label_loss(jnp.asarray(logits), jnp.asarray(labels), mask)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    expected = picked[valid].mean()
    assert float(tasks.mean_loss(jnp.asarray(logits), jnp.asarray(labels), mask)) == pytest.approx(expected, rel=1e-5)
    assert float(per.sum() / mask.sum()) == pytest.approx(expected, rel=1e-5)
    correct = tasks.Correct.from_model_output(logits=logits, labels=jnp.asarray(labels), mask=mask).compute()
    assert float(correct) == pytest.approx(np.mean((logits.argmax(-1) == labels)[valid]))
