"""Label operations applied to a source before splitting: merge classes, keep a subset.

Both are written as strings so they can be set and swept from the command line:

  merge: "upper=0,2,3,4,6;lower=1;shoes=5,7,9"  new class = the listed old classes (ids or names);
         classes not listed are dropped (S2 drops Bag).
  keep:  "first:20" | "0,5,7" | "apple,bee"    a subset of classes, relabelled 0..K-1 in the given order.
"""

import numpy as np

from labjax.data.examples import Examples
from labjax.errors import ConfigError


def _resolve(token: str, class_names: list[str], key: str) -> int:
    """A class given by id or by name -> its id, with a clear error otherwise."""
    token = token.strip()
    if token.lstrip("-").isdigit():
        index = int(token)
        if not 0 <= index < len(class_names):
            raise ConfigError(
                f"config.data.{key}: class id {index} does not exist; the source has classes 0..{len(class_names) - 1}."
            )
        return index
    if token in class_names:
        return class_names.index(token)
    raise ConfigError(f"config.data.{key}: no class named {token!r}; the source's classes are {class_names}.")


def parse_merge(spec: str, class_names: list[str]) -> tuple[list[str], list[list[int]]]:
    """'upper=0,2;lower=1' -> (new names, old ids per new class); a class named twice is an error."""
    names, groups, seen = [], [], {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, members = part.partition("=")
        if not sep or not name.strip() or not members.strip():
            raise ConfigError(
                f"config.data.merge={spec!r}: {part!r} is not 'name=class,class,...' "
                "(e.g. 'upper=0,2,3,4,6;lower=1;shoes=5,7,9')."
            )
        ids = [_resolve(token, class_names, "merge") for token in members.split(",") if token.strip()]
        for old in ids:
            if old in seen:
                raise ConfigError(
                    f"config.data.merge={spec!r}: class {class_names[old]!r} ({old}) is in both "
                    f"{seen[old]!r} and {name.strip()!r}; name each class once."
                )
            seen[old] = name.strip()
        names.append(name.strip())
        groups.append(ids)
    if len(set(names)) != len(names):
        raise ConfigError(f"config.data.merge={spec!r}: a new class name is used twice.")
    return names, groups


def parse_keep(spec: str, class_names: list[str]) -> list[int]:
    """'first:20' | '3,1,7' | 'apple,bee' -> the kept old ids, in new-label order."""
    spec = spec.strip()
    if spec.startswith("first:"):
        count = spec.removeprefix("first:").strip()
        if not count.isdigit() or not 1 <= int(count) <= len(class_names):
            raise ConfigError(
                f"config.data.keep={spec!r}: 'first:K' needs 1 <= K <= {len(class_names)} (the source's classes)."
            )
        return list(range(int(count)))
    ids = [_resolve(token, class_names, "keep") for token in spec.split(",") if token.strip()]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"config.data.keep={spec!r}: a class is listed twice.")
    return ids


def relabel(examples: Examples, old_to_new: np.ndarray, new_names: list[str]) -> Examples:
    """Maps labels through `old_to_new` (-1 = drop); drops examples whose class is dropped.

    Masks (segmentation) keep every example: dropped classes become ignored pixels (-1).
    """
    lookup = np.append(old_to_new, -1).astype(np.int32)  # index -1 (ignored pixels) stays -1
    labels = lookup[np.where(examples.labels < 0, -1, examples.labels)]
    if examples.dense_labels:
        examples = examples.take(np.arange(len(examples)))
        examples.labels, examples.class_names = labels, list(new_names)
        return examples
    kept = np.flatnonzero(labels >= 0)
    examples = examples.take(kept)
    examples.labels, examples.class_names = labels[kept], list(new_names)
    return examples


def apply(examples: Examples, merge: str, keep: str) -> Examples:
    """Applies merge, then keep (each optional)."""
    if merge:
        names, groups = parse_merge(merge, examples.class_names)
        table = np.full(len(examples.class_names), -1)
        for new, ids in enumerate(groups):
            table[ids] = new
        examples = relabel(examples, table, names)
    if keep:
        ids = parse_keep(keep, examples.class_names)
        table = np.full(len(examples.class_names), -1)
        table[ids] = np.arange(len(ids))
        examples = relabel(examples, table, [examples.class_names[i] for i in ids])
    return examples
