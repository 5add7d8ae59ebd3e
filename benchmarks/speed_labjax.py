"""labjax's side of benchmarks/speed.py: the training loop's jitted step on device-resident batches.

The config is the study's own (configs/*.py, batch size and classes set to the workload's), the
model comes from the registry with its frozen modules (`models.build`), the state from
`train.create_train_state` and the step from `train.make_train_step` on a mesh of the real
devices, so what is timed is what `launch.py` runs, minus the input pipeline. As the loop does,
steps are dispatched without waiting and their metrics merged on device; a window's clock stops
once its last step is done.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from benchmarks.speed_common import (  # noqa: E402
    STEPS_PER_EXECUTION,
    Workload,
    peak_device_mb,
    peak_rss_mb,
    random_arrays,
    time_calls,
)  # noqa: E402
from labjax import config as config_lib  # noqa: E402
from labjax import models, parallel, profiling, tasks, train  # noqa: E402


def workload_config(workload: Workload, precision: str = "float32") -> ml_collections.ConfigDict:
    """The study config of `workload`, at the workload's batch size and number of classes, computing
    in `precision` (bfloat16: mixed precision, float32 params)."""
    study = workload.name.split("/")[0]
    if study == "W0":
        from configs import seg_mobilenet

        config = seg_mobilenet.get_config()
    elif study == "W1":
        from configs import cls_resnet_small

        config = cls_resnet_small.get_config()
    elif study == "W2":
        from configs import fashion3_cnn

        config = fashion3_cnn.get_config()
    elif study == "W3":  # S3 has no config file of its own: DenseNet121 with a new head
        config = config_lib.base_config("classification")
        config.model.name, config.model.pooling = "densenet121", "avg"
        config.model.freeze = "backbone" if workload.frozen_base else "none"
        config.optimizer.name, config.optimizer.learning_rate = "adam", workload.learning_rate
    else:
        from configs import sunglasses_cnn

        config = sunglasses_cnn.get_config("convnn1")
    config.data.num_classes = workload.num_classes
    config.batch_size = workload.batch_size
    config.compute_dtype = precision
    return config


def _mesh(batch_size: int):
    """All devices, or the most that divide the batch (W4's batch 1 runs on one)."""
    devices = jax.devices()
    count = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
    return parallel.make_mesh(devices[:count])


def _train_call(mode: str, config, mesh, workload: Workload, carry: dict, images, labels):
    """(one dispatch of the loop, steps it trains, its lowering): `carry` holds the state and the
    epoch's metrics, merged on device as the loop does."""
    options = {"label_smoothing": config.label_smoothing, "compute_dtype": config.compute_dtype}
    if mode == "step":
        step = train.make_train_step(mesh, workload.num_classes, **options)
        batch = parallel.to_global({"image": images, "label": labels}, mesh)

        def call() -> None:
            carry["state"], metrics = step(carry["state"], batch)
            carry["metrics"] = metrics if carry["metrics"] is None else carry["metrics"].merge(metrics)

        return call, 1, lambda: step.lower(carry["state"], batch)
    if mode != f"k{STEPS_PER_EXECUTION}":
        raise ValueError(f"labjax mode {mode!r}: choose step or k{STEPS_PER_EXECUTION}")
    if "steps_per_execution" not in config or not hasattr(train, "make_multi_step"):
        raise NotImplementedError("this labjax has no config.steps_per_execution (train.make_multi_step) yet")
    steps = STEPS_PER_EXECUTION
    step = train.make_multi_step(mesh, steps, workload.num_classes, **options)
    chunk = {"image": np.stack([images] * steps), "label": np.stack([labels] * steps)}  # (steps, B, ...)
    sharding = NamedSharding(mesh, PartitionSpec(None, "data"))
    chunk = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in chunk.items()}
    carry["metrics"] = jax.device_put(tasks.TrainMetrics.empty(), parallel.replicated(mesh))
    count = np.int32(steps)

    def call() -> None:
        carry["state"], carry["metrics"], _ = step(carry["state"], carry["metrics"], chunk, count)

    return call, steps, lambda: step.lower(carry["state"], carry["metrics"], chunk, count)


def run(
    workload: Workload,
    mode: str,
    *,
    steps: int,
    warmup: int,
    windows: int,
    infer: bool,
    precision: str = "float32",
    profile: int = 0,
) -> dict:
    """Times training (`mode` step: one step per dispatch; k50: 50) and, with `infer`, inference;
    `profile` > 0 traces that many more dispatches after the timing and adds where their time went."""
    config = workload_config(workload, precision)
    mesh = _mesh(workload.batch_size)
    shape = workload.image_shape
    model, frozen = models.build(config.model, workload.num_classes, shape)
    carry = {"state": train.create_train_state(config, model, mesh, shape, frozen), "metrics": None}
    images, labels = random_arrays(workload, workload.batch_size)
    call, per_call, lower = _train_call(mode, config, mesh, workload, carry, images, labels)

    def sync() -> None:
        jax.block_until_ready(carry)

    timing = time_calls(
        call,
        calls=max(steps // per_call, 1),
        warmup=-(-warmup // per_call),
        windows=windows,
        images_per_call=per_call * workload.batch_size,
        sync=sync,
    )
    table = None
    if profile:
        with tempfile.TemporaryDirectory() as directory:
            table = profiling.profile_calls(call, sync, profile, per_call, Path(directory), lower)
    state = carry["state"]
    result = {
        "framework": "labjax",
        "mode": mode,
        "label": f"labjax {jax.default_backend()}" + ("" if mode == "step" else f" k={per_call}"),
        "train_rate": timing["rate"],
        "train_windows": timing["windows"],
        "first_step_s": timing["first_s"],
        # XLA counts a scan's body once, whatever its trip count: FLOPs come from the one-step program.
        # On a GPU its cost analysis leaves cuDNN's convolutions (custom calls) out: no count there.
        "flops_per_step": _flops(lower().compile()) if per_call == 1 and jax.default_backend() == "cpu" else None,
        **_param_counts(state, frozen),
        "devices": f"{len(mesh.devices.flat)} x {jax.devices()[0].device_kind}",
        "profile": table,
    }
    if infer:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        device_images = parallel.to_global({"image": images}, mesh)["image"]
        if precision != "float32":  # as the training step computes: params and images cast, statistics kept
            variables["params"] = jax.tree.map(lambda x: x.astype(precision), variables["params"])
            device_images = device_images.astype(precision)
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
        outputs = [None]

        def infer_call() -> None:
            outputs[0] = forward(variables, device_images)

        timing = time_calls(
            infer_call,
            calls=steps,
            warmup=warmup,
            windows=windows,
            images_per_call=workload.batch_size,
            sync=lambda: jax.block_until_ready(outputs[0]),
        )
        result["infer_rate"] = timing["rate"]
    result.update(peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb())
    return result


def _flops(compiled) -> float:
    """FLOPs of one call of a compiled program (XLA's cost analysis; a list of one dict in older JAX)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float((analysis or {}).get("flops", float("nan")))


def _param_counts(state, frozen) -> dict:
    """Parameters as Keras counts them: BatchNorm statistics and frozen modules are non-trainable."""
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    frozen_count = sum(x.size for path, x in leaves if tuple(p.key for p in path[:-1]) in frozen)
    params = sum(x.size for _, x in leaves)
    stats = sum(x.size for x in jax.tree.leaves(state.batch_stats))
    return {"params": int(params + stats), "trainable": int(params - frozen_count)}
