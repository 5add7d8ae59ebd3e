"""TensorBoard's HParams dashboard: each run's config values and final metrics, so a sweep's runs compare there.

At the start a run writes its hyperparameters (every leaf of its flattened config; lists as
JSON text) as an HParams session; at the end its final metrics as scalars `final/NAME` (one
point, at the last step). Both go through the run's own writer (write_summaries: TensorBoard
only, not metrics.jsonl), so a run keeps one event file. Without a declaration the dashboard
infers the experiment from the runs it finds (hyperparameters that differ listed first, every
scalar a metric); the report of a folder of runs (a sweep) declares it in
report_files/tensorboard: the hyperparameters, typed, those that differ first, and the final
metrics first, so `tensorboard --logdir SWEEP_FOLDER` opens on the sweep's keys and results.
A run does not declare the experiment itself: it cannot know which of its values differ, and
the dashboard shows only the first five declared.
"""

import json
import time
from pathlib import Path

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


def write_final(writer, step: int, metrics: dict) -> list[str]:
    """The final metrics as scalars `final/NAME` at `step`; returns their tags (not finite numbers left out)."""
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    scalars = {
        FINAL + name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float | np.number) and np.isfinite(value)
    }
    md = scalar_metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()
    writer.write_summaries(step, {tag: np.float32(v) for tag, v in scalars.items()}, {tag: md for tag in scalars})
    writer.flush()
    return list(scalars)


def _data_type(values: list):
    from tensorboard.plugins.hparams import api_pb2

    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def write_experiment(logdir: Path, configs: list[dict], metric_tags: list[str]) -> Path:
    """Declares a folder of runs to the HParams dashboard (an event file in `logdir`).

    Every hyperparameter of `configs` with its type, those whose values differ first (the
    dashboard shows the first five), and `metric_tags` as the metrics. No domains: a run the
    declaration did not see is never filtered out.
    """
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.summary.writer import event_file_writer

    values = [hparam_values(config) for config in configs]
    infos = []
    for name in sorted(set().union(*values)):
        seen = [v[name] for v in values if name in v]
        differs = len({json.dumps(v) for v in seen}) > 1 or len(seen) < len(values)
        infos.append(api_pb2.HParamInfo(name=name, type=_data_type(seen), differs=differs))
    infos.sort(key=lambda info: not info.differs)  # stable: by name within each part
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
        time_created_secs=time.time(),
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.EXPERIMENT_TAG,
        metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        tensor=metadata.NULL_TENSOR,
    )
    logdir.mkdir(parents=True, exist_ok=True)
    writer = event_file_writer.EventFileWriter(str(logdir))
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()
    return logdir
