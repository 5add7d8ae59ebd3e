"""Evaluation: the jitted evaluation step over padded batches, and exact metrics over a whole split.

Training validates each epoch with it; `--mode=eval` (labjax/evaluate.py) runs it on a saved
checkpoint. Padded examples carry valid=False and count nowhere, so metrics are exact.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from labjax import parallel, tasks


def make_eval_step(mesh, model, num_classes: int):
    """The jitted evaluation step of eval_step_fn over a padded batch, sharded over 'data'.

    Metrics come back replicated, so every process can read them; outputs stay sharded.
    """
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(
        eval_step_fn(model, num_classes), in_shardings=(replicated, sharded), out_shardings=(replicated, sharded)
    )


def eval_step_fn(model, num_classes: int):
    """The pure evaluation step over a padded batch; returns (EvalMetrics, outputs).

    outputs: 'prediction' (arg-max class ids), 'label' and 'valid' as given, and for
    classification 'probability' (softmax, (B, classes)), which ROC AUC needs per example.
    """

    def eval_step(variables: dict, batch: dict):
        logits = model.apply(variables, batch["image"], train=False)
        mask = tasks.label_mask(batch["label"], batch["valid"], num_classes)
        metrics = tasks.EvalMetrics.single_from_model_output(
            loss=tasks.per_label_loss(logits, batch["label"], mask),
            logits=logits,
            labels=batch["label"],
            mask=mask,
        )
        outputs = {"prediction": jnp.argmax(logits, -1), "label": batch["label"], "valid": batch["valid"]}
        if logits.ndim == 2:
            outputs["probability"] = jax.nn.softmax(logits.astype(jnp.float32), -1)
        return metrics, outputs

    return eval_step


class EvaluationStopped(Exception):
    """`should_stop()` said so between two batches (a SIGTERM during a long validation pass)."""


def evaluate_split(
    eval_step,
    variables,
    data,
    split: str,
    config,
    mesh,
    keep_predictions: int = 0,
    keep_scores: bool = False,
    should_stop=None,
):
    """Exact metrics over a whole split, and the first `keep_predictions` predictions.

    With `keep_scores` (classification), `computed` also holds every real example's class
    probabilities and label ('probabilities', 'labels', in split order) for ROC AUC.
    `should_stop()`, asked between batches, raises EvaluationStopped when true.
    """
    from labjax.data import pipeline  # TensorFlow loads where data is read, not where a step is built

    collected, predictions, scores, labels = None, [], [], []
    batches = pipeline.eval_batches(data, split, config, None, jax.process_index(), jax.process_count())
    for batch in batches:
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        metrics, outputs = eval_step(variables, parallel.to_global(batch, mesh))
        collected = metrics if collected is None else collected.merge(metrics)
        if sum(len(p) for p in predictions) < keep_predictions:
            predictions.append(multihost_utils.process_allgather(outputs["prediction"], tiled=True))
        if keep_scores:
            host = multihost_utils.process_allgather(
                {k: outputs[k] for k in ("probability", "label", "valid")}, tiled=True
            )
            scores.append(host["probability"][host["valid"]])
            labels.append(host["label"][host["valid"]])
    computed = jax.device_get(collected.compute())
    if keep_scores:
        computed["probabilities"], computed["labels"] = np.concatenate(scores), np.concatenate(labels)
    preds = np.concatenate(predictions)[:keep_predictions] if predictions else None
    return tasks.eval_summary(config.task, computed), computed, preds
