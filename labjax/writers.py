"""Metric writers: TensorBoard event files plus a metrics.jsonl that plots and reports read."""

import json
import logging
import math
import os
from pathlib import Path

from labjax.errors import DataError
from labjax.tf_import import metric_writers


class JsonlWriter(metric_writers.interface.MetricWriter):
    """One JSON object per write_scalars call: {"step": s, name: value, ...}.

    Only scalars and hparams have a text form worth keeping; other kinds go to TensorBoard.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write_scalars(self, step: int, scalars) -> None:
        row = {"step": int(step)}
        for name, value in scalars.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def write_hparams(self, hparams) -> None:
        """Hyperparameters live in config.json beside this file."""

    def write_summaries(self, step, values, metadata=None) -> None:
        """Not scalars: TensorBoard only."""

    def write_images(self, step, images) -> None:
        """Not scalars: TensorBoard only."""

    def write_videos(self, step, videos) -> None:
        """Not scalars: TensorBoard only."""

    def write_audios(self, step, audios, *, sample_rate) -> None:
        """Not scalars: TensorBoard only."""

    def write_texts(self, step, texts) -> None:
        """Not scalars: TensorBoard only."""

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        """Not scalars: TensorBoard only."""

    def flush(self) -> None:
        """Each row is flushed as it is written."""

    def close(self) -> None:
        """Nothing stays open between writes."""


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a kill mid-append, a full disk) is dropped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise DataError(
                    f"{path}: line {number} is not JSON ({error.msg}); it was edited by hand or damaged. "
                    "Remove that line (the run's checkpoints are intact) and run again."
                ) from None
            logging.warning("%s: its last line is incomplete (a write was cut short); it is left out.", path)
    return rows


def truncate_after(path: str | Path, step: int) -> None:
    """Drops rows logged after `step` (and a torn last line): a resumed run rewrites them from its checkpoint.

    Written to a temporary file, synced and renamed: a kill at any moment leaves the old rows or the new.
    """
    path = Path(path)
    if not path.exists():
        return
    rows = [row for row in read_rows(path) if row["step"] <= step]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as file:
        file.write("".join(json.dumps(row) + "\n" for row in rows))
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)


def create_writer(workdir: Path, is_main_process: bool) -> metric_writers.MetricWriter:
    if not is_main_process:
        return metric_writers.MultiWriter([])
    return metric_writers.MultiWriter(
        [
            metric_writers.SummaryWriter(str(workdir / "tensorboard")),
            JsonlWriter(workdir / "metrics.jsonl"),
        ]
    )
