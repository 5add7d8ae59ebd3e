"""The "masks" segmentation source: image + PNG mask folders -> train/validation Examples."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from labjax.data import masks

SIZE = (12, 8)  # width, height of the written files


def _config(root, **overrides) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict(
        dict(
            path=str(root),
            image_dir="images",
            mask_dir="masks",
            match_regex="",
            mask_values="",
            ignore_label=-1,
            num_classes=3,
            image_size=0,
            channels=0,
            train_size=0,
            skip_bad_files=False,
        )
    )
    data.update(overrides)
    return data


def _class_map(i: int) -> np.ndarray:
    """(8, 12) class ids 0..2 in vertical bands that shift with i."""
    return ((np.arange(SIZE[0])[None, :] // 4 + i) % 3).repeat(SIZE[1], 0).astype(np.uint8)


def _write(root, masks_by_stem: dict, image_mode: str = "RGB") -> None:
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for k, (stem, mask) in enumerate(masks_by_stem.items()):
        h, w = mask.size[::-1] if isinstance(mask, Image.Image) else mask.shape[:2]
        pixels = np.full((h, w, 3), 40 * k, np.uint8)
        Image.fromarray(pixels).convert(image_mode).save(root / "images" / f"{stem}.png")
        mask = mask if isinstance(mask, Image.Image) else Image.fromarray(mask)
        mask.save(root / "masks" / f"{stem}.png")


def _palette(ids: np.ndarray) -> Image.Image:
    image = Image.fromarray(ids).convert("P")  # gray -> palette mode, indices unchanged
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]  # VOC-like, 255 = border
    image.putpalette(palette)
    return image


def test_palette_masks_give_indices_and_ignore_label_becomes_minus_one(tmp_path):
    ids = _class_map(0)
    ids[0, :] = 255  # VOC's "void" border
    _write(tmp_path, {"a": _palette(ids)})
    with Image.open(tmp_path / "masks" / "a.png") as saved:
        assert saved.mode == "P" and saved.convert("RGB").getpixel((0, 0)) == (224, 224, 192)
    images, labels, keys = masks.load_mask_folder(_config(tmp_path, ignore_label=255))
    expected = ids.astype(np.int32)
    expected[0, :] = -1
    np.testing.assert_array_equal(labels[0], expected)
    assert keys == ["a"] and images.shape == (1, 8, 12, 3) and labels.dtype == np.int32


def test_sixteen_bit_masks(tmp_path):
    ids = _class_map(1).astype(np.uint16)
    ids[2, 3] = 1000
    mask = Image.fromarray(ids)
    assert mask.mode == "I;16"
    _write(tmp_path, {"a": mask})
    with Image.open(tmp_path / "masks" / "a.png") as saved:
        assert saved.mode.startswith("I")  # a 16-bit PNG, read back as such
    _, labels, _ = masks.load_mask_folder(_config(tmp_path, mask_values="0:0,1:1,2:2,1000:-1"))
    expected = ids.astype(np.int32)
    expected[2, 3] = -1
    np.testing.assert_array_equal(labels[0], expected)


def test_mask_values_mapping_and_ignore_label(tmp_path):
    raw = np.where(_class_map(0) == 1, 255, 0).astype(np.uint8)
    raw[:, -1] = 128
    _write(tmp_path, {"a": raw})
    config = _config(tmp_path, mask_values="0:0,255:2", ignore_label=128)
    _, labels, _ = masks.load_mask_folder(config)
    np.testing.assert_array_equal(labels[0], np.select([raw == 255, raw == 128], [2, -1], 0))
    with pytest.raises(ValueError, match=r"mask values \[128\] are not in config.data.mask_values"):
        masks.load_mask_folder(_config(tmp_path, mask_values="0:0,255:2"))
    with pytest.raises(ValueError, match="maps to \\[5\\]"):
        masks.load_mask_folder(_config(tmp_path, mask_values="0:0,255:5"))


def test_rgb_masks_with_equal_channels_work_and_differing_ones_fail(tmp_path):
    ids = _class_map(2)
    _write(tmp_path, {"a": np.repeat(ids[..., None], 3, -1)})
    np.testing.assert_array_equal(masks.load_mask_folder(_config(tmp_path))[1][0], ids)
    rgb = np.repeat(ids[..., None], 3, -1)
    rgb[0, 0, 1] = 7
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match="a.png: the mask has 3 differing channels"):
        masks.load_mask_folder(_config(tmp_path))


def test_unknown_value_error_names_file(tmp_path):
    ids = _class_map(0)
    ids[1, 1] = 9
    _write(tmp_path, {"a": _class_map(1), "b": ids})
    with pytest.raises(ValueError, match=r"b.png: mask values \[9\] are not class ids below config.data.num_classes=3"):
        masks.load_mask_folder(_config(tmp_path))


def test_class_names_from_classes_txt(tmp_path):
    _write(tmp_path, {"a": _class_map(0)})
    assert masks.class_names(_config(tmp_path)) == ["class_0", "class_1", "class_2"]
    (tmp_path / "classes.txt").write_text("background\n\nshirt\n  pants \n\n")
    assert masks.load(_config(tmp_path))["train"].class_names == ["background", "shirt", "pants"]
    with pytest.raises(ValueError, match=r"classes.txt names 3 classes but config.data.num_classes=4"):
        masks.class_names(_config(tmp_path, num_classes=4))


def test_train_validation_split_in_sorted_order(tmp_path):
    _write(tmp_path, {f"img_{i}": _class_map(i) for i in (3, 0, 4, 1, 2)})
    splits = masks.load(_config(tmp_path, train_size=3))
    assert sorted(splits) == ["train", "validation"]
    assert len(splits["train"]) == 3 and len(splits["validation"]) == 2
    np.testing.assert_array_equal(splits["validation"].labels[1], _class_map(4))
    np.testing.assert_array_equal(splits["train"].labels[0], _class_map(0))
    assert splits["train"].dense_labels and splits["train"].labels.dtype == np.int32
    everything = masks.load(_config(tmp_path, train_size=0))
    assert list(everything) == ["train"] and len(everything["train"]) == 5
    with pytest.raises(ValueError, match="holds 5 image/mask pairs; lower config.data.train_size"):
        masks.load(_config(tmp_path, train_size=5))


def test_size_mismatch_error(tmp_path):
    _write(tmp_path, {"a": _class_map(0)})
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match="a.png: mask size 5x5 differs from its image"):
        masks.load_mask_folder(_config(tmp_path))


def test_corrupt_mask_error_and_skip(tmp_path):
    _write(tmp_path, {"a": _class_map(0), "b": _class_map(1), "c": _class_map(2)})
    (tmp_path / "masks" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="b.png: cannot decode the mask.*skip_bad_files=true"):
        masks.load_mask_folder(_config(tmp_path))
    _, labels, keys = masks.load_mask_folder(_config(tmp_path, skip_bad_files=True))
    assert keys == ["a", "c"]
    np.testing.assert_array_equal(labels[1], _class_map(2))


def test_gray_images_load_as_rgb_unless_one_channel(tmp_path):
    _write(tmp_path, {"a": _class_map(0), "b": _class_map(1)}, image_mode="L")
    images, _, _ = masks.load_mask_folder(_config(tmp_path))
    assert images.shape == (2, 8, 12, 3)
    np.testing.assert_array_equal(images[1], np.full((8, 12, 3), 40))
    gray, _, _ = masks.load_mask_folder(_config(tmp_path, channels=1))
    assert gray.shape == (2, 8, 12, 1) and (gray[1] == 40).all()


def test_nearest_resize_keeps_ids(tmp_path):
    ids = np.zeros((8, 12), np.uint8)
    ids[:, 4:8], ids[:, 8:] = 1, 2
    ids[0, 0] = 255
    _write(tmp_path, {"a": ids})
    images, labels, _ = masks.load_mask_folder(_config(tmp_path, image_size=24, ignore_label=255))
    assert images.shape == (1, 24, 24, 3) and labels.shape == (1, 24, 24)
    assert set(np.unique(labels).tolist()) == {-1, 0, 1, 2}
    # Columns scale by 2: class bands 0..7, 8..15, 16..23; ignored corner 3 rows x 2 columns.
    np.testing.assert_array_equal(labels[0, 12], np.repeat([0, 1, 2], 8))
    assert (labels[0] == -1).sum() == 3 * 2


def test_images_of_different_sizes_need_image_size(tmp_path):
    _write(tmp_path, {"a": _class_map(0), "b": np.zeros((6, 6), np.uint8)})
    with pytest.raises(ValueError, match="config.data.image_size=0 keeps each image's size"):
        masks.load_mask_folder(_config(tmp_path))
    images, labels, _ = masks.load_mask_folder(_config(tmp_path, image_size=16))
    assert images.shape == (2, 16, 16, 3) and labels.shape == (2, 16, 16)
