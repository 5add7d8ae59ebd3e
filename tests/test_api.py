"""The Python API (labjax/api.py, docs/api.md) on the smoke config: what each function returns is
what the run folder holds, and `import labjax` stays light."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import labjax
from labjax import config as config_lib
from labjax import errors

SMOKE = "fashion3_cnn:smoke"


def test_import_labjax_loads_neither_jax_nor_tensorflow():
    code = "import sys, labjax; print(sorted({'jax', 'tensorflow', 'flax'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_get_config_by_name_or_path_with_overrides_as_a_dict_or_strings():
    by_name = labjax.get_config(SMOKE, {"num_epochs": 3, "optimizer.learning_rate": 0.01})
    by_path = labjax.get_config("configs/fashion3_cnn.py:smoke", ["num_epochs=3", "optimizer.learning_rate=0.01"])
    assert config_lib.to_dict(by_name) == config_lib.to_dict(by_path)
    assert (by_name.num_epochs, by_name.optimizer.learning_rate, by_name.data.source) == (3, 0.01, "synthetic")
    with pytest.raises(AttributeError):  # locked: a mistyped key raises instead of adding a key
        by_name.num_epoch = 2


def test_get_config_names_the_mistake():
    with pytest.raises(errors.ConfigError, match="no key 'num_epoch'. Did you mean 'num_epochs'"):
        labjax.get_config(SMOKE, {"num_epoch": 3})
    with pytest.raises(errors.MissingFileError, match="Built-in configs: .*fashion3_cnn"):
        labjax.get_config("no_such_study:smoke")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("api") / "run"
    summary = labjax.train(labjax.get_config(SMOKE, {"num_epochs": 2}), workdir)
    return workdir, summary


@pytest.mark.slow
def test_train_returns_the_summary_that_status_json_holds(trained):
    workdir, summary = trained
    status = json.loads((workdir / "status.json").read_text())
    assert summary["status"] == "finished" and summary["workdir"] == str(workdir)
    assert summary["final"] == status["final"] and set(summary["final"]) == {"val_loss", "val_accuracy"}
    assert summary["epochs"] == 2 and summary["steps"] == status["step"] > 0
    assert summary["train_time_s"] == status["train_time_s"] > 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    best = next(row for row in rows if row.get("epoch") == status["best_epoch"])  # early stopping on val_loss
    assert summary["best"]["epoch"] == status["best_epoch"]
    lowest = min(row["val_loss"] for row in rows if "epoch" in row)
    assert summary["best"]["metrics"]["val_loss"] == best["val_loss"] == lowest


@pytest.mark.slow
def test_train_again_returns_the_finished_run_and_stays_callable_beside_its_module(trained):
    workdir, summary = trained
    from labjax import train as train_module  # the module labjax.train, which is also the function

    assert callable(train_module.train_and_evaluate)
    again = labjax.train(labjax.get_config(SMOKE, {"num_epochs": 2}), workdir)
    assert again == summary  # finished: nothing trained, the same status.json read back
    with pytest.raises(errors.ConfigError, match="different config"):
        labjax.train(labjax.get_config(SMOKE, {"num_epochs": 2, "seed": 5}), workdir)


@pytest.mark.slow
def test_evaluate_returns_the_metrics_it_writes(trained):
    workdir, _ = trained
    result = labjax.evaluate(workdir, checkpoint="best", split="validation")
    written = json.loads((workdir / "eval" / "best_validation.json").read_text())
    assert result["accuracy"] == pytest.approx(written["accuracy"])
    assert np.sum(result["confusion_matrix"]) == result["num_examples"] == 35
    assert result["class_names"] == ["upper", "lower", "shoes"]


@pytest.mark.slow
def test_predict_on_a_folder_and_on_a_list_of_files(trained, tmp_path):
    workdir, _ = trained
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    result = labjax.predict(workdir, tmp_path, output=tmp_path / "out")
    assert [Path(row["file"]).name for row in result["predictions"]] == ["0.png", "1.png", "2.png"]
    assert all(row["class"] in ("upper", "lower", "shoes") for row in result["predictions"])
    assert (tmp_path / "out" / "predictions.csv").is_file()
    one = labjax.predict(workdir, [tmp_path / "2.png"], output=tmp_path / "one")
    assert one["predictions"] == result["predictions"][2:]


@pytest.mark.slow
def test_load_runs_of_a_run_folder_is_one_row(trained):
    workdir, summary = trained
    table = labjax.load_runs(workdir)
    assert list(table["name"]) == [workdir.name] and list(table["status"]) == ["finished"]
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert table["val_loss"][0] == pytest.approx(last["val_loss"]) and table["params"][0] == summary["num_params"]


@pytest.mark.slow
def test_sweep_report_and_load_runs(tmp_path):
    runs = labjax.sweep(SMOKE, tmp_path / "sweep", sweep="seed=1,2", overrides={"num_epochs": 1})
    assert list(runs["name"]) == ["seed=1", "seed=2"] and list(runs["seed"]) == [1, 2]
    assert list(runs["status"]) == ["finished", "finished"] and runs["val_accuracy"].between(0, 1).all()
    for name in ("seed=1", "seed=2"):
        final = json.loads((tmp_path / "sweep" / name / "status.json").read_text())["final"]
        assert runs.set_index("name").loc[name, "val_loss"] == pytest.approx(final["val_loss"])
    path = labjax.report(tmp_path / "sweep")
    assert path == tmp_path / "sweep" / "report.html" and "seed=2" in path.read_text()
    with pytest.raises(errors.MissingFileError):
        labjax.load_runs(tmp_path / "nothing")
