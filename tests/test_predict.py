"""--mode=predict and --mode=eval on a segmentation run (the S0 smoke config, one epoch).

The oracle is the model applied here to the raw validation images (no pipeline, no padding):
predicted masks of image files must equal it, and the evaluation metrics must equal NumPy's
per-class counts on it.
"""

import csv
import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs import seg_mobilenet
from labjax import checkpoints as ckpt
from labjax import evaluate, plots, predict, train
from labjax.data import pipeline
from labjax.models import create_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = seg_mobilenet.get_config("smoke")
    config.model.name, config.model.alpha = "unet", 0.125  # the classic U-Net compiles in seconds
    config.num_epochs = 1
    workdir = tmp_path_factory.mktemp("seg") / "run"
    train.train_and_evaluate(config, workdir)
    data = pipeline.load(config)
    validation = data.splits["validation"]
    checkpoints = ckpt.Checkpoints(workdir, read_only=True)
    variables = checkpoints.restore_arrays(checkpoints.latest_step())
    checkpoints.close()
    model = create_model(config.model, data.num_classes)
    images = validation.images.astype(np.float32) / 127.5 - 1.0  # normalize="minus_one_one"
    preds = np.asarray(jax.jit(model.apply, static_argnames="train")(variables, images, train=False)).argmax(-1)
    return {
        "workdir": workdir,
        "names": data.class_names,
        "images": validation.images,
        "labels": validation.labels.astype(np.int64),
        "preds": preds,
    }


@pytest.mark.slow
def test_eval_segmentation_metrics_match_numpy_on_independent_predictions(run):
    result = evaluate.evaluate(run["workdir"], "latest", "validation")
    labels, preds = run["labels"].ravel(), run["preds"].ravel()
    num_classes = len(run["names"])
    assert result["num_examples"] == 6 and np.sum(result["confusion_matrix"]) == 6 * 32 * 32
    iou, dice, accuracy = [], [], []
    for c in range(num_classes):
        truth, guess = labels == c, preds == c
        inter, union = np.sum(truth & guess), np.sum(truth | guess)
        iou.append(inter / union if union else np.nan)
        dice.append(2 * inter / (truth.sum() + guess.sum()) if union else np.nan)
        accuracy.append(inter / truth.sum() if truth.sum() else np.nan)
    support = np.bincount(labels, minlength=num_classes)
    assert result["pixel_accuracy"] == pytest.approx(np.mean(labels == preds))
    assert result["accuracy"] == result["pixel_accuracy"]
    assert result["mean_class_accuracy"] == pytest.approx(np.nanmean(accuracy))
    assert result["miou"] == pytest.approx(np.nanmean(iou))
    assert result["fwiou"] == pytest.approx(np.nansum(support / support.sum() * np.array(iou)))
    assert result["mean_dice"] == pytest.approx(np.nanmean(dice))
    assert result["iou_per_class"] == pytest.approx([None if np.isnan(v) else v for v in iou])
    out = run["workdir"] / "eval"
    for name in ("latest_validation_samples.png", "latest_validation_confusion.png"):
        assert (out / name).stat().st_size > 5000
    assert json.loads((out / "latest_validation.json").read_text())["mean_dice"] == result["mean_dice"]


@pytest.mark.slow
def test_predict_writes_masks_at_the_original_size_equal_to_the_models_output(run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(run["images"][i]).save(photos / f"val{i}.png")
    big = np.kron(run["images"][2], np.ones((2, 3, 1), np.uint8))  # 64x96: any size is resized
    Image.fromarray(big).save(photos / "big.png")
    gray = np.asarray(Image.fromarray(run["images"][3]).convert("L"))  # 1 channel into an RGB model
    Image.fromarray(gray).save(photos / "gray.pgm")
    (photos / "empty.jpg").write_bytes(b"")
    result = predict.predict(run["workdir"], str(photos), tmp_path / "out")
    out = tmp_path / "out"
    assert [row["file"].split("/")[-1] for row in result["predictions"]] == [
        "big.png",
        "gray.pgm",
        "val0.png",
        "val1.png",
    ]
    assert "empty.jpg" in (out / "skipped.txt").read_text()
    for i in range(2):
        mask = np.asarray(Image.open(out / "masks" / f"val{i}.png"))
        np.testing.assert_array_equal(mask, run["preds"][i])
        colored = np.asarray(Image.open(out / "colored" / f"val{i}.png"))
        np.testing.assert_array_equal(colored, plots.class_colors(len(run["names"]))[run["preds"][i]])
        overlay = np.asarray(Image.open(out / "overlays" / f"val{i}.png"))
        background = run["preds"][i] == 0
        np.testing.assert_array_equal(overlay[background], run["images"][i][background])
        assert (overlay[~background] != run["images"][i][~background]).any() or background.all()
    big_mask = np.asarray(Image.open(out / "masks" / "big.png"))
    assert big_mask.shape == (64, 96) and big_mask.max() < len(run["names"])
    assert np.asarray(Image.open(out / "overlays" / "gray.png")).shape == (32, 32, 3)
    with open(out / "predictions.csv") as file:
        rows = {row["file"].split("/")[-1]: row for row in csv.DictReader(file)}
    assert rows["big.png"]["width"] == "96" and rows["big.png"]["height"] == "64"
    shares = dict(item.rsplit(":", 1) for item in rows["val0.png"]["classes"].split("; "))
    counts = np.bincount(run["preds"][0].ravel(), minlength=len(run["names"])) / run["preds"][0].size
    assert {name: float(v) for name, v in shares.items()} == pytest.approx(
        {run["names"][c]: counts[c] for c in np.flatnonzero(counts)}, abs=1e-4
    )
