"""The built-in study configs, found by name from any folder, in a clone or an installed labjax.

`--config=configs/NAME.py[:ARG]` names a file. When no such file exists (labjax installed with
pip, run from another folder), a relative `configs/NAME.py`, `NAME.py` or plain `NAME` is looked
up among the built-in configs: the clone's `configs/` folder beside the `labjax` package, or the
`labjax/configs/` package that pip installs from it (pyproject.toml maps `configs/` there). A file
that exists always wins, so a user's own `configs/NAME.py` is never shadowed.
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def builtin_folders() -> list[Path]:
    """Where built-in configs live: the clone's configs/ (a clone or an editable install), then the installed copy."""
    return [folder for folder in (PACKAGE.parent / "configs", PACKAGE / "configs") if folder.is_dir()]


def builtin_names() -> list[str]:
    """The built-in configs' names (fashion3_cnn, seg_mobilenet, ...)."""
    names = {path.stem for folder in builtin_folders() for path in folder.glob("*.py")}
    return sorted(name for name in names if not name.startswith("_"))


def resolve(argument: str) -> str:
    """`PATH[:ARG]` with PATH made a built-in config's file where PATH itself does not exist.

    'fashion3_cnn:smoke', 'fashion3_cnn.py:smoke' and 'configs/fashion3_cnn.py:smoke' all name
    the built-in fashion3_cnn with ARG 'smoke' when no such file is found from this folder; any
    other argument comes back unchanged (its missing file is reported where it is opened).
    """
    path, colon, arg = argument.partition(":")
    candidate = Path(path)
    if candidate.is_file() or candidate.is_absolute():
        return argument
    parts = candidate.parts
    if len(parts) == 2 and parts[0] == "configs":
        parts = parts[1:]
    if len(parts) != 1 or candidate.suffix not in ("", ".py"):
        return argument
    name = candidate.stem
    for folder in builtin_folders():
        if (folder / f"{name}.py").is_file():
            return f"{folder / name}.py{colon}{arg}"
    return argument


def missing_hint() -> str:
    """The sentence a 'no such config file' error ends with."""
    names = builtin_names()
    return f" Built-in configs: {', '.join(names)} (e.g. --config=fashion3_cnn:smoke)." if names else ""
