"""The device mesh and how arrays are laid out on it: data parallel over one 'data' axis.

Also multi-process start-up: one process per host (or per GPU under SLURM), every process
running the same program on its own rows of each global batch.
"""

import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from labjax.errors import ConfigError

DISTRIBUTED_FLAGS = "--coordinator=HOST:PORT --num_processes=N --process_id=I"


def launcher_process_count() -> int:
    """Processes a cluster launcher started for this program: srun's tasks (SLURM), mpirun's ranks (Open MPI).

    SLURM's step variables are set by srun only, not in an sbatch script itself, so a
    `python launch.py` line there stays one process even when the job asked for several tasks.
    """
    env = os.environ
    if "SLURM_STEP_NODELIST" in env and "SLURM_PROCID" in env:
        return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if "OMPI_MCA_orte_hnp_uri" in env:
        return int(env.get("OMPI_COMM_WORLD_SIZE") or 1)
    return 1


def distributed_args(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict | None:
    """The arguments of jax.distributed.initialize for these flags: None for one process, {} to auto-detect.

    Explicit flags come all three together; none of them under srun or mpirun with several
    tasks means auto-detection; `num_processes=1` alone keeps one process even there.
    """
    given = {"--coordinator": coordinator, "--num_processes": num_processes, "--process_id": process_id}
    if coordinator is None and num_processes is None and process_id is None:
        return {} if launcher_process_count() > 1 else None
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num_processes={num_processes} is invalid: expected the number of processes (>= 1).")
    if num_processes == 1 and coordinator is None and process_id in (None, 0):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        present = " ".join(f"{name}={value}" for name, value in given.items() if value is not None)
        raise ConfigError(
            f"{present} needs {' and '.join(missing)} as well: a multi-process run takes {DISTRIBUTED_FLAGS} "
            "on every process (the same HOST:PORT, process 0's address, and N on all; I = 0..N-1), or none of "
            "them under srun/mpirun, which JAX detects."
        )
    if not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", coordinator):
        raise ConfigError(
            f"--coordinator={coordinator!r} is invalid: expected HOST:PORT of process 0, "
            "e.g. --coordinator=node01:12345."
        )
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process_id={process_id} is invalid: expected 0..{num_processes - 1} "
            f"with --num_processes={num_processes}."
        )
    return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins the processes of a multi-process run (call before any JAX use); True when there are several.

    See distributed_args for which flags mean what. jax.devices() then lists every process's
    devices, so make_mesh spans them all and each process feeds its own rows of a batch.
    """
    args = distributed_args(coordinator, num_processes, process_id)
    if args is None:
        return False
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:  # CPU devices of several processes talk through gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # A process that dies stops its heartbeats; the others then fail within this bound instead of
    # waiting in their next collective for ever (LABJAX_HEARTBEAT_TIMEOUT_S, seconds).
    heartbeat = int(os.environ.get("LABJAX_HEARTBEAT_TIMEOUT_S", "60"))
    jax.distributed.initialize(**args, heartbeat_timeout_seconds=heartbeat)
    return jax.process_count() > 1


def sync(name: str) -> None:
    """Waits until every process reaches this point (no-op with one): e.g. after process 0 deleted files."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices (or the given ones) of every process, process by process."""
    devices = devices or sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> one global array sharded on its leading axis.

    With several processes the mesh holds process 0's devices first, then process 1's, ...,
    so process i's rows (the pipeline's i-th share of the batch) land on its own devices.
    """
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
