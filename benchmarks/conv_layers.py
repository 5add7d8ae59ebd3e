"""Times labjax.models.layers' CPU rewrites ("fast") against lax convolutions, and re-checks the rules
that choose between them (after a JAX upgrade, say).

    python benchmarks/conv_layers.py [--batch 32] [--repeats 5] [--only convT] [--table layers|rules|both]
    python benchmarks/conv_layers.py --quick   # the rules table on tiny shapes: that the script runs

Layers table: each layer at MobileNetV2 U-Net shapes, forward and forward + backward (gradient w.r.t.
input and params), jitted; the best of --repeats runs after a warm-up, fast and lax interleaved so
background load hits both alike. Rules table: for each rule of ``labjax.models.cpu_conv`` (the im2col
patch depth, ``winograd_pays``, the max pool's views) on representative shapes, the formulation the
rule picks against the one it passes over, timed the same way, and whether the faster is the one picked.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from labjax.models import cpu_conv  # noqa: E402
from labjax.models.layers import Conv, ConvTranspose, DepthwiseConv, max_pool  # noqa: E402

# (label, layer, input H, W, C) at alpha=1.0 and 128x128 inputs; the batch comes from --batch.
CASES = [
    ("depthwise 3x3 s1", DepthwiseConv((3, 3), (1, 1)), (64, 64, 96)),
    ("depthwise 3x3 s2", DepthwiseConv((3, 3), (2, 2)), (64, 64, 96)),
    ("depthwise 3x3 s1", DepthwiseConv((3, 3), (1, 1)), (8, 8, 576)),
    ("conv 1x1 96->24", Conv(24, (1, 1), use_bias=False), (64, 64, 96)),
    ("conv 1x1 24->144", Conv(144, (1, 1), use_bias=False), (64, 64, 24)),
    ("conv 1x1 320->1280", Conv(1280, (1, 1), use_bias=False), (4, 4, 320)),
    ("conv 3x3 3->32 s2 (stem)", Conv(32, (3, 3), (2, 2), use_bias=False), (128, 128, 3)),
    ("conv 3x3 64->64 s1 (lax kept)", Conv(64, (3, 3)), (32, 32, 64)),
    ("convT 3x3 s2 320->512", ConvTranspose(512, use_bias=False), (4, 4, 320)),
    ("convT 3x3 s2 1088->256", ConvTranspose(256, use_bias=False), (8, 8, 1088)),
    ("convT 3x3 s2 448->128", ConvTranspose(128, use_bias=False), (16, 16, 448)),
    ("convT 3x3 s2 272->64", ConvTranspose(64, use_bias=False), (32, 32, 272)),
    ("convT 3x3 s2 160->3", ConvTranspose(3), (64, 64, 160)),
]


def _compiled(layer, params, x):
    """Jitted forward and forward+backward of ``layer``, compiled and warmed up."""
    forward = jax.jit(lambda p, x: layer.apply({"params": p}, x))
    loss = lambda p, x: jnp.mean(jnp.square(layer.apply({"params": p}, x)))  # noqa: E731
    gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for f in (forward, gradient):
        jax.block_until_ready(f(params, x))
    return forward, gradient


def _best_ms(fns: dict, args, repeats: int) -> dict:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1e3 * t for name, t in best.items()}


RULES = ("im2col depth", "winograd", "max pool")


@dataclasses.dataclass(frozen=True)
class RuleCase:
    """One shape a rule decides: its two formulations (name -> function of the input, or of the input
    and kernel for convolutions) and the name the rule picks."""

    rule: str
    mode: str  # "inference" (value) or "training" (value + gradient)
    label: str
    x_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...] | None
    formulations: dict[str, Callable]
    choice: str


def _same(kernel_shape: tuple[int, ...]) -> cpu_conv.Pads:
    kh, kw = kernel_shape[:2]
    return ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)


def _im2col_case(x_shape, kernel_shape) -> RuleCase:
    pads = _same(kernel_shape)
    kernel = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    kh, kw, cin, features = kernel_shape
    return RuleCase(
        "im2col depth",
        "inference",  # trained, both run im2col (lax's forward is kept for inference only)
        f"{kh}x{kw} {cin}->{features} (depth {kh * kw * cin})",
        x_shape,
        kernel_shape,
        {
            "im2col": lambda x, k: cpu_conv.conv_im2col(x, k, (1, 1), pads),
            "lax": lambda x, k: cpu_conv.conv_lax(x, k, (1, 1), pads),
        },
        "im2col" if cpu_conv.uses_im2col(kernel) else "lax",
    )


def _winograd_case(x_shape, kernel_shape, mode) -> RuleCase:
    pads = _same(kernel_shape)
    x, kernel = jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    other = "lax" if mode == "inference" else "im2col"  # conv_fast's path where Winograd does not pay
    return RuleCase(
        "winograd",
        mode,
        f"3x3 {kernel_shape[2]}->{kernel_shape[3]}",
        x_shape,
        kernel_shape,
        {
            "winograd": lambda x, k: cpu_conv.conv_winograd(x, k, pads),
            other: lambda x, k: cpu_conv.conv_lax_im2col_grad(x, k, (1, 1), pads),
        },
        "winograd" if cpu_conv.winograd_pays(x, kernel, (1, 1), pads) else other,
    )


def _pool_case(x_shape, window, strides, padding, mode) -> RuleCase:
    """The views against flax's pool; the rule's pick read off the fast path's jaxpr (a reduce-window
    or its select-and-scatter gradient is lax's pool)."""

    def fast(x):
        return max_pool(x, window, strides, padding, impl="fast")

    traced = fast if mode == "inference" else jax.grad(lambda x: jnp.sum(fast(x)))
    jaxpr = str(jax.make_jaxpr(traced)(jax.ShapeDtypeStruct(x_shape, jnp.float32)))
    kind = "blocks" if strides == window else "overlapping"
    return RuleCase(
        "max pool",
        mode,
        f"{window[0]}x{window[1]} s{strides[0]} {padding} ({kind})",
        x_shape,
        None,
        {"views": fast, "lax": lambda x: nn.max_pool(x, window, strides, padding)},
        "lax" if "reduce_window" in jaxpr or "select_and_scatter" in jaxpr else "views",
    )


def rule_cases(quick: bool = False) -> list[RuleCase]:
    """Representative shapes of each rule (batch sizes of the studies); ``quick``: tiny ones."""
    if quick:
        im2col = [((2, 8, 8, 3), (3, 3, 3, 8)), ((2, 8, 8, 8), (3, 3, 8, 8)), ((2, 8, 8, 1), (3, 3, 1, 32))]
        winograd = [((1, 8, 8, 8), (3, 3, 8, 8))]
        pools = [((2, 8, 8, 4), (2, 2), (2, 2), "VALID"), ((2, 9, 9, 4), (3, 3), (2, 2), "SAME")]
    else:
        im2col = [((32, 56, 56, c), (3, 3, c, 32)) for c in (3, 4, 8, 16)]
        im2col += [((32, 28, 28, 1), (3, 3, 1, 32)), ((32, 28, 28, 1), (3, 3, 1, 8))]  # gray images
        winograd = [
            ((8, 24, 24, 256), (3, 3, 256, 256)),  # VGG16
            ((8, 24, 24, 64), (3, 3, 64, 64)),  # 0.34 GFLOP
            ((8, 96, 96, 32), (3, 3, 32, 64)),  # 32 channels
            ((1, 8, 8, 1024), (3, 3, 1024, 1024)),  # 16 tiles
            ((2, 8, 8, 1024), (3, 3, 1024, 1024)),  # 32 tiles
        ]
        pools = [((256, 26, 26, 32), (2, 2), (2, 2), "VALID"), ((32, 48, 48, 64), (3, 3), (2, 2), "SAME")]
    cases = [_im2col_case(*shapes) for shapes in im2col]
    cases += [_winograd_case(*shapes, mode) for mode in ("inference", "training") for shapes in winograd]
    cases += [_pool_case(*pool, mode) for mode in ("inference", "training") for pool in pools]
    return cases


def _timed(case: RuleCase, rng: np.random.Generator, repeats: int) -> dict[str, float]:
    """Milliseconds of each formulation of ``case``: its value, or its value and gradient."""
    args = [jnp.asarray(rng.standard_normal(case.x_shape), jnp.float32)]
    if case.kernel_shape:
        args.append(jnp.asarray(rng.standard_normal(case.kernel_shape) / np.sqrt(np.prod(case.kernel_shape[:3]))))
    fns = {}
    for name, f in case.formulations.items():
        if case.mode == "training":
            f = jax.value_and_grad(lambda *a, f=f: jnp.mean(jnp.square(f(*a))), argnums=tuple(range(len(args))))
        fns[name] = jax.jit(f)
        jax.block_until_ready(fns[name](*args))
    return _best_ms(fns, args, repeats)


def check_rules(quick: bool = False, repeats: int = 5, seed: int = 0) -> list[dict]:
    """One row per rule case: the rule's pick, both formulations' milliseconds, the measured winner and
    whether it is the pick (``agrees``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for case in rule_cases(quick):
        ms = _timed(case, rng, repeats)
        (other,) = set(ms) - {case.choice}
        winner = min(ms, key=ms.get)
        rows.append(
            dict(
                rule=case.rule,
                mode=case.mode,
                case=case.label,
                input="x".join(map(str, case.x_shape)),
                choice=case.choice,
                choice_ms=ms[case.choice],
                other=other,
                other_ms=ms[other],
                ratio=ms[other] / ms[case.choice],
                winner=winner,
                agrees=winner == case.choice,
            )
        )
    return rows


def print_rules(rows: list[dict]) -> None:
    header = f"{'rule':12s} {'mode':9s} {'case':28s} {'input':>14s} | {'pick':>8s} {'ms':>8s} |"
    print(header + f" {'other':>8s} {'ms':>8s} | {'other/pick':>10s} {'agrees':>6s}")
    for r in rows:
        pick = f"{r['choice']:>8s} {r['choice_ms']:8.2f}"
        other = f"{r['other']:>8s} {r['other_ms']:8.2f}"
        line = f"{r['rule']:12s} {r['mode']:9s} {r['case']:28s} {r['input']:>14s} | {pick} | {other} |"
        print(f"{line} {r['ratio']:10.2f} {'yes' if r['agrees'] else 'NO':>6s}", flush=True)
    disagree = [r for r in rows if not r["agrees"]]
    print(f"{len(rows) - len(disagree)} of {len(rows)} cases agree with their rule", flush=True)


def print_layers(batch: int, repeats: int, only: str) -> None:
    rng = np.random.default_rng(0)
    header = f"{'layer':30s} {'input':>13s} | {'fwd fast':>8s} {'fwd lax':>8s} {'lax/fast':>8s} |"
    print(header + f" {'grad fast':>9s} {'grad lax':>9s} {'lax/fast':>8s}")
    for label, layer, shape in (case for case in CASES if only in case[0]):
        x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
        shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
        params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
        fns = {}
        for impl in ("fast", "lax"):
            fns[impl, "fwd"], fns[impl, "grad"] = _compiled(layer.clone(impl=impl), params, x)
        t = _best_ms(fns, (params, x), repeats)
        fwd = f"{t['fast', 'fwd']:8.1f} {t['lax', 'fwd']:8.1f} {t['lax', 'fwd'] / t['fast', 'fwd']:8.2f}"
        grad = f"{t['fast', 'grad']:9.1f} {t['lax', 'grad']:9.1f} {t['lax', 'grad'] / t['fast', 'grad']:8.2f}"
        print(f"{label:30s} {'x'.join(map(str, shape)):>13s} | {fwd} | {grad}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="the layers table's batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="run only the layers whose label contains this")
    parser.add_argument("--table", choices=("layers", "rules", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="the rules table on tiny shapes, one repeat")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    print(f"backend={jax.default_backend()} best of {repeats}, milliseconds")
    if args.table in ("layers", "both") and not args.quick:
        print(f"\nLayers, batch {args.batch}: fast against lax")
        print_layers(args.batch, repeats, args.only)
    if args.table in ("rules", "both") or args.quick:
        print("\nRules: the formulation each picks against the one it passes over")
        print_rules(check_rules(args.quick, repeats))


if __name__ == "__main__":
    main()
