"""labjax's version (pyproject.toml reads it from here; `labjax.__version__` is the same string)."""

__version__ = "0.1.0"
