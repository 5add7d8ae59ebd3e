"""Augmentation ops: same result eagerly and in tf.data, shapes kept, masks aligned, op semantics."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from labjax.data import augment
from labjax.data.augment import Context

KEY = "data.augment"
DENSE = Context(dense_labels=True, ignore_label=-1)
COLOURS = np.array([[0, 0, 0], [200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float32)


def scene(height=24, width=32) -> tuple[np.ndarray, np.ndarray]:
    """Constant-colour rectangles on black; the mask is the class of each pixel's colour."""
    mask = np.zeros((height, width), np.int32)
    mask[3 : height // 2, 4 : width // 2 - 2] = 1
    mask[height // 2 : height - 3, width // 2 : width - 4] = 2
    mask[2 : height // 3, width * 5 // 8 : width - 2] = 3
    return COLOURS[mask], mask


def run(spec, image, mask=None, seed=(1, 2)):
    fn = augment.build(spec, KEY, Context(dense_labels=mask is not None))
    features = {"image": tf.constant(image, tf.float32), "label": tf.constant(mask if mask is not None else 0)}
    out = fn(features, tf.constant(seed, tf.int64))
    return out["image"].numpy(), out["label"].numpy()


# spec -> output (height, width, channels) for a 24x32x3 input
SPECS = {
    "resize(16)": (16, 16, 3),
    "resize(16, 20)": (16, 20, 3),
    "center_crop(20)": (20, 20, 3),
    "pad_to(30)": (30, 32, 3),
    "channels(1)": (24, 32, 1),
    "channels(3)": (24, 32, 3),
    "flip_lr": (24, 32, 3),
    "flip_ud": (24, 32, 3),
    "rotate(0.2)": (24, 32, 3),
    "rotate((-0.1, 0.3), fill=10.0, fill_mode='reflect')": (24, 32, 3),
    "zoom(0.3)": (24, 32, 3),
    "translate((0.2, 0.1))": (24, 32, 3),
    "random_crop(20, padding=4)": (20, 20, 3),
    "random_resized_crop((16, 20))": (16, 20, 3),
    "brightness(0.4)": (24, 32, 3),
    "contrast(0.4)": (24, 32, 3),
    "saturation(0.4)": (24, 32, 3),
    "hue(0.2)": (24, 32, 3),
    "color_jitter(0.4, 0.4, 0.4, 0.1)": (24, 32, 3),
    "grayscale(p=1.0)": (24, 32, 3),
    "gaussian_blur(5)": (24, 32, 3),
    "gaussian_noise(8.0)": (24, 32, 3),
    "random_erasing(p=1.0)": (24, 32, 3),
    "random_erasing(p=1.0, value='random')": (24, 32, 3),
    "randaugment(2, 15)": (24, 32, 3),
    "flip_lr|rotate(0.1)|color_jitter(0.2, 0.2)|random_erasing(p=0.5)": (24, 32, 3),
}
DETERMINISTIC = ("resize", "center_crop", "pad_to", "channels", "grayscale")  # grayscale(p=1) has nothing random
RANDOM_SPECS = [s for s in SPECS if s.split("(")[0] not in DETERMINISTIC]


WITHOUT_MASK = ("resize(16, 20)", "channels(1)", "flip_lr", "rotate(0.2)", "random_crop(20, padding=4)", "hue(0.2)")


@pytest.mark.slow
@pytest.mark.parametrize("spec, dense", [(s, True) for s in SPECS] + [(s, False) for s in WITHOUT_MASK])
def test_eager_equals_dataset_map_and_shapes_kept(spec, dense):
    image, mask = scene()
    image = image + np.random.default_rng(0).uniform(0, 50, image.shape).astype(np.float32)
    context = Context(dense_labels=dense)
    fn = augment.build(spec, KEY, context)
    label = tf.constant(mask if dense else np.int32(2))
    features = {"image": tf.constant(image), "label": label, "id": tf.constant(7)}
    eager = fn(features, tf.constant([3, 4], tf.int32))
    ds = tf.data.Dataset.from_tensors((features, tf.constant([3, 4], tf.int64))).map(fn)
    mapped = next(iter(ds))
    shape = SPECS[spec]
    assert ds.element_spec["image"].shape == shape  # static shape survives tracing
    for out in (eager, mapped):
        assert out["image"].dtype == tf.float32 and out["image"].shape == shape
        assert out["label"].dtype == tf.int32 and out["label"].shape == (shape[:2] if dense else ())
        assert int(out["id"]) == 7
    np.testing.assert_allclose(eager["image"].numpy(), mapped["image"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(eager["label"].numpy(), mapped["label"].numpy())
    if not dense:
        assert int(eager["label"]) == 2


def _aligned_fraction(image, mask, colours=None) -> tuple[float, int]:
    """Share of interior labelled pixels whose colour is their class's colour (given, or the class median)."""
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones(mask.shape, bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    interior = same & (mask >= 0)
    ok = 0
    for c in np.unique(mask[interior]):
        pixels = image[interior & (mask == c)]
        ref = colours[c] if colours is not None else np.median(pixels, axis=0)
        ok += (np.abs(pixels - ref).max(-1) <= 2).sum()
    return ok / max(interior.sum(), 1), int(interior.sum())


GEOMETRIC = [
    "flip_lr(p=1.0)",
    "flip_ud(p=1.0)",
    "rotate(0.2)",
    "rotate(0.1, fill_mode='reflect')",
    "zoom(0.4)",
    "translate(0.25)",
    "random_crop(20, padding=6)",
    "random_resized_crop((20, 24), scale=(0.3, 1.0))",
    "resize(40, 48)",
    "center_crop(16)",
    "pad_to(36)",
    "randaugment(2, 25)",
]


@pytest.mark.parametrize("spec", GEOMETRIC)
def test_geometric_ops_keep_mask_aligned_with_image(spec):
    image, mask = scene()
    colours = None if spec.startswith("randaugment") else COLOURS  # colour ops recolour consistently
    for seed in range(4):
        out_image, out_mask = run(spec, image, mask, seed=(seed, 5))
        fraction, count = _aligned_fraction(out_image, out_mask, colours)
        assert count > 50, (spec, seed, count)
        assert fraction > 0.97, (spec, seed, fraction)


def test_alignment_check_catches_a_mask_left_behind():
    image, mask = scene()
    out_image, _ = run("rotate((0.1, 0.1))", image, mask)
    assert _aligned_fraction(out_image, mask, COLOURS)[0] < 0.9


def test_flips_equal_reverse():
    image, mask = scene()
    for spec, axis in (("flip_lr(p=1.0)", 1), ("flip_ud(p=1.0)", 0)):
        out_image, out_mask = run(spec, image, mask)
        np.testing.assert_array_equal(out_image, np.flip(image, axis))
        np.testing.assert_array_equal(out_mask, np.flip(mask, axis))


@pytest.mark.parametrize("turns, k", [((0.25, 0.25), 1), ((-0.25, -0.25), -1), ((0.5, 0.5), 2)])
def test_rotate_quarter_turns_equal_rot90(turns, k):
    image, mask = scene(32, 32)
    image = image + np.arange(32, dtype=np.float32)[:, None, None]  # break symmetries
    out_image, out_mask = run(f"rotate({turns})", image, mask)
    np.testing.assert_allclose(out_image, np.rot90(image, k), atol=1e-2)
    np.testing.assert_array_equal(out_mask, np.rot90(mask, k))


def test_rotate_fills_corners_with_fill_and_ignore():
    image, mask = scene()
    out_image, out_mask = run("rotate((0.125, 0.125), fill=7.0)", image + 100, mask)
    assert out_mask[0, 0] == -1 and out_mask[-1, -1] == -1
    np.testing.assert_allclose(out_image[0, 0], 7.0)


def test_zoom_scales_about_the_centre():
    image, mask = scene(32, 32)
    _, out_mask = run("zoom((-0.5, -0.5))", image, mask)  # scale 0.5: in = 0.5 * (out - 15.5) + 15.5
    source = np.round(0.5 * np.arange(32) + 7.75).astype(int)
    np.testing.assert_array_equal(out_mask, mask[source][:, source])
    _, out_mask = run("zoom((1.0, 1.0))", image, mask)  # scale 2: half size, the rest ignored
    assert (out_mask[:7] == -1).all() and (out_mask[:, 25:] == -1).all() and (out_mask[8:24, 8:24] >= 0).all()


def test_translate_shifts_by_whole_pixels_within_range():
    image, mask = scene()
    out_image, out_mask = run("translate(0.25)", image, mask, seed=(0, 9))
    shifts = [
        (dy, dx)
        for dy in range(-6, 7)
        for dx in range(-8, 9)
        if np.array_equal(np.roll(mask, (dy, dx), (0, 1))[6:-6, 8:-8], out_mask[6:-6, 8:-8])
    ]
    assert shifts, "the mask is not a translate of the input"


def test_random_crop_is_a_window_of_the_padded_image():
    image, mask = scene()
    image = image + np.random.default_rng(1).uniform(0, 50, image.shape).astype(np.float32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    padded_mask = np.pad(mask, 4, constant_values=-1)
    for seed in range(3):
        out_image, out_mask = run("random_crop(20, padding=4)", image, mask, seed=(seed, 0))
        hits = [
            (y, x)
            for y in range(13)
            for x in range(21)
            if np.array_equal(padded[y : y + 20, x : x + 20], out_image)
            and np.array_equal(padded_mask[y : y + 20, x : x + 20], out_mask)
        ]
        assert len(hits) == 1


def test_resize_crop_and_pad_semantics():
    image, mask = scene()
    out_image, out_mask = run("resize(12, 16)", image, mask)
    np.testing.assert_allclose(out_image, tf.image.resize(image, (12, 16), antialias=True).numpy(), atol=1e-4)
    np.testing.assert_array_equal(out_mask, mask[1::2, 1::2])  # nearest, half-pixel centres
    out_image, out_mask = run("center_crop((20, 24))", image, mask)
    np.testing.assert_array_equal(out_image, image[2:22, 4:28])
    np.testing.assert_array_equal(out_mask, mask[2:22, 4:28])
    out_image, out_mask = run("pad_to(30)", image, mask)
    np.testing.assert_array_equal(out_image[3:27], image)
    assert (out_image[:3] == 0).all() and (out_image[27:] == 0).all()
    assert (out_mask[:3] == -1).all() and (out_mask[27:] == -1).all()
    np.testing.assert_array_equal(out_mask[3:27], mask)


def test_random_resized_crop_scale_one_full_image_is_resize():
    image, mask = scene()
    out_image, out_mask = run("random_resized_crop((12, 16), scale=(1.0, 1.0), ratio=(1.3333, 1.3334))", image, mask)
    np.testing.assert_allclose(out_image, tf.image.resize(image, (12, 16), antialias=True).numpy(), atol=1e-3)
    np.testing.assert_array_equal(out_mask, mask[1::2, 1::2])  # nearest, half-pixel centres


def test_channels():
    rgb = np.random.default_rng(2).uniform(0, 255, (24, 32, 3)).astype(np.float32)
    gray, _ = run("channels(1)", rgb)
    np.testing.assert_allclose(gray[..., 0], rgb @ np.array([0.2989, 0.5870, 0.1140]), atol=1e-3)
    back, _ = run("channels(3)", gray)
    np.testing.assert_array_equal(back, np.repeat(gray, 3, -1))
    same, _ = run("channels(3)", rgb)
    np.testing.assert_array_equal(same, rgb)


def test_colour_ops_on_one_channel():
    gray = np.random.default_rng(3).uniform(0, 255, (24, 32, 1)).astype(np.float32)
    for spec in ("saturation(0.9)", "hue(0.4)", "grayscale(p=1.0)", "color_jitter(saturation=0.9, hue=0.4)"):
        np.testing.assert_array_equal(run(spec, gray)[0], gray)
    assert not np.array_equal(run("color_jitter(brightness=0.5)", gray)[0], gray)


def test_grayscale_and_brightness_values():
    rgb = np.random.default_rng(4).uniform(0, 200, (24, 32, 3)).astype(np.float32)
    gray, _ = run("grayscale(p=1.0)", rgb)
    np.testing.assert_allclose(gray, np.repeat(tf.image.rgb_to_grayscale(rgb).numpy(), 3, -1), atol=1e-4)
    bright, _ = run("brightness(0.25)", rgb)
    ratio = bright / rgb
    assert np.ptp(ratio[rgb > 1]) < 1e-4 and 0.75 <= ratio.flat[0] <= 1.25


def test_gaussian_blur_and_noise():
    flat = np.full((24, 32, 3), 90.0, np.float32)
    np.testing.assert_allclose(run("gaussian_blur(5, sigma=(1.0, 2.0))", flat)[0], flat, atol=1e-3)
    noisy = np.random.default_rng(5).uniform(50, 200, (24, 32, 3)).astype(np.float32)
    assert run("gaussian_blur(5, sigma=(1.0, 2.0))", noisy)[0].std() < 0.6 * noisy.std()
    out, _ = run("gaussian_noise(10.0)", flat)
    assert 8 < (out - flat).std() < 12


@pytest.mark.parametrize("seed", range(6))
def test_random_erasing_zeroes_one_box_of_area_in_scale_range(seed):
    image = np.random.default_rng(seed).uniform(1, 255, (32, 32, 3)).astype(np.float32)
    out, _ = run("random_erasing(p=1.0, scale=(0.05, 0.2), ratio=(0.5, 2.0), value=0)", image, seed=(seed, 1))
    erased = (out == 0).all(-1)
    rows, cols = np.nonzero(erased.any(1))[0], np.nonzero(erased.any(0))[0]
    box = np.zeros_like(erased)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    np.testing.assert_array_equal(erased, box)  # a single rectangle
    assert 0.05 * 1024 - 16 <= erased.sum() <= 0.2 * 1024 + 16
    np.testing.assert_array_equal(out[~erased], image[~erased])


def _permutation_image(channels=3) -> np.ndarray:
    """15x17 = 255 pixels, each channel a permutation of 0..254: full range, flat histogram, no 255."""
    rng = np.random.default_rng(6)
    return np.stack([rng.permutation(255).reshape(15, 17) for _ in range(channels)], -1).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_magnitude_zero_changes_little(channels):
    image = _permutation_image(channels)
    for seed in range(12):
        out, _ = run("randaugment(2, 0)", image, seed=(seed, 3))
        assert np.abs(out - image).max() <= 2, seed


def test_randaugment_changes_images_and_zero_ops_is_identity():
    image = _permutation_image()
    outs = [run("randaugment(2, 20)", image, seed=(s, 0))[0] for s in range(6)]
    assert sum(not np.allclose(o, image, atol=2) for o in outs) >= 4
    np.testing.assert_array_equal(run("randaugment(0)", image)[0], image)


def test_equalize_matches_pil():
    pixels = np.random.default_rng(7).integers(30, 180, (24, 32, 3)).astype(np.uint8)
    ours = augment._equalize(tf.constant(pixels, tf.float32)).numpy()
    np.testing.assert_array_equal(ours, np.asarray(ImageOps.equalize(Image.fromarray(pixels))))


P_ZERO = [
    "flip_lr(p=0)",
    "flip_ud(p=0)",
    "rotate(0.3, p=0)",
    "zoom(0.3, p=0)",
    "translate(0.3, p=0)",
    "brightness(0.5, p=0)",
    "contrast(0.5, p=0)",
    "saturation(0.5, p=0)",
    "hue(0.3, p=0)",
    "color_jitter(0.5, 0.5, 0.5, 0.3, p=0)",
    "grayscale(p=0)",
    "gaussian_blur(5, p=0)",
    "gaussian_noise(9.0, p=0)",
    "random_erasing(p=0)",
]


def test_probability_zero_is_identity():
    image, mask = scene()
    image = image + 5
    for spec in P_ZERO:
        out_image, out_mask = run(spec, image, mask)
        np.testing.assert_array_equal(out_image, image, err_msg=spec)
        np.testing.assert_array_equal(out_mask, mask, err_msg=spec)


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_different_seeds_differ_same_seed_repeats(spec):
    image, mask = scene()
    image = image + np.random.default_rng(8).uniform(0, 50, image.shape).astype(np.float32)
    outs = [run(spec, image, mask, seed=(s, 11))[0] for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    np.testing.assert_array_equal(run(spec, image, mask, seed=(0, 11))[0], outs[0])


def test_ops_draw_independent_seeds():
    image = np.random.default_rng(9).uniform(0, 255, (24, 32, 3)).astype(np.float32)
    once, _ = run("gaussian_noise(10.0)", image)
    twice, _ = run("gaussian_noise(10.0)|gaussian_noise(10.0)", image)
    assert not np.allclose(twice - image, 2 * (once - image), atol=1e-3)


# ----------------------------------------------------------------------------- normalize


def test_normalize_modes_against_hand_values_and_keras():
    from keras.applications import imagenet_utils

    x = np.random.default_rng(10).uniform(0, 255, (4, 5, 3)).astype(np.float32)
    ctx = Context(mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0))
    expected = {
        "none": x,
        "zero_one": x / 255,
        "minus_one_one": x / 127.5 - 1,
        "imagenet": (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        "mean_std": (x - [100, 110, 120]) / [50, 60, 70],
    }
    for mode in ("tf", "torch", "caffe"):
        expected[mode] = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    assert set(expected) == set(augment.NORMALIZE_MODES)
    for mode, want in expected.items():
        got = augment.normalize(tf.constant(x), mode, ctx).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=mode)
    np.testing.assert_allclose(expected["caffe"][0, 0], x[0, 0, ::-1] - [103.939, 116.779, 123.68], atol=1e-4)


def test_normalize_errors():
    gray = tf.zeros((4, 4, 1))
    with pytest.raises(ValueError, match=r"config.data.normalize='imagenet' needs 3-channel"):
        augment.normalize(gray, "imagenet", Context())
    with pytest.raises(ValueError, match=r"unknown; valid modes: none, zero_one"):
        augment.normalize(gray, "0-1", Context())
    with pytest.raises(ValueError, match=r"needs the train split's per-channel mean"):
        augment.normalize(gray, "mean_std", Context())
    with pytest.raises(ValueError, match=r"do not match 1-channel"):
        augment.normalize(gray, "mean_std", Context(mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 1.0)))
    np.testing.assert_allclose(augment.normalize(gray + 10, "mean_std", Context(mean=(4.0,), std=(2.0,))), 3.0)


# ----------------------------------------------------------------------------- mix_batch


def _batch(n=8):
    rng = np.random.default_rng(11)
    return {
        "image": tf.constant(rng.uniform(0, 255, (n, 12, 16, 3)).astype(np.float32)),
        "label": tf.constant(np.arange(n, dtype=np.int32)),
        "valid": tf.ones(n, tf.bool),
    }


def test_mixup_is_the_convex_combination():
    batch = _batch()
    out = augment.mix_batch(batch, tf.constant([1, 2]), mixup=0.4, cutmix=0.0)
    x, mix, partner = batch["image"].numpy(), out["mix"].numpy(), out["label_b"].numpy()
    assert out["label_b"].dtype == tf.int32 and out["mix"].dtype == tf.float32 and mix.shape == (8,)
    assert ((mix >= 0) & (mix <= 1)).all() and not np.allclose(mix, 1)
    np.testing.assert_array_equal(np.sort(partner), np.arange(8))
    np.testing.assert_allclose(
        out["image"].numpy(), mix[:, None, None, None] * x + (1 - mix[:, None, None, None]) * x[partner], atol=1e-3
    )
    assert out["valid"] is batch["valid"]


def test_cutmix_box_area_matches_mix():
    batch = _batch()
    x = batch["image"].numpy()
    for seed in range(3):
        out = augment.mix_batch(batch, tf.constant([seed, 5]), mixup=0.0, cutmix=1.0)
        partner, mix, image = out["label_b"].numpy(), out["mix"].numpy(), out["image"].numpy()
        np.testing.assert_array_equal(np.sort(partner), np.arange(8))
        for i in range(8):
            if partner[i] == i:
                continue
            pasted = (image[i] != x[i]).any(-1)
            np.testing.assert_array_equal(image[i][pasted], x[partner[i]][pasted])
            assert pasted.sum() == pytest.approx((1 - mix[i]) * 12 * 16, abs=1e-3)


def test_mix_batch_both_and_neither():
    batch = _batch()
    out = augment.mix_batch(batch, tf.constant([3, 3]), mixup=0.2, cutmix=1.0)
    again = tf.function(augment.mix_batch, reduce_retracing=True)(batch, tf.constant([3, 3]), 0.2, 1.0)
    np.testing.assert_allclose(out["image"].numpy(), again["image"].numpy(), atol=1e-5)
    mix = out["mix"].numpy()
    assert ((mix >= 0) & (mix <= 1)).all()
    none = augment.mix_batch(batch, tf.constant([3, 3]), mixup=0.0, cutmix=0.0)
    np.testing.assert_array_equal(none["label_b"].numpy(), np.arange(8))
    np.testing.assert_array_equal(none["mix"].numpy(), np.ones(8))
    np.testing.assert_array_equal(none["image"].numpy(), batch["image"].numpy())


# ----------------------------------------------------------------------------- parsing and errors


def test_parse():
    spec = "flip_lr|rotate(0.2)| random_erasing(p=0.5, scale=(0.02, 0.33)) |randaugment(2, 9)"
    assert augment.parse(spec, KEY) == [
        ("flip_lr", (), {}),
        ("rotate", (0.2,), {}),
        ("random_erasing", (), {"p": 0.5, "scale": (0.02, 0.33)}),
        ("randaugment", (2, 9), {}),
    ]
    assert augment.parse("", KEY) == [] and augment.parse("  ", KEY) == []
    assert augment.parse("random_erasing(value='random')|hue((-0.1, 0.1))", KEY)[1] == ("hue", ((-0.1, 0.1),), {})


def test_unknown_op_suggests_the_closest():
    with pytest.raises(ValueError, match=r"config.data.augment: unknown op 'flp_lr'; did you mean 'flip_lr'\?") as e:
        augment.build("flp_lr|rotate(0.2)", KEY, DENSE)
    assert "randaugment" in str(e.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rotate(0.2, q=1)", r"config.data.augment: bad arguments for rotate\(factor, p=1.0, fill=0.0.*q"),
        ("rotate", r"bad arguments for rotate\(factor"),
        ("flip_lr(p=2)", r"config.data.augment: flip_lr\(p=0.5\): p=2 must be a probability"),
        ("resize(0)", r"resize\(size, width=None\): size=0 must be a positive int"),
        ("random_erasing(value='noise')", r"value='noise' must be a number in \[0, 255\] or 'random'"),
        ("randaugment(2, 31)", r"magnitude=31 < num_magnitude_bins=31"),
        ("gaussian_blur(4)", r"kernel_size=4 must be a positive odd int"),
        ("rotate(0.1, fill_mode='mirror')", r"fill_mode='mirror' is not one of constant, reflect"),
    ],
)
def test_bad_arguments_name_the_op_and_key(spec, message):
    with pytest.raises(ValueError, match=message):
        augment.parse(spec, KEY)


@pytest.mark.parametrize("spec", ["flip_lr|rotate(0.2", "rotate(x)", "flip_lr||flip_ud", "a.b", "rotate(**{})", "1+2"])
def test_malformed_spec(spec):
    with pytest.raises(ValueError, match=r"config.data.augment=.*(cannot parse|empty op)"):
        augment.parse(spec, KEY)


def test_crop_larger_than_image_and_wrong_dtype():
    with pytest.raises(
        ValueError, match=r"config.data.augment: random_crop: size=40 with padding=2 is larger than the 24x32 images"
    ):
        run("random_crop(40, padding=2)", scene()[0])
    fn = augment.build("flip_lr", KEY, Context())
    with pytest.raises(ValueError, match=r"expects float32 images"):
        fn({"image": tf.zeros((4, 4, 3), tf.uint8), "label": tf.constant(0)}, tf.constant([0, 0]))


@pytest.mark.parametrize("spec, layer", [("rotate((0.1, 0.1))", "RandomRotation"), ("zoom((0.3, 0.3))", "RandomZoom")])
def test_rotate_and_zoom_match_keras_layers(spec, layer):
    import keras

    image = scene(32, 32)[0][..., :1] + 10
    want = getattr(keras.layers, layer)((0.1, 0.1) if layer == "RandomRotation" else (0.3, 0.3), fill_mode="constant")
    expected = np.asarray(want(image[None], training=True))[0]
    np.testing.assert_allclose(run(spec, image)[0], expected, atol=1e-3)
