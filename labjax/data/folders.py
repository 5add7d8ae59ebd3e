"""Folder source for classification: one sub-folder per class, or labels taken from file names.

Like Keras' image_dataset_from_directory, config.data.path holds one sub-folder per class
(searched recursively; class names sorted unless config.data.class_names fixes the order).
With config.data.label_pattern, a regex with a named group `label`, every image under the
path is taken and its label is the group's text in the file name (e.g. the CMU faces, whose
`an2i_left_angry_open_4.pgm` holds the pose, expression and eyes in its name). Files are
returned as paths; the pipeline decodes them with labjax.data.decode.
"""

import logging
import re
from pathlib import Path

import numpy as np

from labjax.data.examples import Examples
from labjax.errors import ConfigError, DataError, MissingFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".pnm")


def _folder(path: str, key: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"config.data.{key}={path!r}: no such folder; point it at the images.")
    return folder


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order; hidden files and folders are left out."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _class_names_setting(data) -> list[str]:
    names = [name.strip() for name in data.class_names.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.data.class_names={data.class_names!r} names a class twice.")
    return names


def _examples(files: list[Path], labels: list[int], class_names: list[str]) -> Examples:
    return Examples(
        labels=np.asarray(labels, np.int32).reshape(-1),
        class_names=class_names,
        files=np.array([str(path) for path in files], dtype=str),
    )


def _from_class_folders(folder: Path, key: str, class_names: list[str], names_from: str) -> Examples:
    """The images of `folder`/<class>/...; `class_names` fixes the order, or [] for sorted sub-folders."""
    present = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not present:
        raise ConfigError(
            f"config.data.{key}={str(folder)!r} has no class sub-folders; put each class's images in a "
            "sub-folder named after the class, or set config.data.label_pattern to read labels from file names."
        )
    if class_names and sorted(class_names) != present:
        missing, extra = sorted(set(class_names) - set(present)), sorted(set(present) - set(class_names))
        raise ConfigError(
            f"config.data.{key}={str(folder)!r} has the class sub-folders {present}, which differ from the "
            f"classes of {names_from} (missing folders: {missing}, folders not named: {extra}); the class "
            "names must name exactly the sub-folders present."
        )
    class_names = class_names or present
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = image_files(folder / name)
        if not found:
            raise DataError(
                f"{folder / name}: the class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images or remove the folder."
            )
        files += found
        labels += [label] * len(found)
    return _examples(files, labels, class_names)


def _labelled_by_pattern(folder: Path, key: str, data) -> tuple[list[Path], list[str]]:
    """Files under `folder` and the label text the pattern finds in each name (stem)."""
    try:
        pattern = re.compile(data.label_pattern)
    except re.error as error:
        raise ConfigError(f"config.data.label_pattern={data.label_pattern!r} is not a valid regex: {error}.") from None
    if "label" not in pattern.groupindex:
        raise ConfigError(
            f"config.data.label_pattern={data.label_pattern!r} has no named group 'label'; write the label's "
            "part as (?P<label>...), e.g. '(?P<label>open|sunglasses)'."
        )
    files, labels, unmatched = [], [], []
    for path in image_files(folder):
        match = pattern.search(path.stem)
        if match and match.group("label"):
            files.append(path)
            labels.append(match.group("label"))
        else:
            unmatched.append(path)
    if unmatched and not data.skip_bad_files:
        raise DataError(
            f"{unmatched[0]}: config.data.label_pattern={data.label_pattern!r} finds no label in the file name "
            f"({len(unmatched)} such files); fix the regex or move the file away, or set "
            "config.data.skip_bad_files=true to skip such files."
        )
    if unmatched:
        logging.warning(
            "Skipped %d files under %s whose names config.data.label_pattern does not match, e.g. %s",
            len(unmatched),
            folder,
            unmatched[0],
        )
    if not files:
        raise ConfigError(f"config.data.{key}={str(folder)!r}: no image files whose name the label pattern matches.")
    return files, labels


def _from_pattern(folder: Path, key: str, data, class_names: list[str], names_from: str) -> Examples:
    """Images under `folder` labelled from their names; `class_names` fixes the classes, or [] for sorted labels."""
    files, texts = _labelled_by_pattern(folder, key, data)
    found = sorted(set(texts))
    if class_names and sorted(class_names) != found:
        missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
        raise ConfigError(
            f"config.data.{key}={str(folder)!r}: the labels config.data.label_pattern finds are {found}, which "
            f"differ from the classes of {names_from} (not found: {missing}, not named: {extra}); "
            "the class names must name exactly the labels present."
        )
    class_names = class_names or found
    index = {name: i for i, name in enumerate(class_names)}
    return _examples(files, [index[text] for text in texts], class_names)


def load(data) -> dict[str, Examples]:
    """{"train"} from config.data.path, and "test" from config.data.test_path when set, as file paths."""
    class_names = _class_names_setting(data)
    names_from = f"config.data.class_names={data.class_names!r}"
    splits = {}
    for name, key in (("train", "path"), ("test", "test_path")):
        if name == "test" and not data.test_path:
            continue
        folder = _folder(getattr(data, key), key)
        if data.label_pattern:
            splits[name] = _from_pattern(folder, key, data, class_names, names_from)
        else:
            splits[name] = _from_class_folders(folder, key, class_names, names_from)
        if not class_names:
            class_names, names_from = splits[name].class_names, f"the train folder config.data.path={data.path!r}"
    return splits
