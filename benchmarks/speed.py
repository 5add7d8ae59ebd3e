"""Training and inference speed of labjax against Keras 3 and PyTorch on issue 8's workloads, side by side.

    python benchmarks/speed.py --workloads W0,W1,W2,W3,W4 \\
        [--peers keras_tf,keras_tf_noxla,keras_jax,torch] [--windows 3 --steps N --warmup M] [--quick]
        [--precision bfloat16] [--huge-pages labjax|all|none] [--rounds R]

Every (workload, framework, mode) row runs in its own subprocess, one after another: Keras'
backend is fixed when it is imported, and each row's peak host memory is then its own. With
`--rounds R` the rows run R times over, in turn, and each ratio is taken within a round, where
both sides met the same machine (a shared VM's speed drifts by a fifth within minutes). Rows:
  labjax          the training loop's jitted step (k50: 50 steps per dispatch, W4, when labjax has it)
  keras_tf        Keras 3 on TensorFlow with XLA (jit_compile=True): fit, train_on_batch (W4: fit_spe50 too)
  keras_tf_noxla  the same with jit_compile=False
  keras_jax       Keras 3 on JAX: fit (W4: fit_spe50 too)
  torch           PyTorch 2 eager
All train on random in-memory data (the input pipeline is benchmarked on its own). One table per
workload case; the columns are explained in benchmarks/README.md. The float32 matmul rate measured
before each workload (the best so far) is the ceiling that achieved GFLOP/s (XLA's FLOPs of labjax's
step x steps/s) is compared with. `--precision bfloat16` trains every side in mixed precision
(float32 weights, bfloat16 compute: labjax's `compute_dtype`, Keras' `mixed_bfloat16` policy, torch's
autocast) and measures the ceiling in bfloat16; it is meant for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.speed_common import GROUPS, STEPS_PER_EXECUTION, WORKLOADS, Workload  # noqa: E402
from labjax import host_memory, xla_flags  # noqa: E402

FRAMEWORKS = ("labjax", "keras_tf", "keras_tf_noxla", "keras_jax", "torch")
PEERS = FRAMEWORKS[1:]
RESULT, SKIPPED = "SPEED_RESULT ", "SPEED_SKIPPED "


def modes(framework: str, workload: Workload) -> list[str]:
    """The rows a framework gets on a workload; the per-dispatch chunk only where the workload asks."""
    chunk = workload.chunked
    if framework == "labjax":
        return ["step"] + [f"k{STEPS_PER_EXECUTION}"] * chunk
    if framework in ("keras_tf", "keras_tf_noxla"):
        return ["fit"] + [f"fit_spe{STEPS_PER_EXECUTION}"] * chunk + ["train_on_batch"]
    if framework == "keras_jax":
        return ["fit"] + [f"fit_spe{STEPS_PER_EXECUTION}"] * chunk
    return ["eager"]


def _sizes(workload: Workload, args) -> tuple[int, int, int]:
    """(steps per window, warm-up steps, windows): the flags, else the workload's (or --quick's) defaults."""
    steps = args.steps or (workload.quick_steps if args.quick else workload.steps)
    warmup = args.warmup if args.warmup is not None else (workload.quick_steps if args.quick else workload.warmup)
    windows = args.windows or (2 if args.quick else 3)
    return steps, warmup, windows


def _environment(framework: str, huge_pages: str) -> dict[str, str]:
    """A row's environment. `huge_pages` (labjax | all | none): whose rows get glibc's huge-page
    tunable, which launch.py sets for itself (labjax/host_memory.py); by default peers run as their
    own users run them, without it. Peers also get XLA_FLAGS as the user set them, without the
    flags labjax adds for itself (labjax/xla_flags.py; a labjax row adds them again on import)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env["XLA_FLAGS"] = xla_flags.user_flags or ""
    if huge_pages == "all" or (huge_pages == "labjax" and framework == "labjax"):
        env = host_memory.huge_pages_environment(env) or env
    env["LABJAX_COMPILATION_CACHE"] = ""  # first-step times are compile times, never cache hits
    if framework.startswith("keras"):
        env["KERAS_BACKEND"] = "jax" if framework == "keras_jax" else "tensorflow"
    return env


def run_row(row: str, framework: str, extra: list[str], timeout: float, huge_pages: str = "labjax") -> dict:
    """One row in a fresh subprocess; its result, or {"skipped": why} / {"failed": why}."""
    command = [sys.executable, str(Path(__file__).resolve()), "--row", row, *extra]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=_environment(framework, huge_pages), cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"over --row-timeout={timeout:.0f}s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
        if line.startswith(SKIPPED):
            return {"skipped": line[len(SKIPPED) :]}
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"failed": f"exit {done.returncode}: " + " | ".join(tail)}


def worker(args) -> None:
    """The --row side: measure one row and print it as one JSON line."""
    if args.row == "ceiling":
        from benchmarks.speed_common import matmul_gflops

        print(RESULT + json.dumps(matmul_gflops(args.precision)), flush=True)
        return
    case, framework, mode = args.row.split(":")
    workload = WORKLOADS[case]
    steps, warmup, windows = _sizes(workload, args)
    sizes = dict(steps=steps, warmup=warmup, windows=windows, infer=args.infer, precision=args.precision)
    try:
        if framework == "labjax":
            from benchmarks import speed_labjax

            result = speed_labjax.run(workload, mode, **sizes, profile=args.profile)
        elif framework.startswith("keras"):
            from benchmarks import peers_keras

            result = peers_keras.run(workload, mode, **sizes, jit_compile=framework != "keras_tf_noxla")
        else:
            from benchmarks import peers_torch

            result = peers_torch.run(workload, mode, **sizes, threads=args.torch_threads)
    except NotImplementedError as reason:
        print(SKIPPED + str(reason), flush=True)
        return
    result.update(steps=steps, warmup=warmup, windows=windows, precision=args.precision)
    print(RESULT + json.dumps(result), flush=True)


def _number(value, fmt: str = ",.1f") -> str:
    return "-" if value is None else format(value, fmt)


def merge_rounds(results: list[dict]) -> dict:
    """One row's results from every round as one row: the median rates and first step, the highest
    memory peak, each round's training rate under "round_rates" and load under "loads"; a round
    that failed or skipped makes the row that round's failure."""
    for result in results:
        if "train_rate" not in result:
            return result
    merged = dict(results[0], round_rates=[r["train_rate"] for r in results])
    merged["loads"] = [r["load"] for r in results if "load" in r]
    for key in ("train_rate", "infer_rate", "first_step_s"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            merged[key] = float(np.median(values))
    for key in ("peak_rss_mb", "peak_device_mb"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            merged[key] = max(values)
    return merged


def round_ratios(rounds: list[list[dict]]) -> list[float]:
    """labjax's fastest training rate over the fastest peer's, within each round that has both."""
    ratios = []
    for rows in rounds:
        done = [r for r in rows if "train_rate" in r]
        ours = [r["train_rate"] for r in done if r["framework"] == "labjax"]
        peers = [r["train_rate"] for r in done if r["framework"] != "labjax"]
        if ours and peers:
            ratios.append(max(ours) / max(peers))
    return ratios


def print_table(
    workload: Workload, rows: list[dict], ceiling: float | None, precision: str, ratios: list[float] = ()
) -> None:
    """One workload's table, the best peer and labjax's ratios, and the parameter check; `ceiling`
    is the best matmul GFLOP/s in `precision` measured so far in this run; `ratios`, with more than
    one round, labjax / best peer in each round."""
    done = [r for r in rows if "train_rate" in r]
    flops = next((r["flops_per_step"] for r in done if r.get("flops_per_step")), None)
    h, w, c = workload.image_shape
    print(
        f"\n== {workload.name}: {workload.title}, {h}x{w}x{c}, {workload.num_classes} classes, "
        f"batch {workload.batch_size}, {workload.optimizer}, {precision}"
    )
    if flops:
        print(f"   {flops / 1e9:,.3f} GFLOP per training step (XLA cost analysis of labjax's compiled step)")
    if ceiling:
        print(f"   ceiling: {ceiling:,.1f} GFLOP/s, the best {precision} matmul rate measured in this run")
    peers = [r for r in done if r["framework"] != "labjax"]
    best = max(peers, key=lambda r: r["train_rate"], default=None)
    best_infer = max((r for r in peers if r.get("infer_rate")), key=lambda r: r["infer_rate"], default=None)
    on_device = any(r.get("peak_device_mb") for r in done)  # a GPU: its memory is the one that limits
    memory = ("peak dev MB", "peak_device_mb") if on_device else ("peak RSS MB", "peak_rss_mb")
    header = (
        f"{'side':<40}{'train img/s':>12}{'infer img/s':>12}{'first step s':>13}{memory[0]:>12}"
        f"{'params':>12}{'trainable':>12}{'GFLOP/s':>9}{'% ceiling':>10}{'vs best peer':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "train_rate" not in r:
            print(f"{r['label']:<40}{'skipped: ' + r['skipped'] if 'skipped' in r else 'FAILED: ' + r['failed']}")
            continue
        achieved = flops * r["train_rate"] / workload.batch_size / 1e9 if flops else None
        share = f"{100 * achieved / ceiling:.1f}%" if achieved and ceiling else "-"
        ratio = f"{r['train_rate'] / best['train_rate']:.2f}x" if best and r["framework"] == "labjax" else ""
        print(
            f"{r['label']:<40}{_number(r['train_rate']):>12}{_number(r.get('infer_rate')):>12}"
            f"{_number(r['first_step_s'], '.2f'):>13}{_number(r.get(memory[1]), ',.0f'):>12}"
            f"{r['params']:>12,}{r['trainable']:>12,}{_number(achieved):>9}{share:>10}{ratio:>13}"
        )
    ours = [r for r in done if r["framework"] == "labjax"]
    if ours and best:
        fastest = max(ours, key=lambda r: r["train_rate"])
        line = f"labjax / best peer: training {fastest['train_rate'] / best['train_rate']:.2f}x ({best['label']})"
        inferring = next((r for r in ours if r.get("infer_rate")), None)
        if inferring and best_infer:
            line += f", inference {inferring['infer_rate'] / best_infer['infer_rate']:.2f}x ({best_infer['label']})"
        keras_jax = next((r for r in done if r["framework"] == "keras_jax" and r["mode"] == "fit"), None)
        if keras_jax:
            line += f", first step {ours[0]['first_step_s'] / keras_jax['first_step_s']:.2f}x Keras-JAX fit's"
        print(line)
    if len(ratios) > 1:
        each = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
        print(f"labjax / best peer, training, round by round: {each}; median {np.median(ratios):.2f}x")
    loads = [load for r in rows for load in r.get("loads", [r["load"]] if "load" in r else [])]
    if loads:
        print(f"load average (1 min) at the rows' starts: {min(loads):.1f} to {max(loads):.1f}")
    counts = {(r["params"], r["trainable"]) for r in done}
    if len(counts) == 1:
        params, trainable = counts.pop()
        print(f"parameters equal across frameworks: {params:,} ({trainable:,} trainable)")
    elif counts:
        listed = "; ".join(f"{r['label']} {r['params']:,} ({r['trainable']:,} trainable)" for r in done)
        print(f"PARAMETER COUNTS DIFFER: {listed}")


def measure_ceiling(timeout: float, precision: str) -> dict:
    """The matmul rate, measured again before each workload: others' load lowers it, and the best
    seen so far is the machine's ceiling."""
    ceiling = run_row("ceiling", "labjax", [f"--precision={precision}"], timeout)
    if "gflops" not in ceiling:
        print(f"{precision} matmul: not measured ({ceiling})", flush=True)
        return ceiling
    rates = ", ".join(f"{k} {v:,.1f}" for k, v in ceiling["rates"].items())
    print(
        f"{precision} matmul: {ceiling['gflops']:,.1f} GFLOP/s ({ceiling['size']}^2 products, best of 5: {rates}) "
        f"on {ceiling['device']}, {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return ceiling


def run_rows(case: str, frameworks: list[str], passed: list[str], args, tag: str) -> list[dict]:
    """Every framework's rows of one workload case, each in its own subprocess, in order."""
    rows = []
    for framework in frameworks:
        for index, mode in enumerate(modes(framework, WORKLOADS[case])):
            extra = passed + ["--infer"] * (index == 0)  # inference once per framework
            start, load = time.perf_counter(), os.getloadavg()[0]
            result = run_row(f"{case}:{framework}:{mode}", framework, extra, args.row_timeout, args.huge_pages)
            result.setdefault("label", f"{framework} {mode}")
            result.update(framework=framework, mode=mode, case=case, load=load)
            rate = _number(result.get("train_rate"))
            status = result.get("skipped") or result.get("failed") or f"{rate} img/s"
            took = time.perf_counter() - start
            print(f"{tag} {result['label']}: {status} ({took:.0f}s, load {load:.1f})", flush=True)
            rows.append(result)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(GROUPS), help=f"of {','.join([*GROUPS, *WORKLOADS])}")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"of {','.join(PEERS)}")
    parser.add_argument("--no-labjax", action="store_true", help="peers only")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per window (default: the workload's)")
    parser.add_argument("--warmup", type=int, default=None, help="steps after the first, before timing")
    parser.add_argument("--windows", type=int, default=0, help="timed windows; the median counts (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny windows, for trying the harness out")
    parser.add_argument("--torch-threads", type=int, default=0, help="PyTorch's threads (default: all cores)")
    parser.add_argument("--row-timeout", type=float, default=1800.0, help="seconds one row may take")
    parser.add_argument("--json", default="", help="also write every row's result to this file")
    parser.add_argument(
        "--precision", default="float32", choices=("float32", "bfloat16"), help="bfloat16: mixed precision (a GPU's)"
    )
    parser.add_argument(
        "--huge-pages",
        default="labjax",
        choices=("labjax", "all", "none"),
        help="whose rows run with glibc's huge-page tunable, as launch.py runs labjax (default: labjax's only)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="after timing, trace N more labjax dispatches and print where time went"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every row R times in turn; rates are medians, ratios per round"
    )
    parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # internal: measure one row
    parser.add_argument("--infer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        return worker(args)

    cases = []
    for name in args.workloads.split(","):
        if name not in GROUPS and name not in WORKLOADS:
            parser.error(f"--workloads: {name!r} is unknown; valid: {', '.join([*GROUPS, *WORKLOADS])}")
        cases += GROUPS.get(name, [name])
    peers = [p for p in args.peers.split(",") if p]
    for peer in peers:
        if peer not in PEERS:
            parser.error(f"--peers: {peer!r} is unknown; valid: {', '.join(PEERS)}")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a count of rounds; give 1 or more")
    frameworks = ([] if args.no_labjax else ["labjax"]) + peers
    passed = [f"--{k}={getattr(args, k)}" for k in ("steps", "windows") if getattr(args, k)]
    passed += [f"--warmup={args.warmup}"] * (args.warmup is not None) + ["--quick"] * args.quick
    passed += [f"--torch-threads={args.torch_threads}"] * bool(args.torch_threads) + [f"--precision={args.precision}"]
    passed += [f"--profile={args.profile}"] * bool(args.profile)

    everything, gflops = {"ceilings": [], "rows": []}, None
    for case in cases:
        ceiling = measure_ceiling(args.row_timeout, args.precision)
        everything["ceilings"].append(ceiling)
        gflops = max(gflops or 0.0, ceiling.get("gflops", 0.0)) or None
        workload, rounds = WORKLOADS[case], []
        for round_index in range(args.rounds):
            tag = f"[{case}]" if args.rounds == 1 else f"[{case} round {round_index + 1}/{args.rounds}]"
            once = [flag for flag in passed if not flag.startswith("--profile")]  # a trace is taken once
            rounds.append(run_rows(case, frameworks, once if round_index else passed, args, tag))
        rows = [merge_rounds(list(results)) for results in zip(*rounds)]
        print_table(workload, rows, gflops, args.precision, round_ratios(rounds))
        for row in rows:
            if row.get("profile"):  # labjax's rows with --profile: the summary of profiling.summarize
                print(f"\nWhere {row['label']}'s time went ({case}):\n{row['profile']}", flush=True)
        everything["rows"] += rows
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
