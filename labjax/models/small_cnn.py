"""The Keras-style small CNN of study S2, so the engine is exercised on classification.

Conv(32,3,relu) MaxPool(2) Conv(64,3,relu) AvgPool(2) Conv(128,3,relu) Flatten Dropout
Dense(64,relu) Dense(classes), with Keras' 'valid' padding and glorot initialisation.
"""

import flax.linen as nn
import jax

from labjax.models.layers import Conv, max_pool

glorot = nn.initializers.glorot_uniform()


class SmallCNN(nn.Module):
    num_classes: int
    dropout: float = 0.2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = jax.nn.relu(Conv(32, (3, 3), padding="VALID", kernel_init=glorot)(x))
        x = max_pool(x, (2, 2), (2, 2))
        x = jax.nn.relu(Conv(64, (3, 3), padding="VALID", kernel_init=glorot)(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = jax.nn.relu(Conv(128, (3, 3), padding="VALID", kernel_init=glorot)(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = jax.nn.relu(nn.Dense(64, kernel_init=glorot)(x))
        return nn.Dense(self.num_classes, kernel_init=glorot)(x)
