"""benchmarks/study.py's logic that is not timing: the runs, the commands, the exported data, the time account."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import study  # noqa: E402

from configs import sunglasses_cnn  # noqa: E402


@pytest.mark.slow  # expands and validates ten configs
def test_s4_quick_is_convnn1_over_the_five_settings_and_two_folds_for_ten_epochs(tmp_path):
    plan = study.s4(quick=True)
    members = [member for _, member in study.members(plan)]
    assert len(members) == 10 and len({m.name for m in members}) == 10
    assert {m.config.data.fold for m in members} == {0, 1}
    assert {m.config.model.dropout for m in members} == {0.0, 0.25, 0.5}
    assert {m.config.data.copy_fraction for m in members} == {0.0, 0.25}
    assert all(m.config.num_epochs == 10 and m.config.model.name == "convnn1" for m in members)
    [command] = study.labjax_commands(plan, tmp_path)
    assert "--mode=sweep" in command and "--vectorize" in command and "--config.num_epochs=10" in command
    assert [a for a in command if a.startswith("--sweep=")] == ["--sweep=settings", "--sweep=data.fold=0,1"]
    assert "--vectorize" not in study.labjax_commands(plan, tmp_path, vectorize=False)[0]


def test_exported_data_is_what_the_model_is_fed_with_the_copies_mirrored(tmp_path):
    config = sunglasses_cnn.get_config("smoke,flip")
    study.export_data(config, tmp_path / "data.npz")
    with np.load(tmp_path / "data.npz") as arrays:
        x_train, y_train, x_val = arrays["x_train"], arrays["y_train"], arrays["x_val"]
    originals = 24  # smoke: 24 train examples, a quarter of them added again mirrored
    assert x_train.shape == (originals + originals // 4, 30, 32, 1) and x_val.shape == (10, 30, 32, 1)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0  # zero_one, as the model sees them
    copies = x_train[originals:]
    mirrored = x_train[:originals][:, :, ::-1]
    assert all(any(np.array_equal(copy, m) for m in mirrored) for copy in copies)
    assert y_train.shape == (len(x_train),)


def _status(folder: Path, name: str, **times) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "status.json").write_text(json.dumps({"status": "finished", "time_s": times}))


def test_the_time_account_counts_a_group_once_and_the_sweep_process_start_up_once(tmp_path):
    sweep = tmp_path / "sweep0"
    shared_a = {"group": "a", "startup": 5.0, "compile": 2.0, "train_steps": 10.0, "validation": 1.0}
    shared_b = {"group": "b", "startup": 20.0, "compile": 3.0, "train_steps": 7.0, "validation": 2.0}
    _status(sweep, "a1", **shared_a, checkpoints=0.5, plots=0.25)
    _status(sweep, "a2", **shared_a, checkpoints=0.5, plots=0.25)
    _status(sweep, "b1", **shared_b, checkpoints=1.0, plots=0.5)
    _status(sweep, "alone", startup=4.0, compile=1.0, train_steps=3.0, validation=0.5, checkpoints=0.25, plots=0.25)
    times = study.where_time_went(tmp_path)
    assert times["startup"] == 5.0 + 4.0  # the sweep process's first group, and the member's own process
    assert times["compile"] == 2.0 + 3.0 + 1.0 and times["train_steps"] == 10.0 + 7.0 + 3.0
    assert times["checkpoints"] == 0.5 + 0.5 + 1.0 + 0.25 and times["plots"] == 0.25 + 0.25 + 0.5 + 0.25


def test_the_peer_builds_the_s2_architectures_from_labjax_s_own_presets():
    import study_peers  # imports no framework at module level: its copy keeps JAX out of the peer's timing

    from labjax.models.small_nets import S2_PRESETS

    assert study_peers.S2_PRESETS == S2_PRESETS
    assert study_peers.SMALL_CNN.format(rate=0.2) == S2_PRESETS["arch10"]
