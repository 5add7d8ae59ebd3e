"""What launch.py does with its flags: pick the workdir, run the mode, turn errors into messages.

A user's mistake (bad config value, missing file, wrong workdir) prints one clear line and
exits with status 2; a diverged run exits 3 and an interrupted one 130, so scripts and
sweeps can tell them apart; a sweep with failed members exits 1. LABJAX_DEBUG=1 shows full
tracebacks.
"""

import os
import re
import sys
from pathlib import Path

from labjax import config as config_lib

EXIT_FAILED_MEMBERS, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130


def default_workdir(config_argument: str) -> Path:
    """configs/seg_mobilenet.py:quick -> runs/seg_mobilenet_quick."""
    path, _, arg = config_argument.partition(":")
    name = Path(path).stem + (f"_{arg}" if arg else "")
    return Path("runs") / re.sub(r"[^\w.=-]+", "_", name)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config mistakes reported in one line and no traceback.

    ml_collections raises from deep inside flag parsing for a mistyped override key
    (`--config.optimizer.learnig_rate`) or a failing get_config; the user needs the flag,
    the key and the suggestion, not the stack.
    """
    from absl import flags

    overrides = saved_config_overrides(argv)
    try:
        return flags.FLAGS([arg for arg in argv if arg not in overrides]) + overrides
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        _fail(ValueError(describe_flag_error(str(error), argv)), EXIT_USER_ERROR)


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
    from absl import logging

    if not flags["verbosity"].present:  # Orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        start_processes(flags)
        enable_compilation_cache()
        try:
            config = flags.config
            if config is not None:
                config.keys()  # a config file that failed to load raises here
        except OSError as error:  # the config file could not be loaded
            raise FileNotFoundError(" ".join(str(error).split())) from None
        if flags.mode != "sweep" and (flags.sweep or flags["parallel"].present or flags.vectorize):
            raise config_lib.ConfigError(
                f"--sweep, --parallel and --vectorize need --mode=sweep (not --mode={flags.mode})."
            )
        if overrides and flags.mode not in ("eval", "predict"):
            raise config_lib.ConfigError(
                f"{overrides[0]}: --config.KEY=VALUE needs --config=FILE with --mode={flags.mode}."
            )
        if flags.mode in ("train", "data", "summary"):
            if config is None:
                raise config_lib.ConfigError(
                    f"--config is required with --mode={flags.mode}, e.g. --config=configs/seg_mobilenet.py"
                )
            workdir = Path(flags.workdir) if flags.workdir else default_workdir(flags["config"].config_filename)
            if flags.mode == "train":  # a config mistake is reported before TensorFlow and the data load
                config_lib.validate(config)
            # Heavy imports (TensorFlow, the models) only for the mode that needs them.
            if flags.mode == "data":
                from labjax import data_check

                data_check.check_data(config, workdir)
            elif flags.mode == "summary":
                from labjax import summary

                summary.summarize(config, workdir)
            else:
                from labjax import train

                train.train_and_evaluate(config, workdir, overwrite=flags.overwrite)
        elif flags.mode == "sweep":
            if config is None:
                raise config_lib.ConfigError(
                    "--config is required with --mode=sweep, e.g. --config=configs/seg_mobilenet.py"
                )
            from labjax import sweep

            sweep.run_sweep(
                flags["config"].config_filename,
                flags.workdir,
                flags.sweep,
                flags["config"].override_values,
                parallel=flags.parallel,
                overwrite=flags.overwrite,
                vectorize=flags.vectorize,
            )
        elif flags.mode == "report":
            if not flags.workdir:
                raise config_lib.ConfigError("--workdir is required with --mode=report (a run or a sweep folder).")
            from labjax import report

            report.write_report(flags.workdir)
        if flags.mode in ("eval", "predict"):
            if config is not None:
                raise config_lib.ConfigError(
                    f"--mode={flags.mode} uses the config the run saved in its workdir; drop --config=FILE and give "
                    "changes as --config.KEY=VALUE alone (e.g. --config.data.test_path=DIR)."
                )
            if not flags.workdir:
                raise config_lib.ConfigError(f"--workdir is required with --mode={flags.mode} (the trained run).")
        if flags.mode == "eval":
            from labjax import evaluate

            evaluate.evaluate(flags.workdir, flags.checkpoint, flags.split, overrides)
        elif flags.mode == "predict":
            from labjax import predict

            if not flags.inputs:
                raise config_lib.ConfigError("--inputs is required with --mode=predict: an image, a folder or a glob.")
            predict.predict(flags.workdir, flags.inputs, flags.output, flags.checkpoint, overrides)
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        _fail(error, code)


def exit_code(error: Exception) -> int | None:
    """The exit status of an error launch.py reports in one line; None for a bug (a traceback)."""
    # train and sweep are imported only by the modes that use them, so only then can they raise.
    train, sweep = sys.modules.get("labjax.train"), sys.modules.get("labjax.sweep")
    if isinstance(error, (ValueError, FileNotFoundError)):
        return EXIT_USER_ERROR
    if train and isinstance(error, train.TrainingDiverged):
        return EXIT_DIVERGED
    if train and isinstance(error, train.TrainingInterrupted):
        return EXIT_INTERRUPTED
    if sweep and isinstance(error, sweep.SweepInterrupted):
        return EXIT_INTERRUPTED
    if sweep and isinstance(error, sweep.SweepIncomplete):
        return EXIT_FAILED_MEMBERS
    return None


def start_processes(flags) -> None:
    """Joins a multi-process training (--coordinator/--num_processes/--process_id, or srun/mpirun) before JAX starts.

    Only training spans processes; the other modes run in one process, after or beside it.
    """
    from labjax import parallel

    if parallel.distributed_args(flags.coordinator, flags.num_processes, flags.process_id) is None:
        return
    if flags.mode != "train":
        raise config_lib.ConfigError(
            f"--mode={flags.mode} runs in one process: drop {parallel.DISTRIBUTED_FLAGS}, or start it as one task "
            "(srun -n 1 ...) or with --num_processes=1; only --mode=train spans several processes."
        )
    parallel.initialize_distributed(flags.coordinator, flags.num_processes, flags.process_id)


def _fail(error: Exception, code: int) -> None:
    if os.environ.get("LABJAX_DEBUG"):
        raise error
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(code)
