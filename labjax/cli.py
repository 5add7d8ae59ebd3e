"""What launch.py does with its flags: pick the workdir, run the mode, turn errors into messages.

A user's mistake (bad config value, missing file, wrong workdir) prints one clear line and
exits with status 2; a diverged run exits 3 and an interrupted one 130, so scripts and
sweeps can tell them apart. LABJAX_DEBUG=1 shows full tracebacks.
"""

import os
import re
import sys
from pathlib import Path

from labjax import config as config_lib

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


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

    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        _fail(ValueError(describe_flag_error(str(error), argv)), EXIT_USER_ERROR)


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


def run(flags) -> None:
    from absl import logging

    from labjax import data_check, evaluate, summary, train  # heavy imports after flag parsing

    if not flags["verbosity"].present:  # Orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    enable_compilation_cache()
    try:
        try:
            config = flags.config
            if config is not None:
                config.keys()  # a config file that failed to load raises here
        except OSError as error:  # the config file could not be loaded
            raise FileNotFoundError(" ".join(str(error).split())) from None
        if flags.mode in ("train", "data", "summary"):
            if config is None:
                raise config_lib.ConfigError(
                    f"--config is required with --mode={flags.mode}, e.g. --config=configs/seg_mobilenet.py"
                )
            workdir = Path(flags.workdir) if flags.workdir else default_workdir(flags["config"].config_filename)
            if flags.mode == "data":
                data_check.check_data(config, workdir)
            elif flags.mode == "summary":
                summary.summarize(config, workdir)
            else:
                train.train_and_evaluate(config, workdir, overwrite=flags.overwrite)
        elif flags.mode == "eval":
            if not flags.workdir:
                raise config_lib.ConfigError("--workdir is required with --mode=eval (the run to evaluate).")
            evaluate.evaluate(flags.workdir, flags.checkpoint, flags.split)
    except (ValueError, FileNotFoundError) as error:
        _fail(error, EXIT_USER_ERROR)
    except train.TrainingDiverged as error:
        _fail(error, EXIT_DIVERGED)
    except train.TrainingInterrupted as error:
        _fail(error, EXIT_INTERRUPTED)


def _fail(error: Exception, code: int) -> None:
    if os.environ.get("LABJAX_DEBUG"):
        raise error
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(code)
