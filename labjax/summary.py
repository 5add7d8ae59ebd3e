"""`--mode=summary`: the configured model's size, cost and memory, for model-comparison tables (S3).

Parameters are counted as Keras does (frozen parameters and BatchNorm statistics are
non-trainable); FLOPs come from XLA's cost analysis of one inference image; memory from
XLA's analysis of the compiled training step at the configured batch size (what the
device must hold at once: arguments, outputs and temporaries).
"""

from pathlib import Path

import jax
import jax.numpy as jnp

from labjax import checkpoints as ckpt
from labjax import config as config_lib
from labjax import models, parallel, train
from labjax.data import pipeline


def _size(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def summarize(config, workdir: str | Path) -> dict:
    """Writes WORKDIR/summary.json; returns it."""
    config_lib.validate(config)
    info = models.model_info(config.model.name)
    data = pipeline.load(config, info.preprocessing)
    train.check_input_fits_model(config, data.input_shape)
    mesh = parallel.make_mesh()
    model, frozen = models.build(config.model, data.num_classes, data.input_shape)
    state = train.create_train_state(config, model, mesh, data.input_shape, frozen)
    params = jax.tree_util.tree_flatten_with_path(state.params)[0]
    frozen_count = sum(x.size for path, x in params if tuple(p.key for p in path[:-1]) in frozen)
    total_params = _size(state.params)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    image = jnp.zeros((1, *data.input_shape), jnp.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, image).compile()
    flops = (forward.cost_analysis() or {}).get("flops")

    batch = {
        "image": jax.ShapeDtypeStruct((config.batch_size, *data.input_shape), jnp.float32),
        "label": jax.ShapeDtypeStruct(
            (config.batch_size, *data.input_shape[:2]) if data.task == "segmentation" else (config.batch_size,),
            jnp.int32,
        ),
    }
    step = train.make_train_step(mesh, data.num_classes, data.class_weights).lower(state, batch).compile()
    memory = step.memory_analysis()
    peak = None
    if memory is not None:
        peak = int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        )
    summary = {
        "model": config.model.name,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "total_params": total_params + _size(state.batch_stats),
        "trainable_params": total_params - int(frozen_count),
        "non_trainable_params": int(frozen_count) + _size(state.batch_stats),
        "flops_per_image": None if flops is None else float(flops),
        "params_mb": _bytes(variables) / 2**20,
        "params_and_optimizer_state_mb": (_bytes(variables) + _bytes(state.opt_state)) / 2**20,
        "batch_size": config.batch_size,
        "train_step_peak_memory_mb": None if peak is None else peak / 2**20,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(out / "summary.json", summary)
    width = max(map(len, summary))
    for key, value in summary.items():
        text = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{key.ljust(width)}  {text}", flush=True)
    return summary
