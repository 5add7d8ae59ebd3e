"""Evaluation of a saved checkpoint: exact metrics on a whole split, and sample predictions.

Only params and batch_stats are restored (no optimizer state), onto the devices present
now, with the config the run saved in its workdir.
"""

import json
from pathlib import Path

import jax

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import models, parallel, plots, tasks, train
from labjax.data import pipeline

NUM_SAMPLES = 6


def load_run_config(workdir: Path):
    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; --workdir must be a labjax training workdir.")
    return config_lib.from_dict(json.loads(path.read_text()))


def evaluate(workdir: str | Path, checkpoint: str = "latest", split: str = "validation") -> dict:
    """Writes WORKDIR/eval/<step>_<split>.json (and a sample PNG for segmentation)."""
    workdir = Path(workdir)
    config = load_run_config(workdir)
    data = pipeline.load(config, models.model_info(config.model.name).preprocessing)
    if split not in data.splits:
        raise ValueError(f"--split={split!r} is unknown; available: {sorted(data.splits)}.")
    checkpoints = ckpt.Checkpoints(workdir, config.checkpoint, read_only=True)
    step = ckpt.resolve_step(checkpoints, checkpoint)
    mesh = parallel.make_mesh()
    eval_batch = config.eval_batch_size
    if eval_batch % jax.device_count():  # trained on more devices than are here
        eval_batch = jax.device_count() * -(-eval_batch // jax.device_count())
    config.eval_batch_size = eval_batch
    model = models.create_model(config.model, data.num_classes)
    state = train.create_train_state(config, model, mesh, data.input_shape)
    restored = checkpoints.restore(step, state, items=("params", "batch_stats"))
    checkpoints.close()
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    eval_step = train.make_eval_step(mesh, model, data.num_classes)
    segmentation = config.task == "segmentation"
    summary, computed, predictions = train.evaluate_split(
        eval_step, variables, data, split, config, mesh, keep_predictions=NUM_SAMPLES if segmentation else 0
    )
    num_examples = len(data.splits[split])
    result = {"step": step, "checkpoint": checkpoint, "split": split, "num_examples": num_examples, **summary}
    result["class_names"] = data.class_names
    result["confusion_matrix"] = computed["confusion"].tolist()
    if segmentation:
        result["iou_per_class"] = tasks.summarize_confusion(computed["confusion"])["iou_per_class"]
    out_dir = workdir / "eval"
    out_dir.mkdir(exist_ok=True)
    ckpt.write_json(out_dir / f"{checkpoint}_{split}.json", result)
    if segmentation:
        batch = next(pipeline.eval_batches(data, split, config, global_batch=NUM_SAMPLES))
        count = min(NUM_SAMPLES, num_examples)
        plots.plot_segmentation_samples(
            batch["image"][:count],
            batch["label"][:count],
            predictions[:count],
            data.num_classes,
            out_dir / f"{checkpoint}_{split}_samples.png",
        )
    print(
        f"{workdir} step {step} on {split} ({num_examples} examples): "
        + " ".join(f"{k} {v:.4f}" for k, v in summary.items()),
        flush=True,
    )
    return result
