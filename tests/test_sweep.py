"""Sweeps: members from get_sweep and --sweep, names, mistakes caught before training, real tiny sweeps.

The real sweeps train configs/fashion3_cnn.py:smoke for a few steps: one through the API in
this process (a member that diverges, one that finishes, resumed), one through launch.py
with two member processes at once (one killed, then Ctrl-C).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labjax import config as config_lib
from labjax import sweep, writers

ROOT = Path(__file__).resolve().parents[1]
FASHION_SMOKE = "configs/fashion3_cnn.py:smoke"

# Shaped like S0's sweep: SGD members set no betas, so their names leave them out.
S0_LIKE = """
from configs import fashion3_cnn

RUN_NAME = "{optimizer.name}_{optimizer.learning_rate}_{optimizer.b1}_{optimizer.b2}"


def get_config(arg=None):
    return fashion3_cnn.get_config("smoke")


def get_sweep(arg=None):
    for lr in (0.01, 0.1):
        yield {"optimizer.name": "sgd", "optimizer.learning_rate": lr}
    for b1 in (0.8, 0.9):
        yield {"optimizer.name": "adam", "optimizer.learning_rate": 1e-3, "optimizer.b1": b1, "optimizer.b2": 0.85}
"""


def write_config(tmp_path: Path, text: str, name: str = "study.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_get_sweep_members_are_named_by_the_template_dropping_absent_keys(tmp_path):
    members = sweep.expand(write_config(tmp_path, S0_LIKE))
    assert [m.name for m in members] == ["sgd_0.01", "sgd_0.1", "adam_0.001_0.8_0.85", "adam_0.001_0.9_0.85"]
    adam = members[2].config.optimizer
    assert (adam.name, adam.learning_rate, adam.b1, adam.b2) == ("adam", 0.001, 0.8, 0.85)
    assert members[0].config.optimizer.b1 == 0.9  # each member starts from a fresh get_config
    assert members[0].config.optimizer.name == "sgd" and members[1].config.optimizer.learning_rate == 0.1


def test_s0_sweep_has_21_named_members_and_command_line_keys_extend_their_names():
    members = sweep.expand("configs/seg_mobilenet.py:smoke")
    names = [m.name for m in members]
    assert len(names) == 21 and {"sgd_0.01", "adam_0.001_0.8_0.85", "adamax_0.5_0.9_0.999"} <= set(names)
    seeded = sweep.expand("configs/seg_mobilenet.py:smoke", ["seed=0,1"])
    assert [m.name for m in seeded[:2]] == ["sgd_0.001,seed=0", "sgd_0.001,seed=1"]


def test_template_name_formats_and_drops_separators():
    config = sweep.load_config_module(FASHION_SMOKE)[0].get_config("smoke")
    config_lib.apply_overrides(config, {"optimizer.learning_rate": 0.0001, "seed": 3})
    template = "lr{optimizer.learning_rate:.0e}-b1{optimizer.b1}-s{seed}"
    assert sweep.template_name(template, {"optimizer.learning_rate": 1e-4, "seed": 3}, config) == "lr1e-04-s3"
    assert sweep.template_name(template, {"seed": 3}, config) == "s3"  # the prefix belongs to the first key
    assert sweep.template_name("{model.dropout}_x", {}, config) == "default"


def test_command_line_products_combine_with_get_sweep_and_strings_are_typed(tmp_path):
    text = S0_LIKE.replace("RUN_NAME = ", "TEMPLATE = ") + (
        "\n\ndef run_name(overrides):\n    return '-'.join(f'{k.split(\".\")[-1]}{v}' for k, v in overrides.items())\n"
    )
    members = sweep.expand(write_config(tmp_path, text), ["model.dropout=0.0, 0.25", "seed=[1, 2]"], {"num_epochs": 3})
    assert len(members) == 4 * 2 * 2
    assert members[1].name == "namesgd-learning_rate0.01,model.dropout=0.0,seed=2"  # --sweep keys appended
    assert members[1].overrides == {
        "optimizer.name": "sgd",
        "optimizer.learning_rate": 0.01,
        "model.dropout": 0.0,
        "seed": 2,
    }
    last = members[-1].config
    assert (last.model.dropout, last.seed, last.num_epochs) == (0.25, 2, 3)  # "0.25" parsed as the float field
    plain = sweep.expand(FASHION_SMOKE, ["optimizer.learning_rate=0.010,1e-3", "model.small_inputs=true"])
    assert [m.name for m in plain] == [
        "optimizer.learning_rate=0.01,model.small_inputs=true",
        "optimizer.learning_rate=0.001,model.small_inputs=true",
    ]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["optimizer.learnig_rate=0.1,0.2"],
            "no key 'optimizer.learnig_rate'. Did you mean 'optimizer.learning_rate'?",
        ),
        (["optimizer.learning_rate=abc"], "config.optimizer.learning_rate='abc' is invalid: expected float"),
        (["num_epochs=2.5"], "config.num_epochs='2.5' is invalid: expected int"),
        (["num_epochs=[True]"], "config.num_epochs=True is invalid: expected int"),
        (["optimizer.name=[3]"], "config.optimizer.name=3 is invalid: expected str"),
        (["optimizer.learning_rate="], "no values for optimizer.learning_rate, so the product of the sweep is empty"),
        (["seed=[]"], "no values for seed"),
        (["seed"], "expected KEY=VALUE,VALUE"),
        (["seed=1,2", "seed=3"], "--sweep names a key twice"),
        (
            ["optimizer.learning_rate=0.1,-1"],
            "member 'optimizer.learning_rate=-1.0': config.optimizer.learning_rate",
        ),
        ([], "nothing to sweep; the config defines no get_sweep()"),
    ],
)
def test_sweep_mistakes_fail_before_anything_trains(tmp_path, flags, expected):
    with pytest.raises(config_lib.ConfigError) as error:
        sweep.run_sweep(FASHION_SMOKE, tmp_path / "sweep", flags)
    assert expected in str(error.value)
    assert not (tmp_path / "sweep").exists()


def test_members_with_one_name_or_an_empty_get_sweep_are_refused(tmp_path):
    no_b1 = S0_LIKE.replace("_{optimizer.b1}", "")
    with pytest.raises(config_lib.ConfigError, match="two sweep members are both named 'adam_0.001_0.85'"):
        sweep.expand(write_config(tmp_path, no_b1, "no_b1.py"))
    empty = S0_LIKE.replace("    for lr in (0.01, 0.1):", "    return\n    for lr in (0.01, 0.1):")
    with pytest.raises(config_lib.ConfigError, match=r"get_sweep\(None\) yielded no members"):
        sweep.expand(write_config(tmp_path, empty, "empty.py"))
    slash = S0_LIKE.replace('RUN_NAME = "{optimizer.name}_', 'RUN_NAME = "{optimizer.name}/')
    with pytest.raises(config_lib.ConfigError, match="cannot be a folder name"):
        sweep.expand(write_config(tmp_path, slash, "slash.py"))


def test_child_resources_split_cores_and_gpus():
    cpus = [0, 1, 2, 3]
    assert sweep.child_resources(0, 1, cpus, ["0", "1"]) == (cpus, {})  # one at a time: everything
    cores, env = sweep.child_resources(1, 2, cpus, [])
    assert cores == [2, 3] and env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert [sweep.child_resources(slot, 4, cpus, ["0", "1"])[1]["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == [
        "0",
        "1",
        "0",
        "1",
    ]
    assert sweep.child_resources(3, 4, cpus, ["0", "1"])[1]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45"
    assert sweep.child_resources(2, 3, [0, 1], ["7"]) == ([0], {**sweep.child_resources(0, 3, [0, 1], ["7"])[1]})


def test_outcome_reads_exit_status_and_error_lines():
    lines = ["epoch 1/2 step 3", "error: the training loss is nan at step 3: the run diverged"]
    assert sweep.outcome(0, lines) == ("finished", None)
    assert sweep.outcome(3, lines) == ("diverged", "the training loss is nan at step 3: the run diverged")
    assert sweep.outcome(130, ["error: SIGINT: checkpoint saved"])[0] == "interrupted"
    status, error = sweep.outcome(-signal.SIGKILL, ["step 7"])
    assert status == "failed" and error.startswith("killed by SIGKILL (out of memory?)") and "step 7" in error
    status, error = sweep.outcome(1, ["Traceback (most recent call last):", "ZeroDivisionError: boom"])
    assert status == "failed" and error.endswith("ZeroDivisionError: boom")


@pytest.mark.slow
def test_a_tiny_sweep_through_the_api_records_divergence_goes_on_resumes_and_reports(tmp_path, capsys):
    """2x1 product: the first member diverges (lr 1e30 gives NaN at the first logged steps), the second trains."""
    workdir = tmp_path / "sweep"
    flags = ["optimizer.learning_rate=1e30,0.001", "model.dropout=0.1"]
    base = {"num_train_steps": 3, "log_every_steps": 1}
    sweep.run_sweep(FASHION_SMOKE, workdir, flags, base, parallel=0)
    record = json.loads((workdir / "sweep.json").read_text())
    diverged, finished = record["members"]
    assert diverged["name"] == "optimizer.learning_rate=1e+30,model.dropout=0.1"
    assert diverged["status"] == "diverged" and "the training loss is nan" in diverged["error"]
    assert finished["status"] == "finished" and finished["error"] is None
    assert finished["overrides"] == {"optimizer.learning_rate": 0.001, "model.dropout": 0.1}
    run = workdir / finished["name"]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    rows = [row for row in writers.read_rows(run / "metrics.jsonl") if "epoch" in row]

    table = _csv(workdir / "report_files" / "runs.csv")
    assert [row["status"] for row in table] == ["diverged", "finished"]
    assert [float(row["optimizer.learning_rate"]) for row in table] == [1e30, 0.001]
    assert float(table[1]["best val_accuracy"]) == pytest.approx(max(row["val_accuracy"] for row in rows))
    assert float(table[1]["val_loss"]) == pytest.approx(rows[-1]["val_loss"])
    assert table[0]["best val_accuracy"] == "" and "nan" in table[0]["error"]
    assert (workdir / "report.html").exists()

    stamp = (run / "metrics.jsonl").stat().st_mtime
    capsys.readouterr()
    sweep.run_sweep(FASHION_SMOKE, workdir, flags, base, parallel=0, report=False)
    assert "2 already done, skipped" in capsys.readouterr().out
    assert (run / "metrics.jsonl").stat().st_mtime == stamp

    record["members"][1]["status"] = "running"  # as a sweep killed while this member trained leaves it
    (workdir / "sweep.json").write_text(json.dumps(record))
    sweep.run_sweep(FASHION_SMOKE, workdir, flags, base, parallel=0, report=False)
    out = capsys.readouterr().out
    assert "1 already done, skipped" in out and "already trained to step 3" in out
    resumed = json.loads((workdir / "sweep.json").read_text())["members"][1]
    assert resumed["status"] == "finished" and resumed["attempts"] == 2


def test_a_crashing_member_is_recorded_and_the_sweep_goes_on(tmp_path):
    study = write_config(
        tmp_path,
        "from configs import fashion3_cnn\n\n"
        "def get_config(arg=None):\n    return fashion3_cnn.get_config('smoke')\n\n"
        "def get_sweep(arg=None):\n"
        "    yield {'data.source': 'idx', 'data.path': '/nonexistent/idx'}\n"
        "    yield {'data.source': 'folder', 'data.path': '/nonexistent/folder'}\n",
    )
    with pytest.raises(sweep.SweepIncomplete, match="2 of 2 members did not finish"):
        sweep.run_sweep(study, tmp_path / "sweep", parallel=0, report=False)
    members = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["members"]
    assert [m["status"] for m in members] == ["failed", "failed"]
    assert "/nonexistent/idx" in members[0]["error"] and "/nonexistent/folder" in members[1]["error"]


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_launch_sweep_runs_members_in_parallel_records_a_killed_one_and_stops_on_ctrl_c(tmp_path):
    workdir = tmp_path / "sweep"
    args = [
        f"--config={FASHION_SMOKE}",
        "--mode=sweep",
        "--sweep=model.dropout=0.0,0.1",
        "--parallel=2",
        "--config.num_epochs=200",
        "--config.log_every_steps=1",
        f"--workdir={workdir}",
    ]
    process = subprocess.Popen(
        [sys.executable, "launch.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    names = ["model.dropout=0.0", "model.dropout=0.1"]
    logs = [workdir / name / "sweep.log" for name in names]
    _wait_for(lambda: all(log.exists() and "step 2/" in log.read_text() for log in logs))
    record = json.loads((workdir / "sweep.json").read_text())
    assert [m["status"] for m in record["members"]] == ["running", "running"]  # both at once
    killed = record["members"][0]["pid"]
    os.kill(killed, signal.SIGKILL)
    _wait_for(lambda: json.loads((workdir / "sweep.json").read_text())["members"][0]["status"] == "failed")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130, stderr
    assert "the sweep was stopped; run the same command to resume it" in stderr
    first, second = json.loads((workdir / "sweep.json").read_text())["members"]
    assert first["error"].startswith("killed by SIGKILL")
    assert second["status"] == "interrupted"
    status = json.loads((workdir / names[1] / "status.json").read_text())
    assert status["status"] == "interrupted" and status["reason"] == "SIGINT"
    assert any(p.name.isdigit() for p in (workdir / names[1] / "checkpoints").iterdir())
    members = sweep.expand(FASHION_SMOKE, ["model.dropout=0.0,0.1"], {"num_epochs": 200, "log_every_steps": 1})
    saved = json.loads((workdir / names[1] / "config.json").read_text())
    assert saved == config_lib.to_dict(members[1].config)  # the child's flags rebuild the member's config exactly
    assert (workdir / "report.html").exists()
