"""Searches (labjax/search.py on Optuna), --seeds on sweeps, and the studies' named sweeps.

The trained tests run configs/fashion3_cnn.py:smoke (2 epochs of a tiny synthetic set): the
issue's search of 6 trials through launch.py, continued to a 7th that a threshold pruner
certainly prunes, and a sweep repeated over 3 seeds whose report is checked against numpy on
the runs' own metrics.jsonl. Parsers and expansions run without training.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from labjax import report, search, sweep, writers
from labjax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FASHION_SMOKE = "configs/fashion3_cnn.py:smoke"
SPACE = ["optimizer.learning_rate=loguniform(1e-4,1e-1)", "model.dropout=uniform(0,0.5)"]


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --- the search space, the pruner, the flags ---


@pytest.mark.parametrize(
    "text, key, kind, args",
    [
        ("optimizer.learning_rate=loguniform(1e-5, 1e-1)", "optimizer.learning_rate", "loguniform", (1e-5, 0.1)),
        ("config.model.dropout=uniform(0,0.5)", "model.dropout", "uniform", (0, 0.5)),
        ("batch_size=int(8, 64)", "batch_size", "int", (8, 64)),
        ("optimizer.name=choice(adam, sgd,'adamax')", "optimizer.name", "choice", ("adam", "sgd", "adamax")),
        ("early_stopping.patience=choice(3,7,10)", "early_stopping.patience", "choice", (3, 7, 10)),
    ],
)
def test_every_distribution_parses(text, key, kind, args):
    assert search.parse_space_flag(text) == (key, search.Distribution(kind, args))


@pytest.mark.parametrize(
    "text, message",
    [
        ("optimizer.learning_rate", "expected KEY=DISTRIBUTION"),
        ("=uniform(0,1)", "expected KEY=DISTRIBUTION"),
        ("model.dropout=normal(0,1)", "is no distribution"),
        ("model.dropout=uniform(0.5,0.1)", "needs low < high"),
        ("optimizer.learning_rate=loguniform(0,0.1)", "low > 0"),
        ("batch_size=int(8,64.5)", "needs two integers"),
        ("model.dropout=uniform(0)", "needs two numbers"),
        ("optimizer.name=choice()", "one or more distinct values"),
        ("optimizer.name=choice(adam,adam)", "one or more distinct values"),
    ],
)
def test_a_bad_space_is_a_config_error_naming_the_flag(text, message):
    with pytest.raises(ConfigError, match=message) as raised:
        search.parse_space_flag(text)
    assert str(raised.value).startswith(f"--space={text!r}" if "DISTRIBUTION" in message else f"--space={text}")


def test_the_space_joins_the_config_and_the_flags_and_checks_keys_and_types(tmp_path):
    path = tmp_path / "study.py"
    path.write_text(
        "from configs.fashion3_cnn import get_config\n\n"
        "def get_search_space(arg=None):\n"
        "    return {'model.dropout': 'uniform(0, 0.3)', 'optimizer.name': ['adam', 'sgd']}\n"
    )
    module, arg = sweep.load_config_module(f"{path}:smoke")
    space = search.search_space(module, arg, ["model.dropout=uniform(0.1,0.5)"])
    assert space == {
        "model.dropout": search.Distribution("uniform", (0.1, 0.5)),  # the flag replaces the config's range
        "optimizer.name": search.Distribution("choice", ("adam", "sgd")),
    }
    config = module.get_config(arg)
    search.check_space(config, space)
    with pytest.raises(ConfigError, match="has no key 'model.dropuot'"):
        search.check_space(config, {"model.dropuot": search.Distribution("uniform", (0, 1))})
    with pytest.raises(ConfigError, match=r"--space=batch_size=uniform\(1, 2.5\).*expected int"):
        search.check_space(config, {"batch_size": search.Distribution("uniform", (1, 2.5))})
    empty = tmp_path / "plain.py"
    empty.write_text("from configs.fashion3_cnn import get_config\n")
    with pytest.raises(ConfigError, match="needs a search space"):
        search.search_space(sweep.load_config_module(str(empty))[0], None, [])


def test_pruners_samplers_and_storage_are_checked():
    optuna = search.import_optuna()
    assert search.parse_pruner("median(n_startup_trials=2, n_warmup_steps=1)") == (
        "median",
        {"n_startup_trials": 2, "n_warmup_steps": 1},
    )
    assert isinstance(search.make_pruner(optuna, "hyperband", 10), optuna.pruners.HyperbandPruner)
    assert isinstance(search.make_pruner(optuna, "none", 10), optuna.pruners.NopPruner)
    for text, message in [("medain", "unknown"), ("median(3)", "not NAME=VALUE"), ("median(bogus=1)", "bogus")]:
        with pytest.raises(ConfigError, match=message):
            search.make_pruner(optuna, text, 10)
    space = {"model.dropout": search.Distribution("uniform", (0, 0.5))}
    with pytest.raises(ConfigError, match="--sampler=grid needs choice"):
        search.make_sampler(optuna, "grid", space, 0)
    with pytest.raises(ConfigError, match="--storage='redis' is unknown"):
        search.storage_file(Path("."), "redis")


def test_a_second_search_on_a_folder_a_live_search_holds_is_refused(tmp_path):
    hold = (
        "import sys, time\nfrom labjax import workdir\nlock = workdir.FolderLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"{tmp_path} is in use by another labjax process \(pid {holder.pid}\)"):
            search.run_search(
                "configs/fashion3_cnn.py:smoke", tmp_path, ["optimizer.learning_rate=loguniform(1e-4,1e-1)"], trials=2
            )
        assert not (tmp_path / "study.db").exists()
    finally:
        holder.kill()
        holder.wait()


def test_without_optuna_a_search_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets when it is not installed
    with pytest.raises(ConfigError, match="pip install optuna"):
        search.import_optuna()


def test_trial_names_hold_the_number_and_the_values():
    values = {"optimizer.learning_rate": 0.0012345, "model.dropout": 0.3, "optimizer.name": "adam"}
    assert search.trial_name(7, values) == "007_learning_rate=0.00123,dropout=0.3,name=adam"
    assert search.trial_name(1, {"a.x": 1, "b.x": 2}) == "001_a.x=1,b.x=2"  # leaves alike: whole keys


# --- the search itself, trained ---


def launch(*args, cwd=ROOT, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(search.TRIAL_ENV, None)
    command = [sys.executable, str(ROOT / "launch.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_search_of_six_trials_then_continued_to_a_seventh_that_is_pruned(tmp_path):
    workdir = tmp_path / "search"
    flags = ["--mode=search", f"--config={FASHION_SMOKE}", f"--workdir={workdir}", "--parallel=2"]
    spaces = [f"--space={text}" for text in SPACE]
    result = launch(*flags, "--trials=6", "--pruner=median", *spaces)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((workdir / "search.json").read_text())
    trials = summary["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"} and summary["best"] is not None
    for trial in trials:
        run = workdir / trial["name"]
        assert trial["name"].startswith(f"{trial['number']:03d}_learning_rate=")
        assert (run / "config.json").is_file() and (run / "checkpoints").is_dir()  # an ordinary run folder
        config = json.loads((run / "config.json").read_text())
        assert config["optimizer"]["learning_rate"] == trial["params"]["optimizer.learning_rate"]
        assert config["model"]["dropout"] == trial["params"]["model.dropout"]
        if trial["state"] == "COMPLETE":  # the study holds the run's best val_accuracy
            rows = writers.read_rows(run / "metrics.jsonl")
            assert trial["value"] == max(row["val_accuracy"] for row in rows if "val_accuracy" in row)
    assert summary["best"]["value"] == max(t["value"] for t in trials if t["value"] is not None)
    assert f"--workdir={workdir / summary['best']['name']}" in summary["best"]["command"]
    rows = read_csv(workdir / "report_files" / "runs.csv")
    assert [row["run"] for row in rows] == [t["name"] for t in trials]
    assert [float(row["optimizer.learning_rate"]) for row in rows] == [
        t["params"]["optimizer.learning_rate"] for t in trials
    ]
    page = (workdir / "report.md").read_text()
    assert "## trials" in page and "best trial" in page and "search.png" in page
    before = {t["name"]: (workdir / t["name"] / "metrics.jsonl").read_text() for t in trials}

    # Continued to 7 trials with a pruner that prunes whatever val_accuracy is (below 1.01): the 7th stops
    # after its first epoch of 2, keeps its checkpoint and is recorded pruned; the first 6 are kept as they were.
    result = launch(*flags, "--trials=7", "--pruner=threshold(lower=1.01)", *spaces)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workdir / "search.json").read_text())
    assert [t["number"] for t in summary["trials"]] == list(range(7))
    assert [t["state"] for t in summary["trials"][:6]] == [t["state"] for t in trials]
    assert {t["name"]: (workdir / t["name"] / "metrics.jsonl").read_text() for t in trials} == before
    pruned = summary["trials"][6]
    run = workdir / pruned["name"]
    status = json.loads((run / "status.json").read_text())
    assert (pruned["state"], pruned["status"], pruned["epochs"]) == ("PRUNED", "pruned", 1)
    assert (status["status"], status["epoch"]) == ("pruned", 1)
    assert [row["epoch"] for row in writers.read_rows(run / "metrics.jsonl") if "epoch" in row] == [1.0]
    assert any(path.name.isdigit() for path in (run / "checkpoints").iterdir())
    entry = next(e for e in json.loads((workdir / "sweep.json").read_text())["members"] if e["name"] == run.name)
    assert entry["status"] == "pruned"
    assert "pruned" in (workdir / "report.md").read_text()


# --- seeds ---


def test_seeds_repeat_every_member_and_refuse_a_second_source_of_seeds():
    members = sweep.expand(FASHION_SMOKE, ["model.dropout=0.0,0.5"], seeds=3)
    assert [m.name for m in members] == [f"model.dropout={d},seed={s}" for d in (0.0, 0.5) for s in (0, 1, 2)]
    assert [m.config.seed for m in members] == [0, 1, 2] * 2
    alone = sweep.expand(FASHION_SMOKE, [], {"seed": 5}, seeds=2)  # no other axis: the config repeated
    assert [m.config.seed for m in alone] == [0, 1]  # the file's seed, not --config.seed (an override of members)
    with pytest.raises(ConfigError, match="--seeds and --sweep=seed"):
        sweep.expand(FASHION_SMOKE, ["seed=1,2"], seeds=2)
    with pytest.raises(ConfigError, match="--seeds=0 is invalid"):
        sweep.expand(FASHION_SMOKE, ["model.dropout=0.0,0.5"], seeds=0)


def test_the_95_percent_interval_is_students_t_on_the_sample_std():
    for values in ([0.5, 0.6, 0.7], [0.1, 0.4], list(np.linspace(0, 1, 40))):
        mean, std, low, high = report.mean_interval(values)
        half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
        assert (mean, std) == pytest.approx((np.mean(values), np.std(values)))
        assert (low, high) == pytest.approx((np.mean(values) - half, np.mean(values) + half), rel=2e-3)
    assert report.mean_interval([0.3]) == (0.3, 0.0, None, None)


@pytest.mark.slow
def test_a_sweep_over_three_seeds_reports_mean_std_and_interval_per_setting(tmp_path):
    # The 6 members differ only in numbers: vectorized, they train as one program (one compilation).
    sweep.run_sweep(
        FASHION_SMOKE,
        tmp_path,
        ["optimizer.learning_rate=0.001,0.01"],
        {"num_epochs": 1},
        parallel=0,
        seeds=3,
        report=False,
        vectorize=True,
    )
    report.write_report(tmp_path)
    groups = read_csv(tmp_path / "report_files" / "seeds.csv")
    assert [float(g["optimizer.learning_rate"]) for g in groups] == [0.001, 0.01]
    for group in groups:
        names = [f"optimizer.learning_rate={group['optimizer.learning_rate']},seed={s}" for s in range(3)]
        best = [max(r["val_accuracy"] for r in writers.read_rows(tmp_path / n / "metrics.jsonl")) for n in names]
        loss = [writers.read_rows(tmp_path / n / "metrics.jsonl")[-1]["val_loss"] for n in names]
        half = stats.t.ppf(0.975, 2) * np.std(best, ddof=1) / np.sqrt(3)
        assert int(group["seeds"]) == 3
        assert float(group["best mean"]) == pytest.approx(np.mean(best))
        assert float(group["best std"]) == pytest.approx(np.std(best))
        assert float(group["best ci95 low"]) == pytest.approx(np.mean(best) - half, rel=1e-3, abs=1e-6)
        assert float(group["best ci95 high"]) == pytest.approx(np.mean(best) + half, rel=1e-3, abs=1e-6)
        assert float(group["val_loss mean"]) == pytest.approx(np.mean(loss))
    assert (tmp_path / "report_files" / "by_setting_over_seeds.png").is_file()
    assert "seeds: mean, std and 95% interval" in (tmp_path / "report.md").read_text()


# --- the studies as named sweeps ---


def names_and_overrides(config_argument: str, name: str) -> list[tuple[str, dict]]:
    return [(m.name, m.overrides) for m in sweep.expand(config_argument, [name])]


def test_s3_named_sweeps_expand_to_the_studies_runs():
    cifar = "configs/cifar100_transfer.py"
    zoo = sweep.expand(f"{cifar}:smoke", ["zoo"])
    assert [m.name for m in zoo] == list(sweep.load_config_module(cifar)[0].ZOO)
    by_name = {m.name: m.config for m in zoo}
    assert by_name["spec_cnn"].model.layers.startswith("conv(32,3,relu)")
    assert by_name["inceptionv3"].data.preprocess == "resize(75)" and by_name["vgg16"].model.head == "new"
    assert by_name["lenet5"].model.name == "lenet5"
    assert names_and_overrides(cifar, "size") == [
        ("size_32", {"data.preprocess": ""}),
        ("size_78", {"data.preprocess": "resize(78)"}),
        ("size_96", {}),
        ("size_128", {"data.preprocess": "resize(128)"}),
    ]
    assert names_and_overrides(cifar, "dropout") == [
        (f"dropout_{d}", {"model.dropout": d}) for d in (0.15, 0.25, 0.3, 0.5, 0.7)
    ]
    assert names_and_overrides(cifar, "patience") == [
        (f"patience_{p}", {"early_stopping.patience": p}) for p in (3, 7, 10)
    ]
    assert [o["optimizer.learning_rate"] for _, o in names_and_overrides(cifar, "lr")] == [
        5e-6,
        2.5e-5,
        5e-5,
        5e-4,
        5e-3,
    ]
    assert names_and_overrides(cifar, "batch") == [(f"batch_{b}", {"batch_size": b}) for b in (32, 64, 128, 256)]
    assert names_and_overrides(cifar, "optimizer") == [(o, {"optimizer.name": o}) for o in ("adam", "adamax", "sgd")]
    assert names_and_overrides(cifar, "classes") == [
        (f"classes_{k}", {"data.keep": f"first:{k}"}) for k in (20, 40, 60, 80)
    ]
    assert names_and_overrides(cifar, "freeze") == [
        ("freeze_frozen", {"model.freeze": "backbone"}),
        ("freeze_last10", {"model.freeze": "fraction:0.1"}),
        ("freeze_last20", {"model.freeze": "fraction:0.2"}),
        ("freeze_none", {}),
    ]
    augment = names_and_overrides(cifar, "augment")
    assert augment == [
        ("no_augment", {"data.augment": ""}),
        ("augment", {"data.augment": augment[1][1]["data.augment"]}),
    ]
    assert augment[1][1]["data.augment"] == "flip_lr|rotate(0.1)|zoom(0.1)|contrast(0.1)"


def test_s4_s2_s1_s0_named_sweeps_expand_to_the_studies_runs():
    settings = names_and_overrides("configs/sunglasses_cnn.py:convnn2", "settings")
    assert settings == [
        ("base", {}),
        ("flip", {"data.copy_fraction": 0.25}),  # mirrored copies: data.copy_augment is flip_lr(p=1.0) already
        ("l2", {"optimizer.weight_decay": 5e-6}),  # ConvNN_2's penalty
        ("dropout0.25", {"model.dropout": 0.25}),
        ("dropout0.5", {"model.dropout": 0.5}),
    ]
    folds = sweep.expand("configs/sunglasses_cnn.py", ["settings_folds"])
    assert len(folds) == 25 and folds[7].name == "flip_fold2"
    assert (folds[7].config.data.folds, folds[7].config.data.fold, folds[7].config.data.copy_fraction) == (5, 2, 0.25)

    architectures = sweep.expand("configs/fashion3_cnn.py:arch10", ["architectures"])
    assert [(m.name, m.config.model.layers) for m in architectures] == [
        (a, a) for a in ("arch4", "arch5", "arch10", "proposed")
    ]
    folds = sweep.expand("configs/fashion3_cnn.py", ["architectures_folds"])
    assert [m.name for m in folds[:6]] == [f"arch4_fold{k}" for k in range(5)] + ["arch5_fold0"]
    assert {(m.config.data.folds, m.config.model.name) for m in folds} == {(5, "spec_cnn")}

    for config in ("configs/cls_basicblock.py", "configs/cls_resnet_small.py:multistep"):
        variants = sweep.expand(config, ["variants"])
        assert [m.name for m in variants] == [
            "plateau_erasing",
            "plateau_randaugment",
            "multistep_erasing",
            "multistep_randaugment",
        ]
        assert [m.config.optimizer.schedule for m in variants] == ["plateau", "plateau", "multistep", "multistep"]
        assert (
            "randaugment(2, 9)" in variants[1].config.data.augment
            and "random_erasing" in variants[0].config.data.augment
        )
    assert [m.name for m in sweep.expand("configs/cls_basicblock.py", ["schedule"])] == ["plateau", "multistep"]
    assert len(sweep.expand("configs/seg_mobilenet.py:smoke", ["optimizers"])) == 21


def test_named_sweeps_combine_with_products_and_unknown_names_list_the_known():
    members = sweep.expand("configs/cifar100_transfer.py", ["optimizer", "dropout", "batch_size=32,64"])
    assert len(members) == (3 + 5) * 2 and members[0].name == "adam,batch_size=32"
    assert sweep.default_workdir("configs/cifar100_transfer.py", ["dropout"]) == Path("runs/cifar100_transfer_dropout")
    with pytest.raises(ConfigError, match="no named sweep 'dropuot'.*dropout"):
        sweep.expand("configs/cifar100_transfer.py", ["dropuot"])


def test_the_journal_storage_keeps_a_study_in_one_file_and_a_folder_keeps_one_kind(tmp_path):
    optuna = search.import_optuna()
    path = search.storage_file(tmp_path, "journal")
    assert path == tmp_path / "study.journal"
    study = optuna.create_study(storage=search.open_storage(optuna, "journal", path), study_name=search.STUDY_NAME)
    trial = study.ask()
    trial.report(0.5, 1)
    study.tell(trial, 0.7)
    again = optuna.load_study(study_name=search.STUDY_NAME, storage=search.open_storage(optuna, "journal", path))
    assert [(t.value, t.intermediate_values) for t in again.trials] == [(0.7, {1: 0.5})]
    with pytest.raises(ConfigError, match="keeps its study in study.journal; add --storage=journal"):
        search.storage_file(tmp_path, "sqlite")
