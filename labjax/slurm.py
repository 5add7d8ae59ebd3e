"""Sweeps on SLURM: the members as one job array submitted through submitit (`--launcher=slurm`).

Each array task runs the member's own `launch.py` command (sweep.child_command) into its
own run folder, as a local sweep would; the folder's status.json (host, SLURM job and array
task id) is the source of truth. sweep.json is derived from the member folders, the jobs'
results and the scheduler's view (squeue; sacct where accounting exists), so no lock is
shared across machines. The sweep command waits and shows pending / running / finished /
failed with an ETA; `--detach` submits and exits, and the same command run later attaches:
it collects finished members and resubmits failed or missing ones.

Preemption and time limits: SLURM sends SIGUSR1 (`#SBATCH --signal=USR1@90`, or
`scancel --signal=USR1 JOB`) to the array task; the task stops its launch.py (SIGTERM: it
saves a checkpoint), requeues itself with submitit and resumes from that checkpoint. A
SIGTERM reaching launch.py directly (SLURM's preemption) also checkpoints it; SLURM requeues
preempted jobs itself where the partition says so.

submitit is optional (`pip install submitit`); only this module imports it.
"""

import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from labjax import sweep as sweep_lib
from labjax import workdir as workdir_lib
from labjax.errors import ConfigError

PREEMPT_SIGNAL = "USR1"  # submitit's checkpoint-and-requeue signal (its default, USR2, is kept free)
# squeue's states of a job that will still run (or is running).
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED", "PREEMPTED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
# submitit's own parameters; every other --slurm key is an sbatch option, written as #SBATCH --KEY=VALUE.
SUBMITIT_KEYS = {"signal_delay_s", "setup", "teardown", "srun_args", "stderr_to_stdout", "use_srun"}
POLL_S = 2.0


def _submitit():
    os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)  # read when submitit loads, here and in jobs
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher=slurm needs submitit: pip install submitit (or pip install 'labjax[cluster]')."
        ) from None
    return submitit


def parse_options(texts) -> dict:
    """`--slurm=KEY=VALUE,...` flags -> {KEY: VALUE}; a piece without '=' continues the value before it.

    `--slurm=partition=gpu,time=60,gpus_per_task=1 --slurm=mail_type=BEGIN,END` gives
    {'partition': 'gpu', 'time': '60', 'gpus_per_task': '1', 'mail_type': 'BEGIN,END'}; `hold=true`
    is the bare `--hold`.
    """
    options, key = {}, None
    for text in texts:
        for piece in text.split(","):
            name, equals, value = piece.partition("=")
            if equals and name.strip():
                key = name.strip().removeprefix("--").replace("-", "_")
                options[key] = True if value.strip().lower() == "true" else value.strip()  # hold=true: --hold
            elif key is not None:
                options[key] += "," + piece
            else:
                raise ConfigError(f"--slurm={text!r}: expected KEY=VALUE,... e.g. partition=gpu,time=60,mem=16G.")
        key = None
    return options


def config_options(config_argument: str) -> dict:
    """The config file's `SLURM = {...}` (resources for its sweeps), {} when it has none."""
    module, _ = sweep_lib.load_config_module(config_argument)
    options = getattr(module, "SLURM", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{config_argument}: SLURM = {options!r}; expected a dict of sbatch options.")
    return {str(key).replace("-", "_"): str(value) for key, value in options.items()}


def _ignore_preempt_signals() -> None:  # in launch.py: submitit's process handles them and stops it with SIGTERM
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


class MemberJob:
    """What one array task runs: the member's launch.py command, its output appended to DIR/<name>/sweep.log.

    Returns (status, error) as a local sweep records them. On the preemption signal submitit
    calls `checkpoint`: launch.py gets SIGTERM, saves a checkpoint and exits; the task requeues.
    """

    def __init__(self, command: list[str], cwd: str, log_path: str):
        self.command, self.cwd, self.log_path = command, cwd, log_path
        self.process, self.pump = None, None

    def __call__(self) -> tuple[str, str | None]:
        tail = deque(maxlen=40)
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"[slurm] {workdir_lib.where()}: {shlex.join(self.command)}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                preexec_fn=_ignore_preempt_signals,
            )
            self.pump = threading.Thread(target=self._copy, args=(log, tail), daemon=True)
            self.pump.start()
            self.pump.join()  # not process.wait(): `checkpoint` waits for the process from a signal handler
            returncode = self.process.wait()
        return sweep_lib.outcome(returncode, tail)

    def _copy(self, log, tail) -> None:
        for line in self.process.stdout:
            log.write(line)
            log.flush()
            tail.append(line.rstrip("\n"))

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook: stop launch.py (it checkpoints) and requeue the same command."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.pump.join(timeout=60)
        return _submitit().helpers.DelayedSubmission(MemberJob(self.command, self.cwd, self.log_path))


def queue() -> dict[str, tuple[str, str]]:
    """squeue's view of this user's jobs: {job id (ARRAY_TASK for array tasks): (state, reason)}."""
    result = subprocess.run(
        ["squeue", "--me", "--array", "--noheader", "--format=%i|%T|%R"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
    jobs = {}
    for line in result.stdout.splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        jobs[job] = (state, reason)
    return jobs


def accounting_state(job_id: str) -> str | None:
    """sacct's final state of a job (COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, ...); None without accounting."""
    try:
        result = subprocess.run(
            ["sacct", "--noheader", "--parsable2", "--format=JobID,State", f"--jobs={job_id}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = [line.split("|")[1] for line in result.stdout.splitlines() if line.split("|")[0] == job_id]
    return states[-1] if result.returncode == 0 and states else None


def minutes(text: str) -> int:
    """A SLURM time ('90', '1:30:00', '2-00', '2-12:00:00', 'infinite') in whole minutes (rounded up)."""
    text = str(text).strip().lower()
    if text in ("infinite", "unlimited"):
        return 365 * 24 * 60
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(part) for part in rest.split(":")]
        if days:  # D-H, D-H:M, D-H:M:S
            hours, mins, secs = (parts + [0, 0])[:3]
        else:  # M, M:S, H:M:S
            hours, mins, secs = {1: [0, *parts, 0], 2: [0, *parts], 3: parts}[len(parts)]
        seconds = int(days or 0) * 86400 + hours * 3600 + mins * 60 + secs
    except (ValueError, KeyError):
        raise ConfigError(f"--slurm=time={text}: expected minutes, H:M:S, D-H or D-H:M:S, e.g. time=120.") from None
    return max(1, -(-seconds // 60))


def partition_time(partition: str | None) -> int:
    """The time limit a job gets without --time on this partition (its default, else its maximum), in minutes."""
    result = subprocess.run(["sinfo", "--noheader", "--format=%P|%L|%l"], capture_output=True, text=True, timeout=60)
    for line in result.stdout.splitlines():
        name, default, maximum = line.split("|")
        if (partition is None and name.endswith("*")) or name.rstrip("*") == partition:
            return minutes(default if default != "n/a" else maximum)
    return 60


def _submitted(entry: dict) -> bool:
    """Whether the member's job is (as last seen) queued or running."""
    return bool(entry.get("slurm_job")) and entry["status"] in ("pending", "running")


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Launcher:
    """sweep.run_sweep's launcher for SLURM: submits, attaches, waits (or not, with `detach`)."""

    def __init__(self, options: dict, detach: bool = False, parallel: int | None = None):
        if parallel is not None and parallel < 1:
            raise ConfigError(f"--parallel={parallel} with --launcher=slurm: expected N >= 1 array tasks at once.")
        self.options, self.detach, self.parallel = dict(options), detach, parallel
        _submitit()

    def __call__(self, todo, record, workdir: Path, config_argument, base_overrides, overwrite) -> bool | None:
        """Runs the members on SLURM; True when all ended, False after Ctrl-C, None when detached."""
        self.record, self.workdir = record, Path(workdir)
        entries = [entry for _, entry in todo]
        self._refresh(entries)
        submit = [(m, e) for m, e in todo if not _submitted(e) and e["status"] not in sweep_lib.DONE]
        if submit:
            self._submit(submit, config_argument, base_overrides, overwrite)
        alive = [entry for entry in entries if _submitted(entry)]
        jobs = " ".join(sorted({entry["slurm_job"].split("_")[0] for entry in alive}))
        if self.detach:
            print(
                f"[sweep] detached; `squeue -j {jobs.replace(' ', ',')}` shows the jobs, and the same command "
                "run again shows their status, collects the results and writes the report.",
                flush=True,
            )
            return None
        try:
            self._wait(entries)
        except KeyboardInterrupt:
            self._interrupted(entries)
            return False
        return True

    def _submit(self, members, config_argument, base_overrides, overwrite) -> None:
        submitit = _submitit()
        options = {**config_options(config_argument), **self.options}
        own = {key: options.pop(key) for key in list(options) if key in SUBMITIT_KEYS}
        executor = submitit.SlurmExecutor(folder=self.workdir / "slurm" / "%j", max_num_timeout=1000)
        executor.update_parameters(
            job_name=f"labjax_{self.workdir.name}"[:100],
            array_parallelism=self.parallel or len(members),
            # submitit writes --time and knows from it whether a signal means preemption or the time limit.
            time=minutes(options.pop("time")) if "time" in options else partition_time(options.get("partition")),
            additional_parameters=options,
            **{key: int(value) if key == "signal_delay_s" else value for key, value in own.items()},
        )
        calls = []
        for member, _ in members:
            overrides = {**base_overrides, **member.overrides}
            command = sweep_lib.child_command(config_argument, overrides, self.workdir / member.name, overwrite)
            calls.append(MemberJob(command, os.getcwd(), str(self.workdir / member.name / "sweep.log")))
        try:
            jobs = executor.submit_array(calls)
        except submitit.core.utils.FailedJobError as error:
            reason = " ".join(str(error).split())[-400:]
            raise ConfigError(f"sbatch refused the sweep's job array (check --slurm=...): {reason}") from None
        for (_, entry), job in zip(members, jobs):
            entry.update(status="pending", error=None, slurm_job=job.job_id, submitted=time.time())
            entry["attempts"] = entry.get("attempts", 0) + 1
            entry.pop("pid", None)
        self.record.save()
        print(
            f"[sweep] submitted {len(jobs)} member(s) as SLURM job array {jobs[0].job_id.split('_')[0]} "
            f"(logs in {self.workdir / 'slurm'})",
            flush=True,
        )

    def _refresh(self, entries) -> None:
        """Updates the entries of submitted members from squeue, their run folders and their jobs' results."""
        jobs = queue()
        for entry in entries:
            if not _submitted(entry):
                continue
            job = entry["slurm_job"]
            state, reason = jobs.get(job, (None, ""))
            if state in QUEUED:
                entry["reason"] = reason
            elif state in RUNNING:
                if entry["status"] != "running":
                    entry.update(status="running", started=time.time())
                    where = workdir_lib.read_status(self.workdir / entry["name"])
                    print(f"[sweep] {entry['name']}: running (job {job}{self._host(where, job)})", flush=True)
            else:
                status, error = self._outcome(entry)
                started = entry.get("started") or entry.get("submitted") or time.time()
                entry.update(status=status, error=error, ended=time.time())
                entry["time_s"] = entry.get("time_s", 0.0) + time.time() - started
                note = f": {error.splitlines()[0]}" if error else ""
                print(f"[sweep] {entry['name']}: {status} (job {job}){note}", flush=True)
        self.record.save()

    @staticmethod
    def _host(status: dict, job: str) -> str:
        return f" on {status['host']}" if status.get("slurm_job_id") == job and status.get("host") else ""

    def _outcome(self, entry) -> tuple[str, str | None]:
        """A job that left the queue: its result, else the member's status.json, else sacct's state."""
        job = entry["slurm_job"]
        result = self.workdir / "slurm" / job / f"{job}_0_result.pkl"
        if result.exists():
            with result.open("rb") as file:
                kind, value = pickle.load(file)
            if kind == "success":
                return tuple(value)
            return "failed", str(value).strip()[-2000:]
        status = workdir_lib.read_status(self.workdir / entry["name"])
        if status.get("slurm_job_id") == job and status.get("status") in (*sweep_lib.DONE, "interrupted"):
            return status["status"], None if status["status"] == "finished" else status.get("error", status["status"])
        state = accounting_state(job) or "no result"
        log = self.workdir / "slurm" / job / f"{job}_0_log.err"
        return "failed", f"SLURM job {job} ended ({state}); see {log} and {self.workdir / entry['name'] / 'sweep.log'}"

    def _wait(self, entries) -> None:
        began, shown = time.time(), None
        while True:
            counts = {s: sum(e["status"] == s for e in entries) for s in sweep_lib.STATUSES}
            left = counts["pending"] + counts["running"]
            ended = len(entries) - left
            line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            if line != shown:  # a line when a member changes state, with the ETA from the members done so far
                eta = f"; ETA {_format_seconds((time.time() - began) / ended * left)}" if ended and left else ""
                print(f"[sweep] slurm: {line}{eta}", flush=True)
                shown = line
            if not left:
                return
            time.sleep(POLL_S)
            self._refresh(entries)

    def _interrupted(self, entries) -> None:
        """Ctrl-C while waiting: cancel the jobs if the user says so; left running otherwise."""
        jobs = sorted({e["slurm_job"] for e in entries if _submitted(e)})
        answer = ""
        if jobs and sys.stdin.isatty():
            try:
                answer = input(f"\n[sweep] cancel the {len(jobs)} member job(s) still queued or running? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = ""
        if jobs and answer.strip().lower() in ("y", "yes"):
            subprocess.run(["scancel", *jobs], check=False, timeout=60)
            for entry in entries:
                if _submitted(entry):
                    entry.update(status="interrupted", error="cancelled (Ctrl-C)")
            self.record.save()
            print(f"[sweep] cancelled {' '.join(jobs)}.", flush=True)
        elif jobs:
            print(f"\n[sweep] the jobs keep running; cancel them with: scancel {' '.join(jobs)}", flush=True)
