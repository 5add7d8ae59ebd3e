"""Splits, k-fold cross-validation and class balancing, all on indices and seeded.

Every function draws from `np.random.default_rng([seed, ...])` with fixed extra words, so
the same seed gives the same examples in each split on any machine and device count.
Classification splits are stratified (each class is divided in the same proportions);
segmentation examples have no single class, so they are split by a plain permutation.
"""

import numpy as np

from labjax.data.examples import Examples
from labjax.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "validation", "test")
_RESPLIT, _CARVE, _FOLDS, _OVERSAMPLE, _COPIES = 1, 2, 3, 4, 5  # rng stream ids


def parse_fractions(spec: str) -> dict[str, float]:
    """'train=0.7,validation=0.15,test=0.15' -> {name: fraction}; fractions must sum to 1."""
    fractions = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if name not in SPLIT_NAMES or not 0 < fraction < 1 or name in fractions:
            raise ConfigError(
                f"config.data.split_fractions={spec!r}: {part!r} is not 'name=fraction' with a name among "
                f"{SPLIT_NAMES} (each once) and 0 < fraction < 1."
            )
        fractions[name] = fraction
    if abs(sum(fractions.values()) - 1) > 1e-6 or "train" not in fractions:
        raise ConfigError(
            f"config.data.split_fractions={spec!r}: needs a train fraction and fractions that sum to 1 "
            "(e.g. 'train=0.7,validation=0.15,test=0.15')."
        )
    return fractions


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    """Indices per class (classification), or one group of everything (segmentation)."""
    if labels.ndim > 1:
        return [np.arange(len(labels))]
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _apportion(n: int, fractions: list[float]) -> np.ndarray:
    """Integer counts summing to n, closest to n * fractions (largest remainder)."""
    exact = np.asarray(fractions) * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int, stream: int) -> dict[str, np.ndarray]:
    """Indices of each named split; every class divided in the given proportions."""
    names = list(fractions)
    parts = {name: [] for name in names}
    for group_id, members in enumerate(_groups(labels)):
        rng = np.random.default_rng([seed, stream, group_id])
        members = rng.permutation(members)
        bounds = np.cumsum(_apportion(len(members), [fractions[n] for n in names]))[:-1]
        for name, chunk in zip(names, np.split(members, bounds)):
            parts[name].append(chunk)
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def kfold(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` disjoint index sets covering every example, each class spread evenly over them."""
    assigned = [[] for _ in range(folds)]
    offset = 0
    for group_id, members in enumerate(_groups(labels)):
        members = np.random.default_rng([seed, _FOLDS, group_id]).permutation(members)
        for position, index in enumerate(members):
            assigned[(position + offset) % folds].append(index)
        offset += len(members)  # the next class starts where this one stopped, so fold sizes stay even
    return [np.sort(np.asarray(fold, np.int64)) for fold in assigned]


def make_splits(source: dict[str, Examples], data, seed: int) -> dict[str, Examples]:
    """The source's splits re-split, carved or folded as config.data asks."""
    splits = dict(source)
    if data.split_fractions:
        pooled = Examples.concatenate([splits[name] for name in sorted(splits)])
        fractions = parse_fractions(data.split_fractions)
        indices = stratified_split(pooled.labels, fractions, seed, _RESPLIT)
        splits = {name: pooled.take(idx) for name, idx in indices.items()}
    if data.val_fraction:
        if "validation" in splits:
            raise ConfigError(
                f"config.data.val_fraction={data.val_fraction}: there is already a validation split (from the "
                "source or config.data.split_fractions); set val_fraction=0 to use it."
            )
        train = splits["train"]
        indices = stratified_split(
            train.labels, {"train": 1 - data.val_fraction, "validation": data.val_fraction}, seed, _CARVE
        )
        splits["train"], splits["validation"] = (train.take(indices[n]) for n in ("train", "validation"))
    if data.folds:
        pool = Examples.concatenate([splits[n] for n in ("train", "validation") if n in splits])
        held_out = kfold(pool.labels, data.folds, seed)[data.fold]
        rest = np.setdiff1d(np.arange(len(pool)), held_out)
        splits["train"], splits["validation"] = pool.take(rest), pool.take(held_out)
    if "train" not in splits or "validation" not in splits:
        raise ConfigError(
            f"config.data.source={data.source!r} gives the splits {sorted(splits)}, but training needs train and "
            "validation: set config.data.val_fraction (e.g. 0.2) to carve validation out of train, "
            "config.data.split_fractions to re-split, or config.data.folds for cross-validation."
        )
    for name, examples in splits.items():
        if len(examples) == 0:
            raise DataError(f"the {name} split is empty; check config.data.split_fractions / val_fraction / folds.")
    return splits


def oversample(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of extra copies that bring every class up to the largest class's count.

    Copies cycle through a permutation of the class's own examples, so each is copied
    about equally often.
    """
    classes, counts = np.unique(labels, return_counts=True)
    extra = []
    for c, count in zip(classes, counts):
        missing = counts.max() - count
        if missing:
            own = np.random.default_rng([seed, _OVERSAMPLE, int(c)]).permutation(np.flatnonzero(labels == c))
            extra.append(np.resize(own, missing))
    return np.concatenate(extra) if extra else np.zeros(0, np.int64)


def extra_copies(count: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of round(fraction * count) distinct examples to add again (S4: 25% flipped copies)."""
    chosen = int(round(fraction * count))
    return np.sort(np.random.default_rng([seed, _COPIES]).choice(count, chosen, replace=False))


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn's 'balanced' weights n / (k * n_c) per class, over labels (pixels for masks) that count."""
    labels = labels[(labels >= 0) & (labels < num_classes)]
    counts = np.bincount(labels.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)
