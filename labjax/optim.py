"""The optax optimizer a config names, with its hyperparameters injected into its state.

`inject_hyperparams` keeps the learning rate (and betas) as arrays in the optimizer state,
so the current value can be logged and later changed by schedules without recompiling.
"""

import ml_collections
import optax


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """sgd (momentum, nesterov) | adam | adamax, from config.optimizer."""
    opt = config.optimizer
    if opt.name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(
            learning_rate=opt.learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov
        )
    if opt.name in ("adam", "adamax"):
        factory = optax.adam if opt.name == "adam" else optax.adamax
        return optax.inject_hyperparams(factory)(learning_rate=opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    raise ValueError(f"config.optimizer.name={opt.name!r} is unknown; valid: sgd, adam, adamax.")


def current_learning_rate(opt_state) -> float:
    return float(opt_state.hyperparams["learning_rate"])
