"""labjax command line: flags -> config -> train | eval. All logic lives in `labjax`.

python launch.py --config=configs/seg_mobilenet.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]
python launch.py --mode=eval --workdir=DIR [--checkpoint=latest|best|STEP|all] [--split=NAME] [--config.KEY=VALUE ...]
python launch.py --mode=predict --workdir=DIR --inputs=PATH_OR_GLOB [--output=DIR] [--checkpoint=...]
python launch.py --mode=data|summary --config=configs/NAME.py[:ARG] [--config.KEY=VALUE ...] [--workdir=DIR]
python launch.py --mode=sweep --config=configs/NAME.py[:ARG] [--sweep=KEY=V1,V2 ...] [--parallel=N] [--workdir=DIR]
                 [--vectorize]
python launch.py --mode=report --workdir=DIR
Several processes (hosts): add --coordinator=HOST:PORT --num_processes=N --process_id=I to a train command
(or start it under srun/mpirun, which JAX detects).

The flags are defined in labjax/launcher.py, which the installed `labjax` command and
`python -m labjax` run too: the three are one command.
"""

if __name__ == "__main__":  # first, before anything allocates: XLA:CPU's step buffers on huge pages
    from labjax import host_memory

    host_memory.restart_with_huge_pages()

from labjax.launcher import FLAGS, main, run  # noqa: E402, F401 - FLAGS and main for scripts importing launch

if __name__ == "__main__":
    run()
