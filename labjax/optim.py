"""The optax optimizer a config names, with its hyperparameters injected into its state, and freezing.

`inject_hyperparams` keeps the learning rate (and betas) as arrays in the optimizer state,
so the current value can be logged and later changed by schedules without recompiling.
Frozen parameters (model.freeze) go through `optax.set_to_zero`: no update and no
optimizer state, as Keras' trainable=False.
"""

import jax
import ml_collections
import optax


def _base_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
    if opt.name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(
            learning_rate=opt.learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov
        )
    if opt.name in ("adam", "adamax"):
        factory = optax.adam if opt.name == "adam" else optax.adamax
        return optax.inject_hyperparams(factory)(learning_rate=opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    raise ValueError(f"config.optimizer.name={opt.name!r} is unknown; valid: sgd, adam, adamax.")


def create_optimizer(
    config: ml_collections.ConfigDict, frozen: set[tuple[str, ...]] = frozenset()
) -> optax.GradientTransformation:
    """sgd (momentum, nesterov) | adam | adamax from config.optimizer; `frozen` module paths get no updates."""
    tx = _base_optimizer(config.optimizer)
    if not frozen:
        return tx

    def labels(params):
        def label(path, _):
            module = tuple(p.key for p in path[:-1])
            return "frozen" if module in frozen else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _hyperparams(opt_state):
    """The InjectHyperparamsState's hyperparams, also inside a multi_transform (freezing)."""
    if hasattr(opt_state, "hyperparams"):
        return opt_state.hyperparams
    return opt_state.inner_states["train"].inner_state.hyperparams


def current_learning_rate(opt_state) -> float:
    return float(_hyperparams(opt_state)["learning_rate"])
