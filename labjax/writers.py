"""Metric writers: TensorBoard event files plus a metrics.jsonl that plots and reports read."""

import json
import math
from pathlib import Path

from clu import metric_writers


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
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(path: str | Path, step: int) -> None:
    """Drops rows logged after `step`: a resumed run rewrites them from its checkpoint."""
    path = Path(path)
    rows = [row for row in read_rows(path) if row["step"] <= step]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def create_writer(workdir: Path, is_main_process: bool) -> metric_writers.MetricWriter:
    if not is_main_process:
        return metric_writers.MultiWriter([])
    return metric_writers.MultiWriter(
        [
            metric_writers.SummaryWriter(str(workdir / "tensorboard")),
            JsonlWriter(workdir / "metrics.jsonl"),
        ]
    )
