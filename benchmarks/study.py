"""A whole study, end to end: labjax's sweep command against the study's own framework, same runs.

  python benchmarks/study.py --study S4|S2|S0 [--quick] [--repeats 3] [--epochs N] [--keep DIR]

Each side runs the way its user runs it, in its own process, timed from the command's start to
its end (imports, data, compiling, training, validation, checkpoints, plots, report):
  labjax  the study's sweep command(s): `launch.py --mode=sweep ... --vectorize --parallel=2`
          (members that share a program train as one; the rest two at a time), with its report
          (`--no-vectorize`: two members at a time, each in its own process).
  peer    benchmarks/study_peers.py: one process training every run one after another in the
          framework of the study's original code (PyTorch for S4, Keras 3 on TensorFlow for S2
          and S0), the same models (parameter counts checked), data, epochs, batch sizes,
          optimizers and per-epoch validation, saving each run's weights, history and curves.
Both sides get the same runs: the peer's plan is made from labjax's own sweep members
(sweep.expand), and their data from labjax's loader (examples after preprocessing and
normalisation, written to .npz before any timing: the peer's reading of them is timed).

Every repeat times both sides back to back (their order alternates), and prints the ratio
peer / labjax; the summary gives the median ratio, and where labjax's time went, summed from
its members' status.json `time_s` (start-up, compiling, training steps, validation,
checkpoints, plots) and the sweep's own wall time.

Studies (the `--quick` form in brackets; --epochs overrides either):
  S4  ConvNN_1 and ConvNN_2 x {none, L2, dropout 0.25, dropout 0.5, flip} x 5 folds, 40 epochs,
      batch 1, on the built-in synthetic faces (50 runs) [ConvNN_1 x the 5 settings x folds 0-1,
      10 epochs: 10 runs]
  S2  the 4 architectures x 5 folds, Fashion-MNIST merged to 3 classes, 10 epochs with early
      stopping (20 runs) on /usr/share/datasets/fashion-mnist, else the built-in synthetic set
      [the 4 architectures x folds 0-1 on the synthetic set, 2 epochs: 8 runs]
  S0  the 21-run optimizer study (SGD, Adam, Adamax x learning rates x betas), MobileNetV2
      U-Net on the built-in synthetic scenes at 64x64, 320 train / 80 validation, 2 epochs
      (the study: 128x128, 40 epochs) [160 train / 40 validation, 1 epoch]
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TIME_KINDS = ("startup", "compile", "train_steps", "validation", "checkpoints", "plots", "logs")


@dataclasses.dataclass
class Sweep:
    """One labjax sweep command: --config=config, --sweep=each of flags, --config.KEY=VALUE of overrides."""

    config: str
    flags: list[str]
    overrides: dict


@dataclasses.dataclass
class Study:
    framework: str  # the peer: torch | keras
    sweeps: list[Sweep]
    epochs: int


def s4(quick: bool) -> Study:
    if quick:
        sweeps = [Sweep("configs/sunglasses_cnn.py:convnn1,kfold", ["settings", "data.fold=0,1"], {})]
        return Study("torch", sweeps, 10)
    models = ("convnn1", "convnn2")
    return Study("torch", [Sweep(f"configs/sunglasses_cnn.py:{m}", ["settings_folds"], {}) for m in models], 40)


def s2(quick: bool) -> Study:
    real = FASHION_MNIST.exists() and not quick
    arg = "" if real else ":synthetic"
    flags = ["architectures", "data.fold=0,1"] if quick else ["architectures_folds"]
    config = f"configs/fashion3_cnn.py{arg},kfold" if quick else f"configs/fashion3_cnn.py{arg}"
    return Study("keras", [Sweep(config, flags, {})], 2 if quick else 10)


def s0(quick: bool) -> Study:
    size, train, val = (64, 160, 40) if quick else (64, 320, 80)
    overrides = {"data.image_size": size, "data.train_size": train, "data.val_size": val}
    return Study("keras", [Sweep("configs/seg_mobilenet.py", [], overrides)], 1 if quick else 2)


STUDIES = {"S4": s4, "S2": s2, "S0": s0}


def members(study: Study) -> list[tuple[Sweep, object]]:
    """(sweep, sweep.Member) for every run of the study, as labjax's sweep command expands them."""
    from labjax import sweep as sweep_lib

    return [
        (s, member)
        for s in study.sweeps
        for member in sweep_lib.expand(s.config, s.flags, {**s.overrides, "num_epochs": study.epochs})
    ]


def labjax_commands(study: Study, workdir: Path, vectorize: bool = True) -> list[list[str]]:
    commands = []
    for index, s in enumerate(study.sweeps):
        command = [sys.executable, str(ROOT / "launch.py"), "--mode=sweep", f"--config={ROOT / s.config}"]
        command += [f"--sweep={flag}" for flag in s.flags]
        command += [f"--config.{key}={value}" for key, value in {**s.overrides, "num_epochs": study.epochs}.items()]
        command += ["--vectorize"] if vectorize else []
        command += ["--parallel=2", f"--workdir={workdir / f'sweep{index}'}"]
        commands.append(command)
    return commands


def _examples(data, split: str, config) -> tuple:
    """A split's examples as the model is fed them (preprocessed, normalised), padding dropped."""
    import numpy as np

    from labjax.data import pipeline

    images, labels = [], []
    for batch in pipeline.eval_batches(data, split, config, global_batch=256):
        valid = batch["valid"]
        images.append(batch["image"][valid])
        labels.append(batch["label"][valid])
    return np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int32)


def export_data(config, path: Path) -> None:
    """The member's training examples (with its added copies, mirrored) and validation examples, as .npz."""
    import numpy as np

    from labjax import models
    from labjax.data import pipeline

    data = pipeline.load(config, models.model_info(config.model.name).preprocessing)
    x_train, y_train = _examples(data, "train", config)
    if len(data.copies):  # balancing or copy_fraction: the copies differ from their originals by a flip
        x_train = np.concatenate([x_train, x_train[data.copies][:, :, ::-1]])
        y_train = np.concatenate(
            [y_train, y_train[data.copies][:, :, ::-1] if y_train.ndim == 3 else y_train[data.copies]]
        )
    x_val, y_val = _examples(data, "validation", config)
    if y_train.ndim == 4:  # masks (N, H, W, 1)
        y_train, y_val = y_train[..., 0], y_val[..., 0]
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def parameter_count(config, input_shape, num_classes: int) -> int:
    import jax
    import jax.numpy as jnp

    from labjax import models

    model, _ = models.build(config.model, num_classes, input_shape)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))()
    return int(sum(x.size for x in jax.tree.leaves(variables)))


def peer_run(name: str, config, data_file: Path, expected_params: int, num_classes: int) -> dict:
    opt = config.optimizer
    stopping = config.early_stopping
    return {
        "name": name,
        "task": config.task,
        "model": {k: config.model.get(k) for k in ("name", "layers", "dropout", "alpha", "bn_momentum")},
        "num_classes": num_classes,
        "expected_params": expected_params,
        "data": str(data_file),
        "epochs": config.num_epochs,
        "batch_size": config.batch_size,
        "eval_batch_size": config.eval_batch_size,
        "optimizer": {k: opt.get(k) for k in ("name", "learning_rate", "b1", "b2", "eps", "momentum")},
        "l2": opt.weight_decay if opt.weight_decay_type == "l2" else 0.0,
        "augment_flip_lr": config.data.augment == "flip_lr",
        "early_stopping": (
            {"monitor": stopping.monitor, "patience": stopping.patience, "restore_best": stopping.restore_best}
            if stopping.patience > 0
            else None
        ),
        "seed": config.seed,
    }


def write_plan(study_name: str, study: Study, folder: Path) -> Path:
    """The peer's plan (PLAN.json) and its data files, from labjax's members of the study."""
    from labjax import config as config_lib

    runs, files = [], {}
    for index, (_, member) in enumerate(members(study)):
        config = member.config
        data_key = json.dumps([config_lib.to_dict(config.data), config.seed], sort_keys=True, default=str)
        if data_key not in files:
            files[data_key] = folder / f"data{len(files)}.npz"
            export_data(config, files[data_key])
        import numpy as np

        with np.load(files[data_key]) as arrays:
            input_shape, labels = arrays["x_train"].shape[1:], arrays["y_train"]
        num_classes = len(config.data.class_names.split(",")) if config.data.class_names else config.data.num_classes
        if config.data.get("merge"):
            num_classes = len(config.data.merge.split(";"))
        num_classes = max(num_classes, int(labels.max()) + 1)
        expected = parameter_count(config, input_shape, num_classes)
        runs.append(peer_run(f"{index:02d}_{member.name}", config, files[data_key], expected, num_classes))
    plan = {"study": study_name, "framework": study.framework, "out": str(folder / "peer_runs"), "runs": runs}
    path = folder / "plan.json"
    path.write_text(json.dumps(plan, indent=1))
    return path


def run_timed(command: list[str], log: Path) -> float:
    tic = time.perf_counter()
    with open(log, "a") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return time.perf_counter() - tic


def where_time_went(workdir: Path) -> dict:
    """labjax's members' time_s summed by kind: a vectorized group's shared times counted once, and
    of the groups trained one after another in the sweep's process only the first one's start-up
    (a group's `startup` is the process's age when it started)."""
    totals = dict.fromkeys(TIME_KINDS, 0.0)
    seen_groups, group_startups = set(), {}
    for status_path in sorted(workdir.glob("sweep*/*/status.json")):
        times = json.loads(status_path.read_text()).get("time_s") or {}
        group = times.get("group")
        for kind in TIME_KINDS:
            if group is not None and kind == "startup":
                group_startups[(status_path.parent.parent, group)] = times.get(kind) or 0.0
                continue
            shared = group is not None and kind in ("compile", "train_steps", "validation")
            if shared and (group, kind) in seen_groups:
                continue
            seen_groups.add((group, kind))
            totals[kind] += times.get(kind) or 0.0
    for sweep_dir in {folder for folder, _ in group_startups}:
        totals["startup"] += min(v for (folder, _), v in group_startups.items() if folder == sweep_dir)
    return totals


def one_repeat(args, study_name: str, study: Study, plan: Path, folder: Path, repeat: int) -> dict:
    sides = ["labjax", "peer"] if repeat % 2 == 0 else ["peer", "labjax"]
    result = {}
    for side in sides:
        workdir = folder / f"{side}{repeat}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        log = folder / f"{side}{repeat}.log"
        if side == "labjax":
            commands = labjax_commands(study, workdir, not args.no_vectorize)
            result["labjax_s"] = sum(run_timed(command, log) for command in commands)
            result["labjax_time_s"] = where_time_went(workdir)
        else:
            plan_text = json.loads(plan.read_text())
            plan_text["out"] = str(workdir)
            repeat_plan = folder / f"plan{repeat}.json"
            repeat_plan.write_text(json.dumps(plan_text))
            command = [sys.executable, str(ROOT / "benchmarks" / "study_peers.py"), str(repeat_plan)]
            result["peer_s"] = run_timed(command, log)
        print(f"[{study_name}] repeat {repeat + 1}: {side} {result[side + '_s']:.1f}s", flush=True)
    result["ratio"] = result["peer_s"] / result["labjax_s"]
    return result


def report(study_name: str, study: Study, args, results: list[dict], runs: int) -> None:
    ratios = [r["ratio"] for r in results]
    framework = {"torch": "PyTorch", "keras": "Keras 3 (TensorFlow)"}[study.framework]
    print(
        f"\n{study_name}{' --quick' if args.quick else ''}: {runs} runs of {study.epochs} epochs; "
        f"{len(results)} repeats on {os.cpu_count()} cores"
    )
    print("repeat  labjax s  peer s  peer/labjax")
    for index, r in enumerate(results):
        print(f"{index + 1:6}  {r['labjax_s']:8.1f}  {r['peer_s']:6.1f}  {r['ratio']:10.2f}x")
    print(
        f"median  {statistics.median(r['labjax_s'] for r in results):8.1f}  "
        f"{statistics.median(r['peer_s'] for r in results):6.1f}  {statistics.median(ratios):10.2f}x"
        f"  (labjax against {framework})"
    )
    middle = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    times = middle["labjax_time_s"]
    known = sum(times.values())
    parts = ", ".join(f"{kind} {seconds:.1f}s" for kind, seconds in times.items())
    print(
        f"labjax's time in the median repeat ({middle['labjax_s']:.1f}s): {parts}, "
        f"the rest (data and set-up of later groups, the sweep, its report, exits) "
        f"{middle['labjax_s'] - known:.1f}s (members' time_s; one per vectorized group)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=sorted(STUDIES), required=True)
    parser.add_argument("--quick", action="store_true", help="fewer runs and epochs (see above)")
    parser.add_argument("--repeats", type=int, default=3, help="timed pairs (the median is reported)")
    parser.add_argument("--epochs", type=int, help="epochs per run instead of the study's")
    parser.add_argument("--keep", type=Path, help="keep the runs, logs and plan in this folder")
    parser.add_argument("--no-vectorize", action="store_true", help="labjax's sweep without --vectorize")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    study = STUDIES[args.study](args.quick)
    if args.epochs:
        study.epochs = args.epochs
    folder = args.keep or Path(tempfile.mkdtemp(prefix=f"study_{args.study}_"))
    folder.mkdir(parents=True, exist_ok=True)
    plan = write_plan(args.study, study, folder)
    runs = len(json.loads(plan.read_text())["runs"])
    print(f"[{args.study}] {runs} runs; plan and data in {folder}", flush=True)
    results = [one_repeat(args, args.study, study, plan, folder, repeat) for repeat in range(args.repeats)]
    report(args.study, study, args, results, runs)
    if args.json:
        args.json.write_text(json.dumps({"study": args.study, "quick": args.quick, "results": results}, indent=1))
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
