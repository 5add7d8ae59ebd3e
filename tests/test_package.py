"""Packaging (pyproject.toml): a clone installs with pip, and the `labjax` command and `import labjax`
work from any folder, the built-in configs named alone (labjax/config_files.py)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from labjax import cli, config_files

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_ships_every_subpackage_and_the_configs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "labjax").rglob("__init__.py")}
    assert found | {"labjax.configs"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"labjax.configs": "configs"}
    assert project["project"]["scripts"] == {"labjax": "labjax.__main__:main"}
    assert set(project["project"]["optional-dependencies"]) >= {"cluster", "search"}
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pinned = {line.split("==")[0] for line in lines if "==" in line and not line.startswith("#")}
    declared = {dep.split(">")[0].split("=")[0].split(";")[0].strip() for dep in project["project"]["dependencies"]}
    assert pinned <= declared | {"tensorflow-cpu"}  # every tested package is a dependency


def test_a_built_in_config_is_found_by_name_where_no_such_file_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    builtin = f"{ROOT / 'configs' / 'fashion3_cnn'}.py"
    for argument in ("fashion3_cnn:smoke", "fashion3_cnn.py:smoke", "configs/fashion3_cnn.py:smoke"):
        assert config_files.resolve(argument) == builtin + ":smoke"
    assert config_files.resolve("fashion3_cnn") == builtin
    assert config_files.resolve("elsewhere/fashion3_cnn.py") == "elsewhere/fashion3_cnn.py"  # a path: left alone
    assert config_files.resolve("nope:smoke") == "nope:smoke"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fashion3_cnn.py").write_text("")  # the user's own file wins
    assert config_files.resolve("configs/fashion3_cnn.py:smoke") == "configs/fashion3_cnn.py:smoke"
    assert "fashion3_cnn" in config_files.builtin_names() and "__init__" not in config_files.builtin_names()
    argv = cli.builtin_config_argv(["labjax", "--config", "seg_mobilenet:smoke", "--config.seed=1"])
    assert argv == ["labjax", "--config", f"{ROOT / 'configs' / 'seg_mobilenet'}.py:smoke", "--config.seed=1"]


def _copy_clone(destination: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked and new, not ignored), without .git."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def _fresh_venv(path: Path) -> Path:
    """A new venv that sees the test venv's packages (jax, TensorFlow, setuptools...) through a .pth file."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "labjax_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    command = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps"]
    subprocess.run([*command, "--no-build-isolation", *args], check=True, env=_environment())


def _environment() -> dict:
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.mark.slow
def test_a_clone_installs_and_trains_from_another_folder(tmp_path):
    """pip install of a copy of the clone into a fresh venv, then training with the `labjax` command and
    with labjax.train, from a folder that holds no labjax.

    Offline, here and in CI: the venv is new (its own site-packages, where pip installs labjax and
    its `labjax` script), and a .pth file adds the test venv's site-packages after it, so the
    dependencies (jax, TensorFlow, ...) and setuptools for the build are found without a download
    (--no-index --no-deps --no-build-isolation). labjax itself is not in the test venv, so
    what imports is the installed copy, which the test checks.
    """
    pytest.importorskip("setuptools", minversion="64", reason="the build (--no-build-isolation) needs setuptools")
    clone = _copy_clone(tmp_path / "clone")
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, str(clone))
    shutil.rmtree(clone)  # nothing may come from the clone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [tmp_path / "venv" / "bin" / "labjax", "--config=fashion3_cnn:smoke", "--config.num_epochs=1"]
    done = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, env=_environment())
    assert done.returncode == 0, done.stderr[-3000:]
    assert (elsewhere / "runs" / "fashion3_cnn_smoke" / "status.json").is_file()
    script = (
        "import labjax; print(labjax.__file__); "
        "config = labjax.get_config('configs/fashion3_cnn.py:smoke', {'num_epochs': 1}); "
        "print(labjax.train(config, 'api_run')['status'])"
    )
    done = subprocess.run([python, "-c", script], cwd=elsewhere, capture_output=True, text=True, env=_environment())
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(tmp_path / "venv")) and lines[-1] == "finished"


@pytest.mark.slow
def test_an_editable_install_imports_the_clone_and_its_configs(tmp_path):
    pytest.importorskip("setuptools", minversion="64", reason="editable installs need setuptools 64")
    clone = _copy_clone(tmp_path / "clone")
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "-e", str(clone))
    script = "import labjax, labjax.configs.fashion3_cnn as c; print(labjax.__file__); print(c.__file__)"
    done = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=_environment())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(clone / "labjax" / "__init__.py"), str(clone / "configs" / "fashion3_cnn.py")]
    help_text = subprocess.run(
        [tmp_path / "venv" / "bin" / "labjax", "--helpfull"], cwd=tmp_path, capture_output=True, text=True
    )
    assert "--mode" in help_text.stdout and "--sweep" in help_text.stdout
