"""The `labjax` command (and launch.py, which calls the same main): its flags, parsed into cli.run.

python launch.py --config=configs/seg_mobilenet.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]
python launch.py --mode=eval --workdir=DIR [--checkpoint=latest|best|STEP|all] [--split=NAME] [--config.KEY=VALUE ...]
python launch.py --mode=predict --workdir=DIR --inputs=PATH_OR_GLOB [--output=DIR] [--checkpoint=...]
python launch.py --mode=data|summary --config=configs/NAME.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]
python launch.py --mode=sweep --config=configs/NAME.py[:ARG] [--sweep=KEY=V1,V2 ...] [--parallel=N] [--workdir=DIR]
                 [--vectorize] [--seeds=K] [--launcher=slurm --slurm=KEY=VALUE,... [--detach]];
                 --sweep=NAME runs the config's named sweep (SWEEPS)
python launch.py --mode=search --config=configs/NAME.py[:ARG] --trials=N [--space='KEY=loguniform(a,b)' ...]
                 [--sampler=tpe|random|grid] [--pruner=median|hyperband|threshold(...)|none] [--storage=sqlite|journal]
python launch.py --mode=report --workdir=DIR
Several processes (hosts): add --coordinator=HOST:PORT --num_processes=N --process_id=I to a train command
(or start it under srun/mpirun, which JAX detects).

`labjax ARGS` (installed by pip) and `python -m labjax ARGS` are the same command as
`python launch.py ARGS`; a built-in config may be named alone (`--config=fashion3_cnn:smoke`,
see labjax/config_files.py).
"""

import atexit
import os
import sys
import threading

from absl import app, flags
from ml_collections import config_flags

from labjax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/seg_mobilenet.py:smoke.", lock_config=True)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "predict", "data", "summary", "sweep", "search", "report"],
    "train | eval a checkpoint | predict: run a checkpoint on image files | data: inspect the input"
    " | summary: the model's parameters, FLOPs and memory"
    " | sweep: train every member of a sweep | search: an Optuna study of trials (docs/search.md)"
    " | report: HTML/Markdown report of a run, a sweep or a search folder.",
)
flags.DEFINE_string("workdir", None, "Run folder; default runs/<config name>[_<arg>].")
flags.DEFINE_bool("overwrite", False, "Delete the run already in --workdir and train anew.")
flags.DEFINE_string("checkpoint", "latest", "eval, predict: latest, best or a step number; eval also all.")
flags.DEFINE_string("split", "validation", "eval: the split to evaluate.")
flags.DEFINE_string("inputs", None, "predict: an image file, a folder of images or a glob ('photos/**/*.jpg').")
flags.DEFINE_string("output", None, "predict: the folder for predictions; default WORKDIR/predict.")
flags.DEFINE_multi_string(
    "sweep",
    [],
    "sweep: KEY=V1,V2,... (repeat the flag for a product; combined with the config's get_sweep),"
    " or NAME, one of the config's named sweeps (SWEEPS: a study's runs).",
)
flags.DEFINE_bool(
    "vectorize",
    False,
    "sweep: train members that differ only in numbers (learning rate, betas, weight decay, seed, fold, ...)"
    " in one compiled program, their states stacked.",
)
flags.DEFINE_integer(
    "parallel",
    1,
    "sweep, search: members (trials) trained at once as separate processes (0: one after another in this"
    " process; sweeps only); with --launcher=slurm the array tasks running at once (default: all).",
)
flags.DEFINE_integer("seeds", 1, "sweep: repeat every member over K seeds (config.seed, +1, ...); mean, std, 95% CI.")
flags.DEFINE_integer("trials", None, "search: the number of trials the study should have (a re-run continues).")
flags.DEFINE_multi_string(
    "space",
    [],
    "search: KEY=loguniform(a,b) | uniform(a,b) | int(a,b) | choice(a,b,...), repeatable;"
    " added to (and replacing keys of) the config's get_search_space(arg).",
)
flags.DEFINE_enum("sampler", "tpe", ["tpe", "random", "grid"], "search: Optuna's sampler (grid: choice() keys only).")
flags.DEFINE_string(
    "pruner",
    "median",
    "search: median | hyperband | threshold(lower=X) or (upper=X) | none, with Optuna's keyword arguments"
    " (median(n_startup_trials=2)); prunes on checkpoint.best_metric after each epoch.",
)
flags.DEFINE_string(
    "storage",
    "sqlite",
    "search: the study's storage in the search folder: sqlite (study.db) or journal (study.journal, a file"
    " that machines sharing the folder can all add trials to).",
)
flags.DEFINE_enum(
    "launcher", "local", ["local", "slurm"], "sweep: local processes, or a SLURM job array (docs/cluster.md)."
)
flags.DEFINE_multi_string(
    "slurm", [], "sweep --launcher=slurm: sbatch options KEY=VALUE,... e.g. partition=gpu,time=120,gpus_per_task=1."
)
flags.DEFINE_bool(
    "detach", False, "sweep --launcher=slurm: submit and exit; the same command later attaches and collects."
)

flags.DEFINE_string(
    "coordinator", None, "train on several processes: HOST:PORT of process 0, the same on every process."
)
flags.DEFINE_integer("num_processes", None, "train on several processes: their number (1: one, even under srun).")
flags.DEFINE_integer("process_id", None, "train on several processes: this one's index, 0..N-1.")


def main(argv: list[str]) -> None:
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.")]  # eval/predict: see cli.parse_flags
    if len(argv) > 1 + len(overrides):
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.run(FLAGS, overrides)


def run() -> None:
    """The console entry point: absl parses the flags (cli.parse_flags) and runs main, then exits at once."""
    try:
        app.run(main, flags_parser=cli.parse_flags)
    except SystemExit as done:
        exit_now(done.code)
        raise


def exit_now(code) -> None:
    """Ends the process without the interpreter's teardown, which takes 1-2 s once TensorFlow and XLA
    are loaded (a sweep member pays it each time): by now every file labjax wrote is closed. The
    atexit callbacks still run (JAX's, a multi-process run's shutdown). While another thread still
    works, or a profiler or coverage tool watches (it writes at the interpreter's exit), it returns
    and the process exits as usual."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    if code is not None and not isinstance(code, int):  # sys.exit("message"): Python prints it, exit 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
