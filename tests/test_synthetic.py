"""Tests for the built-in synthetic segmentation and classification data (NumPy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from labjax.data import synthetic
from labjax.data.synthetic import (
    MAX_CLASSIFICATION_CLASSES,
    MAX_NUM_CLASSES,
    SYNTHETIC_SEGMENTATION_CLASSES,
    classification_class_names,
    make_classification_arrays,
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


# --------------------------------------------------------------------------
# Classification.
# --------------------------------------------------------------------------


def test_classification_is_deterministic_in_any_grouping():
    kwargs = dict(size=32, num_classes=5)
    images, labels = make_classification_arrays(0, 0, 10, **kwargs)
    parts = [make_classification_arrays(0, 0, 4, **kwargs), make_classification_arrays(0, 4, 6, **kwargs)]
    np.testing.assert_array_equal(images, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(labels, np.concatenate([p[1] for p in parts]))
    again, _ = make_classification_arrays(0, 3, 2, **kwargs)
    np.testing.assert_array_equal(again, images[3:5])
    other_seed, _ = make_classification_arrays(1, 0, 10, **kwargs)
    assert not np.array_equal(other_seed, images)
    assert all(not np.array_equal(images[i], images[i + 1]) for i in range(9))


@pytest.mark.parametrize(
    "size, channels, expected",
    [
        (28, 1, (28, 28, 1)),
        ((30, 32), 1, (30, 32, 1)),
        (64, 3, (64, 64, 3)),
        (8, 3, (8, 8, 3)),
        ((32, 96), 3, (32, 96, 3)),
    ],
)
def test_classification_shapes_and_dtypes(size, channels, expected):
    images, labels = make_classification_arrays(2, 5, 6, size=size, num_classes=3, channels=channels)
    assert images.shape == (6, *expected) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [2, 0, 1, 2, 0, 1])  # (start + i) % num_classes
    assert images.std() > 10


def test_gray_is_the_rounded_luminance_of_rgb():
    rgb, labels = make_classification_arrays(4, 0, 3, size=(30, 32), num_classes=2)
    gray, gray_labels = make_classification_arrays(4, 0, 3, size=(30, 32), num_classes=2, channels=1)
    luma = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
    assert np.abs(gray[..., 0] - luma).max() <= 1  # exact but for halves rounding up
    assert (gray[..., 0] == luma).mean() > 0.99
    np.testing.assert_array_equal(labels, gray_labels)


def test_classification_labels_are_balanced():
    _, labels = make_classification_arrays(0, 7, 120, size=8, num_classes=6)
    np.testing.assert_array_equal(np.bincount(labels), [20] * 6)
    _, labels = make_classification_arrays(0, 0, 23, size=8, num_classes=4)
    np.testing.assert_array_equal(np.bincount(labels), [6, 6, 6, 5])


def test_classification_class_names():
    assert classification_class_names(3) == ["striped disk", "checkered square", "dotted triangle"]
    names = classification_class_names(MAX_CLASSIFICATION_CLASSES)
    assert names == list(SYNTHETIC_SEGMENTATION_CLASSES[1:]) and len(set(names)) == MAX_CLASSIFICATION_CLASSES == 20


def test_classification_invalid_arguments():
    with pytest.raises(ValueError, match="num_classes=21.*2 to 20"):
        make_classification_arrays(0, 0, 1, size=32, num_classes=21)
    with pytest.raises(ValueError, match="num_classes=21"):
        classification_class_names(21)
    with pytest.raises(ValueError, match="num_classes=1"):
        make_classification_arrays(0, 0, 1, size=32, num_classes=1)
    with pytest.raises(ValueError, match="at least 8"):
        make_classification_arrays(0, 0, 1, size=(7, 32), num_classes=2)
    with pytest.raises(ValueError, match="channels=2"):
        make_classification_arrays(0, 0, 1, size=32, num_classes=2, channels=2)


def _random_conv_features(images: np.ndarray) -> np.ndarray:
    """Mean, max and RMS of |response| of 24 fixed random 5x5 filters on the standardised gray image.

    Pooling over positions makes the features blind to where the object is, so they can only
    pick up which shapes and textures the image holds.
    """
    x = images.astype(np.float32).mean(-1)
    x = (x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1e-3)
    filters = np.random.default_rng(0).standard_normal((25, 24)).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(1, 2))
    resp = np.abs(windows.reshape(*windows.shape[:3], 25) @ filters)
    return np.concatenate([resp.mean((1, 2)), resp.max((1, 2)), np.sqrt((resp**2).mean((1, 2)))], 1)


@pytest.mark.parametrize("size, channels, num_classes", [(28, 1, 3), (32, 3, 4)])
def test_classification_is_learnable(size, channels, num_classes):
    """Ridge regression on position-blind random features, 600 train / 200 held-out images.

    It reaches about 0.85 (3 gray classes) and 0.6 (4 RGB classes); chance is 1/num_classes
    with a standard deviation of about 0.035 on 200 images, so the bound is 4 or more deviations
    above chance.
    """
    images, labels = make_classification_arrays(0, 0, 800, size=size, num_classes=num_classes, channels=channels)
    features = _random_conv_features(images)
    mu, sd = features[:600].mean(0), features[:600].std(0) + 1e-6
    x = np.c_[(features - mu) / sd, np.ones(len(features))]
    train, test = slice(0, 600), slice(600, 800)
    w = np.linalg.solve(x[train].T @ x[train] + np.eye(x.shape[1]), x[train].T @ np.eye(num_classes)[labels[train]])
    accuracy = (np.argmax(x[test] @ w, 1) == labels[test]).mean()
    assert accuracy > 1 / num_classes + 0.15, accuracy


def test_classification_distractors_are_no_class():
    for num_classes in (2, 10, MAX_CLASSIFICATION_CLASSES):
        pairs, cdf = synthetic._distractor_cdf(num_classes)
        assert pairs and not set(synthetic._CLASS_TABLE[:num_classes]) & set(pairs)
        assert np.isclose(cdf[-1], 1.0) and np.all(np.diff(cdf) > 0)
