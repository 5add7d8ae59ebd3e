"""What can go wrong, as classes: a user's mistakes (one line, exit 2) apart from a run's outcomes.

`UserError` is the one base of what a user can fix by changing a command, a config or a file;
launch.py prints those in one line. Everything else is a bug and keeps its traceback. The
user errors also derive from ValueError / FileNotFoundError, so callers that catch those
(and code written before this module) keep working.
"""


class UserError(Exception):
    """A mistake the user fixes (a config value, a file, a folder); launch.py prints it in one line."""


class ConfigError(UserError, ValueError):
    """A config key with a wrong value, or flags that do not go together."""


class DataError(UserError, ValueError):
    """A data set, image or label file that cannot be read as the config says."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command names does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be restored; `other_model` when it holds another model's weights."""

    def __init__(self, message: str, other_model: bool = False):
        super().__init__(message)
        self.other_model = other_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; status.json says 'diverged'."""


class TrainingPruned(RuntimeError):
    """A search's pruner stopped the trial after an epoch; status.json says 'pruned', its checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM (or a test's stop_after_step): a checkpoint was saved first."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the sweep; running members saved a checkpoint and resume next time."""


class SweepIncomplete(RuntimeError):
    """Some members failed (crashed, were killed or had a config error); sweep.json holds their errors."""
