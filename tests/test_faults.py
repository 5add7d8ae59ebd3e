"""Nothing lost, nothing run twice: locks, --overwrite, torn and stale metrics, corrupt checkpoints,
crashes, a SIGTERM during validation, and kill -9 at random moments (the fault-injection test)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import fashion3_cnn
from labjax import config as config_lib
from labjax import plots, sweep, train, workdir, writers
from labjax.data import pipeline

ROOT = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sys, time
from labjax import workdir
lock = workdir.FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _config(epochs: int = 2):
    config = fashion3_cnn.get_config("smoke")
    config.data.train_size, config.data.val_size = 64, 32  # 6 steps an epoch; 12 validation images (3 batches of 4)
    config.num_epochs = epochs
    config.eval_batch_size = 4
    config.early_stopping.patience = 0
    return config


def _rows(folder: Path) -> list[dict]:
    return writers.read_rows(folder / "metrics.jsonl")


def _status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


def _same_rows(rows: list[dict], expected: list[dict]) -> None:
    """The same epochs with the same metrics (times aside)."""
    assert [row["step"] for row in rows] == [row["step"] for row in expected]
    for row, want in zip(rows, expected):
        for key in want:
            if key.startswith(("train_", "val_")):
                assert row[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (row["step"], key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "uninterrupted"
    train.train_and_evaluate(_config(epochs=3), folder)
    return folder


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another live process holds."""
    folder = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder.pid
    holder.kill()
    holder.wait()


def test_a_second_process_on_a_live_run_folder_is_refused_naming_the_holder(held):
    folder, pid = held
    with pytest.raises(config_lib.ConfigError, match=rf"{folder} is in use by another labjax process \(pid {pid}\)"):
        train.train_and_evaluate(_config(epochs=1), folder)
    assert not (folder / "metrics.jsonl").exists() and not (folder / "config.json").exists()


def test_a_lock_dies_with_its_process(held):
    folder, pid = held
    assert workdir.holder_alive(folder)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert not workdir.holder_alive(folder)
    with workdir.FolderLock(folder):  # taken at once: no stale lock file blocks anyone
        assert (folder / workdir.LOCK).read_text().strip() == str(os.getpid())


def test_a_second_sweep_on_a_live_sweep_folder_is_refused(held):
    folder, pid = held
    with pytest.raises(config_lib.ConfigError, match=rf"pid {pid}"):
        sweep.run_sweep("configs/fashion3_cnn.py:smoke", folder, ["seed=0,1"], parallel=0)
    assert not (folder / "sweep.json").exists()


def test_a_member_process_that_has_not_locked_its_folder_yet_counts_as_training(tmp_path):
    """sweep.json's pid of a 'running' member: alive and running that member's command -> still training."""
    member = tmp_path / "sweep" / "seed=0"
    command = [sys.executable, "-c", "import time; time.sleep(60)", f"--workdir={member}"]
    process = subprocess.Popen(command)
    for _ in range(100):  # until the child has exec'd (before, /proc shows the forking parent's command)
        if b"--workdir" in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            break
        time.sleep(0.1)
    try:
        assert sweep._still_training({"status": "running", "pid": process.pid}, member)
        assert not sweep._still_training({"status": "running", "pid": process.pid}, tmp_path / "sweep" / "seed=1")
        assert not sweep._still_training({"status": "finished", "pid": process.pid}, member)
    finally:
        process.kill()
        process.wait()
    assert not sweep._still_training({"status": "running", "pid": process.pid}, member)


@pytest.mark.slow
def test_a_restarted_sweep_leaves_a_member_a_live_process_still_trains(tmp_path):
    folder = tmp_path / "sweep"
    members = sweep.expand("configs/fashion3_cnn.py:smoke", ["seed=0,1"])
    member_dir = folder / members[0].name
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(member_dir)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(config_lib.ConfigError, match=rf"{member_dir} is still being trained by a process"):
            sweep.run_sweep("configs/fashion3_cnn.py:smoke", folder, ["seed=0,1"], parallel=0)
    finally:
        holder.kill()
        holder.wait()


def test_overwrite_deletes_nothing_in_a_folder_no_run_claimed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "photo.jpg").write_bytes(b"a user's photo")
    (tmp_path / "plots").mkdir()
    with pytest.raises(config_lib.ConfigError, match=rf"--overwrite: {tmp_path} is not a labjax run folder"):
        train.train_and_evaluate(_config(epochs=1), tmp_path, overwrite=True)
    assert (tmp_path / "data" / "photo.jpg").read_bytes() == b"a user's photo" and (tmp_path / "plots").is_dir()


@pytest.mark.slow
def test_overwrite_deletes_a_runs_own_files_in_its_folder(tmp_path):
    train.train_and_evaluate(_config(epochs=1), tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert (tmp_path / workdir.MARKER).exists()
    train.train_and_evaluate(_config(epochs=1), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(_rows(tmp_path)) == 1


def test_a_torn_last_row_is_dropped_with_a_warning_and_a_damaged_middle_row_named(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4, "val_loss": 1.0}\n{"step": 8, "val_loss": 0.5}\n{"step": 12, "val_lo')
    with caplog.at_level("WARNING"):
        assert [row["step"] for row in writers.read_rows(path)] == [4, 8]
    assert f"{path}: its last line is incomplete" in caplog.text
    writers.truncate_after(path, 4)
    assert path.read_text() == '{"step": 4, "val_loss": 1.0}\n' and not path.with_suffix(".jsonl.tmp").exists()
    path.write_text('{"step": 4}\n{"step": 8, oops}\n{"step": 12}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not JSON"):
        writers.read_rows(path)


@pytest.mark.slow
def test_a_run_resumes_past_a_torn_row_and_a_crash_before_its_first_checkpoint(tmp_path, uninterrupted):
    config = _config(epochs=3)
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(config, tmp_path, stop_after_step=9)  # after the checkpoint of epoch 1 (step 6)
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 12, "train_lo')  # a kill mid-append
    train.train_and_evaluate(config, tmp_path)
    # Epoch 2 resumed mid-way: its train_* go on from the sums saved with the checkpoint, so all are exact.
    _same_rows(_rows(tmp_path), _rows(uninterrupted))

    fresh = tmp_path / "fresh"  # a crash after rows were written but before any checkpoint
    train.train_and_evaluate(_config(epochs=1), fresh)
    for step in (6, 12):
        with (fresh / "metrics.jsonl").open("a") as file:
            file.write(json.dumps({"step": step, "val_loss": 9.0}) + "\n")
    for child in (fresh / "checkpoints").iterdir():
        if child.name.isdigit():
            __import__("shutil").rmtree(child)
    train.train_and_evaluate(_config(epochs=3), fresh)
    _same_rows(_rows(fresh), _rows(uninterrupted))


@pytest.mark.slow
def test_resume_falls_back_past_a_corrupt_latest_checkpoint_and_keeps_it_aside(tmp_path, uninterrupted, capsys):
    config = _config(epochs=3)
    config.checkpoint.keep = 3
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(config, tmp_path, stop_after_step=15)  # checkpoints at 6, 12 and 15
    latest = tmp_path / "checkpoints" / "15"
    for file in (latest / "params").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(b"\0" * 7)  # damaged on disk
    train.train_and_evaluate(config, tmp_path)
    out = capsys.readouterr().out
    assert "checkpoints/15 is truncated or corrupt" in out and "resuming from an older one" in out
    assert f"Resuming {tmp_path} from step 12." in out
    assert (tmp_path / "corrupt_checkpoints" / "15").is_dir()
    _same_rows(_rows(tmp_path), _rows(uninterrupted))
    assert _status(tmp_path)["final"] == pytest.approx(_status(uninterrupted)["final"], rel=1e-5)


@pytest.mark.slow
def test_an_unexpected_error_marks_the_run_failed_with_it(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the plotting library broke")

    monkeypatch.setattr(plots, "plot_curves", broken)
    with pytest.raises(RuntimeError, match="plotting library"):
        train.train_and_evaluate(_config(epochs=2), tmp_path)
    status = _status(tmp_path)
    assert status["status"] == "failed" and status["error"] == "RuntimeError: the plotting library broke"


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("checkpoint.every_epochs", 0, "checkpoint.every_epochs=0 is invalid: expected an integer >= 1"),
        ("checkpoint.best_metric", "val_acuracy", "checkpoint.best_metric='val_acuracy' is invalid"),
        ("early_stopping.monitor", "val_los", "early_stopping.monitor='val_los' is invalid"),
    ],
)
def test_monitors_and_checkpoint_periods_are_checked_before_training(key, value, words):
    config = _config()
    if key == "early_stopping.monitor":
        config.early_stopping.patience = 2
    config_lib.apply_overrides(config, {key: value})
    with pytest.raises(config_lib.ConfigError, match=words):
        config_lib.validate(config, num_devices=1)


@pytest.mark.slow
def test_sigterm_during_validation_stops_it_and_the_resumed_run_records_that_epoch_once(
    tmp_path, uninterrupted, monkeypatch
):
    original = pipeline.eval_batches
    sent = []

    def eval_batches(*args, **kwargs):
        for index, batch in enumerate(original(*args, **kwargs)):
            if index == 1 and not sent:  # mid-pass of the first validation
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(pipeline, "eval_batches", eval_batches)
    with pytest.raises(train.TrainingInterrupted, match="SIGTERM: checkpoint saved at step 6"):
        train.train_and_evaluate(_config(epochs=3), tmp_path)
    assert _status(tmp_path)["status"] == "interrupted" and _rows(tmp_path) == []
    monkeypatch.setattr(pipeline, "eval_batches", original)
    train.train_and_evaluate(_config(epochs=3), tmp_path)
    _same_rows(_rows(tmp_path), _rows(uninterrupted))


KILL_RUN = """
import sys
from configs import fashion3_cnn
from labjax import train
config = fashion3_cnn.get_config("smoke")
config.data.train_size, config.data.val_size = 64, 32
config.num_epochs, config.early_stopping.patience, config.eval_batch_size = 3, 0, 4
train.train_and_evaluate(config, sys.argv[1])
"""


def _run_killed_at_random_moments(folder: Path, seed: int, kills: int) -> int:
    """Starts the same run again and again, kill -9 after a random delay; returns how many kills landed."""
    rng, landed = random.Random(seed), 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_RUN, str(folder)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(4.0, 16.0))  # start-up, compilation, steps, saves, status writes
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            landed += 1
        child.wait()
    finished = subprocess.run(
        [sys.executable, "-c", KILL_RUN, str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return landed


@pytest.mark.slow
def test_a_run_killed_at_random_moments_ends_as_the_uninterrupted_run(tmp_path, uninterrupted):
    """kill -9 at seeded random moments (during a step, a checkpoint save, a status write), the same
    command each time: the run ends with the uninterrupted run's metrics and one row per epoch."""
    seed = int(os.environ.get("LABJAX_FAULT_SEED", "0"))
    landed = _run_killed_at_random_moments(tmp_path / "run", seed, kills=4)
    assert landed >= 1, "no kill landed: the run finished before every kill"
    rows = _rows(tmp_path / "run")
    assert len(rows) == 3 and len({row["step"] for row in rows}) == 3
    _same_rows(rows, _rows(uninterrupted))
    assert _status(tmp_path / "run")["final"] == pytest.approx(_status(uninterrupted)["final"], rel=1e-5)
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.slow
def test_a_sweep_killed_while_members_run_ends_with_every_member_done_once(tmp_path):
    """kill -9 of the sweep while a member trains, then of the member: the restarted sweep finishes,
    the member resumed from its checkpoint, each member once, one row per epoch."""
    folder, env = tmp_path / "sweep", {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "launch.py", "--mode=sweep", "--config=configs/fashion3_cnn.py:smoke"]
    command += ["--config.num_epochs=12", "--sweep=seed=0,1", f"--workdir={folder}", "--parallel=1"]
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in child.stdout:
        if "started" in line:  # the first member is training
            break
    time.sleep(3)
    child.kill()
    child.wait()
    running = [e for e in json.loads((folder / "sweep.json").read_text())["members"] if e["status"] == "running"]
    assert len(running) == 1 and running[0]["pid"]
    pid = running[0]["pid"]
    if Path(f"/proc/{pid}").exists():  # (its output pipe is gone: it may have died at its next line)
        os.kill(pid, signal.SIGKILL)  # the member dies too, at some moment of its training
    for _ in range(60):
        if not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes():
            break
        time.sleep(1)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((folder / "sweep.json").read_text())
    assert sorted(m["status"] for m in record["members"]) == ["finished", "finished"]
    for entry in record["members"]:
        status = _status(folder / entry["name"])  # early stopping may end it before num_epochs
        steps = [row["step"] for row in _rows(folder / entry["name"])]
        assert steps == [17 * (epoch + 1) for epoch in range(status["epochs"])], steps


@pytest.mark.slow
def test_a_kill_after_the_last_checkpoint_before_the_finished_status_is_recovered(tmp_path, uninterrupted):
    train.train_and_evaluate(_config(epochs=3), tmp_path)
    status = _status(tmp_path)
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "step": 12, "time": status["time"]}))
    summary = train.train_and_evaluate(_config(epochs=3), tmp_path)
    status = _status(tmp_path)
    assert status["status"] == "finished" and status["step"] == 18
    assert status["final"] == pytest.approx(_status(uninterrupted)["final"], rel=1e-5)
    assert summary == pytest.approx({k.removeprefix("val_"): v for k, v in status["final"].items()})
    assert status["confusion_matrix"] == _status(uninterrupted)["confusion_matrix"]


@pytest.mark.slow
def test_a_resumed_run_keeps_its_best_checkpoint_for_restoring_the_best_weights(tmp_path):
    """Orbax's best-N policy forgot the metrics of steps saved before a restart and deleted the best one;
    the run then failed at its end, restoring it. Which steps to keep is now read from their metadata."""
    config = fashion3_cnn.get_config("smoke")  # early stopping with restore_best
    config.num_epochs = 3
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(config, tmp_path, stop_after_step=18)  # one step into epoch 2 (17 a epoch)
    train.train_and_evaluate(config, tmp_path)
    status = _status(tmp_path)
    assert status["status"] == "finished"
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert status["best_step"] in kept and kept[-1] == 51


INTERRUPTED_GROUP = """
from configs import sunglasses_cnn


def get_config(arg=None):
    config = sunglasses_cnn.get_config("smoke")
    config.num_epochs, config.early_stopping.patience = 3, 0
    return config


def get_sweep(arg=None):
    yield {"optimizer.learning_rate": 0.002}
    yield {"optimizer.learning_rate": 1e30}  # diverges in its first epoch
"""


@pytest.mark.slow
def test_a_vectorized_group_stopped_keeps_its_ended_members_ended(tmp_path, monkeypatch):
    """SIGTERM in the group's second epoch: the member that diverged in the first stays 'diverged' in
    sweep.json (before, every member was marked interrupted and trained again by the next call)."""
    study = tmp_path / "study.py"
    study.write_text(INTERRUPTED_GROUP)
    original = pipeline.train_batches

    def train_batches(data, config, epoch, *args, **kwargs):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(data, config, epoch, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_batches", train_batches)
    with pytest.raises(sweep.SweepInterrupted):
        sweep.run_sweep(str(study), tmp_path / "sweep", parallel=0, report=False, vectorize=True)
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    statuses = {m["name"]: m["status"] for m in record["members"]}
    assert statuses == {"optimizer.learning_rate=0.002": "interrupted", "optimizer.learning_rate=1e+30": "diverged"}
    monkeypatch.setattr(pipeline, "train_batches", original)
    record = sweep.run_sweep(str(study), tmp_path / "sweep", parallel=0, report=False, vectorize=True)
    assert {m["name"]: m["status"] for m in record["members"]}["optimizer.learning_rate=0.002"] == "finished"
