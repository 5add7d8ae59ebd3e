"""The masks source through the pipeline, and the deterministic tf.data batches."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import seg_mobilenet
from labjax.data import augment as augment_lib
from labjax.data import masks, pipeline
from labjax.data.examples import Examples


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
    config.data.source = "masks"
    config.data.path = str(path)
    config.data.match_regex = r"(\d+)$"
    config.data.mask_values = "0:0,255:1"
    config.data.train_size = 3
    config.data.update(overrides)
    return config


def test_folder_source_pairs_maps_and_resizes(tmp_path):
    _write_pairs(tmp_path, image_ext=".jpg")
    config = _folder_config(tmp_path)
    splits = pipeline.load(config).splits
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
        pipeline.load(_folder_config(tmp_path))


def test_folder_source_errors_for_missing_folder_and_unmapped_ids(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        pipeline.load(_folder_config(tmp_path / "nowhere"))
    _write_pairs(tmp_path, mask_scale=5)
    with pytest.raises(ValueError, match="below config.data.num_classes"):
        pipeline.load(_folder_config(tmp_path, mask_values=""))
    with pytest.raises(ValueError, match="raw:class"):
        masks.parse_mask_values("0-0")


def _data_with_derived_masks(n=12, size=16, augment="flip_lr"):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size, 3), np.uint8)
    labels = (images[..., 0] > 127).astype(np.int32)  # mask derived from the image
    examples = Examples(labels=labels, class_names=["a", "b"], images=images)
    config = seg_mobilenet.get_config("smoke")
    config.batch_size, config.eval_batch_size, config.data.augment = 4, 4, augment
    context = augment_lib.Context(dense_labels=True)
    data = pipeline.Data({"train": examples, "validation": examples}, ["a", "b"], 3, context, np.zeros(0, int), None)
    return data, config


def test_train_batches_are_deterministic_flip_aligned_and_resumable():
    data, config = _data_with_derived_masks()
    images = data.splits["train"].images
    epoch = list(pipeline.train_batches(data, config, epoch=3))
    again = list(pipeline.train_batches(data, config, epoch=3))
    for a, b in zip(epoch, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    resumed = list(pipeline.train_batches(data, config, epoch=3, first_step=1))
    np.testing.assert_array_equal(resumed[0]["image"], epoch[1]["image"])
    flipped = 0
    originals = {(img.astype(np.float32) / 127.5 - 1).tobytes() for img in images}
    for batch in epoch:
        red = (batch["image"][..., 0] + 1) * 127.5
        np.testing.assert_array_equal(batch["label"], (red > 127.5).astype(np.int32))
        flipped += sum(img.tobytes() not in originals for img in batch["image"])
    assert 0 < flipped < len(images)  # some examples flipped, not all
    assert not np.array_equal(epoch[0]["image"], next(pipeline.train_batches(data, config, epoch=4))["image"])


def test_process_shards_partition_each_global_batch():
    data, config = _data_with_derived_masks(augment="")
    whole = list(pipeline.train_batches(data, config, epoch=0))
    parts = [list(pipeline.train_batches(data, config, 0, 0, p, 2)) for p in range(2)]
    for step, batch in enumerate(whole):
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, batch["image"])


def test_eval_batches_pad_and_mark_every_example_once():
    data, config = _data_with_derived_masks(n=10)
    batches = list(pipeline.eval_batches(data, "validation", config))
    assert [b["valid"].sum() for b in batches] == [4, 4, 2]
    assert all(len(b["image"]) == 4 for b in batches)
    labels = np.concatenate([b["label"][b["valid"]] for b in batches])
    np.testing.assert_array_equal(labels, data.splits["validation"].labels)


def _write_class_folders(root, per_class=(5, 3), size=(20, 24)):
    rng = np.random.default_rng(2)
    for c, n in enumerate(per_class):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
            Image.fromarray(image).save(root / f"class_{c}" / f"{i}.png")


def _folder_classification_config(path, **data):
    from configs import fashion3_cnn

    config = fashion3_cnn.get_config("smoke")
    config.data.update(
        dict(source="folder", path=str(path), num_classes=0, image_size=16, channels=3, merge="", split_fractions="")
    )
    config.data.update({"val_fraction": 0.25, "balance": "none", "augment": "flip_lr|rotate(0.1)", **data})
    config.batch_size = 4
    return config


def test_streamed_file_source_gives_the_batches_of_the_in_memory_one(tmp_path):
    _write_class_folders(tmp_path)
    memory = _folder_classification_config(tmp_path, cache="memory")
    stream = _folder_classification_config(tmp_path, cache="stream")
    data_m, data_s = pipeline.load(memory), pipeline.load(stream)
    assert data_m.splits["train"].images is not None and data_s.splits["train"].files is not None
    assert data_m.class_names == data_s.class_names == ["class_0", "class_1"]
    for a, b in zip(pipeline.train_batches(data_m, memory, 1), pipeline.train_batches(data_s, stream, 1)):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)


def test_mean_std_normalisation_uses_the_training_split(tmp_path):
    _write_class_folders(tmp_path, per_class=(8, 8))
    config = _folder_classification_config(tmp_path, normalize="mean_std", augment="", val_fraction=0.5)
    config.batch_size = 8
    data = pipeline.load(config)
    images = np.concatenate([b["image"] for b in pipeline.train_batches(data, config, 0)])
    assert len(images) == 8  # the whole training split
    np.testing.assert_allclose(images.mean((0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(images.std((0, 1, 2)), 1, atol=1e-3)


def test_oversampled_copies_are_augmented_and_fill_each_epoch():
    from configs import fashion3_cnn

    config = fashion3_cnn.get_config("smoke")
    config.data.copy_augment = "flip_lr(p=1.0)"
    data = pipeline.load(config)
    train = data.splits["train"]
    counts = np.bincount(np.concatenate([train.labels, train.labels[data.copies]]))
    assert len(set(counts.tolist())) == 1  # balanced
    steps = pipeline.steps_per_epoch(data, config.batch_size)
    seen = np.concatenate([b["label"] for b in pipeline.train_batches(data, config, 0)])
    assert len(seen) == steps * config.batch_size and len(seen) > len(train)
    # an entry past the originals shows its source image mirrored (the copy's augmentation)
    order = pipeline.epoch_order(data, config.seed, 0)[: len(seen)]
    first_batch = next(pipeline.train_batches(data, config, 0))["image"]
    for position, entry in enumerate(order[: config.batch_size]):
        source = train.images[entry if entry < len(train) else data.copies[entry - len(train)]] / 255.0
        expected = source[:, ::-1] if entry >= len(train) else source
        np.testing.assert_allclose(first_batch[position], expected, atol=1e-6)


@pytest.mark.slow
def test_mode_data_prints_counts_and_writes_stats_and_grids(tmp_path):
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "launch.py", "--mode=data", "--config=configs/fashion3_cnn.py:smoke", f"--workdir={tmp_path}"],
        cwd=pipeline.__file__.rsplit("/labjax/", 1)[0],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["class_names"] == ["upper", "lower", "shoes"]
    assert len(set(stats["counts"]["train+copies"])) == 1  # balanced after oversampling
    assert sum(stats["counts"]["train"]) + sum(stats["counts"]["test"]) + sum(stats["counts"]["validation"]) == 234
    assert (
        stats["input_shape"] == [28, 28, 1] and 0 <= stats["train_value_range"][0] < stats["train_value_range"][1] <= 1
    )
    for split in ("train", "validation", "test"):
        assert (tmp_path / "data" / f"samples_{split}.png").stat().st_size > 2000
    assert "upper" in result.stdout and "train+copies" in result.stdout


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="the real Fashion-MNIST files are absent (apt-get install dataset-fashion-mnist)",
)
def test_s2_three_class_pipeline_on_the_real_fashion_mnist():
    from configs import fashion3_cnn

    data = pipeline.load(fashion3_cnn.get_config())
    assert data.class_names == ["upper", "lower", "shoes"]
    per_split = {name: pipeline.class_counts(ex, 3) for name, ex in data.splits.items()}
    assert np.sum(list(per_split.values()), axis=0).tolist() == [35000, 7000, 21000]  # 63,000 without Bag
    assert per_split["train"] == [24500, 4900, 14700]  # 70%, stratified
    assert per_split["test"] == per_split["validation"] == [5250, 1050, 3150]
    balanced = np.bincount(np.concatenate([data.splits["train"].labels, data.splits["train"].labels[data.copies]]))
    assert balanced.tolist() == [24500, 24500, 24500]
    assert data.input_shape == (28, 28, 1)
