"""The optax optimizer a config names: weight decay, clipping, schedules, reduce-on-plateau and freezing.

Every hyperparameter goes through one `optax.inject_hyperparams`, so `opt_state.hyperparams`
holds the scheduled `learning_rate`, the plateau's `lr_scale` and the numbers (b1, eps,
weight_decay, ...) as arrays: the logged learning rate is the one used, the plateau scale
changes without recompiling, and a vectorized sweep can vmap over the numbers.
Frozen parameters (model.freeze) go through `optax.set_to_zero`: no update and no
optimizer state, as Keras' trainable=False.

The update formulas are PyTorch's (and Keras' up to where epsilon sits), each named in
`_base_optimizer`; tests/test_optim.py checks them against both.
"""

import copy
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from labjax.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamax", "adamw", "rmsprop", "nadam")
SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "plateau")
WEIGHT_DECAY_TYPES = ("auto", "l2", "coupled", "decoupled")
# Leaf names of the weights that multiply inputs (Dense, Conv, depthwise and separable convolutions).
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
# PyTorch ReduceLROnPlateau's eps: a reduction smaller than this is skipped.
_PLATEAU_EPS = 1e-8


def weight_decay_type(opt: ml_collections.ConfigDict) -> str:
    """l2 | coupled | decoupled; 'auto' is decoupled for adamw (its point) and coupled otherwise."""
    if opt.weight_decay_type == "auto":
        return "decoupled" if opt.name == "adamw" else "coupled"
    return opt.weight_decay_type


def decay_mask(params, decay_params: str = "kernels"):
    """A pytree of bools: which params weight decay applies to.

    kernels: leaves named as in KERNEL_NAMES (not biases nor BatchNorm scales, as Keras'
    kernel_regularizer); all: every parameter; regex:PATTERN: re.search on the '/'-joined path.
    """
    if decay_params == "kernels":
        return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) in KERNEL_NAMES, params)
    if decay_params == "all":
        return jax.tree.map(lambda _: True, params)
    pattern = _decay_regex(decay_params)
    return jax.tree_util.tree_map_with_path(lambda path, _: bool(pattern.search(_path_string(path))), params)


def _leaf_name(path) -> str:
    return _path_string(path[-1:])


def _path_string(path) -> str:
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _decay_regex(decay_params: str) -> re.Pattern:
    kind, _, pattern = decay_params.partition(":")
    expected = "kernels, all or regex:PATTERN (a Python regex searched in param paths such as 'Dense_0/kernel')"
    _check(kind == "regex" and bool(pattern), "decay_params", decay_params, expected)
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConfigError(
            f"config.optimizer.decay_params={decay_params!r} is invalid: {error}; expected {expected}."
        ) from None


def l2_penalty(params, opt: ml_collections.ConfigDict) -> jax.Array:
    """weight_decay * sum(w^2) over the decayed params (Keras' regularizers.l2) when the type is l2, else 0."""
    if weight_decay_type(opt) != "l2" or not opt.weight_decay:
        return jnp.zeros((), jnp.float32)
    mask = decay_mask(params, opt.decay_params)
    squares = [jnp.sum(jnp.square(w)) for w, decayed in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if decayed]
    return opt.weight_decay * sum(squares, jnp.zeros((), jnp.float32))


def _milestones(text: str) -> list[int] | None:
    """'30,60,80' -> [30, 60, 80]; None when not increasing positive integers."""
    try:
        values = [int(v) for v in text.split(",")] if text.strip() else []
    except ValueError:
        return None
    if any(v <= 0 for v in values) or any(a >= b for a, b in zip(values, values[1:])):
        return None
    return values


def learning_rate_schedule(
    opt: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int | None = None
) -> Callable[[jax.Array], jax.Array]:
    """The learning rate at an optimizer step, before the plateau scale.

    Warmup is per step, linear from 0 at step 0 to learning_rate after warmup_epochs (PyTorch's
    LinearLR stepped every iteration). After it the schedule counts whole epochs from the end of
    warmup, all steps of an epoch sharing one value as with PyTorch's per-epoch scheduler.step():
    step (StepLR), multistep (MultiStepLR), exponential (ExponentialLR), cosine (CosineAnnealingLR
    from learning_rate to min_lr over the epochs left after warmup, hence `total_steps`),
    constant and plateau (constant; ReduceOnPlateau scales it).
    """
    kind, base, gamma, min_lr = opt.schedule, opt.learning_rate, opt.gamma, opt.min_lr
    warmup = round(opt.warmup_epochs * steps_per_epoch)
    step_epochs, milestones = opt.step_epochs, _milestones(opt.milestones) or []
    if kind == "cosine":
        if total_steps is None:
            raise ValueError("optimizer.schedule='cosine' needs total_steps (the run's optimizer steps).")
        decay_epochs = max((total_steps - warmup) / steps_per_epoch, 1.0)

    def after_warmup(epoch: jax.Array, dtype) -> jax.Array:
        epoch_f = epoch.astype(dtype)
        if kind == "step":
            return base * gamma ** (epoch // step_epochs).astype(dtype)
        if kind == "multistep":
            passed = sum((epoch >= m).astype(dtype) for m in milestones)
            return base * gamma ** jnp.asarray(passed, dtype)
        if kind == "exponential":
            return base * gamma**epoch_f
        if kind == "cosine":
            progress = jnp.minimum(epoch_f / decay_epochs, 1.0)
            return min_lr + (base - min_lr) * (1 + jnp.cos(math.pi * progress)) / 2
        return jnp.full((), base, dtype)

    def schedule(step: jax.Array) -> jax.Array:
        dtype = jnp.result_type(float)  # float32, or float64 where x64 is on (as params then are)
        step = jnp.asarray(step, jnp.int32)
        lr = after_warmup(jnp.maximum(step - warmup, 0) // steps_per_epoch, dtype)
        if warmup:
            lr = jnp.where(step < warmup, base * step.astype(dtype) / warmup, lr)
        return lr.astype(dtype)

    return schedule


def _base_optimizer(opt, learning_rate, momentum, b1, b2, eps, rho) -> optax.GradientTransformation:
    """The update rule, as PyTorch writes it.

    sgd: buf = momentum * buf + g (no dampening), nesterov steps along g + momentum * buf.
    adam, adamw, adamax: eps outside the square root (Keras puts its eps outside the bias
    correction instead; an O(eps) difference). rmsprop: g / (sqrt(v) + eps) with v averaged
    over rho, optionally centered; eps outside the root as PyTorch (Keras 3 puts it inside,
    an O(eps) difference); the momentum buffer accumulates lr-scaled steps, as Keras does, which
    equals PyTorch's while the learning rate is constant.
    nadam: optax.nadam, Dozat's NAdam with a constant momentum b1:
    m_hat = b1 * m / (1 - b1^(t+1)) + (1 - b1) * g / (1 - b1^t), step m_hat / (sqrt(v_hat) + eps).
    Keras and PyTorch instead warm the momentum up, mu_t = b1 * (1 - 0.5 * 0.96^(t * psi)) with
    psi 1 (Keras) or 0.004 (PyTorch), which damps early steps; with mu_t = b1 the formulas agree.
    """
    if opt.name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum, nesterov=opt.nesterov)
    if opt.name in ("adam", "adamw"):
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    if opt.name == "adamax":
        return optax.adamax(learning_rate, b1=b1, b2=b2, eps=eps)
    if opt.name == "nadam":
        return optax.nadam(learning_rate, b1=b1, b2=b2, eps=eps)
    if opt.name == "rmsprop":
        return optax.rmsprop(
            learning_rate, decay=rho, eps=eps, eps_in_sqrt=False, centered=opt.centered, momentum=momentum
        )
    raise ConfigError(f"config.optimizer.name={opt.name!r} is unknown; expected one of {OPTIMIZERS}.")


def injected_numbers(opt: ml_collections.ConfigDict) -> dict[str, float]:
    """The numeric hyperparameters this optimizer uses; absent ones leave their transform out.

    Momentum and clipping are present only when > 0 (a momentum buffer costs a copy of the
    params; a clip norm of 0 would zero every update), so a vectorized sweep over them must
    keep them > 0. Coupled and decoupled weight decay stay in even at 0: a sweep over
    weight_decay then needs no change of structure.
    """
    numbers = {}
    if opt.name in ("adam", "adamw", "adamax", "nadam"):
        numbers.update(b1=opt.b1, b2=opt.b2, eps=opt.eps)
    if opt.name == "rmsprop":
        numbers.update(rho=opt.rho, eps=opt.eps)
    if opt.name in ("sgd", "rmsprop") and opt.momentum > 0:
        numbers["momentum"] = opt.momentum
    if weight_decay_type(opt) in ("coupled", "decoupled"):
        numbers["weight_decay"] = opt.weight_decay
    if opt.clip_norm > 0:
        numbers["clip_norm"] = opt.clip_norm
    return numbers


def _optimizer_factory(opt: ml_collections.ConfigDict) -> Callable[..., optax.GradientTransformation]:
    """The chain clip -> coupled decay -> base optimizer -> decoupled decay, built from injected values."""
    decay = weight_decay_type(opt)

    def mask(params):
        return decay_mask(params, opt.decay_params)

    def factory(
        learning_rate,
        lr_scale,
        weight_decay=None,
        clip_norm=None,
        momentum=None,
        b1=None,
        b2=None,
        eps=None,
        rho=None,
    ) -> optax.GradientTransformation:
        lr = learning_rate * lr_scale
        parts = []
        if clip_norm is not None:
            parts.append(optax.clip_by_global_norm(clip_norm))
        if decay == "coupled":
            parts.append(optax.add_decayed_weights(weight_decay, mask))
        parts.append(_base_optimizer(opt, lr, momentum, b1, b2, eps, rho))
        if decay == "decoupled":
            # Updates are already negated: adding -lr * wd * w is PyTorch's AdamW `w -= lr * wd * w`.
            parts.append(optax.add_decayed_weights(-lr * weight_decay, mask))
        return optax.chain(*parts)

    return factory


def create_optimizer(
    config: ml_collections.ConfigDict,
    frozen: set[tuple[str, ...]] = frozenset(),
    steps_per_epoch: int = 1,
    *,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """The optimizer of config.optimizer with its schedule; `frozen` module paths get no updates.

    Its state holds `hyperparams` (see current_learning_rate and set_lr_scale). The schedule
    counts optimizer steps, so `steps_per_epoch` turns its epochs into steps, and cosine needs
    `total_steps`.
    """
    opt = copy.deepcopy(config.optimizer)  # the optimizer reads it when traced: later edits must not leak in
    schedule = learning_rate_schedule(opt, steps_per_epoch, total_steps)
    tx = optax.inject_hyperparams(_optimizer_factory(opt))(
        learning_rate=schedule, lr_scale=1.0, **injected_numbers(opt)
    )
    if not frozen:
        return tx

    def labels(params):
        def label(path, _):
            module = tuple(p.key for p in path[:-1])
            return "frozen" if module in frozen else "train"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def injected_hyperparams(opt_state) -> dict:
    """The injected hyperparams, also inside a multi_transform (freezing)."""
    if hasattr(opt_state, "hyperparams"):
        return opt_state.hyperparams
    return opt_state.inner_states["train"].inner_state.hyperparams


def _replace_hyperparams(opt_state, hyperparams: dict):
    if hasattr(opt_state, "hyperparams"):
        return opt_state._replace(hyperparams=hyperparams)
    train = opt_state.inner_states["train"]
    train = train._replace(inner_state=train.inner_state._replace(hyperparams=hyperparams))
    return opt_state._replace(inner_states={**opt_state.inner_states, "train": train})


def current_learning_rate(opt_state) -> float:
    """The learning rate of the last update (before any, of the first): scheduled value * plateau scale."""
    hyperparams = injected_hyperparams(opt_state)
    return float(hyperparams["learning_rate"]) * float(hyperparams["lr_scale"])


def set_lr_scale(opt_state, scale: float):
    """A copy of opt_state whose plateau scale is `scale`.

    The new leaf keeps the old one's dtype and sharding, so the jitted step is not retraced.
    """
    hyperparams = dict(injected_hyperparams(opt_state))
    old = hyperparams["lr_scale"]
    new = jnp.asarray(scale, dtype=old.dtype)
    if isinstance(old, jax.Array):
        new = jax.device_put(new, old.sharding)
    hyperparams["lr_scale"] = new
    return _replace_hyperparams(opt_state, hyperparams)


class ReduceOnPlateau:
    """PyTorch's ReduceLROnPlateau on the host, as a scale of the scheduled learning rate.

    Once per epoch `update` compares the monitored metric with the best so far (relative or
    absolute threshold); after more than `patience` epochs without improvement the learning
    rate is multiplied by `factor` (floored at min_lr), then `cooldown` epochs count no bad
    epochs.
    """

    def __init__(self, plateau_cfg: ml_collections.ConfigDict, base_lr: float):
        self.monitor = plateau_cfg.monitor
        self.mode = plateau_cfg.mode
        self.factor = plateau_cfg.factor
        self.patience = plateau_cfg.patience
        self.cooldown = plateau_cfg.cooldown
        self.min_lr = plateau_cfg.min_lr
        self.threshold = plateau_cfg.threshold
        self.threshold_mode = plateau_cfg.threshold_mode
        self.base_lr = base_lr
        self.scale = 1.0
        self.best = self._worst()
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def _is_better(self, value: float) -> bool:
        # PyTorch's formulas exactly, including rel mode's best * (1 - threshold) for negative bests.
        if self.mode == "min":
            bound = self.best * (1 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return value < bound
        bound = self.best * (1 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return value > bound

    def update(self, metrics: dict) -> float:
        """Takes one epoch's scalars and returns the new scale of the learning rate."""
        if self.monitor not in metrics:
            raise ConfigError(
                f"config.optimizer.plateau.monitor={self.monitor!r} is not among this run's epoch metrics "
                f"{sorted(metrics)}; set it to one of them."
            )
        value = float(metrics[self.monitor])
        if self._is_better(value):
            self.best = value
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old_lr = self.base_lr * self.scale
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > _PLATEAU_EPS:
                self.scale = new_lr / self.base_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.scale

    def state_dict(self) -> dict:
        """JSON-able (an infinite best, before the first epoch, is None)."""
        return {
            "scale": self.scale,
            "best": self.best if math.isfinite(self.best) else None,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.best = self._worst() if state["best"] is None else float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config.optimizer.{key}={value!r} is invalid: expected {expected}.")


def validate(opt: ml_collections.ConfigDict, num_epochs: int) -> None:
    """Raises ConfigError naming the config.optimizer key, its value and what is expected."""
    _check(opt.name in OPTIMIZERS, "name", opt.name, f"one of {OPTIMIZERS}")
    _check(opt.learning_rate > 0, "learning_rate", opt.learning_rate, "a number > 0")
    for key in ("b1", "b2", "momentum", "rho"):
        _check(0 <= opt[key] < 1, key, opt[key], "a number in [0, 1)")
    _check(opt.eps > 0, "eps", opt.eps, "a number > 0")
    if opt.name == "sgd" and opt.nesterov:
        _check(opt.momentum > 0, "momentum", opt.momentum, "a momentum > 0 with nesterov=True")
    decay_type = opt.weight_decay_type
    _check(decay_type in WEIGHT_DECAY_TYPES, "weight_decay_type", decay_type, f"one of {WEIGHT_DECAY_TYPES}")
    _check(opt.weight_decay >= 0, "weight_decay", opt.weight_decay, "a number >= 0 (0: off)")
    if opt.decay_params not in ("kernels", "all"):
        _decay_regex(opt.decay_params)
    _check(opt.clip_norm >= 0, "clip_norm", opt.clip_norm, "a global norm >= 0 (0: off)")
    _check(opt.schedule in SCHEDULES, "schedule", opt.schedule, f"one of {SCHEDULES}")
    _check(
        0 <= opt.warmup_epochs < num_epochs,
        "warmup_epochs",
        opt.warmup_epochs,
        f"a number of epochs >= 0 and below num_epochs ({num_epochs})",
    )
    _check(opt.gamma > 0, "gamma", opt.gamma, "a factor > 0")
    _check(opt.min_lr >= 0, "min_lr", opt.min_lr, "a learning rate >= 0")
    if opt.schedule == "step":
        _check(opt.step_epochs > 0, "step_epochs", opt.step_epochs, "a number of epochs > 0 with schedule='step'")
    if opt.milestones.strip() or opt.schedule == "multistep":
        _check(
            bool(_milestones(opt.milestones)),
            "milestones",
            opt.milestones,
            "increasing positive epochs such as '30,60,80'",
        )
    plateau = opt.plateau
    _check(plateau.mode in ("min", "max"), "plateau.mode", plateau.mode, "'min' or 'max'")
    _check(plateau.threshold_mode in ("rel", "abs"), "plateau.threshold_mode", plateau.threshold_mode, "'rel' or 'abs'")
    _check(0 < plateau.factor < 1, "plateau.factor", plateau.factor, "a factor in (0, 1)")
    _check(plateau.patience >= 0, "plateau.patience", plateau.patience, "a number of epochs >= 0")
    _check(plateau.cooldown >= 0, "plateau.cooldown", plateau.cooldown, "a number of epochs >= 0")
    _check(plateau.min_lr >= 0, "plateau.min_lr", plateau.min_lr, "a learning rate >= 0")
    _check(plateau.threshold >= 0, "plateau.threshold", plateau.threshold, "a number >= 0")
