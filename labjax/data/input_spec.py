"""How a run's model inputs were made: everything predict needs from the training data.

Saved in each checkpoint's metadata under 'input', so predicting on a user's own images needs
no data set beside the run.
"""

import dataclasses

from labjax.data import pipeline


@dataclasses.dataclass
class InputSpec:
    """How the run's model inputs were made: everything predict needs from the training data."""

    class_names: list[str]
    channels: int
    image_size: int
    preprocess: str
    normalize: str
    input_shape: tuple[int, int, int]
    dense_labels: bool
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_data(cls, data: pipeline.Data, config) -> "InputSpec":
        return cls(
            class_names=list(data.class_names),
            channels=data.channels,
            image_size=config.data.image_size,
            preprocess=config.data.preprocess,
            normalize=data.normalize,
            input_shape=tuple(data.input_shape),
            dense_labels=data.context.dense_labels,
            mean=data.context.mean,
            std=data.context.std,
        )

    @classmethod
    def from_dict(cls, values: dict) -> "InputSpec":
        values = dict(values, input_shape=tuple(values["input_shape"]))
        for key in ("mean", "std"):
            values[key] = None if values.get(key) is None else tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON types: what a checkpoint's metadata can hold under 'input'."""
        return dataclasses.asdict(self)
