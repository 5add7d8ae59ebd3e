"""One run's time outside its training steps: process wall time against status.json's train_time_s.

  python benchmarks/run_overhead.py [--config configs/sunglasses_cnn.py] [--repeats 3] [-- --config.KEY=VALUE ...]

Runs `launch.py --config=CONFIG` REPEATS times, each into a fresh folder, timing the whole
process (start-up, compiling, training, validation, checkpoints, plots, exit), and prints
each run's wall time, its train_time_s (the epochs' steps, the first dispatch's compiling
included), their ratio, and the run's own account of its time (status.json time_s). The
issue's goal for S4's 40-epoch run on its default data: wall / train_time_s at most 2.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("startup", "compile", "train_steps", "validation", "checkpoints", "plots", "logs")


def one_run(config: str, extra: list[str], workdir: Path) -> dict:
    command = [sys.executable, str(ROOT / "launch.py"), f"--config={config}", f"--workdir={workdir}", *extra]
    tic = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
    wall = time.perf_counter() - tic
    status = json.loads((workdir / "status.json").read_text())
    return {"wall_s": wall, "train_time_s": status["train_time_s"], "time_s": status.get("time_s", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sunglasses_cnn.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more flags for launch.py (after --)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="run_overhead_"))
    results = []
    try:
        for repeat in range(args.repeats):
            result = one_run(args.config, args.extra, folder / str(repeat))
            result["ratio"] = result["wall_s"] / result["train_time_s"]
            results.append(result)
            parts = ", ".join(f"{k} {result['time_s'].get(k, 0):.2f}" for k in KINDS)
            print(
                f"run {repeat + 1}: wall {result['wall_s']:.1f}s, train_time_s {result['train_time_s']:.1f}s, "
                f"ratio {result['ratio']:.2f} ({parts})",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{args.config} {' '.join(args.extra)}: median wall {statistics.median(r['wall_s'] for r in results):.1f}s, "
        f"median train_time_s {statistics.median(r['train_time_s'] for r in results):.1f}s, "
        f"median wall / train_time_s {statistics.median(r['ratio'] for r in results):.2f} (goal: at most 2)"
    )


if __name__ == "__main__":
    main()
