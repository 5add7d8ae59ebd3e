"""What a run spends outside its training steps: checkpoints, curves, validation batches, imports, time_s."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import fashion3_cnn
from labjax import checkpoints, evaluation, models, parallel, plots, run_record, train
from labjax.data import pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each trains or starts a Python


def _config(epochs: int = 4, **checkpoint):
    config = fashion3_cnn.get_config("smoke")
    config.data.train_size, config.data.val_size = 64, 32
    config.num_epochs, config.eval_batch_size = epochs, 4
    config.early_stopping.patience = 0
    config.checkpoint.update(checkpoint)
    return config


def _saved_steps(monkeypatch) -> list[int]:
    saved = []
    save = checkpoints.Checkpoints.save

    def recording(self, state, metadata, metrics=None):
        saved.append(int(metadata["step"]))
        save(self, state, metadata, metrics)

    monkeypatch.setattr(checkpoints.Checkpoints, "save", recording)
    return saved


def test_periodic_checkpoints_wait_their_interval_while_bests_and_the_end_always_save(tmp_path, monkeypatch):
    saved = _saved_steps(monkeypatch)
    train.train_and_evaluate(_config(min_interval_s=0.0, best_metric="val_loss", best_mode="min"), tmp_path / "a")
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert saved == [row["step"] for row in rows]  # 0 s: every epoch, as every_epochs=1 says

    saved.clear()
    train.train_and_evaluate(_config(min_interval_s=3600.0, best_metric="val_loss", best_mode="min"), tmp_path / "b")
    losses = [json.loads(line)["val_loss"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    bests = [step for index, step in enumerate(steps) if losses[index] < min(losses[:index], default=np.inf)]
    assert saved == sorted(set(bests) | {steps[-1]})  # each new best and the last epoch, nothing periodic
    status = json.loads((tmp_path / "b" / "status.json").read_text())
    assert status["best_step"] == steps[int(np.argmin(losses))]


def test_a_resumed_run_whose_periodic_checkpoints_were_skipped_ends_as_the_uninterrupted_one(tmp_path):
    config = _config(epochs=6, min_interval_s=3600.0, best_metric="")  # no best: only the end and stops save
    whole = train.train_and_evaluate(config, tmp_path / "whole")
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(config, tmp_path / "cut", stop_after_step=18)  # part-way through epoch 5
    resumed = train.train_and_evaluate(config, tmp_path / "cut")
    assert resumed == pytest.approx(whole, rel=1e-5)


def test_curves_are_drawn_at_the_end_and_while_training_only_once_their_interval_passed(tmp_path, monkeypatch):
    drawn = []
    plot_curves = plots.plot_curves
    monkeypatch.setattr(
        plots, "plot_curves", lambda rows, *a, **k: drawn.append(len(rows)) or plot_curves(rows, *a, **k)
    )
    train.train_and_evaluate(_config(epochs=3), tmp_path / "a")
    assert drawn == [3]  # a short run: once, at its end, with every epoch
    assert (tmp_path / "a" / "plots" / "loss.png").exists()

    drawn.clear()
    monkeypatch.setattr(run_record, "PLOT_EVERY_S", 0.0)
    train.train_and_evaluate(_config(epochs=3), tmp_path / "b")
    assert drawn == [1, 2, 3, 3]  # after each epoch, then at the end


def test_a_finished_run_says_where_its_time_went(tmp_path):
    train.train_and_evaluate(_config(epochs=2), tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    times = status["time_s"]
    kinds = {"startup", "compile", "train_steps", "validation", "checkpoints", "plots", "logs", "process"}
    assert set(times) == kinds
    assert all(times[kind] > 0 for kind in kinds - {"process"})
    assert times["compile"] + times["train_steps"] == pytest.approx(status["train_time_s"], abs=0.05)
    parts = sum(times[kind] for kind in kinds - {"startup", "process"})
    assert times["startup"] + parts <= times["process"]  # pytest's own start-up is in the process' age too


def test_validation_batches_are_prepared_once_and_large_splits_are_not_kept(monkeypatch):
    config = _config()
    data = pipeline.load(config, "zero_one")
    model, _ = models.build(config.model, data.num_classes, data.input_shape)
    mesh = parallel.make_mesh()
    variables = model.init(jax.random.key(0), np.zeros((1, *data.input_shape)), train=False)
    step = evaluation.make_eval_step(mesh, model, data.num_classes)
    first = evaluation.evaluate_split(step, variables, data, "validation", config, mesh)[0]
    assert list(data.eval_cache) == [("validation", 4, 0, 1)]
    built = []
    monkeypatch.setattr(pipeline, "_examples_dataset", lambda *a: built.append(a) or None)
    assert evaluation.evaluate_split(step, variables, data, "validation", config, mesh)[0] == first
    assert built == []  # the second pass reads the kept batches

    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "EVAL_CACHE_BYTES", 0)
    data.eval_cache.clear()
    assert evaluation.evaluate_split(step, variables, data, "validation", config, mesh)[0] == first
    assert data.eval_cache == {}


def test_tensorflow_and_the_writers_load_without_keras_and_keras_still_works_after():
    script = """
import sys
from labjax import writers
assert "tensorflow" in sys.modules and "keras" not in sys.modules and "sklearn" not in sys.modules
from labjax.tf_import import tf
from tensorboard.plugins.hparams import api
import keras
assert issubclass(api.KerasCallback, keras.callbacks.Callback), api.KerasCallback
assert tf.keras.optimizers.Adam is keras.optimizers.Adam
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
