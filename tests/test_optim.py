"""labjax.optim against independent oracles: PyTorch's update formulas written in numpy (float64),
Keras 3 optimizers, PyTorch's scheduler formulas and a hand-written ReduceLROnPlateau trace.

The optax side runs under jax.enable_x64 with float64 params, so the comparison with the numpy
formulas is exact up to rounding (rtol 1e-9) and any formula difference shows.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labjax import optim
from labjax.config import ConfigError, base_config

STEPS = 5
LR = 1 / 64  # exact in float32: Keras keeps its learning rate in a float32 variable
SHAPES = {"Dense_0": {"kernel": (3, 2), "bias": (2,)}, "Conv_0": {"kernel": (2, 2, 1, 2)}}
EXACT = 1e-9  # float64 rounding only


def _flat(tree) -> dict:
    return {f"{module}/{name}": value for module, leaves in tree.items() for name, value in leaves.items()}


def _nested(flat: dict) -> dict:
    tree = {}
    for path, value in flat.items():
        module, name = path.split("/")
        tree.setdefault(module, {})[name] = value
    return tree


def _signed_uniform(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 1.5, size=shape)


def _problem():
    """Params and STEPS gradients; |g| in [0.5, 1.5] bounds the eps-placement differences below."""
    rng = np.random.default_rng(0)
    params = {path: rng.normal(size=shape) for path, shape in _flat(SHAPES).items()}
    grads = [{path: _signed_uniform(rng, p.shape) for path, p in params.items()} for _ in range(STEPS)]
    return params, grads


def _opt_config(**overrides):
    config = base_config("classification")
    for key, value in overrides.items():
        node = config.optimizer
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def _run_labjax(config, params: dict, grads: list[dict]) -> dict:
    with jax.enable_x64(True):
        tx = optim.create_optimizer(config)
        p = _nested({k: jnp.asarray(v, jnp.float64) for k, v in params.items()})
        state, update = tx.init(p), jax.jit(tx.update)
        for g in grads:
            updates, state = update(_nested({k: jnp.asarray(v) for k, v in g.items()}), state, p)
            p = jax.tree.map(lambda a, u: a + u, p, updates)
        return {k: np.asarray(v) for k, v in _flat(p).items()}


# PyTorch's update formulas (torch.optim docs pseudo-code), one parameter array at a time.
def torch_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    buf = None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def torch_adam(p, grads, lr, b1, b2, eps, weight_decay=0.0, decoupled=False):
    m = v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        if decoupled:
            p = p * (1 - lr * weight_decay)  # AdamW
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def torch_adamax(p, grads, lr, b1, b2, eps):
    m = u = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        p = p - lr / (1 - b1**t) * m / u
    return p


def torch_rmsprop(p, grads, lr, alpha, eps, momentum=0.0, centered=False):
    v = g_avg = buf = np.zeros_like(p)
    for g in grads:
        v = alpha * v + (1 - alpha) * g * g
        v_tilde = v
        if centered:
            g_avg = alpha * g_avg + (1 - alpha) * g
            v_tilde = v - g_avg**2
        step = g / (np.sqrt(v_tilde) + eps)
        if momentum:
            buf = momentum * buf + step
            step = buf
        p = p - lr * step
    return p


def torch_nadam(p, grads, lr, b1, b2, eps, mu):
    """PyTorch's NAdam with the momentum schedule `mu(t)` (PyTorch: b1 * (1 - 0.5 * 0.96 ** (t * 0.004)))."""
    m = v = np.zeros_like(p)
    mu_product = 1.0
    for t, g in enumerate(grads, 1):
        mu_product *= mu(t)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = mu(t + 1) * m / (1 - mu_product * mu(t + 1)) + (1 - mu(t)) * g / (1 - mu_product)
        p = p - lr * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def _torch(formula, params, grads, decayed_kwargs=None, **kwargs):
    """The formula on every param; `decayed_kwargs` only on kernels (the default decay_params)."""
    return {
        path: formula(
            p, [g[path] for g in grads], **kwargs, **(decayed_kwargs or {} if path.endswith("kernel") else {})
        )
        for path, p in params.items()
    }


ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-7}
TORCH_CASES = {
    "adam": ({"name": "adam"}, torch_adam, dict(lr=LR, **ADAM), None),
    "adamax": ({"name": "adamax"}, torch_adamax, dict(lr=LR, **ADAM), None),
    "sgd_momentum_coupled": (
        {"name": "sgd", "momentum": 0.9, "weight_decay": 0.05},
        torch_sgd,
        dict(lr=LR, momentum=0.9),
        {"weight_decay": 0.05},
    ),
    "sgd_nesterov_coupled": (
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
        torch_sgd,
        dict(lr=LR, momentum=0.9, nesterov=True),
        {"weight_decay": 0.05},
    ),
    "adam_coupled": (
        {"name": "adam", "weight_decay": 0.05},
        torch_adam,
        dict(lr=LR, **ADAM),
        {"weight_decay": 0.05},
    ),
    "rmsprop_momentum": (
        {"name": "rmsprop", "rho": 0.9, "momentum": 0.5},
        torch_rmsprop,
        dict(lr=LR, alpha=0.9, eps=1e-7, momentum=0.5),
        None,
    ),
    "rmsprop_centered": (
        {"name": "rmsprop", "rho": 0.9, "centered": True},
        torch_rmsprop,
        dict(lr=LR, alpha=0.9, eps=1e-7, centered=True),
        None,
    ),
    "adamw": (
        {"name": "adamw", "weight_decay": 0.05},
        torch_adam,
        dict(lr=LR, **ADAM),
        {"weight_decay": 0.05, "decoupled": True},
    ),
    "adam_decoupled": (
        {"name": "adam", "weight_decay": 0.05, "weight_decay_type": "decoupled"},
        torch_adam,
        dict(lr=LR, **ADAM),
        {"weight_decay": 0.05, "decoupled": True},
    ),
    # optax.nadam is NAdam with a constant momentum mu_t = b1 (see optim._base_optimizer).
    "nadam": ({"name": "nadam"}, torch_nadam, dict(lr=LR, mu=lambda t: 0.9, **ADAM), None),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_optimizers_follow_pytorch_formulas(case):
    overrides, formula, kwargs, decayed = TORCH_CASES[case]
    params, grads = _problem()
    ours = _run_labjax(_opt_config(learning_rate=LR, **overrides), params, grads)
    expected = _torch(formula, params, grads, decayed, **kwargs)
    for path, p0 in params.items():
        # Compare the displacement: the params themselves would hide an error 100x smaller than them.
        np.testing.assert_allclose(ours[path] - p0, expected[path] - p0, rtol=EXACT, atol=1e-14, err_msg=path)


def test_nadam_differs_from_pytorch_momentum_schedule():
    """The docstring's claim: PyTorch's warmed-up momentum (psi=0.004) gives visibly different steps."""
    params, grads = _problem()
    ours = _run_labjax(_opt_config(learning_rate=LR, name="nadam"), params, grads)
    pytorch = _torch(torch_nadam, params, grads, lr=LR, mu=lambda t: 0.9 * (1 - 0.5 * 0.96 ** (t * 0.004)), **ADAM)
    path = "Dense_0/kernel"
    assert not np.allclose(ours[path] - params[path], pytorch[path] - params[path], rtol=1e-2)


def _run_keras(optimizer, params: dict, grads: list[dict], coupled_decay: float = 0.0) -> dict:
    """Keras' apply_gradients on float64 variables; coupled decay adds wd * w to kernel gradients."""
    import keras

    variables = {path: keras.Variable(p, dtype="float64", name=path.replace("/", "_")) for path, p in params.items()}
    for g in grads:
        decay = {path: coupled_decay * v.numpy() if path.endswith("kernel") else 0.0 for path, v in variables.items()}
        optimizer.apply_gradients([(g[path] + decay[path], v) for path, v in variables.items()])
    return {path: v.numpy() for path, v in variables.items()}


def _keras_optimizer(name: str):
    import keras

    adam = dict(learning_rate=LR, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=0.05, **adam)
        optimizer.exclude_from_weight_decay(var_names=["bias"])  # as decay_params='kernels'
        return optimizer
    return {
        "adam": lambda: keras.optimizers.Adam(**adam),
        "adamax": lambda: keras.optimizers.Adamax(**adam),
        "sgd_momentum_coupled": lambda: keras.optimizers.SGD(LR, momentum=0.9),
        "sgd_nesterov_coupled": lambda: keras.optimizers.SGD(LR, momentum=0.9, nesterov=True),
        "rmsprop_momentum": lambda: keras.optimizers.RMSprop(LR, rho=0.9, momentum=0.5, epsilon=1e-7),
        "rmsprop_centered": lambda: keras.optimizers.RMSprop(LR, rho=0.9, centered=True, epsilon=1e-7),
    }[name]()


# Tolerances. Keras passes its Python-float hyperparameters through float32 (momentum 0.9 becomes
# 0.8999999762 even on float64 variables), relative changes of ~3e-8 per use: 1e-6 where the formulas are
# the same (SGD, and the NAdam oracle below). Adam's Keras divides by sqrt(v_hat) + eps / sqrt(1 - b2^t)
# (eps outside the bias correction), a relative change of at most eps / (sqrt(1 - b2) * min|g|) =
# 1e-7 / (0.0316 * 0.5) = 6.3e-6 at step 1, less later. Adamax: eps in |g| + eps vs u + eps, relative <= 2e-7.
# RMSprop: Keras' sqrt(v + eps) vs sqrt(v) + eps, relative <= eps / sqrt(v) with v >= 0.1 * 0.5^2: <= 1e-6
# (centered: its variance stays of that order for these gradients). 2e-5 covers these and still fails on
# any real formula difference (a wrong bias correction or decay is > 1e-3).
KERAS_FLOAT32_CONSTANTS = 1e-6
KERAS_CASES = {
    "adam": 2e-5,
    "adamax": 2e-5,
    "sgd_momentum_coupled": KERAS_FLOAT32_CONSTANTS,
    "sgd_nesterov_coupled": KERAS_FLOAT32_CONSTANTS,
    "rmsprop_momentum": 2e-5,
    "rmsprop_centered": 2e-5,
    "adamw": 2e-5,
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_optimizers_match_keras(case):
    overrides, _, _, decayed = TORCH_CASES[case]
    params, grads = _problem()
    ours = _run_labjax(_opt_config(learning_rate=LR, **overrides), params, grads)
    coupled = decayed["weight_decay"] if decayed and not decayed.get("decoupled") else 0.0
    expected = _run_keras(_keras_optimizer(case), params, grads, coupled)
    rtol = KERAS_CASES[case]
    for path, p0 in params.items():
        np.testing.assert_allclose(ours[path] - p0, expected[path] - p0, rtol=rtol, atol=rtol * LR, err_msg=path)


def test_nadam_oracle_matches_keras():
    """The numpy NAdam formula is right: with Keras' momentum schedule (psi=1) it reproduces Keras' Nadam."""
    import keras

    params, grads = _problem()
    expected = _run_keras(keras.optimizers.Nadam(LR, beta_1=0.9, beta_2=0.999, epsilon=1e-7), params, grads)
    formula = _torch(torch_nadam, params, grads, lr=LR, mu=lambda t: 0.9 * (1 - 0.5 * 0.96**t), **ADAM)
    for path, p0 in params.items():
        np.testing.assert_allclose(
            formula[path] - p0, expected[path] - p0, rtol=KERAS_FLOAT32_CONSTANTS, atol=1e-6 * LR, err_msg=path
        )


def _sgd_update(config, params, grads):
    tx = optim.create_optimizer(config)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def _tree():
    params, grads = _problem()
    return _nested({k: jnp.asarray(v, jnp.float32) for k, v in params.items()}), _nested(
        {k: jnp.asarray(v, jnp.float32) for k, v in grads[0].items()}
    )


@pytest.mark.slow
def test_coupled_l2_and_decoupled_weight_decay():
    params, grads = _tree()
    wd, lr = 0.1, 0.5
    coupled = _sgd_update(_opt_config(name="sgd", learning_rate=lr, weight_decay=wd), params, grads)
    for module in params:
        expected_kernel = -lr * (grads[module]["kernel"] + wd * params[module]["kernel"])
        np.testing.assert_allclose(coupled[module]["kernel"], expected_kernel, rtol=1e-6)
    np.testing.assert_allclose(coupled["Dense_0"]["bias"], -lr * grads["Dense_0"]["bias"], rtol=1e-6)

    l2 = _opt_config(name="sgd", weight_decay=wd, weight_decay_type="l2")
    penalty_grad = jax.grad(optim.l2_penalty)(params, l2.optimizer)
    for module in params:
        np.testing.assert_allclose(penalty_grad[module]["kernel"], 2 * wd * params[module]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(penalty_grad["Dense_0"]["bias"], 0.0)
    kernels = sum(np.sum(np.square(params[m]["kernel"])) for m in params)
    np.testing.assert_allclose(optim.l2_penalty(params, l2.optimizer), wd * kernels, rtol=1e-6)
    # l2 leaves the optimizer's own update alone; the other types leave the loss alone.
    l2_update = _sgd_update(l2, params, grads)
    np.testing.assert_allclose(l2_update["Conv_0"]["kernel"], -1e-3 * grads["Conv_0"]["kernel"], rtol=1e-6)
    assert float(optim.l2_penalty(params, _opt_config(weight_decay=wd).optimizer)) == 0.0

    decoupled = _opt_config(name="sgd", learning_rate=lr, weight_decay=wd, weight_decay_type="decoupled")
    update = _sgd_update(decoupled, params, grads)
    kernel, grad = params["Dense_0"]["kernel"], grads["Dense_0"]["kernel"]
    np.testing.assert_allclose(update["Dense_0"]["kernel"], -lr * grad - lr * wd * kernel, rtol=1e-6)


def test_weight_decay_type_auto():
    assert optim.weight_decay_type(_opt_config(name="adamw").optimizer) == "decoupled"
    assert optim.weight_decay_type(_opt_config(name="sgd").optimizer) == "coupled"
    assert optim.weight_decay_type(_opt_config(name="adamw", weight_decay_type="l2").optimizer) == "l2"


def test_decay_mask():
    params = {
        "Conv_0": {"kernel": 0, "bias": 0},
        "SeparableConv_0": {"depthwise_kernel": 0, "pointwise_kernel": 0, "bias": 0},
        "BatchNorm_0": {"scale": 0, "bias": 0},
        "head": {"Dense_0": {"kernel": 0}},
    }
    kernels = optim.decay_mask(params)
    assert kernels == {
        "Conv_0": {"kernel": True, "bias": False},
        "SeparableConv_0": {"depthwise_kernel": True, "pointwise_kernel": True, "bias": False},
        "BatchNorm_0": {"scale": False, "bias": False},
        "head": {"Dense_0": {"kernel": True}},
    }
    assert all(jax.tree.leaves(optim.decay_mask(params, "all")))
    regex, _ = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params, "regex:^head/|BatchNorm_0/scale"))
    chosen = {jax.tree_util.keystr(path, simple=True, separator="/") for path, decayed in regex if decayed}
    assert chosen == {"head/Dense_0/kernel", "BatchNorm_0/scale"}
    with pytest.raises(ConfigError, match="decay_params"):
        optim.decay_mask(params, "regex:(")


# Expected values from PyTorch's schedulers, stepped once per epoch (epoch = step // steps_per_epoch).
def _torch_chainable(kind, lr, epochs, gamma, step_size=None, milestones=()):
    """StepLR / MultiStepLR / ExponentialLR through their recursive get_lr, as PyTorch steps them."""
    trace = [lr]
    for epoch in range(1, epochs):
        if kind == "step":
            lr = lr * gamma if epoch % step_size == 0 else lr
        elif kind == "multistep":
            lr = lr * gamma ** list(milestones).count(epoch)
        else:
            lr = lr * gamma
        trace.append(lr)
    return trace


SPE = 3  # steps per epoch


def _schedule_values(steps, total_steps=None, **overrides):
    opt = _opt_config(learning_rate=0.1, **overrides).optimizer
    schedule = optim.learning_rate_schedule(opt, SPE, total_steps=total_steps)
    return np.array([float(schedule(s)) for s in steps])


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("step", dict(schedule="step", step_epochs=2, gamma=0.5)),
        ("multistep", dict(schedule="multistep", milestones="2,3,6", gamma=0.1)),
        ("exponential", dict(schedule="exponential", gamma=0.8)),
    ],
)
def test_epoch_schedules_match_pytorch(kind, overrides):
    epochs = 8
    expected = _torch_chainable(
        kind, 0.1, epochs, overrides["gamma"], overrides.get("step_epochs"), (2, 3, 6) if kind == "multistep" else ()
    )
    steps = range(epochs * SPE)
    np.testing.assert_allclose(_schedule_values(steps, **overrides), [expected[s // SPE] for s in steps], rtol=1e-6)


def test_cosine_and_warmup_match_pytorch():
    num_epochs, warmup_epochs, min_lr, lr = 6, 1, 0.01, 0.1
    total = num_epochs * SPE
    values = _schedule_values(
        range(total + 1), total_steps=total, schedule="cosine", min_lr=min_lr, warmup_epochs=warmup_epochs
    )
    # LinearLR per iteration from 0: lr * t / T over the T = 3 warmup steps.
    np.testing.assert_allclose(values[:3], [0.0, lr / 3, 2 * lr / 3], rtol=1e-6)
    # CosineAnnealingLR(T_max = 5 epochs after warmup), counted from the end of warmup.
    t_max = num_epochs - warmup_epochs
    for step in range(3, total + 1):  # the step after the run is epoch t_max: min_lr
        epoch = (step - 3) // SPE
        expected = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / t_max)) / 2
        np.testing.assert_allclose(values[step], expected, rtol=1e-6, err_msg=f"step {step}")
    assert values[total] == pytest.approx(min_lr)
    # Warmup then step: StepLR's epochs start after warmup (PyTorch SequentialLR).
    warm_step = _schedule_values([0, 1, 3, 5, 6, 9], schedule="step", step_epochs=1, gamma=0.5, warmup_epochs=1)
    np.testing.assert_allclose(warm_step, [0.0, lr / 3, lr, lr, lr / 2, lr / 4], rtol=1e-6)
    with pytest.raises(ValueError, match="total_steps"):
        _schedule_values([0], schedule="cosine")


PLATEAU_A = dict(mode="min", threshold_mode="rel", threshold=0.1, patience=1, cooldown=1, factor=0.5, min_lr=0.02)
METRICS_A = [1.0, 0.95, 0.95, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6]
# By hand from PyTorch's ReduceLROnPlateau: epoch 2's 0.95 is no improvement (needs < 1.0 * 0.9); a bad
# epoch beyond patience 1 reduces; the cooldown epoch after a reduction counts no bad epoch; min_lr
# floors 0.0125 to 0.02, after which reductions change nothing.
TRACE_A = [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02]
PLATEAU_B = dict(mode="max", threshold_mode="abs", threshold=0.05, patience=0, cooldown=0, factor=0.1, min_lr=0.0)
METRICS_B = [0.5, 0.54, 0.56, 0.6, 0.6]
# 0.54 is not above 0.5 + 0.05: reduce (patience 0); 0.56 is; 0.6 is not above 0.61: reduce, twice.
TRACE_B = [1.0, 0.1, 0.1, 0.01, 0.001]


def _plateau(settings, base_lr):
    config = _opt_config(**{f"plateau.{k}": v for k, v in settings.items()})
    return optim.ReduceOnPlateau(config.optimizer.plateau, base_lr)


@pytest.mark.parametrize(
    "settings, base_lr, metrics, trace",
    [(PLATEAU_A, 0.1, METRICS_A, TRACE_A), (PLATEAU_B, 1.0, METRICS_B, TRACE_B)],
)
def test_reduce_on_plateau_matches_pytorch(settings, base_lr, metrics, trace):
    plateau = _plateau(settings, base_lr)
    lrs = [base_lr * plateau.update({"val_loss": m, "val_accuracy": 0.0}) for m in metrics]
    np.testing.assert_allclose(lrs, trace, rtol=1e-12)


def test_reduce_on_plateau_state_round_trip_and_missing_monitor():
    first = _plateau(PLATEAU_A, 0.1)
    json.dumps(first.state_dict(), allow_nan=False)  # JSON before any epoch (best is infinite)
    for m in METRICS_A[:6]:
        first.update({"val_loss": m})
    second = _plateau(PLATEAU_A, 0.1)
    second.load_state_dict(json.loads(json.dumps(first.state_dict(), allow_nan=False)))
    rest = [0.1 * second.update({"val_loss": m}) for m in METRICS_A[6:]]
    np.testing.assert_allclose(rest, TRACE_A[6:], rtol=1e-12)
    with pytest.raises(ConfigError, match=r"config\.optimizer\.plateau\.monitor='val_loss'.*'loss', 'val_acc'"):
        second.update({"loss": 1.0, "val_acc": 0.5})


@pytest.mark.parametrize("frozen", [frozenset(), frozenset({("Conv_0",)})])
def test_set_lr_scale(frozen):
    params, grads = _tree()
    tx = optim.create_optimizer(_opt_config(name="sgd", learning_rate=0.5), frozen)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(tx.init(params), replicated)
    update = jax.jit(tx.update)
    _, state = update(grads, state, params)
    scaled = optim.set_lr_scale(state, 0.25)
    assert jax.tree.structure(scaled) == jax.tree.structure(state)
    assert [x.dtype for x in jax.tree.leaves(scaled)] == [x.dtype for x in jax.tree.leaves(state)]
    assert [x.sharding for x in jax.tree.leaves(scaled)] == [x.sharding for x in jax.tree.leaves(state)]
    assert optim.current_learning_rate(state) == pytest.approx(0.5)
    assert optim.current_learning_rate(scaled) == pytest.approx(0.125)
    updates, _ = update(grads, scaled, params)
    assert update._cache_size() == 1  # the same compiled step
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.125 * grads["Dense_0"]["kernel"], rtol=1e-6)
    conv = updates["Conv_0"]["kernel"]
    np.testing.assert_allclose(conv, 0.0 if frozen else -0.125 * grads["Conv_0"]["kernel"], rtol=1e-6)


def test_lr_scale_scales_decoupled_decay():
    """As PyTorch's AdamW, whose w -= lr * wd * w uses the param group's lr that ReduceLROnPlateau lowered."""
    params, grads = _tree()
    lr, wd = 0.5, 0.1
    tx = optim.create_optimizer(_opt_config(name="adamw", learning_rate=lr, weight_decay=wd))
    state = optim.set_lr_scale(tx.init(params), 0.5)
    zero = jax.tree.map(jnp.zeros_like, grads)  # Adam's own step is 0: only the decay remains
    updates, _ = tx.update(zero, state, params)
    np.testing.assert_allclose(updates["Conv_0"]["kernel"], -lr * 0.5 * wd * params["Conv_0"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["Dense_0"]["bias"], 0.0)


def test_clipping_to_global_norm():
    params, grads = _tree()
    lr = 0.1
    config = _opt_config(name="sgd", learning_rate=lr, clip_norm=1.0)
    huge = jax.tree.map(lambda g: g * 1e6, grads)
    updates = _sgd_update(config, params, huge)
    norm = float(jnp.sqrt(sum(jnp.sum(u**2) for u in jax.tree.leaves(updates))))
    assert norm == pytest.approx(lr * 1.0, rel=1e-5)
    small = jax.tree.map(lambda g: g * 1e-3, grads)  # global norm < 1: untouched
    np.testing.assert_allclose(_sgd_update(config, params, small)["Conv_0"]["kernel"], -lr * small["Conv_0"]["kernel"])


@pytest.mark.parametrize(
    "key, value, extra",
    [
        ("name", "lamb", {}),
        ("schedule", "linear", {}),
        ("weight_decay_type", "l1", {}),
        ("decay_params", "regex:(", {}),
        ("decay_params", "biases", {}),
        ("weight_decay", -0.1, {}),
        ("clip_norm", -1.0, {}),
        ("milestones", "30,20", {"schedule": "multistep"}),
        ("milestones", "0,10", {"schedule": "multistep"}),
        ("milestones", "a,b", {"schedule": "multistep"}),
        ("milestones", "", {"schedule": "multistep"}),
        ("step_epochs", 0, {"schedule": "step"}),
        ("gamma", 0.0, {}),
        ("plateau.mode", "up", {}),
        ("plateau.threshold_mode", "pct", {}),
        ("plateau.factor", 1.0, {}),
        ("plateau.factor", 0.0, {}),
        ("plateau.patience", -1, {}),
        ("plateau.cooldown", -1, {}),
        ("warmup_epochs", -1.0, {}),
        ("warmup_epochs", 10.0, {}),
        ("rho", 1.0, {}),
        ("momentum", 0.0, {"name": "sgd", "nesterov": True}),
    ],
)
def test_validate_names_the_key(key, value, extra):
    config = _opt_config(**extra, **{key: value})
    with pytest.raises(ConfigError, match=rf"config\.optimizer\.{key.replace('.', '[.]')}="):
        optim.validate(config.optimizer, num_epochs=config.num_epochs)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_validate_accepts_every_optimizer_and_schedule(name, schedule):
    config = _opt_config(name=name, schedule=schedule, step_epochs=2, milestones="2,4", warmup_epochs=1.0)
    optim.validate(config.optimizer, num_epochs=config.num_epochs)
