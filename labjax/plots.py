"""PNG figures of a run: learning curves and sample segmentations."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(rows: list[dict], out_dir: Path) -> list[Path]:
    """loss.png (train and validation per epoch) and one PNG per other metric."""
    rows = [row for row in rows if "epoch" in row]
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [row["epoch"] for row in rows]
    metrics = sorted({k.split("_", 1)[1] for row in rows for k in row if k.startswith(("train_", "val_"))})
    written = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for prefix in ("train", "val"):
            key = f"{prefix}_{metric}"
            points = [(e, row[key]) for e, row in zip(epochs, rows) if isinstance(row.get(key), float)]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label="validation" if prefix == "val" else "train")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _colorize(mask: np.ndarray, num_classes: int) -> np.ndarray:
    palette = plt.get_cmap("tab20" if num_classes > 10 else "tab10")(np.arange(num_classes) % 20)[:, :3]
    palette[0] = 0.0  # background black
    colored = palette[np.clip(mask, 0, num_classes - 1)]
    colored[(mask < 0) | (mask >= num_classes)] = 1.0  # ignored pixels white
    return colored


def _displayable(image: np.ndarray) -> np.ndarray:
    """Any normalisation (caffe, mean/std, [-1, 1], ...) -> [0, 1] for display, per image."""
    image = np.asarray(image, np.float32)
    low, high = image.min(), image.max()
    return (image - low) / max(high - low, 1e-6)


def plot_sample_grid(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, columns: int = 8
) -> Path:
    """A grid of input images titled with their class, or with their mask overlaid (segmentation)."""
    n = len(images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label in zip(axes.ravel(), images, labels):
        shown = _displayable(image)
        ax.imshow(shown.squeeze(), cmap="gray" if shown.shape[-1] == 1 else None)
        if np.ndim(label) == 0:
            ax.set_title(class_names[int(label)] if 0 <= label < len(class_names) else str(label), fontsize=7)
        else:
            overlay = _colorize(np.asarray(label), len(class_names))
            alpha = np.where(np.asarray(label) > 0, 0.45, 0.0)  # background and ignored pixels left clear
            ax.imshow(np.concatenate([overlay, alpha[..., None]], -1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_segmentation_samples(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num_classes: int, path: Path
) -> Path:
    """A grid: one row per example with image, true mask and predicted mask."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        panels = (_displayable(images[i]), _colorize(labels[i], num_classes), _colorize(predictions[i], num_classes))
        for ax, panel, title in zip(axes[i], panels, ("image", "true mask", "predicted mask")):
            ax.imshow(panel.squeeze(), cmap="gray" if panel.shape[-1] == 1 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
