"""File-format sources and image decoding: folders, PNM, IDX, CIFAR pickles, Tiny ImageNet, TFDS."""

import gzip
import io
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from labjax.data import cifar, decode, folders, idx, tfds_source, tiny_imagenet


def make_data(**overrides) -> ml_collections.ConfigDict:
    """config.data with every key at its default, then `overrides`."""
    data = dict(
        source="",
        path="",
        test_path="",
        image_size=0,
        channels=0,
        class_names="",
        label_pattern="",
        label_mode="fine",
        skip_bad_files=False,
        name="",
        data_dir="",
        download=False,
        tfds_splits="",
        image_key="image",
        label_key="label",
        image_dir="images",
        mask_dir="masks",
        match_regex="",
        mask_values="",
        ignore_label=-1,
        num_classes=0,
        train_size=0,
        val_size=0,
    )
    data.update(overrides)
    return ml_collections.ConfigDict(data)


def rgb(h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    """Writes uint8 (H,W,1|3) in the format of the path's suffix (PNG/JPEG/BMP/GIF via PIL, PGM/PPM by hand)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".pgm", ".ppm", ".pnm"):
        magic = b"P5" if image.shape[-1] == 1 else b"P6"
        path.write_bytes(magic + f"\n{image.shape[1]} {image.shape[0]}\n255\n".encode() + image.tobytes())
    else:
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        pil.save(path, quality=95) if suffix in (".jpg", ".jpeg") else pil.save(path)
    return path


def gray_of(image: np.ndarray) -> np.ndarray:
    luma = image.astype(np.float32) @ np.array([0.2989, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


# ---------------------------------------------------------------- decode


def test_read_pnm_binary_plain_scaled_and_16_bit():
    image = rgb()
    gray = image[..., :1]
    assert np.array_equal(decode.read_pnm(b"P6\n# made by hand\n7 5\n255\n" + image.tobytes()), image)
    assert np.array_equal(decode.read_pnm(b"P5 7 5 255\n" + gray.tobytes()), gray)
    small = (gray // 17).astype(np.uint8)  # 0..15
    assert np.array_equal(decode.read_pnm(b"P5\n7 5\n# comment\n15\n" + small.tobytes()), small * 17)
    plain = b"P2\n# CREATOR: x\n3 2\n15\n0 1 2\n# row 2\n13 14 15\n"
    assert decode.read_pnm(plain)[..., 0].tolist() == [[0, 17, 34], [221, 238, 255]]
    assert decode.read_pnm(b"P3 2 1 255 1 2 3 4 5 6").tolist() == [[[1, 2, 3], [4, 5, 6]]]
    wide = np.array([[0, 32768, 65535]], ">u2")
    assert decode.read_pnm(b"P5 3 1 65535\n" + wide.tobytes())[..., 0].tolist() == [[0, 128, 255]]
    tenbit = np.array([[0, 500, 1000]], ">u2")
    assert decode.read_pnm(b"P5 3 1 1000\n" + tenbit.tobytes())[..., 0].tolist() == [[0, 128, 255]]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"P5 7 5 255\n" + bytes(10), "truncated"),
        (b"P5 7 5", "header"),
        (b"P2 2 1 255 4", "plain"),
        (b"P5 2 1 15\n\x00\x10", "exceeds maxval"),
        (b"GIF89a", "not a PGM/PPM"),
    ],
)
def test_read_pnm_rejects_corrupt_files_naming_the_path(data, message):
    with pytest.raises(ValueError, match=message) as error:
        decode.read_pnm(data, "faces/x.pgm")
    assert "faces/x.pgm" in str(error.value)


def test_file_channels(tmp_path):
    image = rgb()
    assert decode.file_channels(str(write_image(tmp_path / "g.png", image[..., :1]))) == 1
    assert decode.file_channels(str(write_image(tmp_path / "c.png", image))) == 3
    assert decode.file_channels(str(write_image(tmp_path / "g.jpg", image[..., :1]))) == 1
    assert decode.file_channels(str(write_image(tmp_path / "c.jpeg", image))) == 3
    assert decode.file_channels(str(write_image(tmp_path / "g.pgm", image[..., :1]))) == 1
    assert decode.file_channels(str(write_image(tmp_path / "c.ppm", image))) == 3
    assert decode.file_channels(str(write_image(tmp_path / "c.bmp", image))) == 3
    with pytest.raises(FileNotFoundError, match="missing.png"):
        decode.file_channels(str(tmp_path / "missing.png"))


def formats_folder(tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """One lossless file per format holding the same RGB image (GIF: 4 colours, so its palette is exact)."""
    image = rgb()
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [250, 250, 250]], np.uint8)
    image = palette[np.random.default_rng(1).integers(0, 4, image.shape[:2])]
    names = ["a.png", "b.BMP", "c.gif", "d.ppm", "e.pnm"]
    return [str(write_image(tmp_path / name, image)) for name in names], image


@pytest.mark.parametrize("channels, size", [(3, 0), (1, 0), (3, 4), (1, 9)])
def test_decode_file_eager_equals_tf_data_map(tmp_path, channels, size):
    files, image = formats_folder(tmp_path)
    files.append(str(write_image(tmp_path / "f.pgm", gray_of(image))))
    flat = np.full((5, 7, 3), [200, 100, 50], np.uint8)  # JPEG is lossy: compare a flat colour
    files.append(str(write_image(tmp_path / "g.jpg", flat)))
    eager = [decode.decode_file(tf.constant(f), channels, size).numpy() for f in files]
    mapped = list(
        tf.data.Dataset.from_tensor_slices(files)
        .map(lambda p: decode.decode_file(p, channels, size))
        .as_numpy_iterator()
    )
    for f, a, b in zip(files, eager, mapped):
        assert a.dtype == np.uint8 and a.shape == ((size or 5), (size or 7), channels), f
        assert np.array_equal(a, b), f
    expected = image.astype(np.float32)  # channels converted, then resized, then rounded
    if channels == 1:
        expected = expected @ np.array([[0.2989], [0.587], [0.114]], np.float32)
    if size:
        expected = tf.image.resize(expected, [size, size], "bilinear", antialias=True).numpy()
    expected = np.clip(np.round(expected), 0, 255).astype(np.uint8)
    for f, a in zip(files[:5], eager):  # lossless formats
        assert np.array_equal(a, expected), f
    if channels == 1 and not size:  # a gray file read as gray is unchanged
        assert np.array_equal(eager[5], gray_of(image))
    colour = flat[0, 0] if channels == 3 else gray_of(flat)[0, 0]
    assert np.abs(eager[6].astype(int) - colour).max() <= 3


def test_decode_file_gray_to_rgb_and_alpha_dropped(tmp_path):
    gray = rgb()[..., :1]
    out = decode.decode_file(tf.constant(str(write_image(tmp_path / "g.pgm", gray))), 3, 0).numpy()
    assert np.array_equal(out, np.repeat(gray, 3, -1))
    rgba = np.concatenate([rgb(), np.full((5, 7, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = decode.decode_file(tf.constant(str(tmp_path / "rgba.png")), 3, 0).numpy()
    assert np.array_equal(out, rgba[..., :3])


def test_decode_files_keeps_order_and_reports_bad_files(tmp_path, caplog):
    images = [np.full((6, 6, 3), 10 * i, np.uint8) for i in range(6)]
    files = [
        str(write_image(tmp_path / f"{i}.{'png' if i % 2 else 'pgm'}", im[..., : 1 + 2 * (i % 2)]))
        for i, im in enumerate(images)
    ]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "short.pgm").write_bytes(b"P5 6 6 255\n" + bytes(5))
    files = files[:2] + [str(tmp_path / "bad.png")] + files[2:4] + [str(tmp_path / "short.pgm")] + files[4:]
    with pytest.raises(ValueError, match=r"bad\.png.*skip_bad_files=true"):
        decode.decode_files(np.array(files), 3, 0, skip_bad=False)
    with caplog.at_level(logging.WARNING):
        out, kept = decode.decode_files(np.array(files), 3, 3, skip_bad=True)
    assert kept.tolist() == [0, 1, 3, 4, 6, 7]
    assert out.shape == (6, 3, 3, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50]
    assert "Skipped 2 of 8 files" in caplog.text and "bad.png" in caplog.text and "short.pgm" in caplog.text
    with pytest.raises(ValueError, match=r"short\.pgm: truncated PNM.*skip_bad_files=true"):
        decode.decode_files(np.array(files[-3:]), 1, 0, skip_bad=False)


def test_decode_files_native_size_must_agree(tmp_path):
    files = [str(write_image(tmp_path / "a.png", rgb(5, 7))), str(write_image(tmp_path / "b.png", rgb(6, 7)))]
    with pytest.raises(ValueError, match=r"b\.png is 7x6.*config\.data\.image_size"):
        decode.decode_files(np.array(files), 3, 0, skip_bad=False)
    out, kept = decode.decode_files(np.array(files), 1, 8, skip_bad=False)
    assert out.shape == (2, 8, 8, 1) and kept.tolist() == [0, 1]


# ---------------------------------------------------------------- folders


def class_folders(root: Path) -> None:
    """3 classes whose images are filled with 10, 20, 30; mixed formats, nesting, noise files."""
    fill = {"cat": 10, "dog": 20, "eel": 30}
    for name, value in fill.items():
        image = np.full((4, 4, 3), value, np.uint8)
        write_image(root / name / "b.png", image)
        write_image(root / name / "a.JPG", image)
        write_image(root / name / "deep" / "c.pgm", image[..., :1])
        write_image(root / name / "d.ppm", image)
        (root / name / "notes.txt").write_text("not an image")
        write_image(root / name / ".hidden.png", image)


def test_folders_class_subfolders(tmp_path):
    class_folders(tmp_path / "train")
    class_folders(tmp_path / "test")
    split = folders.load(make_data(path=str(tmp_path / "train"), test_path=str(tmp_path / "test")))
    train = split["train"]
    assert train.class_names == ["cat", "dog", "eel"] and set(split) == {"train", "test"}
    assert train.labels.dtype == np.int32 and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert [Path(f).relative_to(tmp_path / "train").as_posix() for f in train.files[:4]] == [
        "cat/a.JPG",
        "cat/b.png",
        "cat/d.ppm",
        "cat/deep/c.pgm",
    ]
    images, kept = decode.decode_files(train.files, 1, 0, False)
    assert kept.tolist() == list(range(12))
    assert [int(np.median(im)) for im in images] == [10] * 4 + [20] * 4 + [30] * 4
    assert split["test"].labels.tolist() == train.labels.tolist()

    ordered = folders.load(make_data(path=str(tmp_path / "train"), class_names="eel, cat,dog"))["train"]
    assert ordered.class_names == ["eel", "cat", "dog"]
    assert ordered.labels[np.char.find(ordered.files, "/eel/") >= 0].tolist() == [0] * 4


def test_folders_errors(tmp_path):
    class_folders(tmp_path / "train")
    with pytest.raises(FileNotFoundError, match=r"config\.data\.path=.*no such folder"):
        folders.load(make_data(path=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"missing folders: \['fox'\].*folders not named: \['eel'\]"):
        folders.load(make_data(path=str(tmp_path / "train"), class_names="cat,dog,fox"))
    (tmp_path / "train" / "fox" / "sub").mkdir(parents=True)
    (tmp_path / "train" / "fox" / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"fox: the class folder holds no images"):
        folders.load(make_data(path=str(tmp_path / "train")))
    class_folders(tmp_path / "test")
    (tmp_path / "train" / "fox" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"config\.data\.test_path=.*folders: \['fox'\]"):
        folders.load(make_data(path=str(tmp_path / "train"), test_path=str(tmp_path / "test")))
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png", rgb())
    with pytest.raises(ValueError, match="no class sub-folders.*label_pattern"):
        folders.load(make_data(path=str(tmp_path / "flat")))


def cmu_faces(root: Path) -> None:
    for user in ("an2i", "at33"):
        for pose, expression, eyes in [("left", "angry", "open"), ("straight", "happy", "sunglasses")]:
            for scale in ("", "_2", "_4"):
                write_image(root / user / f"{user}_{pose}_{expression}_{eyes}{scale}.pgm", rgb()[..., :1])


def test_folders_label_pattern(tmp_path):
    cmu_faces(tmp_path)
    split = folders.load(make_data(path=str(tmp_path), label_pattern="_(?P<label>open|sunglasses)"))
    train = split["train"]
    assert list(split) == ["train"] and train.class_names == ["open", "sunglasses"]
    assert len(train) == 12
    for file, label in zip(train.files, train.labels):
        assert train.class_names[label] in Path(file).name
    by_pose = folders.load(
        make_data(path=str(tmp_path), label_pattern="^[a-z0-9]+_(?P<label>[a-z]+)_", class_names="straight,left")
    )
    assert by_pose["train"].class_names == ["straight", "left"]
    assert all(("straight" in f) == (y == 0) for f, y in zip(by_pose["train"].files, by_pose["train"].labels))


def test_folders_label_pattern_errors(tmp_path, caplog):
    cmu_faces(tmp_path)
    write_image(tmp_path / "an2i" / "an2i_up_sad_closed.pgm", rgb()[..., :1])
    pattern = "_(?P<label>open|sunglasses)"
    with pytest.raises(ValueError, match=r"an2i_up_sad_closed\.pgm.*label_pattern=.*fix the regex or move the file"):
        folders.load(make_data(path=str(tmp_path), label_pattern=pattern))
    with caplog.at_level(logging.WARNING):
        train = folders.load(make_data(path=str(tmp_path), label_pattern=pattern, skip_bad_files=True))["train"]
    assert len(train) == 12 and "Skipped 1 files" in caplog.text
    with pytest.raises(ValueError, match="no named group 'label'"):
        folders.load(make_data(path=str(tmp_path), label_pattern="(open|sunglasses)"))
    with pytest.raises(ValueError, match="not a valid regex"):
        folders.load(make_data(path=str(tmp_path), label_pattern="(?P<label>open"))
    with pytest.raises(ValueError, match=r"not found: \['closed'\]"):
        folders.load(
            make_data(
                path=str(tmp_path), label_pattern=pattern, skip_bad_files=True, class_names="open,sunglasses,closed"
            )
        )


# ---------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, gz: bool, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 7) % 10,
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_plain(tmp_path, gz):
    arrays = write_idx(tmp_path / "mnist", gz)
    split = idx.load(make_data(path=str(tmp_path / "mnist")))
    assert split["train"].images.shape == (5, 28, 28, 1) and split["train"].images.dtype == np.uint8
    assert np.array_equal(split["train"].images[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(split["test"].images[..., 0], arrays["t10k-images-idx3-ubyte"])
    assert split["train"].labels.tolist() == [0, 1, 2, 3, 4] and split["test"].labels.tolist() == [7, 8, 9]
    assert split["train"].labels.dtype == np.int32
    assert split["train"].class_names == [str(i) for i in range(10)]


def test_idx_class_names(tmp_path):
    write_idx(tmp_path / "Fashion-MNIST", gz=True)
    assert idx.load(make_data(path=str(tmp_path / "Fashion-MNIST")))["test"].class_names[9] == "Ankle boot"
    named = idx.load(make_data(path=str(tmp_path / "Fashion-MNIST"), class_names=",".join("abcdefghij")))
    assert named["train"].class_names == list("abcdefghij")
    with pytest.raises(ValueError, match="class_names names 3 classes.*give 10 names"):
        idx.load(make_data(path=str(tmp_path / "Fashion-MNIST"), class_names="a,b,c"))


def test_idx_errors(tmp_path):
    folder = tmp_path / "mnist"
    write_idx(folder, gz=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\]: no such file.*train-images-idx3-ubyte"
    ):
        idx.load(make_data(path=str(folder)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(4)))
    with pytest.raises(ValueError, match="holds 3 images but .*t10k-labels-idx1-ubyte holds 4 labels"):
        idx.load(make_data(path=str(folder)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(3))[:-1])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: 2 data bytes.*truncated"):
        idx.load(make_data(path=str(folder)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: not an IDX file"):
        idx.load(make_data(path=str(folder)))
    (folder / "t10k-labels-idx1-ubyte").unlink()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(3)))[:-6])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: cannot read"):
        idx.load(make_data(path=str(folder)))


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="real Fashion-MNIST absent (apt-get install dataset-fashion-mnist puts it in /usr/share/datasets)",
)
def test_idx_real_fashion_mnist():
    split = idx.load(make_data(path=str(FASHION)))
    assert split["train"].images.shape == (60000, 28, 28, 1) and len(split["test"]) == 10000
    assert np.bincount(split["train"].labels).tolist() == [6000] * 10
    assert split["train"].class_names[0] == "T-shirt/top"


# ---------------------------------------------------------------- CIFAR


class Py2Pickler(pickle._Pickler):
    """Pickles as the real CIFAR files were, by Python 2: str opcodes for bytes, numpy.core globals."""

    def save_bytes(self, obj):
        head = (
            pickle.SHORT_BINSTRING + bytes([len(obj)])
            if len(obj) < 256
            else pickle.BINSTRING + struct.pack("<i", len(obj))
        )
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(path: Path, obj) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def cifar_rows(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,3072) rows and the (N,32,32,3) images they encode: pixel (y,x) of image i = (i+offset, y, x)."""
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[..., 0] = (np.arange(n) + offset)[:, None, None]
    images[..., 1] = np.arange(32)[None, :, None]
    images[..., 2] = np.arange(32)[None, None, :] + 100
    return images.transpose(0, 3, 1, 2).reshape(n, 3072), images


def test_cifar10_python_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    py2_pickle(folder / "batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird"], b"num_vis": 3072})
    expected = []
    for i in range(1, 6):
        rows, images = cifar_rows(2, 10 * i)
        expected.append(images)
        py2_pickle(
            folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"data": rows, b"labels": [i % 3, 0]}
        )
    rows, test_images = cifar_rows(3, 200)
    py2_pickle(folder / "test_batch", {b"data": rows, b"labels": [2, 1, 0], b"filenames": [b"a.png"] * 3})
    for path in (folder, tmp_path):  # the folder itself or its parent
        split = cifar.load(make_data(path=str(path)))
        assert split["train"].class_names == ["airplane", "automobile", "bird"]
        assert split["train"].images.shape == (10, 32, 32, 3) and split["train"].images.dtype == np.uint8
        assert np.array_equal(split["train"].images, np.concatenate(expected))
        assert split["train"].labels.tolist() == [1, 0, 2, 0, 0, 0, 1, 0, 2, 0]
        assert np.array_equal(split["test"].images, test_images) and split["test"].labels.tolist() == [2, 1, 0]


def cifar100_folder(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    meta = {b"fine_label_names": [b"apple", b"bee", b"maple"], b"coarse_label_names": [b"fruit", b"insect", b"tree"]}
    pickle.dump(meta, (folder / "meta").open("wb"), protocol=2)
    rows, _ = cifar_rows(4, 0)
    train = {b"data": rows, b"fine_labels": [0, 1, 2, 1], b"coarse_labels": [0, 1, 2, 1], b"filenames": [b"x"] * 4}
    pickle.dump(train, (folder / "train").open("wb"), protocol=2)
    rows, _ = cifar_rows(2, 50)
    pickle.dump(
        {b"data": rows, b"fine_labels": [2, 0], b"coarse_labels": [2, 0]}, (folder / "test").open("wb"), protocol=2
    )


def test_cifar100_fine_and_coarse(tmp_path):
    cifar100_folder(tmp_path)
    fine = cifar.load(make_data(path=str(tmp_path)))
    assert fine["train"].class_names == ["apple", "bee", "maple"] and fine["test"].labels.tolist() == [2, 0]
    assert fine["train"].images[3, 5, 7].tolist() == [3, 5, 107]
    coarse = cifar.load(make_data(path=str(tmp_path / "cifar-100-python"), label_mode="coarse"))
    assert coarse["train"].class_names == ["fruit", "insect", "tree"]
    assert coarse["train"].labels.tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match="label_mode='middle'"):
        cifar.load(make_data(path=str(tmp_path), label_mode="middle"))


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvilOpen:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("evil", [Evil, EvilOpen])
def test_cifar_refuses_malicious_pickle(tmp_path, evil):
    cifar100_folder(tmp_path)
    marker = tmp_path / "MARKER"
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(pickle.dumps({b"data": evil(marker), b"fine_labels": []}, protocol=2))
    with pytest.raises(ValueError, match=r"train: not a CIFAR data file \(refused to load the global"):
        cifar.load(make_data(path=str(tmp_path)))
    assert not marker.exists()


class ForgedDtype:
    """numpy.dtype built from a spec, then its pickled state applied (flags, sizes, fields)."""

    def __init__(self, spec: str, state: tuple):
        self.spec, self.state = spec, state

    def __reduce__(self):
        return np.dtype, (self.spec, False, True), self.state


class ForgedArray:
    """numpy's array reconstruction over raw bytes with the given type: what a CIFAR file's arrays are."""

    def __init__(self, shape: tuple, dtype, raw: bytes):
        self.shape, self.dtype, self.raw = shape, dtype, raw

    def __reduce__(self):
        return np.zeros(0).__reduce__()[0], (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.raw)


FORGED = {
    # An object array whose flags say it holds no references: its bytes would be read as pointers.
    "object pointers": (ForgedArray((2,), ForgedDtype("O8", (3, "|", None, None, None, 8, 8, 0)), b"A" * 16), "O8"),
    "record fields": (
        ForgedArray((1,), ForgedDtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)), b"A" * 8),
        "V8",
    ),
    "fields on a number type": (
        ForgedArray((1,), ForgedDtype("u8", (3, "|", None, ("a",), {"a": (np.dtype("u8"), 0)}, 8, 1, 0)), b"A" * 8),
        "fields",
    ),
    "bytes fewer than the shape": (
        ForgedArray((4096,), ForgedDtype("u1", (3, "|", None, None, None, -1, -1, 0)), b"A"),
        "forged",
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGED))
def test_cifar_refuses_forged_arrays_without_crashing(tmp_path, forgery):
    """A file forging NumPy arrays from numpy's own allowed globals is refused; run in a subprocess, so a
    segfault (what dereferencing forged pointers does) fails the test instead of ending the suite."""
    array, words = FORGED[forgery]
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({b"data": array, b"fine_labels": [0]}, protocol=2))
    script = (
        "import sys\nfrom labjax.data import cifar\n"
        "try:\n    content = cifar.read_pickle(__import__('pathlib').Path(sys.argv[1]))\n"
        "    print('LOADED', repr(content['data'][:1]))\n"
        "except ValueError as error:\n    print('REFUSED', error)\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"the loader crashed (exit {result.returncode}): {result.stderr[-2000:]}"
    assert "REFUSED" in result.stdout and "not a CIFAR data file" in result.stdout, result.stdout
    assert words in result.stdout, result.stdout


def test_cifar_arrays_of_every_plain_type_load_as_saved(tmp_path):
    values = {
        b"u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
        b"i8": np.array([-1, 2**40], ">i8"),
        b"f4": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        b"names": np.array([b"ab", b"c"]),
        b"empty": np.zeros((0, 3), np.int32),
    }
    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps(values, protocol=2))
    loaded = cifar.read_pickle(path)
    for key, value in values.items():
        assert loaded[key.decode()].dtype == value.dtype and np.array_equal(loaded[key.decode()], value)


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a CIFAR-10 folder"):
        cifar.load(make_data(path=str(tmp_path)))
    cifar100_folder(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"\x80\x02}q\x00(")
    with pytest.raises(ValueError, match=r"test: corrupt or truncated pickle"):
        cifar.load(make_data(path=str(tmp_path)))
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match=r"test: no such file"):
        cifar.load(make_data(path=str(tmp_path)))


# ---------------------------------------------------------------- Tiny ImageNet


def tiny_imagenet_folder(root: Path) -> None:
    wnids = ["n02", "n01", "n03"]
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander\nn00\tentity\n")
    for i, wnid in enumerate(wnids):
        for j in range(2):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", rgb(8, 8, i))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for j, wnid in enumerate(["n03", "n01", "n01", "n02"]):
        write_image(root / "val" / "images" / f"val_{j}.JPEG", rgb(8, 8, j))
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t7\t7")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_image(root / "test" / "images" / "test_0.JPEG", rgb(8, 8))


def test_tiny_imagenet(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    tiny_imagenet_folder(root)
    split = tiny_imagenet.load(make_data(path=str(root)))
    assert set(split) == {"train", "validation"}
    assert split["train"].class_names == ["goldfish", "European fire salamander", "n03"]
    assert split["train"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [Path(f).name for f in split["train"].files[:2]] == ["n01_0.JPEG", "n01_1.JPEG"]
    assert split["validation"].labels.tolist() == [2, 0, 0, 1]
    assert [Path(f).name for f in split["validation"].files] == [f"val_{j}.JPEG" for j in range(4)]
    images, kept = decode.decode_files(split["validation"].files, 3, 4, False)
    assert images.shape == (4, 4, 4, 3) and kept.tolist() == [0, 1, 2, 3]


def test_tiny_imagenet_errors(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    tiny_imagenet_folder(root)
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations\.txt, line 5: val_0\.JPEG is labelled 'n99'"):
        tiny_imagenet.load(make_data(path=str(root)))
    annotations.write_text("val_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"line 1: the image .*val_9\.JPEG does not exist"):
        tiny_imagenet.load(make_data(path=str(root)))
    (root / "wnids.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"wnids\.txt: cannot read"):
        tiny_imagenet.load(make_data(path=str(root)))


# ---------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
    """A tiny TFDS data set with images of varying size, a ClassLabel and a mask, prepared on disk."""
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["cat", "dog", "emu"]),
                "mask": tfds.features.Image(shape=(None, None, 1)),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                mask = np.zeros((4 + i, 6, 1), np.uint8)
                mask[:, 3:] = 255
                yield i, {"image": np.full((4 + i, 6, 3), 10 * i, np.uint8), "label": i % 3, "mask": mask}

    path = tmp_path_factory.mktemp("tfds")
    TinyShapes(data_dir=str(path)).download_and_prepare()
    return path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the TFDS source touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_tfds_prepared_data_set(tfds_dir, no_network):
    data = make_data(name="tiny_shapes", data_dir=str(tfds_dir))
    with pytest.raises(ValueError, match=r"differ in size.*config\.data\.image_size"):
        tfds_source.load(data)
    data.image_size = 5
    split = tfds_source.load(data)
    assert set(split) == {"train", "test"} and split["train"].class_names == ["cat", "dog", "emu"]
    train = split["train"]
    assert train.images.shape == (6, 5, 5, 3) and train.images.dtype == np.uint8
    assert sorted(zip(train.images[:, 0, 0, 0].tolist(), train.labels.tolist())) == [(10 * i, i % 3) for i in range(6)]
    data.tfds_splits = "train=train[:4],validation=train[4:]"
    split = tfds_source.load(data)
    assert list(split) == ["train", "validation"] and (len(split["train"]), len(split["validation"])) == (4, 2)


def test_tfds_masks(tfds_dir, no_network):
    data = make_data(
        name="tiny_shapes", data_dir=str(tfds_dir), image_size=6, label_key="mask", mask_values="0:0,255:1"
    )
    split = tfds_source.load(data)
    masks = split["test"].labels
    assert masks.shape == (3, 6, 6) and masks.dtype == np.int32
    assert (masks[:, :, :3] == 0).all() and (masks[:, :, 3:] == 1).all()
    assert split["test"].class_names == ["0", "1"]
    data.mask_values = "0:0"
    with pytest.raises(ValueError, match=r"mask values \[255\].*config\.data\.mask_values"):
        tfds_source.load(data)


def test_tfds_errors(tmp_path, tfds_dir, no_network):
    with pytest.raises(FileNotFoundError, match=r"config\.data\.name='mnist' is not prepared.*download=true.*data_dir"):
        tfds_source.load(make_data(name="mnist", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"config\.data\.name='no_such_set_xyz'"):
        tfds_source.load(make_data(name="no_such_set_xyz", data_dir=str(tmp_path)))
    data = make_data(name="tiny_shapes", data_dir=str(tfds_dir), image_size=4)
    for key, value, message in [
        ("tfds_splits", "training=train", "'training=train' is not 'name=tfds_split'"),
        ("tfds_splits", "train=bogus", "'bogus' is not a split"),
        ("label_key", "species", r"label_key='species' is not a feature.*\['image', 'label', 'mask'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            tfds_source.load(make_data(**{**data.to_dict(), key: value}))


def test_tfds_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        mnist = tfds_source.load(make_data(name="mnist", download=True, tfds_splits="train=train,test=test"))
        cifar10 = tfds_source.load(make_data(name="cifar10", download=True, tfds_splits="train=train[:50%]"))
    assert mnist["train"].images.shape == (5, 28, 28, 1) and mnist["train"].images.dtype == np.uint8
    assert mnist["test"].class_names == [str(i) for i in range(10)]
    assert mnist["train"].labels.dtype == np.int32 and set(mnist["train"].labels.tolist()) <= set(range(10))
    assert cifar10["train"].images.shape == (5, 32, 32, 3) and len(cifar10["train"].class_names) == 10
