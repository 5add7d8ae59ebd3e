"""Label operations, splits, k folds and balancing: exact counts, on indices."""

import numpy as np
import pytest

from labjax.config import base_config
from labjax.data import labels, splits
from labjax.data.examples import Examples

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _ids(examples: Examples) -> np.ndarray:
    return examples.files.astype(int)


def _traced(counts: list[int], names=None) -> Examples:
    """Like _examples but with files named by index, so identities survive every take()."""
    y = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(counts)])
    return Examples(
        labels=y, class_names=names or [f"c{c}" for c in range(len(counts))], files=np.arange(len(y)).astype(str)
    )


def test_merge_fashion_mnist_into_three_classes_drops_bag():
    source = _traced([7] * 10, FASHION)
    merged = labels.apply(source, "upper=0,2,3,4,6;lower=Trouser;shoes=5,7,9", "")
    assert merged.class_names == ["upper", "lower", "shoes"]
    assert np.bincount(merged.labels).tolist() == [35, 7, 21]
    kept = set(_ids(merged))
    assert not kept & set(range(8 * 7, 9 * 7))  # no Bag
    original = source.labels[_ids(merged)]
    table = {0: 0, 2: 0, 3: 0, 4: 0, 6: 0, 1: 1, 5: 2, 7: 2, 9: 2}
    np.testing.assert_array_equal(merged.labels, [table[c] for c in original])


def test_keep_first_k_names_and_ids_relabel_in_order():
    source = _traced([3, 4, 5, 6])
    assert np.bincount(labels.apply(source, "", "first:2").labels).tolist() == [3, 4]
    picked = labels.apply(source, "", "c3,1")
    assert picked.class_names == ["c3", "c1"]
    assert np.bincount(picked.labels).tolist() == [6, 4]
    both = labels.apply(source, "ab=0,1;cd=2,3", "cd")
    assert both.class_names == ["cd"] and len(both) == 11 and set(both.labels) == {0}


def test_merge_of_masks_keeps_images_and_ignores_dropped_classes():
    masks = np.array([[[0, 1], [2, -1]]], np.int32)
    source = Examples(labels=masks, class_names=["bg", "a", "b"], images=np.zeros((1, 2, 2, 3), np.uint8))
    merged = labels.apply(source, "bg=0;ab=a", "")
    np.testing.assert_array_equal(merged.labels, [[[0, 1], [-1, -1]]])


@pytest.mark.parametrize(
    "merge, keep, message",
    [
        ("a=0,1;b=1", "", "'c1' \\(1\\) is in both 'a' and 'b'"),
        ("a=0,7", "", "class id 7 does not exist"),
        ("a=0;b=nothere", "", "no class named 'nothere'"),
        ("a:0", "", "is not 'name=class"),
        ("", "first:9", "needs 1 <= K <= 4"),
        ("", "0,0", "listed twice"),
    ],
)
def test_bad_label_operations_name_the_problem(merge, keep, message):
    with pytest.raises(ValueError, match=message):
        labels.apply(_traced([2, 2, 2, 2]), merge, keep)


def test_stratified_fractions_split_every_class_exactly():
    y = np.concatenate([np.full(n, c) for c, n in enumerate([100, 40, 60])])
    parts = splits.stratified_split(y, {"train": 0.7, "test": 0.15, "validation": 0.15}, seed=0, stream=1)
    assert [np.bincount(y[parts[name]]).tolist() for name in ("train", "test", "validation")] == [
        [70, 28, 42],
        [15, 6, 9],
        [15, 6, 9],
    ]
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(len(y)))  # a partition
    again = splits.stratified_split(y, {"train": 0.7, "test": 0.15, "validation": 0.15}, seed=0, stream=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = splits.stratified_split(y, {"train": 0.7, "test": 0.15, "validation": 0.15}, seed=1, stream=1)
    assert not np.array_equal(parts["test"], other["test"])


def test_kfold_partitions_without_overlap_and_stratifies():
    y = np.concatenate([np.full(n, c) for c, n in enumerate([50, 23, 12])])
    folds = splits.kfold(y, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    assert sorted(len(f) for f in folds) == [17, 17, 17, 17, 17]
    for fold in folds:
        counts = np.bincount(y[fold], minlength=3)
        assert counts[0] == 10 and 4 <= counts[1] <= 5 and 2 <= counts[2] <= 3


def _data_config(**overrides):
    data = base_config("classification").data
    data.update(overrides)
    return data


def test_make_splits_resplits_carves_and_folds_with_test_held_out():
    source = {"train": _traced([60, 30]), "test": _traced([10, 10])}
    pooled = splits.make_splits(source, _data_config(split_fractions="train=0.7,test=0.15,validation=0.15"), 0)
    assert {k: len(v) for k, v in pooled.items()} == {"train": 77, "test": 17, "validation": 16}
    carved = splits.make_splits(source, _data_config(val_fraction=0.2), 0)
    assert np.bincount(carved["validation"].labels).tolist() == [12, 6]
    assert len(carved["test"]) == 20
    seen = []
    for fold in range(3):
        parts = splits.make_splits(source, _data_config(val_fraction=0.2, folds=3, fold=fold), 0)
        assert len(parts["train"]) + len(parts["validation"]) == 90
        np.testing.assert_array_equal(_ids(parts["test"]), _ids(source["test"]))  # test never enters a fold
        seen.append(set(_ids(parts["validation"])))
    assert set.union(*seen) == set(range(90)) and sum(map(len, seen)) == 90
    with pytest.raises(ValueError, match="training needs train and validation"):
        splits.make_splits(source, _data_config(), 0)
    with pytest.raises(ValueError, match="sum to 1"):
        splits.make_splits(source, _data_config(split_fractions="train=0.7,test=0.2"), 0)


def test_oversampling_equalises_classes_with_their_own_images():
    y = np.array([0] * 10 + [1] * 3 + [2] * 6)
    extra = splits.oversample(y, seed=0)
    assert np.bincount(np.concatenate([y, y[extra]])).tolist() == [10, 10, 10]
    copies_of_1 = extra[y[extra] == 1]
    assert set(copies_of_1) == {10, 11, 12}  # each minority image copied, cycling evenly
    assert sorted(np.bincount(copies_of_1 - 10).tolist()) == [2, 2, 3]


def test_extra_copies_and_class_weights():
    copies = splits.extra_copies(100, 0.25, seed=0)
    assert len(copies) == 25 and len(set(copies)) == 25
    weights = splits.class_weights(np.array([0] * 6 + [1] * 2 + [2] * 4), 3)
    np.testing.assert_allclose(weights, [12 / 18, 12 / 6, 12 / 12])  # sklearn's 'balanced'
