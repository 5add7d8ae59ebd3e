"""Tests for the built-in synthetic segmentation data (NumPy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from labjax.data import synthetic
from labjax.data.synthetic import (
    MAX_NUM_CLASSES,
    SYNTHETIC_SEGMENTATION_CLASSES,
    make_segmentation_arrays,
    make_segmentation_example,
    segmentation_class_names,
)


@pytest.fixture(scope="module")
def default_batch() -> tuple[np.ndarray, np.ndarray]:
    """First 50 examples of the default configuration (128x128, 6 classes)."""
    return make_segmentation_arrays(0, 50, seed=0)


def test_same_seed_and_index_is_identical():
    a_img, a_mask = make_segmentation_example(7, seed=3)
    b_img, b_mask = make_segmentation_example(7, seed=3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)


def test_different_index_or_seed_differs():
    img0, mask0 = make_segmentation_example(0, seed=0)
    img1, mask1 = make_segmentation_example(1, seed=0)
    img2, mask2 = make_segmentation_example(0, seed=1)
    assert not np.array_equal(img0, img1) and not np.array_equal(mask0, mask1)
    assert not np.array_equal(img0, img2) and not np.array_equal(mask0, mask2)


def test_arrays_match_single_examples_for_any_subset():
    images, masks = make_segmentation_arrays(0, 8, seed=5)
    sub_images, sub_masks = make_segmentation_arrays(3, 4, seed=5)
    np.testing.assert_array_equal(sub_images, images[3:7])
    np.testing.assert_array_equal(sub_masks, masks[3:7])
    img, mask = make_segmentation_example(6, seed=5)
    np.testing.assert_array_equal(img, images[6])
    np.testing.assert_array_equal(mask, masks[6])


@pytest.mark.parametrize(
    "size, expected_hw",
    [
        (32, (32, 32)),
        (64, (64, 64)),
        (128, (128, 128)),
        ((48, 80), (48, 80)),
        ((96, 33), (96, 33)),
    ],
)
@pytest.mark.parametrize("num_classes", [2, 3, 6, 12, MAX_NUM_CLASSES])
def test_dtypes_shapes_and_ranges(size, expected_hw, num_classes):
    images, masks = make_segmentation_arrays(10, 3, seed=1, size=size, num_classes=num_classes)
    assert images.dtype == np.uint8 and masks.dtype == np.uint8
    assert images.shape == (3, *expected_hw, 3)
    assert masks.shape == (3, *expected_hw)
    assert masks.max() < num_classes
    assert (masks > 0).any()  # every example has labelled objects
    assert images.std() > 10  # not a blank image


def test_non_square_images_have_objects_everywhere():
    # Wide and tall images: objects are placed over the whole frame.
    for size in [(64, 160), (160, 64)]:
        _, masks = make_segmentation_arrays(0, 40, seed=2, size=size)
        fg = (masks > 0).mean(axis=0)
        h, w = size
        halves = (fg[:, : w // 2], fg[:, w // 2 :]) if w > h else (fg[: h // 2], fg[h // 2 :])
        assert all(half.mean() > 0.12 for half in halves)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_segmentation_example(0, seed=0, num_classes=1)
    with pytest.raises(ValueError):
        make_segmentation_example(0, seed=0, num_classes=MAX_NUM_CLASSES + 1)
    with pytest.raises(ValueError):
        make_segmentation_example(0, seed=0, size=16)
    with pytest.raises(ValueError):
        make_segmentation_example(0, seed=0, size=(64, 31))


def test_class_names():
    assert segmentation_class_names(6) == [
        "background",
        "striped disk",
        "checkered square",
        "dotted triangle",
        "checkered disk",
        "striped square",
    ]
    assert len(segmentation_class_names(12)) == 12
    assert len(set(SYNTHETIC_SEGMENTATION_CLASSES)) == MAX_NUM_CLASSES >= 12
    assert SYNTHETIC_SEGMENTATION_CLASSES[0] == "background"


def test_every_class_has_a_reasonable_pixel_share(default_batch):
    _, masks = default_batch
    share = np.bincount(masks.ravel(), minlength=6) / masks.size
    assert share[0] <= 0.85
    assert (share[1:] >= 0.015).all(), share  # about 4% each
    present = [(masks == k).any(axis=(1, 2)).sum() for k in range(1, 6)]
    assert min(present) >= 10, present


def test_every_class_appears_with_many_classes():
    _, masks = make_segmentation_arrays(0, 50, seed=0, size=96, num_classes=12)
    share = np.bincount(masks.ravel(), minlength=12) / masks.size
    assert share[0] <= 0.85
    assert (share[1:] >= 0.004).all(), share


def test_distractors_belong_to_no_class():
    for num_classes in (2, 6, 12, MAX_NUM_CLASSES):
        classes = set(synthetic._CLASS_TABLE[: num_classes - 1])
        pairs, probs = synthetic._distractors(num_classes)
        assert pairs and not classes & set(pairs)
        assert np.isclose(probs.sum(), 1.0)


def test_class_colour_varies_widely(default_batch):
    """Each class's mean colour changes a lot from example to example."""
    images, masks = default_batch
    for k in range(1, 6):
        means = np.array(
            [img[m == k].mean(axis=0) for img, m in zip(images, masks, strict=True) if (m == k).sum() > 20]
        )
        assert len(means) >= 10
        assert (means.std(axis=0) > 20).all(), (k, means.std(axis=0))


def test_colour_alone_does_not_predict_the_class(default_batch):
    """A colour look-up table fit on 50 examples fails on 50 others."""
    num_classes = 6
    train_images, train_masks = default_batch
    test_images, test_masks = make_segmentation_arrays(50, 50, seed=0)

    def colour_bin(images: np.ndarray) -> np.ndarray:
        b = (images // 32).astype(np.int64)
        return b[..., 0] * 64 + b[..., 1] * 8 + b[..., 2]

    counts = np.zeros((512, num_classes))
    np.add.at(counts, (colour_bin(train_images).ravel(), train_masks.ravel()), 1)
    # Which object class, given that a pixel is foreground and has this colour?
    lut = counts[:, 1:].argmax(axis=1) + 1
    fg = test_masks > 0
    pred = lut[colour_bin(test_images)][fg]
    accuracy = (pred == test_masks[fg]).mean()
    majority = np.bincount(test_masks[fg]).max() / fg.sum()
    assert accuracy < majority + 0.05, (accuracy, majority)
