# ruff: noqa: E501 (HLO text keeps its long lines)
"""config.profile_steps: a trace of a few train steps and where their time went, by layer."""

import jax
import numpy as np
import pytest

from configs import sunglasses_cnn
from labjax import checkpoints, profiling, train, writers
from labjax import config as config_lib


@pytest.mark.parametrize(
    "op_name, expected",
    [
        ("jit(train_step)/jvp(Classifier)/backbone/conv1_bn/reduce_sum", ("backbone/conv1_bn", "forward")),
        (
            "jit(train_step)/transpose(jvp(Classifier))/backbone/conv2_block2_2_conv/dot_general",
            ("backbone/conv2_block2_2_conv", "backward"),
        ),
        (  # a step of steps_per_execution's scan: the loop's and the cond's pieces are no modules
            "jit(multi_step)/while/body/closed_call/cond/branch_1_fun/transpose(jvp(ConvNN1))/conv2/"
            "transpose(jvp())/transpose",
            ("conv2", "backward"),
        ),
        ("jit(train_step)/jvp(Classifier)/backbone/conv1_bn/jit(relu)/max", ("backbone/conv1_bn", "forward")),
        ("jit(multi_step)/while/body/closed_call/cond/branch_1_fun/add", (profiling.OUTSIDE, "update")),
        ("jit(train_step)/jvp()/log", (profiling.OUTSIDE, "update")),
    ],
)
def test_an_operation_belongs_to_the_module_its_metadata_names(op_name, expected):
    assert profiling.layer_of(op_name) == expected


HLO = """HloModule jit_step, entry_computation_layout={(f32[8,4]{1,0})->f32[8,2]{1,0}}

%fused_computation.1 (param_0: f32[8,4], param_1: f32[4,2]) -> f32[8,2] {
  %param_0 = f32[8,4]{1,0} parameter(0)
  %param_1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.3 = f32[8,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.2 (param_0.1: f32[8,2]) -> f32[8,2] {
  %param_0.1 = f32[8,2]{1,0} parameter(0)
  ROOT %tanh.1 = f32[8,2]{1,0} tanh(%param_0.1)
}

ENTRY %main (x: f32[8,4], w: f32[4,2]) -> f32[8,2] {
  %x = f32[8,4]{1,0} parameter(0)
  %w = f32[4,2]{1,0} parameter(1)
  %ynn_fusion = f32[8,2]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(step)/jvp(Net)/dense/dot_general"}
  %tanh_fusion = f32[8,2]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(step)/transpose(jvp(Net))/dense/tanh"}
  %dot.2 = f32[4,2]{1,0} dot(%x, %tanh_fusion), lhs_contracting_dims={0}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/transpose(jvp(Net))/dense/dot_general"}
  ROOT %copy.1 = f32[8,2]{1,0} copy(%tanh_fusion)
}
"""


def test_the_summary_sums_each_operation_into_its_layer_and_kind(tmp_path):
    module, ops = profiling.hlo_ops(HLO)
    assert module == "jit_step"
    assert ops["ynn_fusion"] == profiling.Op("dense", "forward", "matmul")
    assert ops["tanh_fusion"] == profiling.Op("dense", "backward", "elementwise")
    assert ops["copy.1"] == profiling.Op(profiling.UNRECORDED, "update", "copy")
    assert ops["dot.2"] == profiling.Op("dense", "backward", "matmul")
    # On the CPU a plain dot runs on Eigen's threads, asynchronously: its kind says the trace undercounts it.
    assert profiling.hlo_ops(HLO, cpu=True)[1]["dot.2"].kind == "matmul (Eigen, async)"
    assert profiling.hlo_ops(HLO, cpu=True)[1]["ynn_fusion"].kind == "matmul"
    # Two steps traced: 6 ms of matmul, 2 of tanh, 1 of copy, and an operation of another module.
    times = {"ynn_fusion": 0.006, "tanh_fusion": 0.002, "copy.1": 0.001, "elsewhere.7": 5.0}
    summary = profiling.summarize(times, ops, steps=2, wall_s=0.010)
    assert summary.by_layer == {"dense": (3.0, 1.0, 0.0), profiling.UNRECORDED: (0.0, 0.0, 0.5)}
    assert list(summary.by_kind) == ["matmul", "elementwise", "copy"]  # costliest first
    lines = summary.text().splitlines()
    assert lines[0].startswith("2 traced step(s): 5.00 ms per step of wall time, 4.50 ms of XLA operations")
    rows = {line[:40].strip(): line[40:].split() for line in lines[1:] if line[:40].strip()}
    assert rows["matmul"] == ["3.000", "66.7%"] and rows["elementwise"] == ["1.000", "22.2%"]
    assert rows["dense"] == ["4.000", "88.9%", "3.000", "1.000", "0.000"]
    assert rows[profiling.UNRECORDED] == ["0.500", "11.1%", "0.000", "0.000", "0.500"]
    assert lines.index(next(line for line in lines if line.startswith("dense"))) < lines.index(
        next(line for line in lines if line.startswith(profiling.UNRECORDED))
    ), "layers come costliest first"
    assert profiling.UNRECORDED not in summary.text(top_layers=1)  # the printed head: the costliest only
    png = summary.plot_layers(tmp_path / "by_layer.png")
    assert png.stat().st_size > 0


def _config(steps_per_execution: int, profile_steps: int):
    config = sunglasses_cnn.get_config("smoke")
    config.data.train_size, config.data.val_size = 4 * 8, 8  # 8 steps an epoch
    config.batch_size, config.eval_batch_size = 4, 8
    config.num_epochs, config.log_every_steps = 2, 2
    config.steps_per_execution, config.profile_steps = steps_per_execution, profile_steps
    return config


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_a_profiled_run_writes_where_the_time_went_and_trains_as_an_unprofiled_one(tmp_path, steps_per_execution):
    train.train_and_evaluate(_config(steps_per_execution, 3), tmp_path / "profiled")
    train.train_and_evaluate(_config(steps_per_execution, 0), tmp_path / "plain")
    profile = tmp_path / "profiled" / "profile"
    assert list(profile.glob("plugins/profile/*/*.trace.json.gz")), "the trace stays for TensorBoard or Perfetto"
    assert (profile / "by_layer.png").stat().st_size > 0
    lines = (profile / "summary.txt").read_text().splitlines()
    # The trace starts after the first dispatch and covers at least 3 steps (whole dispatches).
    traced = int(lines[0].split()[0])
    assert traced == (3 if steps_per_execution == 1 else 4)
    by_layer = next(i for i, line in enumerate(lines) if line.startswith("by layer"))
    layers = {line[:40].strip(): line[40:].split() for line in lines[by_layer + 1 :]}
    for layer in ("conv1", "conv2"):  # ConvNN_1's convolutions, each with time in both directions
        assert float(layers[layer][2]) > 0 and float(layers[layer][3]) > 0, layer
    assert float(layers["fc1"][0]) > 0 and float(layers[profiling.OUTSIDE][4]) > 0  # Adam's update
    # 4 simulated devices: the gradients' all-reduce is a row of its own, not a layer's.
    assert float(layers[profiling.COMMUNICATION][0]) > 0
    assert not any("conv1/conv1" in layer for layer in layers)
    assert not (tmp_path / "plain" / "profile").exists()
    # Tracing changes nothing trained: same metrics, same final weights.
    rows = [writers.read_rows(tmp_path / run / "metrics.jsonl") for run in ("profiled", "plain")]
    assert [r["train_loss"] for r in rows[0] if "epoch" in r] == [r["train_loss"] for r in rows[1] if "epoch" in r]
    params = []
    for run in ("profiled", "plain"):
        saved = checkpoints.Checkpoints(tmp_path / run, read_only=True)
        params.append(saved.restore_arrays(saved.latest_step())["params"])
        saved.close()
    for a, b in zip(*(jax.tree.leaves(p) for p in params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_run_too_short_to_trace_says_so(tmp_path, capsys):
    config = _config(1, 2)
    config.data.train_size, config.num_epochs = 4, 2  # one step an epoch: never a dispatch after the first
    train.train_and_evaluate(config, tmp_path)
    assert "config.profile_steps=2: no trace taken" in capsys.readouterr().out
    assert not (tmp_path / "profile").exists()


def test_progress_leaves_excluded_seconds_out_of_its_rate(monkeypatch, capsys):
    """The seconds a trace's summary takes are not training: the progress line's rate leaves them out."""
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(clock))
    progress = train.Progress(total_steps=100, global_batch=4)
    progress.update(1, 0, 1, 0.5)  # compiled: timing starts here, at t=100
    progress.exclude(5.0)
    progress.update(11, 0, 1, 0.5)  # 10 steps in 10 s, 5 of them summarising
    assert "2.00 steps/s 8.0 img/s" in capsys.readouterr().out.splitlines()[-1]


def test_a_negative_profile_steps_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match=r"profile_steps=-1.*integer >= 0"):
        config_lib.validate(_config(1, -1), 1)


@pytest.mark.slow
def test_profile_calls_traces_an_already_compiled_step(tmp_path):
    """benchmarks/speed.py --profile: the calls of a jitted step, traced and summed by layer."""
    import flax.linen as nn
    import jax.numpy as jnp

    model = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(8)])
    x = jnp.ones((256, 32))
    params = model.init(jax.random.key(0), x)
    step = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2)))
    out = {"grads": step(params, x)}

    def call():
        out["grads"] = step(params, x)

    table = profiling.profile_calls(
        call, lambda: jax.block_until_ready(out), 3, 1, tmp_path, lambda: step.lower(params, x)
    )
    assert table.startswith("3 traced step(s)")
    layers = {line[:40].strip() for line in table.splitlines()}
    assert {"layers_0", "layers_2"} <= layers, table

    # Profiled calls that are not the lowered step's module: said, not an empty or missing table.
    def another_program(x):  # its own module name (a lambda's would be the lowered step's, jit__lambda)
        return jnp.tanh(x) * 2

    other = jax.jit(another_program)
    said = profiling.profile_calls(
        lambda: other(x).block_until_ready(), lambda: None, 2, 1, tmp_path / "other", lambda: step.lower(params, x)
    )
    assert said.startswith("no XLA operation of the step in the trace"), said
