"""Predictions of a saved checkpoint on a user's own image files (any size, JPEG/PNG/BMP/GIF/PGM/PPM).

Each file is converted the way training read its data: decoded with the run's channels (gray
or RGB) and image size, passed through config.data.preprocess, resized to the model's input
if it still differs (a photo of any size), and normalised as in training. Classification
writes predictions.csv (file, class, probability, top-k as "name:p; name:p") and contact-sheet PNGs;
segmentation writes per image a class-id mask PNG at the image's original size, a coloured
version and an overlay, plus predictions.csv. Unreadable files are reported and skipped.
"""

import csv
import glob
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import evaluate, models, parallel, plots
from labjax.data import augment, decode, pipeline
from labjax.data.input_spec import InputSpec
from labjax.errors import ConfigError, MissingFileError
from labjax.tf_import import tf

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".pnm")
TOP_K = 5
SHEET_SIZE = 64  # images per contact sheet
THUMBNAIL = 160  # longest side of a contact-sheet image, in pixels
OVERLAY_ALPHA = 0.5


def find_inputs(pattern: str) -> list[Path]:
    """A file, a folder (its image files, recursively) or a glob ('**' allowed) -> sorted files."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MissingFileError(
                f"--inputs={pattern!r}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})."
            )
        return files
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise MissingFileError(f"--inputs={pattern!r}: no such file or folder, and no file matches it as a glob.")
    return files


def prepare_image(path: Path, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """(model input float32 (H, W, C), the image as read for display: uint8 RGB at its own size).

    Raises ValueError naming the file when it cannot be decoded.
    """
    try:
        display = decode.decode_file(tf.constant(str(path)), 3, 0).numpy()
        image = decode.decode_file(tf.constant(str(path)), spec.channels, spec.image_size)
    except (tf.errors.OpError, ValueError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", message.splitlines()[0]).strip()  # TF's op details
        raise ConfigError(f"{path}: cannot decode the file ({message})") from None
    context = augment.Context(dense_labels=spec.dense_labels, mean=spec.mean, std=spec.std)
    features = {"image": tf.cast(image, tf.float32)}
    features["label"] = tf.zeros(tf.shape(image)[:2], tf.int32) if spec.dense_labels else tf.constant(0)
    features = augment.build(spec.preprocess, "data.preprocess", context)(features, tf.zeros([2], tf.int64))
    image = features["image"]
    if tuple(image.shape[:2]) != tuple(spec.input_shape[:2]):  # a photo of another size than the training images
        image = tf.image.resize(image, spec.input_shape[:2], "bilinear", antialias=True)
    return augment.normalize(image, spec.normalize, context).numpy(), display


def _spec(checkpoints: ckpt.Checkpoints, config) -> InputSpec:
    """The input spec saved with the newest readable checkpoint, else derived from the run's data."""
    saved = _saved_spec(checkpoints)
    if saved is not None:
        return InputSpec.from_dict(saved)
    data_config = config.copy_and_resolve_references()
    if data_config.data.image_size and data_config.data.cache == "auto":
        data_config.data.cache = "stream"  # only the file list is needed, not every decoded image
    try:
        data = pipeline.load(data_config, models.model_info(config.model.name).preprocessing)
    except (FileNotFoundError, ValueError) as error:
        raise MissingFileError(
            f"predict derives the input conversion (channels, normalisation, class names) from the run's data, "
            f"which cannot be read: {error}"
        ) from None
    return InputSpec.from_data(data, data_config)


def _saved_spec(checkpoints: ckpt.Checkpoints) -> dict | None:
    for step in reversed(checkpoints.steps()):
        try:
            return checkpoints.metadata(step).get("input")
        except Exception:  # a corrupt step; an older one may be readable
            continue
    return None


def predict(
    workdir: str | Path,
    inputs: str | Sequence[str | Path],
    output: str | Path | None = None,
    checkpoint: str = "latest",
    overrides: Sequence[str] = (),
) -> dict:
    """Runs the run's checkpoint on the files `inputs` names (a pattern for find_inputs, or a list of
    files) and writes the predictions to `output`.

    Returns {'step', 'output', 'predictions': [row per file], 'skipped': [(file, reason)]}.
    """
    workdir = Path(workdir)
    files = find_inputs(inputs) if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    if not files:
        raise MissingFileError("predict: the list of input files is empty.")
    config = evaluate.load_run_config(workdir)
    evaluate.apply_overrides(config, overrides)
    out_dir = Path(output) if output else workdir / "predict"
    checkpoints = ckpt.Checkpoints(workdir, config.checkpoint, read_only=True)
    try:
        spec = _spec(checkpoints, config)
        mesh = parallel.make_mesh()
        model = models.create_model(config.model, len(spec.class_names))
        target = evaluate.abstract_variables(model, spec.input_shape, mesh)
        step, restored = ckpt.restore_checkpoint(
            checkpoints, checkpoint, target, ("params", "batch_stats"), config_lib.to_dict(config)["model"]
        )
    finally:
        checkpoints.close()
    class_names = restored["metadata"].get("class_names") or spec.class_names
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    run = _make_predict_fn(model, mesh, spec.dense_labels)
    count = mesh.devices.size
    batch_size = count * max(1, -(-config.eval_batch_size // count))
    writer = (
        _SegmentationWriter(out_dir, class_names) if spec.dense_labels else _ClassificationWriter(out_dir, class_names)
    )
    skipped = []
    for start in range(0, len(files), batch_size):
        chunk, images, displays = [], [], []
        for path in files[start : start + batch_size]:
            try:
                image, display = prepare_image(path, spec)
            except ValueError as error:
                logging.warning("Skipped %s", error)
                skipped.append((str(path), str(error)))
                continue
            chunk.append(path)
            images.append(image)
            displays.append(display)
        if not chunk:
            continue
        batch = np.zeros((batch_size, *spec.input_shape), np.float32)  # padded: one compiled shape
        batch[: len(images)] = images
        outputs = run(variables, jax.device_put(batch, parallel.batch_sharded(mesh)))
        writer.add(chunk, displays, multihost_utils.process_allgather(outputs, tiled=True)[: len(chunk)])
    if not writer.rows:
        raise ConfigError(f"none of the {len(files)} input files can be read; the first: {skipped[0][1]}.")
    writer.close()
    if skipped:
        (out_dir / "skipped.txt").write_text("".join(f"{reason}\n" for _, reason in skipped))
    print(
        f"{workdir} step {step}: predictions for {len(writer.rows)} of {len(files)} files in {out_dir}"
        + (f"; {len(skipped)} unreadable files skipped (listed in {out_dir / 'skipped.txt'})" if skipped else ""),
        flush=True,
    )
    return {"step": step, "output": str(out_dir), "predictions": writer.rows, "skipped": skipped}


def _make_predict_fn(model, mesh, dense: bool):
    """Jitted: class probabilities (classification) or class-id masks (segmentation) of a batch."""

    def run(variables, images):
        logits = model.apply(variables, images, train=False)
        return jax.numpy.argmax(logits, -1) if dense else jax.nn.softmax(logits.astype(jax.numpy.float32), -1)

    return jax.jit(run, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)))


def _unique_stem(path: Path, taken: set[str]) -> str:
    """The file's stem, numbered when two inputs share it (photos/a/x.jpg and photos/b/x.jpg)."""
    stem, number = path.stem, 1
    while stem in taken:
        number += 1
        stem = f"{path.stem}_{number}"
    taken.add(stem)
    return stem


class _ClassificationWriter:
    """predictions.csv and contact sheets of SHEET_SIZE images."""

    def __init__(self, out_dir: Path, class_names: list[str]):
        self.out_dir, self.class_names = out_dir, class_names
        self.rows, self.thumbnails, self.titles, self.sheets = [], [], [], 0
        out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, files: list[Path], displays: list[np.ndarray], probabilities: np.ndarray) -> None:
        k = min(TOP_K, len(self.class_names))
        for path, display, probs in zip(files, displays, probabilities):
            top = np.argsort(-probs, kind="stable")[:k]
            name = self.class_names[top[0]]
            self.rows.append(
                {
                    "file": str(path),
                    "class": name,
                    "probability": float(probs[top[0]]),
                    "top_k": "; ".join(f"{self.class_names[i]}:{probs[i]:.4f}" for i in top),
                }
            )
            self.thumbnails.append(_thumbnail(display))
            self.titles.append(f"{path.name[:22]}\n{name} {probs[top[0]]:.2f}")
            if len(self.thumbnails) == SHEET_SIZE:
                self._sheet()

    def _sheet(self) -> None:
        self.sheets += 1
        name = "contact_sheet.png" if self.sheets == 1 else f"contact_sheet_{self.sheets}.png"
        plots.plot_contact_sheet(self.thumbnails, self.titles, self.out_dir / name)
        self.thumbnails, self.titles = [], []

    def close(self) -> None:
        if self.thumbnails:
            self._sheet()
        _write_csv(self.out_dir / "predictions.csv", self.rows)


class _SegmentationWriter:
    """masks/<stem>.png (class ids at the original size), colored/<stem>.png, overlays/<stem>.png, predictions.csv."""

    def __init__(self, out_dir: Path, class_names: list[str]):
        self.out_dir, self.class_names = out_dir, class_names
        self.colors = plots.class_colors(len(class_names))
        self.rows, self.stems = [], set()
        for folder in ("masks", "colored", "overlays"):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)

    def add(self, files: list[Path], displays: list[np.ndarray], masks: np.ndarray) -> None:
        for path, display, mask in zip(files, displays, masks):
            height, width = display.shape[:2]
            full = tf.image.resize(mask[..., None], (height, width), "nearest")[..., 0].numpy()
            stem = _unique_stem(path, self.stems)
            ids = full.astype(np.uint8 if len(self.class_names) <= 256 else np.uint16)
            Image.fromarray(ids).save(self.out_dir / "masks" / f"{stem}.png")
            colored = self.colors[full]
            Image.fromarray(colored).save(self.out_dir / "colored" / f"{stem}.png")
            alpha = np.where(full[..., None] > 0, OVERLAY_ALPHA, 0.0)  # background left clear
            overlay = np.round(display * (1 - alpha) + colored * alpha).astype(np.uint8)
            Image.fromarray(overlay).save(self.out_dir / "overlays" / f"{stem}.png")
            shares = np.bincount(full.ravel(), minlength=len(self.class_names)) / full.size
            order = [i for i in np.argsort(-shares, kind="stable") if shares[i] > 0]
            self.rows.append(
                {
                    "file": str(path),
                    "mask": f"masks/{stem}.png",
                    "width": width,
                    "height": height,
                    "classes": "; ".join(f"{self.class_names[i]}:{shares[i]:.4f}" for i in order),
                }
            )

    def close(self) -> None:
        _write_csv(self.out_dir / "predictions.csv", self.rows)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    scale = THUMBNAIL / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return tf.cast(tf.round(tf.image.resize(image, size, "bilinear", antialias=True)), tf.uint8).numpy()


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
