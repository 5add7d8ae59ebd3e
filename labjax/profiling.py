"""Where a training step's time goes: a `jax.profiler` trace of a few steps, summed by layer.

`config.profile_steps = N` traces N training steps, starting after the session's first (compiling)
dispatch, into WORKDIR/profile (open it in TensorBoard's profile plugin, or the `.trace.json.gz` in
Perfetto), and writes there `summary.txt`, the traced time per step by layer (forward and backward
apart) and by kind of operation, and `by_layer.png`, the layers that took most. The layer of an
operation is the Flax module path XLA kept in its metadata (`backbone/conv2_block1_1_conv`); the
loss, the optimizer's update and the metrics are a row of their own, as are the gradients'
all-reduce across devices and the few operations whose metadata XLA dropped.

Operations of XLA:CPU's runtime may run concurrently, so their times can add up to more than the
step's wall time; the summary gives both. There, the matmuls and convolutions XLA leaves to Eigen
(not fused into a YNNPACK call) run asynchronously: the trace times their launch only, and their
work slows the operations running beside them. Their kind says so ("matmul (Eigen, async)").
"""

import collections
import dataclasses
import gzip
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import jax

from labjax import plots

OUTSIDE = "(loss, optimizer, metrics)"
UNRECORDED = "(no layer recorded)"  # XLA dropped the operation's metadata (some fused matmuls)
COMMUNICATION = "(cross-device communication)"  # the gradients' all-reduce, across layers
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Path pieces that name JAX's transformations and control flow, not modules.
_CONTROL = re.compile(r"^(while|body|cond|closed_call|branch_\d+_fun)$")
# Containers: their time is that of the operations they run, which the trace lists on their own.
_CONTAINERS = ("while", "conditional", "call")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")


@dataclasses.dataclass(frozen=True)
class Op:
    layer: str
    direction: str  # forward | backward | update
    kind: str  # matmul | convolution | reduction | elementwise | copy | concatenate | ...


def layer_of(op_name: str) -> tuple[str, str]:
    """('backbone/conv2_block1_1_conv', 'backward') from an op_name such as
    'jit(train_step)/transpose(jvp(Classifier))/backbone/conv2_block1_1_conv/dot_general'."""
    pieces = op_name.split("/")[1:-1]  # the jitted function's name and the primitive go
    modules = [p for p in pieces if "(" not in p and not _CONTROL.match(p)]
    if not modules:  # the loss, the optimizer's update and the metrics run in no module
        return OUTSIDE, "update"
    return "/".join(modules), "backward" if any(p.startswith("transpose(") for p in pieces) else "forward"


_EIGEN_ASYNC = {"dot": "matmul (Eigen, async)", "convolution": "convolution (Eigen, async)"}


def _kind(opcode: str, body: list[str], cpu: bool) -> str:
    """A fusion's kind is that of its costliest member: matmul > convolution > reduction > elementwise."""
    if cpu and opcode in _EIGEN_ASYNC:
        return _EIGEN_ASYNC[opcode]
    if opcode != "fusion":
        return {"dot": "matmul", "reduce": "reduction", "custom-call": "library call"}.get(opcode, opcode)
    opcodes = {m.group(2) for m in map(_INSTRUCTION.match, body) if m}
    for member, kind in (("dot", "matmul"), ("convolution", "convolution"), ("reduce", "reduction")):
        if member in opcodes:
            return kind
    if "concatenate" in opcodes:
        return "concatenate"
    return "elementwise"


def hlo_ops(hlo_text: str, cpu: bool = False) -> tuple[str, dict[str, Op]]:
    """The compiled module's name and each instruction's layer, direction and kind, from its text
    (`cpu`: compiled for XLA:CPU, whose plain dot and convolution instructions run asynchronously)."""
    module = re.search(r"^HloModule ([\w.\-]+)", hlo_text, re.M)
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line) if not line.startswith(" ") else None
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    ops = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        if opcode in _CONTAINERS:
            continue
        called = re.search(r"calls=%([\w.\-]+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        layer, direction = layer_of(op_name.group(1)) if op_name else (UNRECORDED, "update")
        if opcode in _COLLECTIVES or opcode.endswith(("-start", "-done")):
            layer, direction = COMMUNICATION, "update"
        body = bodies.get(called.group(1), []) if called else []
        ops[name] = Op(layer, direction, _kind(opcode, body, cpu))
    return (module.group(1) if module else ""), ops


def op_times(trace_file: Path, module: str) -> dict[str, float]:
    """Seconds per HLO operation of `module` in a Perfetto trace (`create_perfetto_trace=True`)."""
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    times: dict[str, float] = collections.defaultdict(float)
    for event in events:
        args = event.get("args") or {}
        if event.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
            times[args["hlo_op"]] += event.get("dur", 0.0) * 1e-6
    return dict(times)


@dataclasses.dataclass
class Summary:
    """Per-step milliseconds of the traced steps by kind of operation and by layer."""

    steps: int
    wall_s: float
    by_kind: dict[str, float]
    by_layer: dict[str, tuple[float, float, float]]  # layer -> (forward, backward, other), costliest first

    @property
    def total_ms(self) -> float:
        return sum(self.by_kind.values())

    def text(self, top_layers: int | None = None) -> str:
        """The table of summary.txt (`top_layers`: only the costliest ones)."""
        total = max(self.total_ms, 1e-12)
        lines = [
            f"{self.steps} traced step(s): {self.wall_s / self.steps * 1e3:.2f} ms per step of wall time, "
            f"{self.total_ms:.2f} ms of XLA operations (they may overlap).",
            "",
            f"{'by kind of operation':40s} {'ms/step':>9s} {'share':>6s}",
        ]
        for kind, ms in self.by_kind.items():
            lines.append(f"{kind:40s} {ms:9.3f} {ms / total:6.1%}")
        lines += ["", f"{'by layer':40s} {'ms/step':>9s} {'share':>6s} {'forward':>9s} {'backward':>9s} {'other':>9s}"]
        for layer, (fwd, bwd, other) in list(self.by_layer.items())[:top_layers]:
            ms = fwd + bwd + other
            lines.append(f"{layer:40s} {ms:9.3f} {ms / total:6.1%} {fwd:9.3f} {bwd:9.3f} {other:9.3f}")
        return "\n".join(lines) + "\n"

    def plot_layers(self, path: Path, top: int = 20) -> Path:
        """by_layer.png: the `top` costliest layers, forward, backward and the rest stacked."""
        rows = list(self.by_layer.items())[:top]
        names = [name for name, _ in rows]
        fwd, bwd, other = ([times[i] for _, times in rows] for i in range(3))
        fig, ax = plots.plt.subplots(figsize=(8, 0.3 * len(names) + 1.2))
        y = range(len(names))[::-1]
        ax.barh(y, fwd, label="forward")
        ax.barh(y, bwd, left=fwd, label="backward")
        ax.barh(y, other, left=[f + b for f, b in zip(fwd, bwd)], label="update, loss, metrics")
        ax.set_yticks(list(y), names, fontsize=7)
        ax.set_xlabel("ms per step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plots.plt.close(fig)
        return path


def summarize(times: dict[str, float], ops: dict[str, Op], steps: int, wall_s: float) -> Summary:
    """Each traced operation's seconds, per step, summed into its layer (by direction) and its kind."""
    by_layer: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, seconds in times.items():
        if name not in ops:  # a container, or an operation of another module
            continue
        op = ops[name]
        column = {"forward": 0, "backward": 1, "update": 2}[op.direction]
        by_layer[op.layer][column] += seconds / steps * 1e3
        by_kind[op.kind] += seconds / steps * 1e3
    return Summary(
        steps,
        wall_s,
        dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        {k: tuple(v) for k, v in sorted(by_layer.items(), key=lambda kv: -sum(kv[1]))},
    )


class StepProfiler:
    """Traces `steps` training steps after the first dispatch, then writes the summary (process 0).

    While `pending`, `after_dispatch` is called after every dispatch with the step reached, whether it was the session's
    first or an epoch's last, and a function that lowers the jitted step for the arguments it ran on
    (the compiled text comes from JAX's cache: nothing compiles again). The trace stays within one
    epoch, so evaluation never falls inside it: it stops early at an epoch's end, and does not start
    at one.
    """

    def __init__(self, directory: Path, steps: int):
        self.directory, self.steps = Path(directory), steps
        self.start_step: int | None = None
        self.done = steps <= 0 or jax.process_index() != 0
        self.tic = 0.0

    @property
    def pending(self) -> bool:
        """Whether a trace is still to take or to finish: the loop calls after_dispatch only then."""
        return not self.done

    def after_dispatch(
        self, step: int, first_dispatch: bool, epoch_end: bool, state, lower: Callable[[], jax.stages.Lowered]
    ) -> float:
        """Returns the seconds spent writing the summary (0 but after the traced steps)."""
        if self.done or first_dispatch:
            return 0.0
        if self.start_step is None:
            if epoch_end:
                return 0.0
            jax.block_until_ready(state)  # the trace then holds the traced steps only
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.start_step, self.tic = step, time.perf_counter()
        elif step - self.start_step >= self.steps or epoch_end:
            jax.block_until_ready(state)
            stopped = time.perf_counter()
            jax.profiler.stop_trace()
            self.done = True
            self.write_summary(step - self.start_step, stopped - self.tic, lower().compile().as_text())
            return time.perf_counter() - stopped
        return 0.0

    def finish(self) -> None:
        """At the run's end: say so when no trace could be taken (no dispatch after the first within an epoch)."""
        if not self.done and self.start_step is None:
            print(
                f"config.profile_steps={self.steps}: no trace taken; it starts after the session's first dispatch and"
                " stays within an epoch, and no epoch had a dispatch after it: train more steps per epoch.",
                flush=True,
            )

    def write_summary(self, steps: int, wall_s: float, hlo_text: str) -> None:
        summary = summarize_trace(self.directory, steps, wall_s, hlo_text)
        if summary is None:
            print(f"Profile: no XLA operation of the train step in the trace; see {self.directory}.", flush=True)
            return
        (self.directory / "summary.txt").write_text(summary.text())
        summary.plot_layers(self.directory / "by_layer.png")
        steps_traced = f"steps {self.start_step + 1}-{self.start_step + steps}"
        print(
            f"Profile of {steps_traced} ({self.directory}; all of it in summary.txt):\n{summary.text(top_layers=10)}",
            flush=True,
        )


def summarize_trace(directory: Path, steps: int, wall_s: float, hlo_text: str) -> Summary | None:
    """The summary of the newest trace under `directory` for the module compiled as `hlo_text`
    (None when the trace holds none of its operations)."""
    module, ops = hlo_ops(hlo_text, cpu=jax.default_backend() == "cpu")
    traces = sorted(Path(directory).glob("plugins/profile/*/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    times = op_times(traces[-1], module) if traces else {}
    return summarize(times, ops, steps, wall_s) if times else None


def profile_calls(
    call: Callable[[], None],
    sync: Callable[[], None],
    calls: int,
    steps_per_call: int,
    directory: Path,
    lower: Callable[[], jax.stages.Lowered],
) -> str:
    """Traces `calls` calls of an already compiled step into `directory`; their summary table, or a line
    saying the trace held none of the step's operations."""
    sync()
    jax.profiler.start_trace(str(directory), create_perfetto_trace=True)
    tic = time.perf_counter()
    for _ in range(calls):
        call()
    sync()
    wall = time.perf_counter() - tic
    jax.profiler.stop_trace()
    summary = summarize_trace(directory, calls * steps_per_call, wall, lower().compile().as_text())
    return summary.text() if summary else "no XLA operation of the step in the trace (see labjax.profiling.op_times)\n"
