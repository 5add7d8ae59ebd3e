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


def plot_segmentation_samples(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num_classes: int, path: Path
) -> Path:
    """A grid: one row per example with image, true mask and predicted mask."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        image = (np.asarray(images[i], np.float32) + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        panels = (image.clip(0, 1), _colorize(labels[i], num_classes), _colorize(predictions[i], num_classes))
        for ax, panel, title in zip(axes[i], panels, ("image", "true mask", "predicted mask")):
            ax.imshow(panel.squeeze(), cmap="gray" if panel.shape[-1] == 1 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
