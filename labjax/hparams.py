"""TensorBoard's HParams dashboard: each run's config values and final metrics, so a sweep's runs compare there.

At the start a run writes its hyperparameters (every scalar of its flattened config, lists as
JSON text) as an HParams session; at the end its final metrics as scalars `final/NAME` (one
point, at the last step) and the experiment's declaration (the hyperparameter and metric
names), which the dashboard needs to show the metrics as columns. Everything goes through the
run's own writer (metric_writers.write_summaries: TensorBoard only, not metrics.jsonl), so a
run keeps one event file. `tensorboard --logdir SWEEP_FOLDER` then lists one row per member.
"""

import json
import time

import numpy as np

from labjax import config as config_lib

FINAL = "final/"  # tag prefix of the final metrics


def hparam_values(config_dict: dict) -> dict[str, bool | int | float | str]:
    """The config's leaves under their dotted keys, as the types HParams takes (bool, number, text)."""
    values = {}
    for key, value in config_lib.flatten(config_dict).items():
        if isinstance(value, bool | int | float | str):
            values[key] = value
        else:  # None, lists, tuples
            values[key] = json.dumps(value)
    return values


def _write_pb(writer, step: int, summary) -> None:
    """Writes a tensorboard Summary proto's values through a clu writer (tensor and metadata as they are)."""
    from tensorboard.util import tensor_util

    for value in summary.value:
        tensor = tensor_util.make_ndarray(value.tensor)
        writer.write_summaries(step, {value.tag: tensor}, {value.tag: value.metadata.SerializeToString()})


def write_start(writer, config_dict: dict, start_time_s: float | None = None) -> None:
    """The run's hyperparameters: an HParams session start (step 0)."""
    from tensorboard.plugins.hparams import summary_v2

    _write_pb(writer, 0, summary_v2.hparams_pb(hparam_values(config_dict), start_time_secs=start_time_s or time.time()))
    writer.flush()


def write_final(writer, config_dict: dict, step: int, metrics: dict) -> list[str]:
    """The final metrics as scalars `final/NAME` at `step`, and the experiment's hyperparameter and metric names.

    Returns the metric tags declared. Metrics that are not finite numbers are left out.
    """
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    scalars = {
        FINAL + name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float | np.number) and np.isfinite(value)
    }
    md = scalar_metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()
    writer.write_summaries(step, {tag: np.float32(v) for tag, v in scalars.items()}, {tag: md for tag in scalars})
    experiment = summary_v2.hparams_config_pb(
        hparams=[summary_v2.HParam(name) for name in hparam_values(config_dict)],
        metrics=[summary_v2.Metric(tag) for tag in scalars],
    )
    _write_pb(writer, step, experiment)
    writer.flush()
    return list(scalars)
