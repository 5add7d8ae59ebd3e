"""labjax command line: flags -> config -> train | eval. All logic lives in `labjax`.

python launch.py --config=configs/seg_mobilenet.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]
python launch.py --mode=eval --workdir=DIR [--checkpoint=latest|best|STEP] [--split=NAME]
python launch.py --mode=data|summary --config=configs/NAME.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]
"""

from absl import app, flags
from ml_collections import config_flags

from labjax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/seg_mobilenet.py:smoke.", lock_config=True)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "data", "summary"],
    "train | eval a checkpoint | data: inspect the input | summary: the model's parameters, FLOPs and memory.",
)
flags.DEFINE_string("workdir", None, "Run folder; default runs/<config name>[_<arg>].")
flags.DEFINE_bool("overwrite", False, "Delete the run already in --workdir and train anew.")
flags.DEFINE_string("checkpoint", "latest", "eval: latest, best or a step number.")
flags.DEFINE_string("split", "validation", "eval: the split to evaluate.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.run(FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
