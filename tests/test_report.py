"""Reports of a run and of a folder of runs, on run folders written here as training writes them.

Tables are checked against numbers computed from the written metrics (numpy), binary
metrics against their definitions on a hand-counted confusion matrix, names from users
escaped, and report.html opened in headless Chromium (Debian's `chromium` package, which
.ci/run installs): every image loads, the table sorts, nothing reaches the console.
"""

import csv
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import fashion3_cnn
from labjax import config as config_lib
from labjax import report

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script>"


def make_run(path: Path, overrides: dict, val_accuracy: list[float], *, status="finished", confusion=None, **facts):
    """A run folder as training leaves it: config.json, metrics.jsonl (one row per epoch), status.json, eval."""
    config = fashion3_cnn.get_config("smoke")
    config_lib.apply_overrides(config, overrides)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_lib.to_dict(config)))
    rows = [
        {
            "step": 10 * (epoch + 1),
            "epoch": float(epoch + 1),
            "train_loss": 1.0 / (epoch + 1),
            "train_accuracy": accuracy - 0.05,
            "val_loss": 1.2 - accuracy,
            "val_accuracy": accuracy,
            "learning_rate": config.optimizer.learning_rate,
            "training_time_s": 2.0 * (epoch + 1),
        }
        for epoch, accuracy in enumerate(val_accuracy)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (path / "status.json").write_text(json.dumps({"status": status, "step": 10 * len(rows), **facts}))
    if confusion is not None:
        matrix, names = confusion
        (path / "eval").mkdir()
        result = {"step": 30, "checkpoint": "best", "split": "validation", "confusion_matrix": matrix}
        (path / "eval" / "best_validation.json").write_text(json.dumps({**result, "class_names": names}))
    return rows


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_folder_of_runs_gives_one_table_with_differing_overrides_best_and_final_metrics(tmp_path):
    """A shell loop's folders (no sweep.json): the differing key is found from the configs."""
    learning_rates = [0.001, 0.01, 0.1]
    curves = [[0.5, 0.7, 0.65], [0.6, 0.62, 0.8], [0.4, 0.3, 0.35]]
    for lr, curve in zip(learning_rates, curves):
        make_run(
            tmp_path / f"lr_{lr}",
            {"optimizer.learning_rate": lr},
            curve,
            train_time_s=12.5,
            steps_per_s=2.4,
            num_params=166659,
            peak_memory_mb=512.0,
        )
    diverged = tmp_path / "lr_10"
    make_run(diverged, {"optimizer.learning_rate": 10.0}, [])
    (diverged / "status.json").write_text(json.dumps({"status": "diverged", "step": 4, "loss": "nan"}))
    (tmp_path / "notes").mkdir()  # not a run: ignored

    report.write_report(tmp_path)
    rows = read_csv(tmp_path / "report_files" / "runs.csv")
    assert [row["run"] for row in rows] == ["lr_0.001", "lr_0.01", "lr_0.1", "lr_10"]
    header = list(rows[0])
    assert header[:3] == ["run", "optimizer.learning_rate", "status"]  # the only differing key
    for row, lr, curve in zip(rows, learning_rates, curves):
        assert float(row["optimizer.learning_rate"]) == lr
        assert row["status"] == "finished"
        assert float(row["best val_accuracy"]) == pytest.approx(max(curve))
        assert float(row["best epoch"]) == np.argmax(curve) + 1
        assert float(row["val_accuracy"]) == pytest.approx(curve[-1])
        assert float(row["val_loss"]) == pytest.approx(1.2 - curve[-1])
        assert float(row["epochs"]) == len(curve)
        assert (float(row["train time (s)"]), float(row["steps/s"])) == (12.5, 2.4)
        assert (int(row["params"]), float(row["peak memory (MB)"])) == (166659, 512.0)
    assert rows[3]["status"] == "diverged" and rows[3]["best val_accuracy"] == ""
    assert rows[3]["error"] == "loss nan at step 4"

    markdown = (tmp_path / "report.md").read_text()
    assert "| lr_0.01 | 0.01 | finished | **0.8000** | 3 |" in markdown  # the best run, bold
    assert "![validation curves by optimizer.learning_rate](report_files/by_00_optimizer.learning_rate.png)" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count("<tr>") == 5 and page.count("<details>") == 4
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3 * 3 + 2  # loss, accuracy, lr; comparison, overlay
    assert 'src="report_files' not in page and "http" not in page  # self-contained


def test_single_run_report_has_its_curves_confusion_matrix_and_binary_metrics(tmp_path):
    matrix = [[50, 10], [5, 35]]
    make_run(tmp_path, {}, [0.6, 0.85], confusion=(matrix, ["cat", "dog"]))
    report.write_report(tmp_path)
    files = tmp_path / "report_files"
    assert read_csv(files / "runs.csv")[0]["run"] == tmp_path.name
    assert read_csv(files / f"00_{tmp_path.name}_confusion.csv") == [
        {"true \\ predicted": "cat", "cat": "50", "dog": "10"},
        {"true \\ predicted": "dog", "cat": "5", "dog": "35"},
    ]
    pngs = {p.name for p in (files / f"00_{tmp_path.name}").iterdir()}
    assert {"loss.png", "accuracy.png", "confusion_matrix.png"} <= pngs
    markdown = (tmp_path / "report.md").read_text()
    assert "binary metrics (positive class: dog), best checkpoint (step 30) on validation" in markdown
    # tp=35 fn=5 fp=10 tn=50
    assert "| 0.8750 | 0.8333 | 0.1667 | 0.1250 | 0.8500 | 0.8235 |" in markdown


def test_binary_metrics_follow_their_definitions():
    (tn, fp), (fn, tp) = matrix = [[50, 10], [5, 35]]
    assert report.binary_metrics(matrix) == pytest.approx(
        {
            "TPR": tp / (tp + fn),
            "TNR": tn / (tn + fp),
            "FPR": fp / (fp + tn),
            "FNR": fn / (fn + tp),
            "accuracy": (tp + tn) / 100,
            "F1": 2 * (tp / (tp + fp)) * (tp / (tp + fn)) / (tp / (tp + fp) + tp / (tp + fn)),
        }
    )
    assert report.binary_metrics([[3, 0], [0, 0]])["TPR"] is None  # no positives: undefined, not 0


@pytest.mark.slow
def test_k_fold_members_are_grouped_with_mean_and_std_per_setting(tmp_path):
    best = {}
    for dropout in (0.0, 0.5):
        for fold in range(3):
            curve = [0.5 + 0.1 * fold + dropout / 10, 0.4]
            best[dropout, fold] = max(curve)
            overrides = {"data.folds": 3, "data.fold": fold, "model.dropout": dropout}
            make_run(tmp_path / f"d{dropout}_f{fold}", overrides, curve)
    report.write_report(tmp_path)
    groups = read_csv(tmp_path / "report_files" / "kfold.csv")
    assert [float(g["model.dropout"]) for g in groups] == [0.0, 0.5]
    for group in groups:
        values = [best[float(group["model.dropout"]), fold] for fold in range(3)]
        assert int(group["folds"]) == 3
        assert float(group["best mean"]) == pytest.approx(np.mean(values))
        assert float(group["best std"]) == pytest.approx(np.std(values))
        assert float(group["val_accuracy mean"]) == pytest.approx(0.4)


def test_names_from_users_and_data_are_escaped(tmp_path):
    """In HTML and Markdown, and in the figures: a `$` in a run, class or override value is text, not math."""
    run = tmp_path / EVIL.replace("/", "_")
    make_run(run, {"data.class_names": EVIL}, [0.5, 0.6], confusion=([[4, 1], [2, 3]], [EVIL, "<b>bold</b>"]))
    make_run(tmp_path / "plain", {}, [0.5, 0.7])
    math = r"cost $\notacommand$"  # matplotlib's math-text cannot draw it: unescaped, the report fails
    make_run(tmp_path / math, {"data.class_names": math}, [0.4, 0.5], confusion=([[4, 1], [2, 3]], [math, "b"]))
    report.write_report(tmp_path)
    assert (tmp_path / "report_files" / "comparison.png").stat().st_size > 1000
    assert len(list((tmp_path / "report_files").glob("by_*.png"))) == 1  # curves by data.class_names
    page = (tmp_path / "report.html").read_text()
    assert page.count("<script>") == 1  # the report's own sorting script
    assert "&lt;script&gt;alert(1)&lt;" in page and "<b>bold</b>" not in page
    markdown = (tmp_path / "report.md").read_text()
    assert "<script>" not in markdown and "&lt;script&gt;alert(1)&lt;_script&gt;" in markdown


@pytest.mark.slow
def test_report_of_a_folder_without_runs_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run found"):
        report.write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        report.write_report(tmp_path / "missing")
    result = subprocess.run(
        [sys.executable, "launch.py", "--mode=report", f"--workdir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "no run found" in result.stderr and "Traceback" not in result.stderr


# Injected into a copy of report.html: errors are collected from the first line on; after
# load the page records how many images decoded and the run order after two header clicks.
PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); };
</script>"""
PROBE_TAIL = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var runs = document.querySelector("table.sortable"), th = runs.querySelectorAll("th")[1];
  var order = function () {
    return Array.prototype.map.call(runs.tBodies[0].rows,
      function (r) { return r.cells[0].textContent; }).join(",");
  };
  th.click(); var up = order(); th.click(); var down = order();
  document.body.setAttribute("data-probe", JSON.stringify(
    {images: images.length, decoded: decoded, up: up, down: down, errors: window.__errors}));
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it when it can)")
    return found


def _open(chromium: str, page: Path) -> subprocess.CompletedProcess:
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run(
        [chromium, *args, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_html_loads_in_headless_chromium_with_every_image_and_no_console_errors(tmp_path):
    chromium = _chromium()
    for name, lr, curve in (("b", 0.01, [0.6, 0.7]), ("a", 0.1, [0.5, 0.8]), (EVIL.replace("/", "_"), 0.001, [0.4])):
        make_run(tmp_path / name, {"optimizer.learning_rate": lr}, curve, confusion=([[4, 1], [2, 3]], [EVIL, "b"]))
    report.write_report(tmp_path)
    page = (tmp_path / "report.html").read_text()

    plain = _open(chromium, tmp_path / "report.html")
    assert plain.returncode == 0, plain.stderr
    assert not [line for line in plain.stderr.splitlines() if "CONSOLE" in line], plain.stderr

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>"))
    result = _open(chromium, probed)
    probe = re.search(r"data-probe=\"([^\"]*)\"", result.stdout)
    assert probe, result.stdout[-2000:] + result.stderr[-2000:]
    values = json.loads(html.unescape(probe.group(1)))
    assert values["errors"] == []
    assert values["images"] == values["decoded"] >= 3 * 4 + 2  # per run: loss, accuracy, lr, confusion
    evil = "<script>alert(1)<_script>"
    assert values["up"] == f"{evil},b,a" and values["down"] == f"a,b,{evil}"  # sorted by learning rate
