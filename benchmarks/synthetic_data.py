"""Speed and look of the built-in synthetic segmentation data.

Times generating ``--count`` examples (default 1000 at 128x128), prints the
per-class pixel shares, and saves a PNG grid of 8 images with colour-coded
masks (matplotlib, else PIL, else no PNG).

Usage::

    python benchmarks/synthetic_data.py --out /tmp/synthetic_samples.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

# Run from a checkout without installing labjax.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Distinct mask colours; class 0 (background) is black.
_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
        [128, 128, 0],
        [255, 215, 180],
        [0, 0, 128],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)


def _save_grid(images: np.ndarray, masks: np.ndarray, names: list[str], path: str) -> bool:
    """Two rows per 4 examples: image on top, coloured mask below."""
    n = len(images)
    cols = 4
    rows = (n + cols - 1) // cols
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        plt = None
    if plt is not None:
        fig, axes = plt.subplots(2 * rows, cols, figsize=(3 * cols, 3 * 2 * rows + 0.8))
        axes = np.asarray(axes).reshape(2 * rows, cols)
        for ax in axes.ravel():
            ax.axis("off")
        for i in range(n):
            r, c = divmod(i, cols)
            axes[2 * r, c].imshow(images[i], interpolation="nearest")
            axes[2 * r, c].set_title(f"example {i}", fontsize=8)
            axes[2 * r + 1, c].imshow(_PALETTE[masks[i] % len(_PALETTE)], interpolation="nearest")
        handles = [Patch(color=_PALETTE[k % len(_PALETTE)] / 255.0, label=name) for k, name in enumerate(names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 6), fontsize=8)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
    try:
        from PIL import Image
    except ImportError:
        return False
    h, w = images.shape[1:3]
    grid = np.zeros((2 * rows * (h + 2), cols * (w + 2), 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = 2 * r * (h + 2), c * (w + 2)
        grid[y : y + h, x : x + w] = images[i]
        grid[y + h + 2 : y + 2 * h + 2, x : x + w] = _PALETTE[masks[i] % len(_PALETTE)]
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "labjax_synthetic_samples.png"),
    )
    args = parser.parse_args()

    from labjax.data.synthetic import (
        make_segmentation_arrays,
        segmentation_class_names,
    )

    make_segmentation_arrays(0, 2, seed=args.seed, size=args.size, num_classes=args.num_classes)
    t0, c0 = time.perf_counter(), time.process_time()
    images, masks = make_segmentation_arrays(
        0, args.count, seed=args.seed, size=args.size, num_classes=args.num_classes
    )
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU time is the better number on a busy machine (generation is one thread).
    print(
        f"generated {args.count} examples of {args.size}x{args.size} in {dt:.2f} s "
        f"wall, {cpu:.2f} s CPU ({1000 * dt / args.count:.2f} ms/example wall)"
    )

    names = segmentation_class_names(args.num_classes)
    counts = np.bincount(masks.ravel(), minlength=args.num_classes)
    share = counts / counts.sum()
    present = [(masks == k).any(axis=(1, 2)).mean() for k in range(args.num_classes)]
    print(f"{'class':<22}{'pixel share':>12}{'images with it':>16}")
    for k, name in enumerate(names):
        print(f"{k:>2} {name:<19}{100 * share[k]:>11.2f}%{100 * present[k]:>15.1f}%")

    if _save_grid(images[:8], masks[:8], names, args.out):
        print(f"saved {args.out}")
    else:
        print("neither matplotlib nor PIL available: no PNG saved")


if __name__ == "__main__":
    main()
