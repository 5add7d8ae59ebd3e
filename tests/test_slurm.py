"""SLURM, for real: sweeps as job arrays, detach and attach, preemption and requeue, and srun training.

tests/slurm/start_cluster.sh starts a one-node cluster on this machine (installing Debian's
slurm-wlm and munge when it can); the tests skip, saying why, only where that cannot be done
(no root or password-less sudo, no apt-get). Members train the smoke config in seconds.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from labjax import slurm, writers
from labjax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "tests" / "slurm" / "start_cluster.sh"
SMOKE = "--config=configs/fashion3_cnn.py:smoke"
pytestmark = pytest.mark.slow


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    return (
        shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="module")
def cluster():
    """The running cluster (started here when it is not); skips only where SLURM cannot be installed or started."""
    answering = shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0
    if not answering:
        if not _can_be_root():
            pytest.skip("SLURM is not running and starting it needs root or password-less sudo")
        if not shutil.which("slurmctld") and not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm and munge")
    result = subprocess.run(["bash", str(START), "--install"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"tests/slurm/start_cluster.sh failed: {result.stderr}"


def _env(devices: int = 1) -> dict:
    xla = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla, "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": path}


def _launch(*args: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _members(workdir: Path) -> dict:
    return {entry["name"]: entry for entry in json.loads((workdir / "sweep.json").read_text())["members"]}


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _queue_state(job: str) -> str | None:
    return slurm.queue().get(job, (None, ""))[0]


def _wait_for(condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_slurm_options_parse_and_times_convert():
    assert slurm.parse_options(["partition=gpu,time=60,gpus_per_task=1", "mail-type=BEGIN,END", "hold=true"]) == {
        "partition": "gpu",
        "time": "60",
        "gpus_per_task": "1",
        "mail_type": "BEGIN,END",
        "hold": True,
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        slurm.parse_options(["gpu"])
    assert [slurm.minutes(t) for t in ("90", "1:30", "1:30:00", "2-0", "1-12:00:00")] == [90, 2, 90, 2880, 2160]
    with pytest.raises(ConfigError, match="--slurm=time=soon"):
        slurm.minutes("soon")


def test_a_sweep_runs_as_a_job_array_and_each_status_names_its_job(cluster, tmp_path):
    """The issue's 'done when': both members finish, and their status.json name their SLURM job."""
    workdir = tmp_path / "sweep"
    result = _launch("--mode=sweep", SMOKE, "--sweep=seed=0,1", "--launcher=slurm", f"--workdir={workdir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"submitted 2 member\(s\) as SLURM job array (\d+)", result.stdout)
    members = _members(workdir)
    arrays = set()
    for task, name in enumerate(("seed=0", "seed=1")):
        status, entry = _status(workdir / name), members[name]
        assert status["status"] == entry["status"] == "finished"
        assert status["slurm_job_id"] == entry["slurm_job"] and status["slurm_array_task_id"] == task
        assert status["host"] == socket.gethostname() and status["slurm_restart_count"] == 0
        arrays.add(status["slurm_job_id"].split("_")[0])
    assert len(arrays) == 1  # one array, two tasks
    assert (workdir / "report.html").exists()


def test_detach_then_attach_resubmits_a_cancelled_member_and_collects_it(cluster, tmp_path):
    workdir = tmp_path / "sweep"
    args = ("--mode=sweep", SMOKE, "--sweep=seed=3", "--launcher=slurm", f"--workdir={workdir}")
    detached = _launch(*args, "--detach", "--slurm=hold=true")  # held: it waits in the queue until cancelled
    assert detached.returncode == 0, detached.stdout[-3000:] + detached.stderr[-3000:]
    assert "detached" in detached.stdout
    entry = _members(workdir)["seed=3"]
    first = entry["slurm_job"]
    assert entry["status"] == "pending" and _queue_state(first) == "PENDING"
    subprocess.run(["scancel", first], check=True)
    _wait_for(lambda: _queue_state(first) is None, f"job {first} to leave the queue")

    attached = _launch(*args)  # the same command: sees the cancelled job, resubmits it, waits, reports
    assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-3000:]
    assert f"seed=3: failed (job {first})" in attached.stdout and "submitted 1 member(s)" in attached.stdout
    entry, status = _members(workdir)["seed=3"], _status(workdir / "seed=3")
    assert entry["status"] == status["status"] == "finished" and entry["attempts"] == 2
    assert status["slurm_job_id"] == entry["slurm_job"] != first
    assert (workdir / "report.html").exists()


def _rows(run: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k != "training_time_s"} for row in writers.read_rows(run / "metrics.jsonl")
    ]


def test_a_signalled_member_requeues_and_resumes_to_the_uninterrupted_result(cluster, tmp_path):
    workdir, overrides = tmp_path / "sweep", ("--config.num_epochs=6", "--config.early_stopping.patience=0")
    args = ("--mode=sweep", SMOKE, *overrides, "--sweep=seed=0", "--launcher=slurm", f"--workdir={workdir}")
    detached = _launch(*args, "--detach")
    assert detached.returncode == 0, detached.stdout[-3000:] + detached.stderr[-3000:]
    job, run = _members(workdir)["seed=0"]["slurm_job"], workdir / "seed=0"
    _wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text(), "the first epoch")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what SLURM sends before a time limit
    _wait_for(lambda: _queue_state(job) == "PENDING", f"job {job} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip requeue's hold

    attached = _launch(*args)
    assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-3000:]
    status = _status(run)
    assert status["status"] == "finished" and status["slurm_job_id"] == job and status["slurm_restart_count"] == 1
    log = (run / "sweep.log").read_text()
    stopped = re.search(r"SIGTERM: checkpoint saved at step (\d+)", log)
    assert stopped and 0 < int(stopped.group(1)) < status["step"] and "Resuming" in log

    reference = tmp_path / "uninterrupted"
    result = _launch(SMOKE, *overrides, "--config.seed=0", f"--workdir={reference}")
    assert result.returncode == 0, result.stderr[-3000:]
    want = _status(reference)
    assert status["step"] == want["step"]
    np.testing.assert_allclose(list(status["final"].values()), list(want["final"].values()), rtol=1e-6)
    rows, want_rows = _rows(run), _rows(reference)
    assert [row["step"] for row in rows] == [row["step"] for row in want_rows]
    for row, want_row in zip(rows, want_rows):  # every epoch's validation; the last epoch's training too
        keys = [k for k in want_row if k.startswith("val_")] + (list(want_row) if row is rows[-1] else [])
        np.testing.assert_allclose([row[k] for k in keys], [want_row[k] for k in keys], rtol=1e-6)


# test_distributed.py's tiny run: SGD (Adam magnifies rounding noise), BatchNorm and dropout, 2 epochs of 3 steps.
TWO_PROCESS_OVERRIDES = (
    "--config.model.layers=conv(8,3,relu)|batchnorm|maxpool(2)|dropout(0.25)|flatten|dense(classes)",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=0.1",
    "--config.optimizer.momentum=0.9",
    "--config.data.train_size=64",
    "--config.data.val_size=24",
    "--config.data.balance=none",
    "--config.num_epochs=2",
    "--config.log_every_steps=1",
)
# docs/cluster.md's batch script, adapted in resources only: one node, 2 tasks of 1 CPU (2 CPU devices each).
RESOURCES = {
    "--nodes=2": "--nodes=1",
    "--ntasks-per-node=4": "--ntasks-per-node=2",
    "--cpus-per-task=8": "--cpus-per-task=1",
    "--time=04:00:00": "--time=00:10:00",
}


def _docs_batch_script(output: Path) -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    script = re.search(r"```bash\n(#!/bin/bash\n.*?)```", text, re.S).group(1)
    assert all(old in script for old in RESOURCES) and "srun python launch.py" in script
    for old, new in {**RESOURCES, "--output=slurm-%j.out": f"--output={output}"}.items():
        script = script.replace(old, new)
    return "\n".join(line for line in script.splitlines() if not line.startswith("#SBATCH --gpus-per-task"))


def _step_losses(output: str) -> list[float]:
    return [float(loss) for loss in re.findall(r"step \d+/\d+ loss (\S+)", output)]


def test_the_docs_sbatch_script_trains_on_two_srun_tasks_as_one_process_on_four_devices(cluster, tmp_path):
    script, output = tmp_path / "train.sbatch", tmp_path / "slurm.out"
    script.write_text(_docs_batch_script(output))
    run = tmp_path / "two_tasks"
    config = "--config=configs/fashion3_cnn.py:arch4,smoke"
    result = subprocess.run(
        ["sbatch", "--wait", str(script), config, *TWO_PROCESS_OVERRIDES, f"--workdir={run}"],
        cwd=ROOT,
        env=_env(devices=2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = output.read_text() if output.exists() else ""
    assert result.returncode == 0, result.stderr + log[-3000:]
    assert log.count("on 4 device(s)") == 2  # each of the two processes sees the 4 devices of both

    reference = tmp_path / "one_process"
    one = _launch(config, *TWO_PROCESS_OVERRIDES, f"--workdir={reference}", devices=4)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "on 4 device(s)" in one.stdout
    losses, want = _step_losses(log), _step_losses(one.stdout)
    assert len(want) == 6 and losses[::2] == losses[1::2]  # both processes print every step
    np.testing.assert_allclose(losses[::2], want, atol=2e-4)
    rows, want_rows = _rows(run), _rows(reference)
    assert [row.keys() for row in rows] == [row.keys() for row in want_rows] and len(rows) == 2
    for row, want_row in zip(rows, want_rows):
        np.testing.assert_allclose([row[k] for k in want_row], list(want_row.values()), rtol=1e-4, atol=1e-5)
    assert _status(run)["status"] == "finished" and _status(run)["slurm_job_id"]
