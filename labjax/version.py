"""labjax's version: the one place it is written (labjax.__version__, the package metadata, provenance)."""

__version__ = "0.1.0"
