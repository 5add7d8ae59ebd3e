"""The recipes of docs/architecture.md, followed with toy entries and run end to end, so they cannot rot.

Each test registers a toy model, data source or metric exactly as its recipe says (through
monkeypatch, so the tables are restored), trains a tiny run with train.train_and_evaluate
and reads the result from the run's status.json and metrics.jsonl.
"""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from labjax import config as config_lib
from labjax import models, tasks, train, writers
from labjax.data import pipeline
from labjax.data.examples import Examples

SIZE, CLASSES = 18, 3  # small_cnn's smallest input


class ToyNet(nn.Module):
    """Recipe 1's toy model: one dense layer over the pixels."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _toy_source(config) -> dict[str, Examples]:
    """Recipe 2's toy source: a few random real-shaped images per split."""
    rng = np.random.default_rng(config.seed)
    names = [f"class_{i}" for i in range(CLASSES)]

    def split(count: int) -> Examples:
        images = rng.integers(0, 256, (count, SIZE, SIZE, 1), dtype=np.uint8)
        return Examples(labels=np.arange(count, dtype=np.int32) % CLASSES, class_names=names, images=images)

    return {"train": split(16), "validation": split(8)}


def _tiny_config(tmp_path) -> config_lib.ml_collections.ConfigDict:
    config = config_lib.base_config("classification")
    config.data.source, config.data.image_size, config.data.channels = "synthetic", SIZE, 1
    config.data.num_classes, config.data.train_size, config.data.val_size = CLASSES, 16, 8
    config.model.name = "small_cnn"
    config.batch_size = config.eval_batch_size = 8
    config.num_epochs, config.log_every_steps = 1, 1
    return config


def _run(config, workdir) -> tuple[dict, list[dict]]:
    config_lib.validate(config)
    train.train_and_evaluate(config, workdir)
    status = json.loads((workdir / "status.json").read_text())
    return status, writers.read_rows(workdir / "metrics.jsonl")


@pytest.mark.slow
def test_recipe_add_a_model(tmp_path, monkeypatch):
    info = models.ModelInfo(
        build=lambda cfg, num_classes, frozen=(): ToyNet(num_classes), task="classification", min_size=1
    )
    monkeypatch.setitem(models.MODELS, "toy_net", info)
    config = _tiny_config(tmp_path)
    config.model.name = "toy_net"
    config.data.image_size = SIZE  # any size >= min_size: the input rule lets it through
    status, rows = _run(config, tmp_path / "run")
    assert models.task_of("toy_net") == "classification"
    assert 0 <= status["final"]["val_accuracy"] <= 1
    assert any("val_loss" in row for row in rows)


@pytest.mark.slow
def test_recipe_add_a_data_source(tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.SOURCES, "toy", _toy_source)
    config = _tiny_config(tmp_path)
    config.data.source, config.data.path, config.data.num_classes = "toy", str(tmp_path), 0
    status, _ = _run(config, tmp_path / "run")
    assert status["class_names"] == ["class_0", "class_1", "class_2"]
    assert 0 <= status["final"]["val_accuracy"] <= 1


@pytest.mark.slow
def test_recipe_add_a_metric(tmp_path, monkeypatch):
    table = {**tasks.EPOCH_METRICS["classification"], "error": lambda computed: 1 - float(computed["accuracy"])}
    monkeypatch.setitem(tasks.EPOCH_METRICS, "classification", table)
    status, rows = _run(_tiny_config(tmp_path), tmp_path / "run")
    final = status["final"]
    assert final["val_error"] == pytest.approx(1 - final["val_accuracy"])
    assert [row["val_error"] for row in rows if "val_error" in row][-1] == pytest.approx(final["val_error"])
