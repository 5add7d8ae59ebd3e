"""labjax: JAX/Flax image classification and segmentation studies."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data; keep its logs quiet
