"""config.steps_per_execution: k train steps per dispatch give the results of one step at a time.

S4's ConvNN_1 with dropout (each step folds its number into the dropout key) on 7 steps an
epoch, so k = 3 runs chunks of 3, 3 and a padded 1 every epoch, on 4 simulated devices.
"""

import jax
import numpy as np
import pytest

from configs import sunglasses_cnn
from labjax import checkpoints, train, writers
from labjax import config as config_lib
from labjax.data import pipeline

STEPS_PER_EPOCH = 7
COMPARED = ("step", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")


def _config(steps_per_execution: int):
    config = sunglasses_cnn.get_config("smoke,dropout=0.5")
    config.data.train_size, config.data.val_size = 4 * STEPS_PER_EPOCH, 8
    config.batch_size, config.eval_batch_size = 4, 8
    config.num_epochs, config.log_every_steps = 2, 2
    config.steps_per_execution = steps_per_execution
    return config


def _rows(workdir) -> list[dict]:
    return [row for row in writers.read_rows(workdir / "metrics.jsonl") if "epoch" in row]


def _final_params(workdir) -> list[np.ndarray]:
    saved = checkpoints.Checkpoints(workdir, read_only=True)
    params = saved.restore_arrays(saved.latest_step())["params"]
    saved.close()
    return jax.tree.leaves(params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One step at a time; and 3 at a time, stopped after step 11 (epoch 2: chunk 7-9, then 10 alone) and resumed.

    Its first epoch is whole (chunks 3, 3, 1), so its first row compares in full; its second
    epoch's train_* cover only the steps after the resume, as with one step at a time.
    """
    root = tmp_path_factory.mktemp("steps_per_execution")
    train.train_and_evaluate(_config(1), root / "one")
    with pytest.raises(train.TrainingInterrupted, match="step 11"):
        train.train_and_evaluate(_config(3), root / "three", stop_after_step=11)
    saved = checkpoints.Checkpoints(root / "three", read_only=True)
    stopped = {"step": saved.latest_step(), "rows": _rows(root / "three")}
    saved.close()
    train.train_and_evaluate(_config(3), root / "three")
    return root, stopped


@pytest.mark.slow
def test_three_steps_per_dispatch_log_and_train_as_one_at_a_time(runs):
    root, _ = runs
    one, three = _rows(root / "one"), _rows(root / "three")
    assert [row["step"] for row in three] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for index, (got, want) in enumerate(zip(three, one, strict=True)):
        for key in [k for k in COMPARED if index == 0 or not k.startswith("train_")]:
            assert got[key] == pytest.approx(want[key], rel=1e-5), (index, key)
    for got, want in zip(_final_params(root / "three"), _final_params(root / "one"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_no_chunk_runs_past_stop_after_step_and_the_resume_starts_there(runs):
    root, stopped = runs
    assert stopped["step"] == 11  # 3 steps from 7, then 1: the stop is not overrun
    assert [row["step"] for row in stopped["rows"]] == [STEPS_PER_EPOCH]
    assert _rows(root / "three")[0] == stopped["rows"][0]  # the resume keeps epoch 1's row, writes epoch 2's once


@pytest.mark.slow
def test_the_pipeline_chunks_are_the_batches_stacked_mixing_included():
    """From step 2 of a 7-step epoch in chunks of 3: chunks of 3, 2 holding exactly the batches, mixup's pairs too."""
    config = _config(3)
    config.data.mixup = 0.4
    data = pipeline.load(config, "zero_one")
    batches = list(pipeline.train_batches(data, config, 1, first_step=2))
    chunks = list(pipeline.train_batches(data, config, 1, first_step=2, steps_per_chunk=3))
    assert [len(chunk["label"]) for chunk in chunks] == [3, 2]
    assert set(chunks[0]) == set(batches[0]) >= {"image", "label", "label_b", "mix"}
    for key in batches[0]:
        stacked = np.stack([batch[key] for batch in batches])
        np.testing.assert_array_equal(np.concatenate([chunk[key] for chunk in chunks]), stacked)


@pytest.mark.parametrize("value", [0, -2])
def test_steps_per_execution_below_one_is_a_config_error(value):
    config = _config(value)
    with pytest.raises(config_lib.ConfigError, match=rf"steps_per_execution={value}.*integer >= 1"):
        config_lib.validate(config, 4)
