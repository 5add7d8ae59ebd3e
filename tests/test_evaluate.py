"""--mode=eval and --mode=predict on a classification run (the S2 smoke config, merged into two classes).

One tiny run is trained for the module; its metrics are checked against sklearn on predictions
computed here independently (the model applied to the raw validation images, no pipeline, no
padding), on the same and on another device count, and its checkpoints are broken on purpose.
"""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from configs import fashion3_cnn
from labjax import checkpoints as ckpt
from labjax import cli, evaluate, predict, train
from labjax.data import pipeline
from labjax.models import create_model

ROOT = Path(__file__).resolve().parents[1]
MERGE = "upper=0,2,3,4,6;shoes=5,7,9"  # two classes: the binary metrics and ROC AUC


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = fashion3_cnn.get_config("smoke")
    config.data.merge = MERGE
    workdir = tmp_path_factory.mktemp("fashion") / "run"
    train.train_and_evaluate(config, workdir)
    data = pipeline.load(config)
    validation = data.splits["validation"]
    checkpoints = ckpt.Checkpoints(workdir, read_only=True)
    steps = checkpoints.steps()
    variables = checkpoints.restore_arrays(steps[-1])
    checkpoints.close()
    model = create_model(config.model, data.num_classes)
    images = validation.images.astype(np.float32) / 255.0  # normalize="zero_one", on the raw arrays
    logits = np.asarray(model.apply(variables, images, train=False), np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    oracle = {"labels": validation.labels, "probabilities": probabilities, "images": validation.images}
    return {"config": config, "workdir": workdir, "steps": steps, "names": data.class_names, **oracle}


@pytest.mark.slow
def test_eval_writes_every_metric_exactly_over_the_padded_split(run, capsys):
    result = evaluate.evaluate(run["workdir"], "latest", "validation")
    labels, probabilities = run["labels"], run["probabilities"]
    preds = probabilities.argmax(-1)
    assert result["num_examples"] == len(labels) and len(labels) % 32  # the last batch is padded
    assert result["step"] == run["steps"][-1] and result["positive_class"] == run["names"][1] == "shoes"
    assert result["loss"] == pytest.approx(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])), rel=1e-4)
    np.testing.assert_array_equal(result["confusion_matrix"], sk.confusion_matrix(labels, preds, labels=[0, 1]))
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert result["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, preds))
    assert result["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro", zero_division=0))
    assert result["weighted_f1"] == pytest.approx(sk.f1_score(labels, preds, average="weighted", zero_division=0))
    assert result["tpr"] == pytest.approx(sk.recall_score(labels, preds, pos_label=1))
    assert result["tnr"] == pytest.approx(sk.recall_score(labels, preds, pos_label=0))
    assert result["f1"] == pytest.approx(sk.f1_score(labels, preds, pos_label=1, zero_division=0))
    assert result["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities[:, 1]), abs=1e-6)
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, preds, zero_division=0)
    for i, name in enumerate(run["names"]):
        row = result["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
        assert row["support"] == support[i]

    out = run["workdir"] / "eval"
    assert json.loads((out / "latest_validation.json").read_text())["roc_auc"] == result["roc_auc"]
    rows = list(csv.reader((out / "latest_validation_confusion.csv").open()))
    assert rows[0] == ["true \\ predicted", "upper", "shoes"]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == result["confusion_matrix"]
    assert (out / "latest_validation_confusion.png").stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "roc_auc" in printed and "(positive class 'shoes')" in printed and "precision" in printed


def test_positive_class_override_swaps_the_rates(run):
    default = evaluate.evaluate(run["workdir"], "latest", "validation")  # not an earlier test's file
    swapped = evaluate.evaluate(run["workdir"], "latest", "validation", ["--config.eval_positive_class=upper"])
    assert swapped["positive_class"] == "upper"
    assert (swapped["tpr"], swapped["tnr"]) == pytest.approx((default["tnr"], default["tpr"]))
    assert swapped["roc_auc"] == pytest.approx(default["roc_auc"])  # symmetric in the positive class
    labels, preds = run["labels"], run["probabilities"].argmax(-1)
    assert swapped["f1"] == pytest.approx(sk.f1_score(labels, preds, pos_label=0, zero_division=0))


@pytest.mark.slow
def test_checkpoint_all_gives_a_table_per_epoch(run, capsys):
    result = evaluate.evaluate(run["workdir"], "all", "validation")
    assert [row["step"] for row in result["rows"]] == run["steps"] and len(run["steps"]) == 2
    assert [row["epoch"] for row in result["rows"]] == [1.0, 2.0]
    with open(result["table"]) as file:
        table = list(csv.DictReader(file))
    assert [int(row["step"]) for row in table] == run["steps"]
    latest = json.loads((run["workdir"] / "eval" / "latest_validation.json").read_text())
    assert float(table[-1]["roc_auc"]) == pytest.approx(latest["roc_auc"])
    assert float(table[-1]["loss"]) == pytest.approx(latest["loss"])
    assert (run["workdir"] / "eval" / f"{run['steps'][0]}_validation.json").exists()
    assert "every checkpoint on validation" in capsys.readouterr().out


def test_overrides_change_only_what_evaluation_may_change():
    config = fashion3_cnn.get_config("smoke")
    evaluate.apply_overrides(
        config, ["--config.eval_batch_size=8", "--config.data.path=/new", "--config.data.cache=stream"]
    )
    assert (config.eval_batch_size, config.data.path, config.data.cache) == (8, "/new", "stream")
    with pytest.raises(
        ValueError, match=r"--config.optimizer.learning_rate: .*defines what was trained.*eval_batch_size"
    ):
        evaluate.apply_overrides(config, ["--config.optimizer.learning_rate=0.1"])
    with pytest.raises(ValueError, match=r"config.eval_batch_size='many' is invalid: expected int"):
        evaluate.apply_overrides(config, ["--config.eval_batch_size=many"])
    with pytest.raises(ValueError, match="write overrides as --config.KEY=VALUE"):
        evaluate.apply_overrides(config, ["--config.data.path"])
    argv = ["launch.py", "--mode=eval", "--workdir=w", "--config.data.test_path=t"]
    assert cli.saved_config_overrides(argv) == ["--config.data.test_path=t"]
    assert cli.saved_config_overrides([*argv, "--config=configs/x.py"]) == []  # ml_collections applies them


def _broken_copy(run, tmp_path, breakage) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run["workdir"], copy)
    breakage(copy, run["steps"])
    return copy


def _truncate_params(copy, steps):
    for file in (copy / "checkpoints" / str(steps[-1]) / "params").rglob("d/*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[:10])


# Orbax's failed async read of a corrupt array can leave a callback for its closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_latest_falls_back_to_the_newest_intact_checkpoint_and_others_are_named(run, tmp_path, caplog):
    copy = _broken_copy(run, tmp_path, _truncate_params)
    session = evaluate.open_run(copy)
    try:
        with caplog.at_level(logging.WARNING):
            step, _, _ = session.restore("latest")
        assert step == run["steps"][0]
        assert f"checkpoints/{run['steps'][-1]} is truncated or corrupt" in caplog.text
        assert f"Using step {step}, the newest intact checkpoint" in caplog.text
        with pytest.raises(
            ckpt.CheckpointError,
            match=rf"checkpoints/{run['steps'][-1]} is truncated or corrupt.*"
            rf"available steps: \[{run['steps'][0]}, {run['steps'][-1]}\]",
        ):
            session.restore(str(run["steps"][-1]))
    finally:
        session.close()
    shutil.rmtree(copy / "checkpoints" / str(run["steps"][0]) / "params")
    first, last = run["steps"]
    with pytest.raises(
        ckpt.CheckpointError,
        match=rf"no intact checkpoint among steps \[{first}, {last}\]; the newest: .*/{last} is trunc",
    ):
        evaluate.evaluate(copy, "latest")


def test_a_checkpoint_of_another_model_is_named_as_such(run, tmp_path):
    def other_model(copy, steps):  # the config says lenet5; the checkpoints hold the small CNN
        config = json.loads((copy / "config.json").read_text())
        config["model"]["name"] = "lenet5"
        (copy / "config.json").write_text(json.dumps(config))

    copy = _broken_copy(run, tmp_path, other_model)
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"is a checkpoint of another model \(model.name: 'small_cnn' in "
        r"the checkpoint, 'lenet5' in the run\); available steps",
    ):
        evaluate.evaluate(copy, "latest")


def test_missing_workdir_config_or_checkpoints(run, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json: not found; the workdir .*nothing does not exist"):
        evaluate.evaluate(tmp_path / "nothing")
    copy = _broken_copy(run, tmp_path, lambda copy, steps: (copy / "config.json").unlink())
    assert evaluate.load_run_config(copy).data.merge == MERGE  # recovered from the checkpoints' metadata
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(FileNotFoundError, match="config.json: not found, and no checkpoint"):
        evaluate.evaluate(copy)
    (copy / "config.json").write_text(json.dumps(run["config"].to_dict()))
    with pytest.raises(FileNotFoundError, match=r"copy/checkpoints: no checkpoints; train the run first"):
        evaluate.evaluate(copy)
    with pytest.raises(ValueError, match=r"--split='holdout' is unknown; available: \['test', 'train', 'validation'\]"):
        evaluate.evaluate(run["workdir"], "latest", "holdout")


@pytest.mark.slow
def test_eval_on_another_device_count_gives_the_same_metrics(run):
    """Trained on 4 devices, evaluated on 1 and on 3 (batch 10 becomes 12 there): the same metrics."""
    on_four = evaluate.evaluate(run["workdir"], "best", "validation")
    for count in (1, 3):
        devices = jax.devices()[:count]
        on_other = evaluate.evaluate(run["workdir"], "best", "validation", ["--config.eval_batch_size=10"], devices)
        assert on_other["step"] == on_four["step"] and on_other["confusion_matrix"] == on_four["confusion_matrix"]
        for key in ("loss", "accuracy", "roc_auc", "macro_f1"):
            assert on_other[key] == pytest.approx(on_four[key], rel=1e-5), (count, key)


def test_predict_classifies_image_files_as_evaluation_does(run, tmp_path):
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    for i in range(3):  # validation examples as PNG files: their probabilities are known
        Image.fromarray(run["images"][i, ..., 0]).save(photos / f"val{i}.png")
    big = np.kron(run["images"][3, ..., 0], np.ones((3, 2), np.uint8))  # 84x56 gray -> resized to 28x28
    Image.fromarray(np.stack([big] * 3, -1)).save(photos / "more" / "big.jpg", quality=95)
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    result = predict.predict(run["workdir"], str(photos), tmp_path / "out")
    rows = {Path(row["file"]).name: row for row in result["predictions"]}
    assert sorted(rows) == ["big.jpg", "val0.png", "val1.png", "val2.png"]
    assert [Path(file).name for file, _ in result["skipped"]] == ["broken.png"]
    assert "broken.png: cannot decode the file" in (tmp_path / "out" / "skipped.txt").read_text()
    for i in range(3):
        row, probabilities = rows[f"val{i}.png"], run["probabilities"][i]
        assert row["class"] == run["names"][probabilities.argmax()]
        assert row["probability"] == pytest.approx(probabilities.max(), abs=1e-5)
        top = row["top_k"].split("; ")
        assert len(top) == 2 and top[0].startswith(row["class"] + ":")
    with open(tmp_path / "out" / "predictions.csv") as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == ["file", "class", "probability", "top_k"] and len(table) == 4
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 3000


def test_predict_needs_no_training_data_when_the_checkpoint_saved_its_input_spec(run, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(run["images"][0, ..., 0]).save(photos / "val0.png")
    checkpoints = ckpt.Checkpoints(run["workdir"], read_only=True)
    spec = predict._spec(checkpoints, evaluate.load_run_config(run["workdir"])).to_dict()
    checkpoints.close()
    json.dumps(spec)  # what the checkpoint's metadata would hold
    monkeypatch.setattr(predict, "_saved_spec", lambda checkpoints: spec)
    monkeypatch.setattr(pipeline, "load", lambda *args, **kwargs: pytest.fail("the data was read"))
    row = predict.predict(run["workdir"], str(photos / "*.png"), tmp_path / "out")["predictions"][0]
    assert row["probability"] == pytest.approx(run["probabilities"][0].max(), abs=1e-5)
    with pytest.raises(FileNotFoundError, match="no file matches it as a glob"):
        predict.predict(run["workdir"], str(photos / "*.jpg"), tmp_path / "out")


@pytest.mark.slow
def test_predict_from_the_command_line_in_a_process_with_one_device(run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(run["images"][0, ..., 0]).save(photos / "val0.png")
    (photos / "notes.png").write_text("not an image")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    args = [f"--workdir={run['workdir']}", f"--inputs={photos}/*.png", f"--output={tmp_path / 'out'}"]
    result = subprocess.run(
        [sys.executable, "launch.py", "--mode=predict", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "predictions for 1 of 2 files" in result.stdout and "notes.png: cannot decode the file" in result.stderr
    with open(tmp_path / "out" / "predictions.csv") as file:
        (row,) = list(csv.DictReader(file))
    assert float(row["probability"]) == pytest.approx(run["probabilities"][0].max(), abs=1e-5)
