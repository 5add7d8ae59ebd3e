"""Vectorized sweeps: grouping by structure, and each member equal to the same member trained alone.

The oracle is train_and_evaluate: every vectorized member's metrics.jsonl must match its
alone run's row by row (float tolerance: vmap batches the same arithmetic differently).
"""

import json
from pathlib import Path

import pytest

from labjax import evaluate, sweep, train, vectorize

# S4's smoke (ConvNN_1, batch 4) with 5 folds: fold 4 holds one example fewer, so its members
# train 7 steps an epoch where fold 0's train 6; lr 1e30 diverges.
STUDY = """
from configs import sunglasses_cnn

def run_name(overrides):
    name = f"f{overrides['data.fold']}_lr{overrides['optimizer.learning_rate']}"
    name += f"_b{overrides['optimizer.b1']}" if "optimizer.b1" in overrides else ""
    name += "_dropout" if "model.dropout" in overrides else ""
    return name + ("_flip" if "data.copy_fraction" in overrides else "")


def get_config(arg=None):
    config = sunglasses_cnn.get_config("smoke,kfold,l2")
    config.early_stopping.monitor, config.early_stopping.patience = "val_loss", 1
    config.early_stopping.restore_best = True
    config.num_epochs = 2
    return config


def get_sweep(arg=None):
    yield {"data.fold": 0, "optimizer.learning_rate": 0.002}
    yield {"data.fold": 0, "optimizer.learning_rate": 0.01, "optimizer.b1": 0.8}
    yield {"data.fold": 4, "optimizer.learning_rate": 0.002}
    yield {"data.fold": 0, "optimizer.learning_rate": 1e30}
    yield {"data.fold": 0, "optimizer.learning_rate": 0.002, "model.dropout": 0.5}
    flip = {"data.copy_fraction": 0.25, "data.copy_augment": "flip_lr(p=1.0)"}  # 25% more steps an epoch
    yield {"data.fold": 0, "optimizer.learning_rate": 0.002, **flip}
"""
ALONE = ("f0_lr0.002", "f0_lr0.01_b0.8", "f4_lr0.002", "f0_lr0.002_dropout", "f0_lr0.002_flip")
DIVERGING = "f0_lr1e+30"


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vectorized_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("vectorize")
    study = root / "study.py"
    study.write_text(STUDY)
    workdir = root / "sweep"
    record = sweep.run_sweep(str(study), workdir, parallel=0, report=False, vectorize=True)
    members = {m.name: m for m in sweep.expand(str(study))}
    for name in ALONE:
        train.train_and_evaluate(members[name].config, root / "alone" / name)
    return workdir, root / "alone", record


@pytest.mark.slow
def test_each_member_matches_the_same_member_trained_alone(vectorized_sweep):
    workdir, alone, record = vectorized_sweep
    assert {m["name"]: m["status"] for m in record["members"]} == {
        **dict.fromkeys(ALONE, "finished"),
        DIVERGING: "diverged",
    }
    for name in ALONE:
        together, own = _rows(workdir / name), _rows(alone / name)
        assert [row["step"] for row in together] == [row["step"] for row in own], name
        for row, expected in zip(together, own):
            assert set(row) == set(expected), name
            for key, value in expected.items():
                if key != "training_time_s":
                    assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
        status, own_status = (json.loads((d / name / "status.json").read_text()) for d in (workdir, alone))
        assert status["status"] == "finished" and status["vectorized_group"] == 6
        for key in ("step", "epochs", "best_step", "stopped_early", "best_epoch", "confusion_matrix"):
            assert status[key] == own_status[key], (name, key)
    steps = {name: _rows(workdir / name)[0]["step"] for name in ALONE}
    # fold 4 and the flipped copies have their own batches
    assert steps == {
        "f0_lr0.002": 6,
        "f0_lr0.01_b0.8": 6,
        "f4_lr0.002": 7,
        "f0_lr0.002_dropout": 6,
        "f0_lr0.002_flip": 8,
    }


@pytest.mark.slow
def test_a_diverged_member_is_recorded_and_the_others_finish(vectorized_sweep):
    workdir, _, record = vectorized_sweep
    entry = next(m for m in record["members"] if m["name"] == DIVERGING)
    assert "diverged" in entry["error"]
    status = json.loads((workdir / DIVERGING / "status.json").read_text())
    assert status["status"] == "diverged" and status["loss"] == "nan"


@pytest.mark.slow
def test_mode_eval_works_on_a_vectorized_member(vectorized_sweep):
    workdir, _, _ = vectorized_sweep
    name = "f0_lr0.01_b0.8"
    result = evaluate.evaluate(workdir / name, "latest")
    final = json.loads((workdir / name / "status.json").read_text())["final"]
    assert result["loss"] == pytest.approx(final["val_loss"], rel=1e-4)
    assert result["step"] == json.loads((workdir / name / "status.json").read_text())["step"]


class _Member:
    def __init__(self, name, config):
        self.name, self.config = name, config


def test_members_group_by_structure_and_numbers_stay_inside_a_group():
    from configs import sunglasses_cnn

    def member(name, **changes):
        config = sunglasses_cnn.get_config("smoke")
        for key, value in changes.items():
            section, _, field = key.rpartition(".")
            setattr(config[section] if section else config, field, value)
        return _Member(name, config)

    members = [
        member("lr", **{"optimizer.learning_rate": 0.01}),
        member("seed", seed=3),
        member("b1_l2", **{"optimizer.b1": 0.8, "optimizer.weight_decay": 1e-4}),
        member("sgd", **{"optimizer.name": "sgd"}),
        member("dropout", **{"model.dropout": 0.25}),  # ConvNN's rate is a number (small_nets.Dropout)
        member("flip", **{"data.copy_fraction": 0.25, "data.copy_augment": "flip_lr(p=1.0)"}),  # its own stream
        member("sgd_momentum", **{"optimizer.name": "sgd", "optimizer.momentum": 0.9}),
        member("cnn", **{"model.name": "small_cnn"}),
        member("cnn_dropout", **{"model.name": "small_cnn", "model.dropout": 0.5}),  # nn.Dropout: structural
    ]
    groups = [[m.name for m in group] for group in vectorize.group_members(members)]
    assert groups == [["lr", "seed", "b1_l2", "dropout", "flip"], ["sgd"], ["sgd_momentum"], ["cnn"], ["cnn_dropout"]]
    reason = vectorize.why_not_vectorized([members[3], members[7]])
    assert "model.name" in reason and "optimizer.name" in reason
    assert "model.dropout" in vectorize.why_not_vectorized(members[7:9])
