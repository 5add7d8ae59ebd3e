"""What a run folder records about itself: provenance in status.json, the parameter table in
parameters.txt (not the log), and TensorBoard HParams (config values, final metrics, their names),
read back from the event files as TensorBoard reads them."""

import contextlib
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import seg_mobilenet
from labjax import config as config_lib
from labjax import hparams, provenance, writers

ROOT = Path(__file__).resolve().parents[1]


def read_events(logdir: Path):
    """The event files of a TensorBoard folder, loaded as TensorBoard does (every tensor kept)."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return accumulator


def hparams_of(logdir: Path) -> tuple[dict, dict]:
    """A run's TensorBoard folder: (its hyperparameters {name: value}, its final metrics {tag: value})."""
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    events = read_events(logdir)
    content = events.PluginTagToContent("hparams")
    assert metadata.EXPERIMENT_TAG not in content  # a run declares no experiment: the dashboard infers it
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    finals = {
        tag: float(tensor_util.make_ndarray(events.Tensors(tag)[-1].tensor_proto))
        for tag in events.Tags()["tensors"]
        if tag.startswith(hparams.FINAL)
    }
    assert set(finals) <= set(events.PluginTagToContent("scalars"))  # shown as scalars, so usable as metrics
    return values, finals


def declared_experiment(logdir: Path):
    """The experiment declared in a TensorBoard folder (what the HParams dashboard lists)."""
    from tensorboard.plugins.hparams import metadata

    content = read_events(logdir).PluginTagToContent("hparams")
    return metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])


def test_provenance_names_the_code_packages_devices_and_command():
    import jax

    facts = provenance.collect()
    assert facts["labjax"] == __import__("labjax").__version__
    assert facts["packages"]["jax"] == jax.__version__ and facts["packages"]["numpy"] == np.__version__
    assert facts["packages"]["orbax-checkpoint"] == importlib.metadata.version("orbax-checkpoint")
    assert set(facts["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "numpy"}
    assert facts["devices"] == {
        "platform": jax.devices()[0].platform,
        "count": jax.device_count(),
        "kind": jax.devices()[0].device_kind,
        "processes": 1,
    }
    assert facts["command"] == sys.argv and facts["python"] == ".".join(map(str, sys.version_info[:3]))
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert facts["git"]["commit"] == head and isinstance(facts["git"]["dirty"], bool)
    json.dumps(facts)  # status.json can hold it


def test_git_state_is_left_out_without_git_or_outside_a_clone(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path)  # labjax installed outside any repository
    assert provenance.git_state() is None
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", ROOT / "labjax")
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert provenance.git_state() is None


@pytest.mark.slow
def test_hparams_hold_every_config_value_and_the_final_metrics(tmp_path):
    config = config_lib.to_dict(seg_mobilenet.get_config("smoke"))
    config["data"]["class_names"] = ["cat", "dog"]
    writer = writers.create_writer(tmp_path, is_main_process=True)
    hparams.write_start(writer, config)
    tags = hparams.write_final(writer, 8, {"val_accuracy": 0.75, "val_loss": float("nan"), "val_miou": 0.5})
    writer.close()
    values, finals = hparams_of(tmp_path / "tensorboard")
    flat = config_lib.flatten(config)
    assert set(values) == set(flat)
    assert values["optimizer.learning_rate"] == pytest.approx(flat["optimizer.learning_rate"])
    assert values["model.name"] == flat["model.name"] and values["data.class_names"] == '["cat", "dog"]'
    assert tags == ["final/val_accuracy", "final/val_miou"]  # NaN left out
    assert finals == {"final/val_accuracy": 0.75, "final/val_miou": 0.5}
    assert not (tmp_path / "metrics.jsonl").exists()  # TensorBoard only


def test_a_declared_experiment_lists_differing_hyperparameters_first_with_types_and_the_metrics(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    configs = [{"model": {"name": "unet"}, "lr": lr, "augment": True, "tags": [1, 2]} for lr in (0.1, 0.01)]
    hparams.write_experiment(tmp_path, configs, ["final/val_miou", "final/val_loss"])
    experiment = declared_experiment(tmp_path)
    infos = {info.name: info for info in experiment.hparam_infos}
    assert [info.name for info in experiment.hparam_infos][0] == "lr" and infos["lr"].differs
    assert not infos["model.name"].differs and not infos["augment"].differs
    assert infos["lr"].type == api_pb2.DATA_TYPE_FLOAT64 and infos["augment"].type == api_pb2.DATA_TYPE_BOOL
    assert infos["model.name"].type == infos["tags"].type == api_pb2.DATA_TYPE_STRING
    assert not any(info.HasField("domain_discrete") or info.HasField("domain_interval") for info in infos.values())
    assert [metric.name.tag for metric in experiment.metric_infos] == ["final/val_miou", "final/val_loss"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from labjax import train

    config = seg_mobilenet.get_config("smoke")
    config.task, config.model.name = "classification", "small_cnn"
    config.checkpoint.best_metric = "val_accuracy"
    config.num_epochs, config.optimizer.learning_rate = 1, 0.003
    workdir = tmp_path_factory.mktemp("run")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        summary = train.train_and_evaluate(config, workdir)
    return config, workdir, summary, log.getvalue()


@pytest.mark.slow
def test_a_run_records_its_provenance_in_status_json(tiny_run):
    _, workdir, _, _ = tiny_run
    status = json.loads((workdir / "status.json").read_text())
    assert status["status"] == "finished"
    assert status["provenance"] == json.loads(json.dumps(provenance.collect()))


@pytest.mark.slow
def test_the_parameter_table_goes_to_parameters_txt_and_tensorboard_not_the_log(tiny_run):
    _, workdir, _, log = tiny_run
    table = (workdir / "parameters.txt").read_text()
    assert "Conv_0/kernel" in table and "Dense_0/kernel" in table and "Total:" in table
    assert "Conv_0/kernel" not in log and "+---" not in log
    totals = [line for line in log.splitlines() if "parameters (" in line]
    assert len(totals) == 1 and f"parameter table in {workdir / 'parameters.txt'}" in totals[0]
    from tensorboard.util import tensor_util

    text = read_events(workdir / "tensorboard").Tensors("parameters")[-1].tensor_proto
    assert "Conv_0/kernel" in tensor_util.make_ndarray(text).item().decode()


@pytest.mark.slow
def test_a_run_writes_its_config_and_final_metrics_for_the_hparams_dashboard(tiny_run):
    config, workdir, summary, _ = tiny_run
    values, finals = hparams_of(workdir / "tensorboard")
    assert values["optimizer.learning_rate"] == pytest.approx(0.003) and values["model.name"] == "small_cnn"
    assert values["num_epochs"] == 1 and values["task"] == "classification"
    assert set(finals) == {"final/val_accuracy", "final/val_loss", "final/train_time_s", "final/steps_per_s"}
    assert finals["final/val_accuracy"] == pytest.approx(summary["accuracy"])
    assert finals["final/val_loss"] == pytest.approx(summary["loss"], rel=1e-6)


@pytest.mark.slow
def test_the_report_of_a_sweep_declares_its_hyperparameters_and_final_metrics(tiny_run, tmp_path):
    """Two runs (the tiny run and a copy with another learning rate): the report declares the experiment."""
    from labjax import report

    _, workdir, _, _ = tiny_run
    for name, lr in (("a", 0.003), ("b", 0.01)):
        shutil.copytree(workdir, tmp_path / name)
        saved = json.loads((tmp_path / name / "config.json").read_text())
        saved["optimizer"]["learning_rate"] = lr
        (tmp_path / name / "config.json").write_text(json.dumps(saved))
    report.write_report(tmp_path)
    experiment = declared_experiment(tmp_path / "report_files" / "tensorboard")
    names = [info.name for info in experiment.hparam_infos]
    assert names[0] == "optimizer.learning_rate" and experiment.hparam_infos[0].differs
    assert set(names) == set(config_lib.flatten(json.loads((workdir / "config.json").read_text())))
    tags = [metric.name.tag for metric in experiment.metric_infos]
    assert tags[0] == "final/val_accuracy"  # the metric that ranks the runs (checkpoint.best_metric)
    assert set(tags) == {"final/val_accuracy", "final/val_loss", "final/train_time_s", "final/steps_per_s"}
