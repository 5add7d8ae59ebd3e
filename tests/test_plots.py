"""The figures as a person reads them: segmentation grids name their colours in a legend of the
classes present, bar charts label each run readably, and names from users and data (class,
run and file names) reach matplotlib as plain text, never as math."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from labjax import plots

# Unbalanced-looking math that matplotlib's math-text cannot parse: drawn unescaped, it raises.
MATH = r"cost $\notacommand{5}$ now"


def legend_entries(fig) -> list[tuple[str, tuple]]:
    (legend,) = fig.legends
    return [
        (text.get_text(), tuple(np.round(to_rgb(patch.get_facecolor()), 4)))
        for text, patch in zip(legend.get_texts(), legend.get_patches())
    ]


def masks_with(classes_per_image: list[list[int]], size: int = 8) -> np.ndarray:
    masks = np.zeros((len(classes_per_image), size, size), np.int32)
    for mask, classes in zip(masks, classes_per_image):
        for row, cls in enumerate(classes):
            mask[row] = cls
    return masks


def test_segmentation_sample_grid_has_a_legend_of_the_classes_present_in_their_colours():
    names = [f"class_{i}" for i in range(59)]
    labels = masks_with([[0, 3, 41], [58, 3, 255]])  # 255: ignored pixels
    images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    fig = plots.sample_grid_figure(images, labels, names)
    palette = plots.class_colors(59) / 255
    entries = legend_entries(fig)
    assert [name for name, _ in entries] == ["class_3", "class_41", "class_58"]  # background is not overlaid
    for (_, color), cls in zip(entries, (3, 41, 58)):
        assert color == pytest.approx(tuple(palette[cls]), abs=1e-3)
    plt.close(fig)
    assert len({tuple(c) for c in plots.class_colors(59)[1:]}) == 58  # 59 classes, 59 distinct colours


def test_classification_sample_grid_titles_need_no_legend(tmp_path):
    images = np.zeros((3, 8, 8, 1), np.float32)
    fig = plots.sample_grid_figure(images, np.array([0, 1, 2]), ["a", "b", MATH])
    assert not fig.legends
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", MATH.replace("$", r"\$")]
    plt.close(fig)


def test_segmentation_samples_legend_covers_true_and_predicted_masks_and_ignored_pixels(tmp_path):
    names = ["background", "road", MATH, "car"]
    labels = masks_with([[0, 1, -1]], size=4)
    predictions = masks_with([[0, 2, 2]], size=4)
    fig = plots.segmentation_samples_figure(np.zeros((1, 4, 4, 3)), labels, predictions, 4, names)
    assert [name for name, _ in legend_entries(fig)] == ["background", "road", MATH.replace("$", r"\$"), "ignored"]
    plt.close(fig)
    path = plots.plot_segmentation_samples(np.zeros((1, 4, 4, 3)), labels, predictions, 4, tmp_path / "s.png", names)
    assert path.stat().st_size > 1000  # drawn: the $ in a class name is no math


@pytest.mark.slow
def test_names_with_dollars_reach_every_figure_as_text(tmp_path):
    """Each figure that shows a user's or the data's names draws them (unescaped, matplotlib raises)."""
    with pytest.raises(ValueError):  # the premise: unescaped, such a name cannot be drawn
        fig, ax = plt.subplots()
        ax.set_title(MATH)
        fig.savefig(tmp_path / "raw.png")
    plt.close("all")
    image = np.zeros((8, 8, 3), np.uint8)
    plots.plot_contact_sheet([image, image], [f"{MATH}.png\ncat 0.9", "b"], tmp_path / "sheet.png")
    plots.plot_sample_grid(np.zeros((2, 8, 8, 3)), masks_with([[1], [2]]), ["bg", MATH, "b"], tmp_path / "g.png")
    plots.plot_confusion_matrix([[3, 1], [0, 2]], [MATH, "dog"], tmp_path / "cm.png")
    rows = [{"epoch": 1.0, "val_loss": 0.5}, {"epoch": 2.0, "val_loss": 0.4}]
    plots.plot_overlaid_curves([(MATH, MATH, rows)], ["val_loss"], MATH, tmp_path / "by.png")
    plots.plot_bars([MATH, "b"], {"best val_accuracy": [0.5, 0.6]}, tmp_path / "bars.png", {"best val_accuracy": "max"})
    for name in ("sheet", "g", "cm", "by", "bars"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_bar_labels_stay_short_and_tell_sweep_members_apart():
    assert plots.bar_labels(["lr=0.1,seed=0", "lr=0.01,seed=0"]) == ["lr=0.1,seed=0", "lr=0.01,seed=0"]
    names = [
        f"optimizer.learning_rate={lr},model.dropout={d},data.augment=flip_lr(p=0.5)"
        for lr in (0.1, 0.01)
        for d in (0, 0.5)
    ]
    shared = [f"learning_rate={lr},dropout={d}" for lr in (0.1, 0.01) for d in (0, 0.5)]
    assert plots.bar_labels(names) == shared  # the keys' last parts; what all share says nothing
    alike = ["x" * 30 + "_run_one_" + "y" * 30, "x" * 30 + "_run_two_" + "y" * 30]
    assert plots.short_label(alike[0]) == "x" * 20 + "\u2026" + "y" * 19 and len(plots.short_label(alike[0])) == 40
    assert plots.bar_labels(alike) == [f"1. {plots.short_label(alike[0])}", f"2. {plots.short_label(alike[1])}"]
