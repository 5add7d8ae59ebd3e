"""labjax: JAX/Flax image classification and segmentation studies."""

import os

from labjax import xla_flags
from labjax.version import __version__  # noqa: F401

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data; keep its logs quiet
xla_flags.apply()  # before JAX starts a backend, which reads XLA_FLAGS once
