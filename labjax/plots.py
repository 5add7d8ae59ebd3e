"""PNG figures of a run: learning curves and sample segmentations."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def join_phases(rows: list[dict], earlier_rows: list[dict] | None) -> tuple[list[dict], float]:
    """Per-epoch rows of an earlier run then this one's, this run's epochs shifted after them; and the shift."""
    earlier = [row for row in earlier_rows or [] if "epoch" in row]
    offset = earlier[-1]["epoch"] if earlier else 0.0
    return earlier + [{**row, "epoch": row["epoch"] + offset} for row in rows if "epoch" in row], offset


def plot_curves(rows: list[dict], out_dir: Path, earlier_rows: list[dict] | None = None) -> list[Path]:
    """loss.png (train and validation per epoch), one PNG per other metric, and learning_rate.png.

    `earlier_rows` are the metrics of the run this one started from (fine-tuning with
    init_from): drawn first, with this run's epochs after them and a line where it starts.
    """
    if not any("epoch" in row for row in rows):
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    joined, offset = join_phases(rows, earlier_rows)
    earlier = offset > 0
    epochs = [row["epoch"] for row in joined]
    metrics = sorted({k.split("_", 1)[1] for row in joined for k in row if k.startswith(("train_", "val_"))})
    written = []
    for metric, keys in [(m, (f"train_{m}", f"val_{m}")) for m in metrics] + [("learning_rate", ("learning_rate",))]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            points = [(e, row[key]) for e, row in zip(epochs, joined) if isinstance(row.get(key), float)]
            if points:
                label = {"val": "validation", "train": "train"}.get(key.split("_")[0], key)
                ax.plot(*zip(*points), marker="o", ms=3, label=label)
        if earlier:
            ax.axvline(offset, color="gray", linestyle="--", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if metric == "learning_rate" and all(row.get(metric, 0) > 0 for row in joined):
            ax.set_yscale("log")  # schedules multiply the rate: steps show as equal drops
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


def class_colors(num_classes: int) -> np.ndarray:
    """uint8 (num_classes, 3) RGB: the colours the figures give the classes (class 0, background, black)."""
    return np.round(_colorize(np.arange(num_classes), num_classes) * 255).astype(np.uint8)


def plot_contact_sheet(images: list[np.ndarray], titles: list[str], path: Path, columns: int = 8) -> Path:
    """A grid of images (uint8, any sizes) with a title each, e.g. a predicted class and its probability."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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


def plot_confusion_matrix(matrix, class_names: list[str], path: Path) -> Path:
    """Counts and row-normalised (each true class sums to 1) side by side; rows true, columns predicted."""
    counts = np.asarray(matrix, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(counts)
    names = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
    side = min(4 + 0.35 * n, 14)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, values, title, fmt in ((axes[0], counts, "counts", ".0f"), (axes[1], normalised, "row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n))
        ax.set_xticklabels(names, rotation=90, fontsize=8)
        ax.set_yticklabels(names, fontsize=8)
        if n <= 15:  # numbers stay readable
            high = values.max() if values.size else 0
            for (i, j), value in np.ndenumerate(values):
                color = "white" if value > high / 2 else "black"
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_overlaid_curves(series: list[tuple[str, str, list[dict]]], metrics: list[str], title: str, path: Path) -> Path:
    """Per metric a panel with one line per run, coloured by its group (a sweep axis' value).

    `series` holds (run name, group, metrics rows); the legend names the groups, so 21 runs
    over 3 learning rates read as 3 colours.
    """
    groups = list(dict.fromkeys(group for _, group, _ in series))
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")(np.arange(len(groups)) % 20)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        labelled = set()
        for _, group, rows in series:
            points = [(row["epoch"], row[metric]) for row in rows if isinstance(row.get(metric), float)]
            if not points:
                continue
            label = None if group in labelled else group
            labelled.add(group)
            ax.plot(*zip(*points), marker="o", ms=2, alpha=0.8, color=colors[groups.index(group)], label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} by {title}")
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=8, title=title, title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_bars(names: list[str], quantities: dict[str, list], path: Path) -> Path:
    """One bar panel per quantity (memory, parameters, time, accuracy...) with a bar per run; None left blank."""
    fig, axes = plt.subplots(1, len(quantities), figsize=(max(4, 0.45 * len(names) + 2) * len(quantities), 4.5))
    axes = np.atleast_1d(axes)
    for ax, (quantity, values) in zip(axes, quantities.items()):
        heights = [np.nan if value is None else float(value) for value in values]
        ax.bar(range(len(names)), heights, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_title(quantity)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_band_curves(settings: list[tuple[str, list[list[dict]]]], metrics: list[str], path: Path) -> Path:
    """Per metric a panel with one line per setting: the mean over its repeats (seeds) per epoch, and a band of
    one standard deviation around it (numpy's, over the repeats that reached that epoch)."""
    colors = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")(np.arange(len(settings)) % 20)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for color, (label, runs) in zip(colors, settings):
            by_epoch: dict[float, list[float]] = {}
            for rows in runs:
                for row in rows:
                    if isinstance(row.get(metric), float) and np.isfinite(row[metric]):
                        by_epoch.setdefault(row["epoch"], []).append(row[metric])
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            mean = np.array([np.mean(by_epoch[e]) for e in epochs])
            std = np.array([np.std(by_epoch[e]) for e in epochs])
            ax.plot(epochs, mean, marker="o", ms=2, color=color, label=f"{label} (n={len(runs)})")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric}: mean ± std over seeds")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_search(trials: list[dict], metric: str, mode: str, importances: dict, path: Path, log_keys=()) -> Path:
    """A search's figure: the optimisation history (each trial's value, the best so far), each key's value
    against the metric (a log axis for `log_keys`, the loguniform ones), and the parameter importances."""
    done = [t for t in trials if t.get("value") is not None]
    keys = list(dict.fromkeys(key for t in trials for key in t.get("params", {})))
    panels = 1 + len(keys) + (1 if importances else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    if done:
        numbers, values = [t["number"] for t in done], [t["value"] for t in done]
        running = (np.maximum if mode == "max" else np.minimum).accumulate(values)
        ax.scatter(numbers, values, s=14, label="trial")
        ax.step(numbers, running, where="post", color="tab:red", label="best so far")
        ax.legend(fontsize=7)
    pruned = [t for t in trials if t.get("state") == "PRUNED"]
    ax.set(xlabel="trial", ylabel=metric, title=f"history ({len(done)} complete, {len(pruned)} pruned)")
    ax.grid(alpha=0.3)
    for ax, key in zip(axes[0][1:], keys):
        points = [(t["params"][key], t["value"]) for t in done if key in t.get("params", {})]
        numeric = points and all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in points)
        if points and numeric:
            ax.scatter(*zip(*points), s=14)
            if key in log_keys:
                ax.set_xscale("log")
        elif points:
            labels = list(dict.fromkeys(str(x) for x, _ in points))
            ax.scatter([labels.index(str(x)) for x, _ in points], [v for _, v in points], s=14)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, fontsize=7)
        ax.set(xlabel=key, ylabel=metric, title=f"{metric} by {key}")
        ax.grid(alpha=0.3)
    if importances:
        ax = axes[0][-1]
        names = list(importances)[::-1]
        ax.barh(range(len(names)), [importances[n] for n in names], color="tab:blue")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set(xlabel="importance", title="parameter importances (Optuna)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
