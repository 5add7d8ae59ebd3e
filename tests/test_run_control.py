"""Run control in train_and_evaluate: early stopping, reduce-on-plateau, L2, label smoothing,
mixed precision, fine-tuning's joined curves and the run facts in status.json."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fashion3_cnn
from labjax import checkpoints, parallel, plots, run_record, tasks, train, writers
from labjax import config as config_lib
from labjax.data import pipeline
from labjax.models import create_model


def _config(epochs: int = 3):
    config = fashion3_cnn.get_config("smoke")
    config.data.train_size, config.data.val_size = 64, 32  # 4 steps an epoch at batch 16
    config.num_epochs = epochs
    config.early_stopping.patience = 0  # each test turns on what it tests
    return config


def _rows(workdir):
    return [row for row in writers.read_rows(workdir / "metrics.jsonl") if "epoch" in row]


def _status(workdir) -> dict:
    return json.loads((workdir / "status.json").read_text())


@pytest.mark.slow
def test_early_stopping_stops_after_patience_and_ends_with_the_best_weights(tmp_path):
    """min_delta so large that no epoch after the first counts as better: the run stops after
    1 + patience epochs, and its final checkpoint holds the first epoch's weights."""
    config = _config(epochs=6)
    config.early_stopping.patience = 2
    config.early_stopping.monitor = "val_loss"
    config.early_stopping.min_delta = 1e6
    config.checkpoint.keep = 10  # every epoch's checkpoint stays, to compare with
    summary = train.train_and_evaluate(config, tmp_path)
    rows = _rows(tmp_path)
    assert len(rows) == 3  # epoch 1 best, epochs 2 and 3 waited, then stop
    status = _status(tmp_path)
    assert status["stopped_early"] is True
    assert status["stopped_epoch"] == 3 and status["best_epoch"] == 1
    assert summary["loss"] == pytest.approx(rows[0]["val_loss"])  # the best epoch's evaluation
    saved = checkpoints.Checkpoints(tmp_path, read_only=True)
    first, final = rows[0]["step"], rows[-1]["step"]
    assert saved.latest_step() == final
    best_params = saved.restore_arrays(first)["params"]
    final_params = saved.restore_arrays(final)["params"]
    assert saved.metadata(final)["restored_best_step"] == first
    saved.close()
    for a, b in zip(jax.tree.leaves(best_params), jax.tree.leaves(final_params)):
        np.testing.assert_array_equal(a, b)
    # A second call finds a finished run: nothing is trained again.
    assert train.train_and_evaluate(config, tmp_path)["loss"] == pytest.approx(summary["loss"])
    assert len(_rows(tmp_path)) == 3


@pytest.mark.slow
def test_early_stopping_monitor_must_be_a_logged_metric(tmp_path):
    config = _config(epochs=2)
    config.early_stopping.patience = 1
    config.early_stopping.monitor = "val_miou"  # a classification run logs no mIoU
    with pytest.raises(config_lib.ConfigError, match=r"early_stopping.monitor='val_miou'.*val_accuracy"):
        train.train_and_evaluate(config, tmp_path)
    config.early_stopping.monitor = "loss"
    with pytest.raises(config_lib.ConfigError, match="early_stopping.monitor"):
        config_lib.validate(config, 4)


@pytest.mark.slow
def test_reduce_on_plateau_halves_the_rate_after_each_bad_epoch_and_survives_a_resume(tmp_path):
    """An absolute threshold no epoch can beat: epoch 1 sets the best, every later epoch is bad,
    and with patience 0 each bad epoch halves the rate the next epoch uses (PyTorch's trace)."""
    config = _config(epochs=4)
    config.optimizer.schedule = "plateau"
    config.optimizer.learning_rate = 1e-3
    plateau = config.optimizer.plateau
    plateau.factor, plateau.patience, plateau.threshold_mode, plateau.threshold = 0.5, 0, "abs", 1e6
    with pytest.raises(train.TrainingInterrupted):  # stop inside epoch 3 and resume
        train.train_and_evaluate(config, tmp_path, stop_after_step=10)
    train.train_and_evaluate(config, tmp_path)
    rates = [row["learning_rate"] for row in _rows(tmp_path)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 5e-4, 2.5e-4], rtol=1e-6)
    assert (tmp_path / "plots" / "learning_rate.png").exists()


@pytest.mark.slow
def test_label_smoothing_loss_matches_optax_with_smoothed_targets():
    logits = jax.random.normal(jax.random.key(0), (6, 5)) * 3
    labels = jnp.array([0, 4, 2, 2, 1, 3])
    mask = jnp.ones(6, bool)
    expected = optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, 5), 0.1))
    np.testing.assert_allclose(tasks.per_label_loss(logits, labels, mask, 0.1), expected, rtol=1e-6)
    traced = jax.jit(lambda s: tasks.per_label_loss(logits, labels, mask, s))  # vectorized sweeps pass arrays
    np.testing.assert_allclose(traced(jnp.float32(0.1)), expected, rtol=1e-6)


def _one_step_losses(config, **step_options):
    mesh = parallel.make_mesh()
    data = pipeline.load(config)
    model = create_model(config.model, data.num_classes)
    state = train.create_train_state(config, model, mesh, data.input_shape)
    step = train.make_train_step(mesh, data.num_classes, **step_options)
    batch = parallel.to_global(next(pipeline.train_batches(data, config, epoch=0)), mesh)
    start = jax.device_get(state.params)  # the step donates (deletes) the state it gets
    new_state, metrics = step(state, batch)
    return start, new_state, float(metrics.loss.compute())


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_tracks_the_float32_loss():
    config = _config()
    config.model.name, config.model.layers = "spec_cnn", "arch4"  # with BatchNorm
    _, state32, loss32 = _one_step_losses(config)
    _, state16, loss16 = _one_step_losses(config, compute_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(state16.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state16.batch_stats)} == {jnp.dtype("float32")}
    assert loss16 == pytest.approx(loss32, rel=2e-2)  # bfloat16 keeps ~3 significant digits
    assert loss16 != loss32  # the compute really ran in bfloat16


@pytest.mark.slow
def test_l2_penalty_enters_the_gradient_but_not_the_logged_loss():
    """SGD lr 1 on the objective loss + wd * sum(w^2): the update differs from the plain one by
    exactly -2 * wd * w on kernels and not at all on biases; the logged loss is the same."""
    config = _config()
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 1.0
    start, plain, plain_loss = _one_step_losses(config)
    config.optimizer.weight_decay, config.optimizer.weight_decay_type = 0.01, "l2"
    _, decayed, decayed_loss = _one_step_losses(config, penalty=train.l2_penalty(config.optimizer))
    assert decayed_loss == pytest.approx(plain_loss)
    flat = jax.tree_util.tree_flatten_with_path
    for (path, w), p, d in zip(flat(start)[0], jax.tree.leaves(plain.params), jax.tree.leaves(decayed.params)):
        expected = -2 * 0.01 * np.asarray(w) if path[-1].key == "kernel" else 0.0
        np.testing.assert_allclose(np.asarray(d) - np.asarray(p), expected, atol=1e-6)


@pytest.mark.slow
def test_fine_tuning_starts_from_a_finished_run_and_joins_its_curves(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train.train_and_evaluate(_config(epochs=2), first)
    config = _config(epochs=1)
    config.model.init_from = str(first)
    config.optimizer.learning_rate = 2e-3
    train.train_and_evaluate(config, second)
    parent_rows = run_record.init_from_rows(str(first))
    assert [row["epoch"] for row in parent_rows] == [1.0, 2.0]
    joined, start = plots.join_phases(_rows(second), parent_rows)
    assert start == 2.0 and [row["epoch"] for row in joined] == [1.0, 2.0, 3.0]
    assert joined[-1]["learning_rate"] == pytest.approx(2e-3)  # the fine-tuning phase's own rate
    assert (second / "plots" / "loss.png").exists()
    status = _status(second)
    assert status["num_params"] == status["trainable_params"] > 0
    assert status["steps_per_s"] > 0 and status["peak_memory_mb"] > 0
