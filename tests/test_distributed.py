"""Scale out: one run on two processes, and on 1, 2, 4 or 8 devices, gives the single-process result.

The processes are launch.py children on localhost with their own simulated CPU devices,
joined by jax.distributed over gloo, as `srun python launch.py` joins hosts.
"""

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import fashion3_cnn
from labjax import checkpoints as ckpt
from labjax import cli, evaluate, parallel, plots, train, writers
from labjax.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/fashion3_cnn.py:arch4,smoke"
# A tiny S2 net with BatchNorm and dropout (global-batch statistics and per-step keys must not
# depend on the layout), 3 steps of 16 per epoch, the loss printed at every step. SGD, because
# Adam turns rounding noise in a near-zero gradient into a full step of either sign.
OVERRIDES = {
    "model.layers": "conv(8,3,relu)|batchnorm|maxpool(2)|dropout(0.25)|flatten|dense(classes)",
    "optimizer.name": "sgd",
    "optimizer.learning_rate": 0.1,
    "optimizer.momentum": 0.9,
    "data.train_size": 64,
    "data.val_size": 24,
    "data.balance": "none",
    "num_epochs": 2,
    "log_every_steps": 1,
}
RTOL, ATOL = 1e-4, 1e-5

# launch.py, with every checkpoint save also dumping this process's own copy of the params
# (and no plots: they cost seconds and say nothing here).
SAVE_LOCAL_PARAMS = """
import runpy, sys
import jax, numpy as np
from labjax import checkpoints, plots

plots.plot_curves = lambda *args, **kwargs: []

save = checkpoints.Checkpoints.save

def save_and_dump(self, state, metadata, metrics=None):
    save(self, state, metadata, metrics)
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    local = {jax.tree_util.keystr(path): np.asarray(x.addressable_data(0)) for path, x in leaves}
    np.savez(self.directory.parent / f"params_{jax.process_index()}_{metadata['step']}.npz", **local)

checkpoints.Checkpoints.save = save_and_dump
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""

# One process with 8 simulated devices trains the run on meshes of its first 1, 2 and 8.
DEVICE_COUNTS = """
import json, sys
import jax
from configs import fashion3_cnn
from labjax import parallel, plots, train

plots.plot_curves = lambda *args, **kwargs: []
make_mesh = parallel.make_mesh
workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
for count in (1, 2, 8):
    def first_devices(devices=None, count=count):
        mesh = make_mesh(jax.devices()[:count])
        print(f"mesh of {mesh.devices.size} devices", flush=True)
        return mesh

    parallel.make_mesh = first_devices
    config = fashion3_cnn.get_config("arch4,smoke")
    config.update_from_flattened_dict(overrides)
    train.train_and_evaluate(config, f"{workdir}/devices_{count}")
"""


def _env(devices: int) -> dict:
    xla = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": xla, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[float]]:
    """The run in this process on its 4 devices: (workdir, per-step losses)."""
    workdir = tmp_path_factory.mktemp("distributed") / "one_process"
    config = fashion3_cnn.get_config("arch4,smoke")
    config.update_from_flattened_dict(OVERRIDES)
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as output:
        patch.setattr(plots, "plot_curves", lambda *args, **kwargs: [])
        train.train_and_evaluate(config, workdir)
    losses = _step_losses(output.getvalue())
    assert len(losses) == 6 and len(set(losses)) > 1
    return workdir, losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_losses(output: str) -> list[float]:
    """The per-step losses of train.Progress lines ('... step 3/6 loss 1.0929 ...')."""
    return [float(loss) for loss in re.findall(r"step \d+/\d+ loss (\S+)", output)]


def _rows(workdir: Path) -> list[dict]:
    rows = writers.read_rows(workdir / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k != "training_time_s"} for row in rows]


def _assert_same_run(workdir: Path, expected: Path) -> None:
    """Same metrics.jsonl rows and final parameters, within float tolerance."""
    rows, want_rows = _rows(workdir), _rows(expected)
    assert [row.keys() for row in rows] == [row.keys() for row in want_rows] and len(rows) == OVERRIDES["num_epochs"]
    for row, want in zip(rows, want_rows):
        np.testing.assert_allclose([row[k] for k in want], [want[k] for k in want], rtol=RTOL, atol=ATOL)
    params, want_params = _final_params(workdir), _final_params(expected)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def _final_params(workdir: Path) -> dict:
    checkpoints = ckpt.Checkpoints(workdir, read_only=True)
    params = checkpoints.restore_arrays(checkpoints.latest_step(), ("params",))["params"]
    checkpoints.close()
    return params


@pytest.mark.slow
def test_two_processes_train_the_single_process_run_and_its_checkpoint_restores_in_one(tmp_path, reference):
    workdir, port = tmp_path / "two_processes", _free_port()
    overrides = [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SAVE_LOCAL_PARAMS, f"--config={CONFIG}", *overrides, f"--workdir={workdir}"]
            + [f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={index}"],
            cwd=ROOT,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    try:
        outputs = [child.communicate(timeout=300)[0] for child in children]
    finally:
        for child in children:
            child.kill()
    for child, output in zip(children, outputs):
        assert child.returncode == 0, output[-3000:]
        assert "on 4 device(s)" in output  # 2 local devices each, 4 in the mesh

    # Both processes held the same parameters at every checkpoint.
    dumps = {}
    for path in workdir.glob("params_*.npz"):
        _, process, step = path.stem.split("_")
        dumps.setdefault(int(step), {})[int(process)] = dict(np.load(path))
    assert sorted(dumps) == ckpt.Checkpoints(workdir, read_only=True).steps() == [3, 6]
    for step, by_process in dumps.items():
        assert sorted(by_process) == [0, 1] and sorted(by_process[0]) == sorted(by_process[1])
        for name, value in by_process[0].items():
            np.testing.assert_array_equal(value, by_process[1][name], err_msg=f"step {step} {name}")

    # The same run in one process on 4 devices: the same losses, metrics and parameters.
    np.testing.assert_allclose(_step_losses(outputs[0]), reference[1], atol=2e-4)
    _assert_same_run(workdir, reference[0])
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "finished" and not list(workdir.glob("*.tmp"))

    # The checkpoint the two processes wrote together evaluates in this one process.
    result = evaluate.evaluate(workdir, "latest", "validation")
    assert result["loss"] == pytest.approx(status["final"]["val_loss"], rel=RTOL)
    assert result["accuracy"] == pytest.approx(status["final"]["val_accuracy"], rel=RTOL)


@pytest.mark.slow
def test_one_two_four_and_eight_devices_give_the_same_loss_curve(tmp_path, reference):
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_COUNTS, str(tmp_path), json.dumps(OVERRIDES)],
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = re.split(r"^mesh of (\d+) devices$", result.stdout, flags=re.M)[1:]
    counts, outputs = [int(count) for count in runs[::2]], runs[1::2]
    assert counts == [1, 2, 8]
    for count, output in zip(counts, outputs):  # against the 4-device run
        np.testing.assert_allclose(_step_losses(output), reference[1], atol=2e-4, err_msg=f"{count} devices")
        _assert_same_run(tmp_path / f"devices_{count}", reference[0])


@pytest.mark.parametrize(
    "flags, expected",
    [
        ((None, 2, None), "--num_processes=2 needs --coordinator and --process_id as well"),
        ((None, None, 1), "--process_id=1 needs --coordinator and --num_processes as well"),
        (("host:1234", None, 0), "--coordinator=host:1234 --process_id=0 needs --num_processes as well"),
        (("host", 2, 0), "--coordinator='host' is invalid: expected HOST:PORT"),
        (("host:1234", 2, 2), "--process_id=2 is invalid: expected 0..1 with --num_processes=2"),
        ((None, 0, None), "--num_processes=0 is invalid"),
    ],
)
def test_partial_or_wrong_process_flags_name_the_fix(flags, expected, monkeypatch):
    monkeypatch.delenv("SLURM_STEP_NODELIST", raising=False)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parallel.distributed_args(*flags)


def test_process_flags_and_cluster_launchers(monkeypatch):
    launcher = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "OMPI_MCA_orte_hnp_uri")
    for name in launcher:
        monkeypatch.delenv(name, raising=False)
    assert parallel.distributed_args() is None  # a plain run: one process
    assert parallel.distributed_args("10.0.0.1:8476", 4, 3) == {
        "coordinator_address": "10.0.0.1:8476",
        "num_processes": 4,
        "process_id": 3,
    }
    assert parallel.distributed_args("[::1]:8476", 2, 0)["coordinator_address"] == "[::1]:8476"
    # sbatch sets SLURM_NTASKS for the whole job; only srun's step variables mean several processes.
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert parallel.launcher_process_count() == 1 and parallel.distributed_args() is None
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[01-02]")
    assert parallel.launcher_process_count() == 4 and parallel.distributed_args() == {}  # JAX reads srun's variables
    assert parallel.distributed_args(num_processes=1) is None  # one process, explicitly, even under srun
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert parallel.distributed_args() is None


def test_only_training_spans_processes(monkeypatch):
    monkeypatch.delenv("SLURM_STEP_NODELIST", raising=False)
    started = []
    monkeypatch.setattr(parallel, "initialize_distributed", lambda *args: started.append(args))

    def flags(mode, coordinator=None, num_processes=None, process_id=None):
        return types.SimpleNamespace(
            mode=mode, coordinator=coordinator, num_processes=num_processes, process_id=process_id
        )

    with pytest.raises(ConfigError, match=r"--mode=eval runs in one process: drop --coordinator=HOST:PORT"):
        cli.start_processes(flags("eval", "host:1", 2, 0))
    cli.start_processes(flags("eval", num_processes=1))
    cli.start_processes(flags("train"))
    assert started == []
    cli.start_processes(flags("train", "host:1", 2, 1))
    assert started == [("host:1", 2, 1)]


@pytest.mark.slow
def test_when_one_process_dies_the_other_stops_within_the_heartbeat_timeout(tmp_path):
    """kill -9 of process 1 mid-training: process 0 must not wait in its next collective for ever."""
    workdir, port = tmp_path / "two_processes", _free_port()
    env = {**_env(2), "LABJAX_HEARTBEAT_TIMEOUT_S": "10"}
    children = [
        subprocess.Popen(
            [sys.executable, "launch.py", f"--config={CONFIG}", "--config.num_epochs=200", "--config.log_every_steps=1"]
            + [f"--workdir={workdir}", f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.time() + 240
        for line in children[1].stdout:  # training has started on both (a step needs both)
            if re.search(r"step \d+/", line) or time.time() > deadline:
                break
        children[1].kill()
        children[1].wait()
        killed_at = time.time()
        children[0].communicate(timeout=60)  # the 10 s heartbeat timeout and the time to notice it (default: 100 s)
        waited = time.time() - killed_at
    finally:
        for child in children:
            child.kill()
    assert children[0].returncode != 0, "process 0 went on as if nothing happened"
    assert waited < 60
