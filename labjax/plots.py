"""PNG figures of a run: learning curves and sample segmentations."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
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
    metrics = curve_metrics(joined)
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


def curve_metrics(rows: list[dict]) -> list[str]:
    """The metrics plot_curves draws a figure of (each `METRIC.png`), besides learning_rate.png."""
    return sorted({k.split("_", 1)[1] for row in rows for k in row if k.startswith(("train_", "val_"))})


def literal(text) -> str:
    """`text` as matplotlib shows it verbatim: a `$` in a class, run or file name starts no math-text."""
    return str(text).replace("$", r"\$")


def _palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) RGB in [0, 1]: tab10, tab20, or tab20+tab20b+tab20c (60 distinct colours); class 0 black."""
    if num_classes <= 10:
        colors = plt.get_cmap("tab10")(np.arange(10))
    elif num_classes <= 20:
        colors = plt.get_cmap("tab20")(np.arange(20))
    else:
        colors = np.concatenate([plt.get_cmap(name)(np.arange(20)) for name in ("tab20", "tab20b", "tab20c")])
    palette = colors[np.arange(num_classes) % len(colors), :3]
    palette[0] = 0.0  # background black
    return palette


def _colorize(mask: np.ndarray, num_classes: int) -> np.ndarray:
    palette = _palette(num_classes)
    colored = palette[np.clip(mask, 0, num_classes - 1)]
    colored[(mask < 0) | (mask >= num_classes)] = 1.0  # ignored pixels white
    return colored


def class_colors(num_classes: int) -> np.ndarray:
    """uint8 (num_classes, 3) RGB: the colours the figures give the classes (class 0, background, black)."""
    return np.round(_palette(num_classes) * 255).astype(np.uint8)


def present_classes(masks, num_classes: int, *, background: bool = True) -> list[int]:
    """The class ids that occur in `masks` (ignored pixels aside), class 0 only with `background`."""
    ids = np.unique(np.concatenate([np.asarray(m).ravel() for m in masks]))
    return [int(i) for i in ids if (1 if not background else 0) <= i < num_classes]


def add_class_legend(fig, classes: list[int], class_names: list[str], num_classes: int, ignored: bool = False):
    """A legend under the figure: each class of `classes` in its colour (plus white 'ignored' pixels)."""
    from matplotlib.patches import Patch

    palette = _palette(num_classes)
    names = [class_names[i] if i < len(class_names) else str(i) for i in classes]
    handles = [Patch(facecolor=palette[i], edgecolor="gray", label=literal(n)) for i, n in zip(classes, names)]
    if ignored:
        handles.append(Patch(facecolor="white", edgecolor="gray", label="ignored"))
    if not handles:
        return None
    width = fig.get_size_inches()[0]
    columns = max(1, min(len(handles), int(width / 1.6)))
    return fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=columns,
        fontsize=7,
        frameon=False,
        title="classes present",
        title_fontsize=8,
    )


def _save(fig, path: Path) -> Path:
    """Writes the PNG (the legend under the axes included) and frees the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight" if fig.legends else None)
    plt.close(fig)
    return path


def plot_contact_sheet(images: list[np.ndarray], titles: list[str], path: Path, columns: int = 8) -> Path:
    """A grid of images (uint8, any sizes) with a title each, e.g. a predicted class and its probability."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
        ax.set_title(literal(title), fontsize=7)
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


def sample_grid_figure(images: np.ndarray, labels: np.ndarray, class_names: list[str], columns: int = 8):
    """The figure of plot_sample_grid: titled images, or masks overlaid with a legend of the classes present."""
    n = len(images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    segmentation = n > 0 and np.ndim(labels[0]) > 0
    for ax, image, label in zip(axes.ravel(), images, labels):
        shown = _displayable(image)
        ax.imshow(shown.squeeze(), cmap="gray" if shown.shape[-1] == 1 else None)
        if not segmentation:
            name = class_names[int(label)] if 0 <= label < len(class_names) else str(label)
            ax.set_title(literal(name), fontsize=7)
        else:
            overlay = _colorize(np.asarray(label), len(class_names))
            alpha = np.where(np.asarray(label) > 0, 0.45, 0.0)  # background and ignored pixels left clear
            ax.imshow(np.concatenate([overlay, alpha[..., None]], -1))
    fig.tight_layout()
    if segmentation:  # background (class 0) and ignored pixels are not overlaid: not in the legend
        classes = present_classes(labels, len(class_names), background=False)
        add_class_legend(fig, classes, class_names, len(class_names))
    return fig


def plot_sample_grid(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, columns: int = 8
) -> Path:
    """A grid of input images titled with their class, or with their mask overlaid (segmentation) and a legend."""
    return _save(sample_grid_figure(images, labels, class_names, columns), path)


def segmentation_samples_figure(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num_classes: int, class_names=None
):
    """The figure of plot_segmentation_samples, with a legend of the classes in the true and predicted masks."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        panels = (_displayable(images[i]), _colorize(labels[i], num_classes), _colorize(predictions[i], num_classes))
        for ax, panel, title in zip(axes[i], panels, ("image", "true mask", "predicted mask")):
            ax.imshow(panel.squeeze(), cmap="gray" if panel.shape[-1] == 1 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    masks = [np.asarray(labels), np.asarray(predictions)]
    ignored = bool(np.any((masks[0] < 0) | (masks[0] >= num_classes)))
    add_class_legend(fig, present_classes(masks, num_classes), list(class_names or []), num_classes, ignored)
    return fig


def plot_segmentation_samples(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, num_classes: int, path: Path, class_names=None
) -> Path:
    """A grid: one row per example with image, true mask and predicted mask; a legend names the colours."""
    return _save(segmentation_samples_figure(images, labels, predictions, num_classes, class_names), path)


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
        ax.set_xticklabels([literal(name) for name in names], rotation=90, fontsize=8)
        ax.set_yticklabels([literal(name) for name in names], fontsize=8)
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
            label = None if group in labelled else literal(group)
            labelled.add(group)
            ax.plot(*zip(*points), marker="o", ms=2, alpha=0.8, color=colors[groups.index(group)], label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=literal(f"{metric} by {title}"))
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=8, title=literal(title), title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def short_label(name: str, width: int = 40) -> str:
    """`name` shortened to at most `width` characters for a label.

    A sweep member's `key=value,key=value` name keeps each key's last part (`lr=0.1,dropout=0.5`
    for `optimizer.lr=0.1,model.dropout=0.5`); what is still too long is cut in the middle.
    """
    parts = name.split(",")
    if len(name) > width and all("=" in part for part in parts):
        name = ",".join(part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1] for part in parts)
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep - keep // 2] + "\u2026" + name[len(name) - keep // 2 :]


def bar_labels(names: list[str], width: int = 40) -> list[str]:
    """Readable bar labels: the names shortened (sweep members' `key=value` parts that all share left
    out, then short_label); numbered when shortening made two alike."""
    split = [name.split(",") for name in names]
    if len(names) > 1 and any(len(name) > width for name in names) and all("=" in p for ps in split for p in ps):
        common = set.intersection(*(set(parts) for parts in split))
        names = [",".join(p for p in parts if p not in common) or ",".join(parts) for parts in split]
    labels = [short_label(name, width) for name in names]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}. {label}" for i, label in enumerate(labels)]
    return labels


def _bar_value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) >= 1 else f"{value:.4f}"


def plot_bars(names: list[str], quantities: dict[str, list], path: Path, best: dict[str, str] | None = None) -> Path:
    """One horizontal bar panel per quantity (memory, parameters, time, accuracy...) with a bar per run.

    Runs read down the left in their order, named once (long names cut in the middle); each bar
    carries its value; None is left blank. `best` maps a quantity to "max" or "min": its best
    run's bar is drawn in orange.
    """
    best = best or {}
    labels = bar_labels(names)
    height = max(2.2, 0.3 * len(names) + 1.0)
    label_width = min(0.075 * max(len(label) for label in labels) + 0.3, 3.6)
    panel_width = 3.2
    fig, axes = plt.subplots(
        1,
        len(quantities),
        figsize=(label_width + panel_width * len(quantities), height),
        sharey=True,
        squeeze=False,
        layout="constrained",  # room for the run names on the left
    )
    positions = np.arange(len(names))
    for ax, (quantity, values) in zip(axes[0], quantities.items()):
        heights = np.array([np.nan if value is None else float(value) for value in values])
        colors = ["tab:blue"] * len(names)
        if quantity in best and np.isfinite(heights).any():
            pick = np.nanargmax if best[quantity] == "max" else np.nanargmin
            colors[int(pick(heights))] = "tab:orange"
        ax.barh(positions, np.nan_to_num(heights), color=colors, height=0.7)
        top = np.nanmax(np.abs(heights)) if np.isfinite(heights).any() else 1.0
        for y, value in zip(positions, heights):
            if np.isfinite(value):
                ax.text(value + 0.01 * top, y, _bar_value(value), va="center", fontsize=7.5)
        ax.set_xlim(0, 1.25 * top if top > 0 else 1.0)
        title = literal(quantity) + (
            "" if quantity not in best else f" ({'higher' if best[quantity] == 'max' else 'lower'} is better)"
        )
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        if top >= 1000:
            ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))  # 150k, 2M
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels([literal(label) for label in labels], fontsize=8.5)
    axes[0][0].invert_yaxis()  # the first run on top, as in the runs table
    return _save(fig, path)


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
