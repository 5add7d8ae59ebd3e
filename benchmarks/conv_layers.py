"""Times labjax.models.layers' CPU rewrites ("fast") against lax convolutions at MobileNetV2 U-Net shapes.

    python benchmarks/conv_layers.py [--batch 32] [--repeats 5] [--only convT]

For each layer: forward, and forward + backward (gradient w.r.t. input and params), jitted; the best of
--repeats runs after a warm-up, fast and lax interleaved so background load hits both alike.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from labjax.models.layers import Conv, ConvTranspose, DepthwiseConv  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="run only the layers whose label contains this")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"backend={jax.default_backend()} batch={args.batch} best of {args.repeats}, milliseconds")
    header = f"{'layer':30s} {'input':>13s} | {'fwd fast':>8s} {'fwd lax':>8s} {'lax/fast':>8s} |"
    print(header + f" {'grad fast':>9s} {'grad lax':>9s} {'lax/fast':>8s}")
    for label, layer, shape in (case for case in CASES if args.only in case[0]):
        x = jnp.asarray(rng.standard_normal((args.batch, *shape)), jnp.float32)
        shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
        params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
        fns = {}
        for impl in ("fast", "lax"):
            fns[impl, "fwd"], fns[impl, "grad"] = _compiled(layer.clone(impl=impl), params, x)
        t = _best_ms(fns, (params, x), args.repeats)
        fwd = f"{t['fast', 'fwd']:8.1f} {t['lax', 'fwd']:8.1f} {t['lax', 'fwd'] / t['fast', 'fwd']:8.2f}"
        grad = f"{t['fast', 'grad']:9.1f} {t['lax', 'grad']:9.1f} {t['lax', 'grad'] / t['fast', 'grad']:8.2f}"
        print(f"{label:30s} {'x'.join(map(str, shape)):>13s} | {fwd} | {grad}", flush=True)


if __name__ == "__main__":
    main()
