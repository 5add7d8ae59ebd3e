"""examples/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter kernel), so it cannot rot."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel (this interpreter) imports labjax from the clone and works in a temp folder.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "commit the notebook without outputs"
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output["output_type"] == "error"]
    assert (tmp_path / "runs" / "quickstart" / "status.json").is_file()
    assert (tmp_path / "runs" / "quickstart_sweep" / "report.html").is_file()
    texts = " ".join(str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    assert "photo_3.png" in texts and "optimizer.learning_rate" in texts
    assert "] epoch 2/2 step" in texts  # the live progress bar, updated in place to its last line
