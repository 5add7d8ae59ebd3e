"""launch.py as a user runs it: clear errors for mistakes, SIGTERM saves, eval from the CLI."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import seg_mobilenet
from labjax import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "--config=configs/seg_mobilenet.py:smoke"
FASHION_SMOKE = "--config=configs/fashion3_cnn.py:smoke"


def _launch(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.optimizer.learnig_rate=0.1",
            """--config.optimizer.learnig_rate: the config has no key 'learnig_rate'. Did you mean "learning_rate\"""",
        ),
        ("--config.optimizer.learning_rate=abc", "could not convert string to float: 'abc"),
        (
            "--config.optimizer.name=adamx",
            "optimizer.name='adamx' is invalid: expected one of ('sgd', 'adam', 'adamax', 'adamw', 'rmsprop', 'nadam')",
        ),
        ("--config.model.name=resnet9", "model.name='resnet9' is invalid"),
        ("--config.optimizer.learning_rate=-1", "learning_rate=-1.0 is invalid: expected a number > 0"),
        ("--config.optimizer.b2=1.0", "optimizer.b2=1.0 is invalid: expected a number in [0, 1)"),
        ("--config.batch_size=6", "batch_size=6 is invalid: expected a positive multiple of the device count (4)"),
        ("--config.data.image_size=48", "image_size=48 is invalid: expected at least 32 and a multiple of 32"),
    ],
)
def test_bad_config_input_fails_at_start_with_a_clear_message(tmp_path, override, expected):
    result = _launch(SMOKE, override, f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, expected",
    [
        ("configs/nothere.py", "No such file or directory: 'configs/nothere.py'"),
        ("configs/seg_mobilenet.py:bogus", "unknown argument 'bogus'; choose quick or smoke"),
    ],
)
def test_bad_config_file_or_argument_fails_with_a_clear_message(tmp_path, config, expected):
    result = _launch(f"--config={config}", f"--workdir={tmp_path}")
    assert result.returncode == 2 and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_accepts_the_shipped_configs():
    for arg in (None, "quick", "smoke"):
        config_lib.validate(seg_mobilenet.get_config(arg), num_devices=1)


def test_default_workdir_names_the_config_and_argument():
    from labjax.cli import default_workdir

    assert default_workdir("configs/seg_mobilenet.py") == Path("runs/seg_mobilenet")
    assert default_workdir("configs/seg_mobilenet.py:quick") == Path("runs/seg_mobilenet_quick")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_resume_and_eval_from_the_command_line(tmp_path):
    """On the S2 smoke config (a small CNN compiles in seconds; test_train covers segmentation)."""
    workdir = tmp_path / "run"
    args = [FASHION_SMOKE, f"--workdir={workdir}", "--config.num_epochs=200", "--config.log_every_steps=1"]
    process = subprocess.Popen(
        [sys.executable, "launch.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    for line in process.stdout:  # wait until training runs, past compilation
        if "step 3/" in line or time.time() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "checkpoint saved at step" in stderr
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["reason"] == "SIGTERM"
    stopped = status["step"]

    result = _launch(FASHION_SMOKE, f"--workdir={workdir}", "--config.num_epochs=2", "--config.log_every_steps=1")
    assert result.returncode == 0, result.stderr
    if stopped < 2 * 17:  # 17 steps an epoch
        assert f"Resuming {workdir} from step {stopped}" in result.stdout
    evaluated = _launch("--mode=eval", f"--workdir={workdir}", "--checkpoint=best")
    assert evaluated.returncode == 0, evaluated.stderr
    assert (workdir / "eval" / "best_validation.json").exists()
    missing = _launch("--mode=eval", f"--workdir={tmp_path / 'nothing'}")
    assert missing.returncode == 2 and "config.json: not found" in missing.stderr
