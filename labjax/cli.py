"""What launch.py does with its flags: pick the workdir, run the mode, turn errors into messages.

A user's mistake (an errors.UserError: bad config value, missing file, wrong workdir) prints
one clear line and exits with status 2; a diverged run exits 3, a pruned search trial 4 and an
interrupted one 130, so scripts and sweeps can tell them apart; a sweep with failed members exits 1. Anything else is
a bug and keeps its traceback. LABJAX_DEBUG=1 shows full tracebacks for a user's mistakes too.
"""

import os
import re
import sys
from pathlib import Path

from labjax import config as config_lib
from labjax import config_files, errors
from labjax.errors import ConfigError, MissingFileError
from labjax.workdir import (
    EXIT_DIVERGED,
    EXIT_FAILED_MEMBERS,
    EXIT_INTERRUPTED,
    EXIT_PRUNED,
    EXIT_USER_ERROR,
    default_workdir,
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config mistakes reported in one line and no traceback.

    ml_collections raises from deep inside flag parsing for a mistyped override key
    (`--config.optimizer.learnig_rate`) or a failing get_config; the user needs the flag,
    the key and the suggestion, not the stack.
    """
    from absl import flags

    argv = builtin_config_argv(argv)
    overrides = saved_config_overrides(argv)
    try:
        return flags.FLAGS([arg for arg in argv if arg not in overrides]) + overrides
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        _fail(ConfigError(describe_flag_error(str(error), argv)), EXIT_USER_ERROR)


def builtin_config_argv(argv: list[str]) -> list[str]:
    """argv with `--config=NAME[:ARG]` pointing at a built-in config where no such file exists (config_files)."""
    resolved, after_config = [], False
    for arg in argv:
        if after_config:  # `--config PATH`
            arg, after_config = config_files.resolve(arg), False
        elif arg.startswith("--config="):
            arg = "--config=" + config_files.resolve(arg.removeprefix("--config="))
        after_config = arg == "--config"
        resolved.append(arg)
    return resolved


def saved_config_overrides(argv: list[str]) -> list[str]:
    """`--config.KEY=VALUE` arguments given without `--config=FILE`: overrides of a run's saved config.

    --mode=eval and --mode=predict read the config the run saved in its workdir, so there is no
    config file for ml_collections to apply them to; they pass through flag parsing to cli.run.
    """
    if any(arg == "--config" or arg.startswith("--config=") for arg in argv[1:]):
        return []
    return [arg for arg in argv[1:] if arg.startswith("--config.")]


def describe_flag_error(message: str, argv: list[str]) -> str:
    """One readable line from an ml_collections/absl flag error."""
    message = message.replace("\\n", "\n").strip("'\"\n ")
    if "Traceback" in message:  # get_config raised: keep its own last line
        message = re.split(r"\b\w+Error: ", message)[-1].strip()
    suggestion = re.match(r"^\\?'?(\w+)\\?'?\s*(Did you mean.*)?$", message, re.S)
    if suggestion:
        key = suggestion.group(1)
        flag = next((a.split("=")[0] for a in argv if re.search(rf"\.{key}(=|$)", a.split("=")[0])), key)
        hint = f" {suggestion.group(2).strip()}" if suggestion.group(2) else ""
        return f"{flag}: the config has no key {key!r}.{hint}"
    return " ".join(message.split())


def enable_compilation_cache() -> None:
    """Reuses compiled steps across runs (a resumed run or a sweep member starts at once).

    LABJAX_COMPILATION_CACHE sets the folder; an empty value turns the cache off.
    """
    import jax

    path = os.environ.get("LABJAX_COMPILATION_CACHE", str(Path.home() / ".cache" / "labjax" / "xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(flags, overrides: list[str] = ()) -> None:
    """Runs launch.py's mode; a user's mistake or a run's outcome becomes a message and an exit status."""
    from absl import logging

    if not flags["verbosity"].present:  # Orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        start_processes(flags)
        enable_compilation_cache()
        config = _loaded_config(flags)
        _check_mode_flags(flags, config, overrides)
        MODES[flags.mode](flags, config, overrides)
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        _fail(error, code)


def _loaded_config(flags):
    try:
        config = flags.config
        if config is not None:
            config.keys()  # a config file that failed to load raises here
    except OSError as error:  # the config file could not be loaded
        raise MissingFileError(" ".join(str(error).split()) + config_files.missing_hint()) from None
    return config


def _check_mode_flags(flags, config, overrides) -> None:
    """Flags that do not go with the mode, or that it needs and lacks."""
    mode = flags.mode
    if mode != "sweep" and (flags.sweep or flags.vectorize or flags.launcher != "local"):
        raise ConfigError(f"--sweep, --vectorize and --launcher need --mode=sweep (not --mode={mode}).")
    _check_launcher_flags(flags)
    if mode not in ("sweep", "search") and (flags["parallel"].present or flags["seeds"].present):
        raise ConfigError(f"--parallel and --seeds need --mode=sweep or --mode=search (not --mode={mode}).")
    search_flags = [name for name in ("trials", "space", "sampler", "pruner", "storage") if flags[name].present]
    if mode != "search" and search_flags:
        raise ConfigError(f"--{search_flags[0]} needs --mode=search (not --mode={mode}).")
    if mode == "search" and flags.seeds != 1:
        raise ConfigError(
            "--seeds goes with --mode=sweep, not yet with --mode=search: repeat the best trial's settings over seeds "
            "with --mode=sweep --seeds=K."
        )
    if mode == "search" and not flags.trials:
        raise ConfigError("--trials=N is required with --mode=search: the number of trials the study should have.")
    if overrides and mode not in ("eval", "predict"):
        raise ConfigError(f"{overrides[0]}: --config.KEY=VALUE needs --config=FILE with --mode={mode}.")
    if mode in ("train", "data", "summary", "sweep", "search") and config is None:
        raise ConfigError(f"--config is required with --mode={mode}, e.g. --config=configs/seg_mobilenet.py")
    if mode == "report" and not flags.workdir:
        raise ConfigError("--workdir is required with --mode=report (a run or a sweep folder).")
    if mode in ("eval", "predict"):
        if config is not None:
            raise ConfigError(
                f"--mode={mode} uses the config the run saved in its workdir; drop --config=FILE and give "
                "changes as --config.KEY=VALUE alone (e.g. --config.data.test_path=DIR)."
            )
        if not flags.workdir:
            raise ConfigError(f"--workdir is required with --mode={mode} (the trained run).")
    if mode == "predict" and not flags.inputs:
        raise ConfigError("--inputs is required with --mode=predict: an image, a folder or a glob.")


def _check_launcher_flags(flags) -> None:
    """--slurm and --detach go with --launcher=slurm, which runs members as processes of their own."""
    if flags.launcher != "slurm":
        if flags.slurm or flags.detach:
            raise ConfigError("--slurm=KEY=VALUE and --detach need --launcher=slurm (a sweep as a SLURM job array).")
        return
    if flags.vectorize:
        raise ConfigError("--vectorize trains members in this process; drop it with --launcher=slurm.")
    if flags["parallel"].present and flags.parallel < 1:
        raise ConfigError(
            f"--parallel={flags.parallel} with --launcher=slurm: expected N >= 1 array tasks running at once."
        )


def _workdir(flags) -> Path:
    return Path(flags.workdir) if flags.workdir else default_workdir(flags["config"].config_filename)


# Each mode imports what it needs (TensorFlow, the models) only when it runs.
def _train(flags, config, overrides) -> None:
    config_lib.validate(config)  # a config mistake is reported before TensorFlow and the data load
    from labjax import search, train

    hook = search.trial_hook()  # a search's trial (LABJAX_TRIAL set by its launcher) reports each epoch
    train.train_and_evaluate(config, _workdir(flags), overwrite=flags.overwrite, epoch_hook=hook)


def _data(flags, config, overrides) -> None:
    from labjax import data_check

    data_check.check_data(config, _workdir(flags))


def _summary(flags, config, overrides) -> None:
    from labjax import summary

    summary.summarize(config, _workdir(flags))


def _sweep(flags, config, overrides) -> None:
    from labjax import sweep

    launcher = None
    if flags.launcher == "slurm":
        from labjax import slurm

        parallel = flags.parallel if flags["parallel"].present else None
        launcher = slurm.Launcher(slurm.parse_options(flags.slurm), flags.detach, parallel)
    sweep.run_sweep(
        flags["config"].config_filename,
        flags.workdir,
        flags.sweep,
        flags["config"].override_values,
        parallel=flags.parallel,
        overwrite=flags.overwrite,
        vectorize=flags.vectorize,
        launcher=launcher,
        seeds=flags.seeds,
    )


def _search(flags, config, overrides) -> None:
    from labjax import search

    search.run_search(
        flags["config"].config_filename,
        flags.workdir,
        flags.space,
        flags["config"].override_values,
        trials=flags.trials,
        sampler=flags.sampler,
        pruner=flags.pruner,
        storage=flags.storage,
        parallel=flags.parallel,
        overwrite=flags.overwrite,
    )


def _report(flags, config, overrides) -> None:
    from labjax import report

    report.write_report(flags.workdir)


def _eval(flags, config, overrides) -> None:
    from labjax import evaluate

    evaluate.evaluate(flags.workdir, flags.checkpoint, flags.split, overrides)


def _predict(flags, config, overrides) -> None:
    from labjax import predict

    predict.predict(flags.workdir, flags.inputs, flags.output, flags.checkpoint, overrides)


MODES = {
    "train": _train,
    "data": _data,
    "summary": _summary,
    "sweep": _sweep,
    "search": _search,
    "report": _report,
    "eval": _eval,
    "predict": _predict,
}


def exit_code(error: Exception) -> int | None:
    """The exit status of an error launch.py reports in one line; None for a bug (a traceback)."""
    codes = (
        (errors.UserError, EXIT_USER_ERROR),
        (errors.TrainingDiverged, EXIT_DIVERGED),
        (errors.TrainingPruned, EXIT_PRUNED),
        (errors.TrainingInterrupted, EXIT_INTERRUPTED),
        (errors.SweepInterrupted, EXIT_INTERRUPTED),
        (errors.SweepIncomplete, EXIT_FAILED_MEMBERS),
    )
    return next((code for kind, code in codes if isinstance(error, kind)), None)


def start_processes(flags) -> None:
    """Joins a multi-process training (--coordinator/--num_processes/--process_id, or srun/mpirun) before JAX starts.

    Only training spans processes; the other modes run in one process, after or beside it.
    """
    from labjax import parallel

    if parallel.distributed_args(flags.coordinator, flags.num_processes, flags.process_id) is None:
        return
    if flags.mode != "train":
        raise ConfigError(
            f"--mode={flags.mode} runs in one process: drop {parallel.DISTRIBUTED_FLAGS}, or start it as one task "
            "(srun -n 1 ...) or with --num_processes=1; only --mode=train spans several processes."
        )
    parallel.initialize_distributed(flags.coordinator, flags.num_processes, flags.process_id)


def _fail(error: Exception, code: int) -> None:
    if os.environ.get("LABJAX_DEBUG"):
        raise error
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(code)
