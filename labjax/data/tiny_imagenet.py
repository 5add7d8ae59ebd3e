"""Tiny ImageNet source: the tiny-imagenet-200 folder as file paths, train and labelled validation split.

Classes are the sorted WordNet ids of wnids.txt (the order torchvision's ImageFolder gives the
train folder); their names are the first synonym in words.txt. The test folder has no labels
and is not read.
"""

from pathlib import Path

import numpy as np

from labjax.data.examples import Examples
from labjax.errors import ConfigError, DataError, MissingFileError


def _lines(path: Path) -> list[str]:
    try:
        return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise MissingFileError(
            f"{path}: cannot read the file ({error.strerror}); config.data.path must be the tiny-imagenet-200 "
            "folder (wnids.txt, words.txt, train/, val/)."
        ) from None


def _readable_names(root: Path, wnids: list[str]) -> list[str]:
    """First synonym of each wnid in words.txt; the wnid itself when missing; wnid added to repeated names."""
    words = {}
    if (root / "words.txt").is_file():
        for line in _lines(root / "words.txt"):
            wnid, _, synonyms = line.partition("\t")
            words[wnid.strip()] = synonyms.split(",")[0].strip()
    names = [words.get(wnid) or wnid for wnid in wnids]
    return [f"{name} ({wnid})" if names.count(name) > 1 else name for name, wnid in zip(names, wnids)]


def _jpegs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg") and p.is_file())


def load(data) -> dict[str, Examples]:
    """{"train", "validation"} as file paths, with readable class names."""
    root = Path(data.path).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"config.data.path={data.path!r}: no such folder; point it at tiny-imagenet-200.")
    wnids = sorted({wnid.strip() for wnid in _lines(root / "wnids.txt")})
    class_names = _readable_names(root, wnids)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: no such folder, but {wnid} is listed in {root / 'wnids.txt'}.")
        found = _jpegs(folder)
        if not found:
            raise DataError(f"{folder}: no JPEG images for class {wnid}.")
        train_files += found
        train_labels += [index[wnid]] * len(found)
    annotations = root / "val" / "val_annotations.txt"
    val_files, val_labels = [], []
    for number, line in enumerate(_lines(annotations), 1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{annotations}, line {number}: expected 'file<TAB>wnid<TAB>box', found {line!r}.")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(
                f"{annotations}, line {number}: {name} is labelled {wnid!r}, which is not in {root / 'wnids.txt'}."
            )
        path = root / "val" / "images" / name
        if not path.is_file():
            raise MissingFileError(f"{annotations}, line {number}: the image {path} does not exist.")
        val_files.append(path)
        val_labels.append(index[wnid])
    if data.class_names:
        names = [name.strip() for name in data.class_names.split(",")]
        if len(names) != len(wnids):
            raise ConfigError(
                f"config.data.class_names gives {len(names)} names for the {len(wnids)} classes of wnids.txt; "
                "give one name per class in sorted wnid order, or leave it empty."
            )
        class_names = names
    return {
        "train": Examples(
            labels=np.asarray(train_labels, np.int32),
            class_names=class_names,
            files=np.array([str(p) for p in train_files], dtype=str),
        ),
        "validation": Examples(
            labels=np.asarray(val_labels, np.int32),
            class_names=list(class_names),
            files=np.array([str(p) for p in val_files], dtype=str),
        ),
    }
