"""The engine's data: the image+mask folder source and the deterministic tf.data pipeline."""

import numpy as np
import pytest
from PIL import Image

from configs import seg_mobilenet
from labjax.data import masks, pipeline


def _write_pairs(root, n=5, size=(40, 30), mask_scale=255, image_ext=".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[:, size[0] // 2 :] = mask_scale  # right half foreground
        Image.fromarray(image).save(root / "images" / f"img_{i:03d}{image_ext}")
        Image.fromarray(mask).save(root / "masks" / f"seg_{i:03d}.png")


def _folder_config(path, **overrides):
    config = seg_mobilenet.get_config("smoke")
    config.data.source = "folder"
    config.data.path = str(path)
    config.data.match_regex = r"(\d+)$"
    config.data.mask_values = "0:0,255:1"
    config.data.train_size = 3
    config.data.update(overrides)
    return config


def test_folder_source_pairs_maps_and_resizes(tmp_path):
    _write_pairs(tmp_path, image_ext=".jpg")
    config = _folder_config(tmp_path)
    splits = pipeline.load_splits(config)
    assert len(splits["train"]) == 3 and len(splits["validation"]) == 2
    images, labels = splits["train"].images, splits["train"].labels
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (3, 32, 32) and set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels[0, :, :16], 0)  # nearest resize keeps the halves
    np.testing.assert_array_equal(labels[0, :, 16:], 1)


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda root: (root / "masks" / "seg_001.png").unlink(), "no partner"),
        (lambda root: (root / "masks" / "seg_002.png").write_bytes(b"not a png"), "cannot decode"),
        (
            lambda root: Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "seg_000.png"),
            "differs from its image",
        ),
        (
            lambda root: Image.fromarray(np.full((30, 40), 7, np.uint8)).save(root / "masks" / "seg_000.png"),
            "mask values [7]",
        ),
    ],
)
def test_folder_source_names_the_bad_file(tmp_path, break_it, message):
    _write_pairs(tmp_path)
    break_it(tmp_path)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pipeline.load_splits(_folder_config(tmp_path))


def test_folder_source_errors_for_missing_folder_and_unmapped_ids(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        pipeline.load_splits(_folder_config(tmp_path / "nowhere"))
    _write_pairs(tmp_path, mask_scale=5)
    with pytest.raises(ValueError, match="below config.data.num_classes"):
        pipeline.load_splits(_folder_config(tmp_path, mask_values=""))
    with pytest.raises(ValueError, match="raw:class"):
        masks.parse_mask_values("0-0")


def _split_with_derived_masks(n=12, size=16):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size, 3), np.uint8)
    labels = (images[..., 0] > 127).astype(np.int32)  # mask derived from the image
    return pipeline.Split(images, labels, ["a", "b"])


def test_train_batches_are_deterministic_flip_aligned_and_resumable():
    config = seg_mobilenet.get_config("smoke")
    config.batch_size = 4
    split = _split_with_derived_masks()
    epoch = list(pipeline.train_batches(split, config, epoch=3))
    again = list(pipeline.train_batches(split, config, epoch=3))
    for a, b in zip(epoch, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    resumed = list(pipeline.train_batches(split, config, epoch=3, first_step=1))
    np.testing.assert_array_equal(resumed[0]["image"], epoch[1]["image"])
    flipped = 0
    for batch in epoch:
        red = (batch["image"][..., 0] + 1) * 127.5
        np.testing.assert_array_equal(batch["label"], (red > 127.5).astype(np.int32))
        originals = {pipeline._normalize(img).numpy().tobytes() for img in split.images}
        flipped += sum(img.tobytes() not in originals for img in batch["image"])
    assert 0 < flipped < len(split)  # some examples flipped, not all
    assert not np.array_equal(epoch[0]["image"], next(pipeline.train_batches(split, config, epoch=4))["image"])


def test_process_shards_partition_each_global_batch():
    config = seg_mobilenet.get_config("smoke")
    config.batch_size, config.data.flip = 4, False
    split = _split_with_derived_masks()
    whole = list(pipeline.train_batches(split, config, epoch=0))
    parts = [list(pipeline.train_batches(split, config, 0, 0, p, 2)) for p in range(2)]
    for step, batch in enumerate(whole):
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, batch["image"])


def test_eval_batches_pad_and_mark_every_example_once():
    split = _split_with_derived_masks(n=10)
    batches = list(pipeline.eval_batches(split, 4))
    assert [b["valid"].sum() for b in batches] == [4, 4, 2]
    assert all(len(b["image"]) == 4 for b in batches)
    labels = np.concatenate([b["label"][b["valid"]] for b in batches])
    np.testing.assert_array_equal(labels, split.labels)
