"""The engine end to end on real configs shrunk to tiny sizes (in-process)."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import seg_mobilenet
from labjax import checkpoints, evaluate, parallel, train, writers
from labjax import config as config_lib
from labjax.data import pipeline
from labjax.models import create_model


def _two_steps(config, devices, batches):
    """Losses of two train steps and the parameter update they make (a flat vector)."""
    mesh = parallel.make_mesh(devices)
    model = create_model(config.model, config.data.num_classes)
    state = train.create_train_state(config, model, mesh, batches[0]["image"].shape[1:])
    initial = np.concatenate([x.ravel() for x in jax.tree.leaves(jax.device_get(state.params))])
    step = train.make_train_step(mesh, config.data.num_classes)
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.to_global(batch, mesh))
        losses.append(float(metrics.loss.compute()))
    final = np.concatenate([x.ravel() for x in jax.tree.leaves(jax.device_get(state.params))])
    return losses, final - initial


def _relative_difference(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.slow
def test_train_step_gives_the_same_result_on_one_and_several_devices():
    """Same losses, and parameter updates as close as float rounding allows.

    From a random init, BatchNorm over tiny batches makes gradients ill-conditioned: merely
    reversing the order of the batch on one device moves the update by up to a few percent,
    and the device count's summation order does the same (measured 0.3% to 2.3% here,
    depending on the data). The errors this test exists for are far larger: per-device
    BatchNorm statistics change the first step's loss, and a gradient not summed over
    devices (or averaged twice) changes the update by 75% or more.
    """
    config = seg_mobilenet.get_config("smoke")
    config.model.name, config.model.alpha = "unet", 0.125  # BatchNorm at every level; compiles in seconds
    # SGD: updates linear in the gradients (Adam's m/sqrt(v) turns tiny differences of
    # near-zero gradients into full steps); 64 px and batch 8 so that the deepest
    # BatchNorm does not normalise over just 4 values.
    config.optimizer.name = "sgd"
    config.data.image_size, config.batch_size = 64, 8
    data = pipeline.load(config)
    batches = list(pipeline.train_batches(data, config, epoch=0))[:2]
    reversed_batches = [{k: v[::-1].copy() for k, v in batch.items()} for batch in batches]
    one_losses, one = _two_steps(config, jax.devices()[:1], batches)
    _, one_reversed = _two_steps(config, jax.devices()[:1], reversed_batches)
    several_losses, several = _two_steps(config, jax.devices(), batches)
    assert len(jax.devices()) > 1
    np.testing.assert_allclose(one_losses, several_losses, rtol=1e-5)
    assert _relative_difference(one, one_reversed) < 0.05  # the rounding floor
    assert _relative_difference(one, several) < 0.1
    # and the update is not a multiple of the right one (a gradient summed or averaged wrongly)
    scale = float(np.dot(one, several) / np.dot(one, one))
    assert scale == pytest.approx(1.0, abs=0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted smoke run, and the same run interrupted at step 5 then resumed."""
    config = seg_mobilenet.get_config("smoke")
    root = tmp_path_factory.mktemp("runs")
    whole = train.train_and_evaluate(config, root / "whole")
    with pytest.raises(train.TrainingInterrupted, match="step 5"):
        train.train_and_evaluate(config, root / "resumed", stop_after_step=5)
    interrupted = {
        "status": json.loads((root / "resumed" / "status.json").read_text()),
        "steps": checkpoints.Checkpoints(root / "resumed", config.checkpoint).steps(),
    }
    resumed = train.train_and_evaluate(config, root / "resumed")
    return config, root, whole, interrupted, resumed


@pytest.mark.slow
def test_interrupt_saves_a_checkpoint_and_resume_continues_exactly(runs):
    config, root, whole, interrupted, resumed = runs
    assert interrupted["status"]["status"] == "interrupted" and interrupted["status"]["step"] == 5
    assert 5 in interrupted["steps"]
    for key in ("loss", "accuracy", "miou"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-5)
    rows = writers.read_rows(root / "resumed" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [4, 8]  # one row per epoch, none duplicated
    for got, want in zip(rows, writers.read_rows(root / "whole" / "metrics.jsonl")):
        # train_* of the interrupted epoch cover only the steps after the resume
        for key in [k for k in want if k.startswith("val_") or k in ("epoch", "learning_rate")]:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_run_folder_holds_config_status_metrics_plots_and_checkpoints(runs):
    config, root, whole, _, _ = runs
    workdir = root / "whole"
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == 8
    assert status["final"]["val_miou"] == pytest.approx(whole["miou"])
    assert json.loads((workdir / "config.json").read_text()) == config_lib.to_dict(config)
    assert (workdir / "plots" / "loss.png").stat().st_size > 1000
    assert (workdir / "plots" / "miou.png").exists()
    assert any((workdir / "tensorboard").iterdir())
    steps = checkpoints.Checkpoints(workdir, config.checkpoint).steps()
    assert steps[-1] == 8 and status["best_step"] in steps


@pytest.mark.slow
def test_evaluate_restores_the_checkpoint_and_reproduces_validation_metrics(runs):
    _, root, whole, _, _ = runs
    result = evaluate.evaluate(root / "whole", "latest", "validation")
    assert result["step"] == 8 and result["num_examples"] == 6
    assert result["miou"] == pytest.approx(whole["miou"], abs=1e-6)
    assert result["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert np.sum(result["confusion_matrix"]) == 6 * 32 * 32  # every pixel counted once
    assert (root / "whole" / "eval" / "latest_validation.json").exists()
    assert (root / "whole" / "eval" / "latest_validation_samples.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="available: latest, best"):
        evaluate.evaluate(root / "whole", "3", "validation")


@pytest.mark.slow
def test_a_different_config_in_the_same_workdir_is_refused_and_nothing_is_lost(runs):
    config, root, _, _, _ = runs
    workdir = root / "whole"
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    changed = seg_mobilenet.get_config("smoke")
    changed.optimizer.name = "sgd"
    with pytest.raises(config_lib.ConfigError, match=r"(?s)optimizer.name: 'adam' -> 'sgd'.*--overwrite"):
        train.train_and_evaluate(changed, workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    copy = root / "whole_without_config_json"
    shutil.copytree(workdir, copy)
    (copy / "config.json").unlink()  # the checkpoints' own copy of the config still speaks
    with pytest.raises(config_lib.ConfigError, match="optimizer.name: 'adam' -> 'sgd'"):
        train.train_and_evaluate(changed, copy)
    longer = seg_mobilenet.get_config("smoke")
    longer.num_epochs = 2  # same run: nothing to do, it is finished
    assert train.train_and_evaluate(longer, workdir)["miou"] == pytest.approx(runs[2]["miou"])


@pytest.mark.slow
def test_a_diverging_run_stops_with_status_diverged(tmp_path):
    config = seg_mobilenet.get_config("smoke")
    config.model.name, config.model.alpha = "unet", 0.125
    config.optimizer.learning_rate = 1e30
    with pytest.raises(train.TrainingDiverged, match="diverged"):
        train.train_and_evaluate(config, tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "diverged" and status["step"] >= 1


@pytest.mark.slow
def test_classification_task_trains_the_small_cnn(tmp_path):
    config = seg_mobilenet.get_config("smoke")
    config.task = "classification"
    config.model.name, config.model.dropout = "small_cnn", 0.2
    config.checkpoint.best_metric = "val_accuracy"
    config.num_epochs = 3
    summary = train.train_and_evaluate(config, tmp_path)
    assert set(summary) == {"loss", "accuracy"} and 0.0 <= summary["accuracy"] <= 1.0
    rows = writers.read_rows(tmp_path / "metrics.jsonl")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def _small_cnn_update(batch, class_weights=None):
    """Parameters after one small-CNN SGD step on one device."""
    config = seg_mobilenet.get_config("smoke")
    config.task, config.model.name = "classification", "small_cnn"
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.1  # updates linear in the gradient
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = create_model(config.model, 3)
    state = train.create_train_state(config, model, mesh, batch["image"].shape[1:])
    state, _ = train.make_train_step(mesh, 3, class_weights)(state, parallel.to_global(batch, mesh))
    return np.concatenate([x.ravel() for x in jax.tree.leaves(jax.device_get(state.params))])


@pytest.mark.slow
def test_class_weights_and_mixed_labels_enter_the_loss_as_defined():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 28, 28, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0], np.int32)
    plain = _small_cnn_update({"image": images, "label": labels})
    for weights in ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]):  # normalised by the summed weights
        np.testing.assert_allclose(
            _small_cnn_update({"image": images, "label": labels}, np.array(weights)), plain, rtol=1e-4, atol=1e-5
        )
    only_class_0 = _small_cnn_update({"image": images, "label": labels}, np.array([1.0, 0.0, 0.0]))
    ignored = np.where(labels == 0, labels, -1)  # the same objective written with ignored labels
    np.testing.assert_allclose(
        only_class_0, _small_cnn_update({"image": images, "label": ignored}), rtol=1e-4, atol=1e-5
    )
    assert np.abs(only_class_0 - plain).max() > 1e-2  # a real change, far above rounding
    mix = rng.uniform(size=8).astype(np.float32)
    same = _small_cnn_update({"image": images, "label": labels, "label_b": labels, "mix": mix})
    np.testing.assert_allclose(same, plain, rtol=1e-4, atol=1e-5)
    other = np.roll(labels, 1)
    all_b = _small_cnn_update({"image": images, "label": labels, "label_b": other, "mix": np.zeros(8, np.float32)})
    np.testing.assert_allclose(all_b, _small_cnn_update({"image": images, "label": other}), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_building_a_model_and_its_train_step_does_not_load_tensorflow():
    """TensorFlow loads where a run reads data: a step can be built where it is not installed (GPU images)."""
    import subprocess
    import sys

    code = (
        "import sys, jax\n"
        "from labjax import config as config_lib, models, parallel, train\n"
        "config = config_lib.base_config('classification')\n"
        "config.model.name = 'lenet5'\n"
        "model, frozen = models.build(config.model, 3, (28, 28, 1))\n"
        "mesh = parallel.make_mesh()\n"
        "train.create_train_state(config, model, mesh, (28, 28, 1), frozen)\n"
        "train.make_train_step(mesh, 3)\n"
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
