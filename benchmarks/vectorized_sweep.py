"""Vectorized sweeps against the same members trained one after another, side by side in one run.

  S4: ConvNN_1 on the synthetic faces, batch 1 (as the study), 5 folds x 3 L2 weights = 15
      members (--members takes the first N), --epochs each.
  S0: the Adam group of the segmentation optimizer study at smoke sizes: 3 learning rates x
      3 (beta_1, beta_2) = 9 members.

Each way runs in its own child process through sweep.run_sweep (parallel=0: members one
after another in that process; vectorize=True: one program), into a fresh folder, so each
includes what a sweep costs (data loading, compiling, evaluation, checkpoints, plots).
Each way gets its own empty XLA compilation cache (`--cache fresh`, the default): members
one after another then compile once and reuse the program, as a user's sweep does, and
neither way reuses the other's programs. `--cache off` compiles every member anew.

Usage: python benchmarks/vectorized_sweep.py [--epochs 2] [--members 15] [--s0-epochs 1]
       [--studies S4,S0] [--cache fresh|off]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import logging  # noqa: E402

from labjax import cli, sweep  # noqa: E402

WAYS = {"one after another": False, "vectorized": True}

S4 = """
from configs import sunglasses_cnn


def get_config(arg=None):
    config = sunglasses_cnn.get_config("convnn1,kfold")
    config.num_epochs = {epochs}
    config.optimizer.weight_decay_type = "l2"
    return config


def get_sweep(arg=None):
    members = [
        {{"data.fold": fold, "optimizer.weight_decay": l2}} for l2 in (0.0, 1e-4, 1e-3) for fold in range(5)
    ]
    yield from members[:{members}]
"""

S0 = """
from configs import seg_mobilenet


def get_config(arg=None):
    config = seg_mobilenet.get_config("smoke")
    config.num_epochs = {epochs}
    config.optimizer.name = "adam"
    return config


def get_sweep(arg=None):
    for lr in (0.001, 0.01, 0.5):
        for b1, b2 in ((0.9, 0.999), (0.8, 0.999), (0.8, 0.85)):
            yield {{"optimizer.learning_rate": lr, "optimizer.b1": b1, "optimizer.b2": b2}}
"""


def time_way(name: str, way: str, config: Path, folder: Path) -> float:
    """Runs one way of one study in this process (a child of main); returns its seconds."""
    cli.enable_compilation_cache()  # LABJAX_COMPILATION_CACHE: this way's own folder, or "" for off
    tic = time.perf_counter()
    try:
        sweep.run_sweep(str(config), folder, parallel=0, report=False, vectorize=WAYS[way])
    except sweep.SweepIncomplete as error:  # a diverging member (S0's lr 0.5) is a result, not a failure
        print(f"[{name}] {way}: {error}", flush=True)
    return time.perf_counter() - tic


def time_both(name: str, text: str, folder: Path, cache: str) -> tuple[float, float]:
    config = folder / f"{name}.py"
    config.write_text(text)
    times = {}
    for way, vectorize in WAYS.items():
        env = dict(
            os.environ, LABJAX_COMPILATION_CACHE=str(folder / f"xla_{name}_{vectorize}") if cache == "fresh" else ""
        )
        child = [sys.executable, __file__, "--child", name, way, str(config), str(folder / f"{name}_{vectorize}")]
        result = subprocess.run(child, env=env, stdout=subprocess.PIPE, text=True, check=True)
        times[way] = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
        print(f"[{name}] {way}: {times[way]:.1f}s", flush=True)
    return times["one after another"], times["vectorized"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="S4 epochs per member (the study: 40)")
    parser.add_argument("--members", type=int, default=15, help="S4 members (5 folds x 3 L2 = 15)")
    parser.add_argument("--s0-epochs", type=int, default=1, help="S0 epochs per member")
    parser.add_argument("--studies", default="S4,S0")
    parser.add_argument("--cache", choices=("fresh", "off"), default="fresh", help="XLA cache of each way")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # NAME WAY CONFIG FOLDER: one way, in a child
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    if args.child:
        name, way, config, folder = args.child
        print(json.dumps({"seconds": time_way(name, way, Path(config), Path(folder))}), flush=True)
        return
    studies = {
        "S4": S4.format(epochs=args.epochs, members=args.members),
        "S0": S0.format(epochs=args.s0_epochs),
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.studies.split(","):
            results[name] = time_both(name, studies[name], Path(folder), args.cache)
    print(f"\nXLA compilation cache: {args.cache}\nstudy  one after another  vectorized  ratio")
    for name, (sequential, vectorized) in results.items():
        print(f"{name:5}  {sequential:14.1f}s  {vectorized:9.1f}s  {sequential / vectorized:5.2f}x")


if __name__ == "__main__":
    main()
