"""`--mode=data`: look at a run's data before training on it.

Prints, per split, the examples per class (training before and after balancing), the input
shape and value range after preprocessing, and writes WORKDIR/data/stats.json plus
samples_<split>.png grids (training samples augmented, as the model will see them).
"""

from pathlib import Path

import numpy as np

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import models, plots
from labjax.data import pipeline

NUM_SAMPLES = 32


def _table(class_names: list[str], columns: dict[str, list[int]]) -> str:
    width = max(len(name) for name in [*class_names, "class"])
    lines = ["class".ljust(width) + "".join(f"{title:>14}" for title in columns)]
    for i, name in enumerate(class_names):
        lines.append(name.ljust(width) + "".join(f"{counts[i]:>14,}" for counts in columns.values()))
    lines.append("total".ljust(width) + "".join(f"{sum(counts):>14,}" for counts in columns.values()))
    return "\n".join(lines)


def check_data(config, workdir: str | Path) -> dict:
    """Writes WORKDIR/data/{stats.json, samples_<split>.png}; returns the stats."""
    config_lib.validate(config)
    data = pipeline.load(config, models.model_info(config.model.name).preprocessing)
    out = Path(workdir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    train = data.splits["train"]
    counts = {name: pipeline.class_counts(ex, data.num_classes) for name, ex in data.splits.items()}
    balanced = train.take(np.concatenate([np.arange(len(train)), data.copies]))
    columns = {"train": counts["train"]}
    if len(data.copies):
        columns["train+copies"] = pipeline.class_counts(balanced, data.num_classes)
    columns.update({name: c for name, c in counts.items() if name != "train"})

    grid_config = config.copy_and_resolve_references()
    grid_config.batch_size = min(NUM_SAMPLES, data.num_train())
    grid_config.data.mixup = grid_config.data.cutmix = 0.0  # show the examples themselves
    batch = next(pipeline.train_batches(data, grid_config, epoch=0))
    stats = {
        "class_names": data.class_names,
        "unit": "pixels" if data.task == "segmentation" else "examples",
        "counts": columns,
        "input_shape": list(data.input_shape),
        "train_value_range": [float(batch["image"].min()), float(batch["image"].max())],
        "class_weights": None if data.class_weights is None else data.class_weights.tolist(),
        "files": {},
    }
    stats["files"]["train"] = str(
        plots.plot_sample_grid(batch["image"], batch["label"], data.class_names, out / "samples_train.png")
    )
    for name in data.splits:
        if name != "train":
            grid = next(pipeline.eval_batches(data, name, config, global_batch=NUM_SAMPLES))
            count = int(grid["valid"].sum())
            path = out / f"samples_{name}.png"
            stats["files"][name] = str(
                plots.plot_sample_grid(grid["image"][:count], grid["label"][:count], data.class_names, path)
            )
    ckpt.write_json(out / "stats.json", stats)
    low, high = stats["train_value_range"]
    print(
        f"{config.data.source} data, {stats['unit']} per class:\n{_table(data.class_names, columns)}\n"
        f"input {'x'.join(map(str, data.input_shape))}, training values in [{low:.3f}, {high:.3f}] "
        f"after '{data.normalize}' normalisation; samples and stats.json in {out}",
        flush=True,
    )
    return stats
