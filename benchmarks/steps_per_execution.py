"""S4 at batch 1 (W4): labjax's training loop with k steps per dispatch against PyTorch eager, in one run.

ConvNN_1 (labjax/models/small_nets.py) on 30x32x1 images, 2 classes, Adam, batch 1: a step is
~2 MFLOP, so what each step costs besides arithmetic decides the rate. Each way runs in
--rounds interleaved rounds and keeps its best, since others may load the machine meanwhile.

  labjax loop      train_and_evaluate on configs/sunglasses_cnn.py (its synthetic 500-image
                   set), config.steps_per_execution = k: the real loop, input pipeline
                   (tf.data), metrics and logging included. Steps/s per epoch from the
                   training time in metrics.jsonl (evaluation excluded); the median of the
                   epochs after the first (which compiles).
  labjax compute   the same jitted program on chunks already on the device: the rate
                   without the input pipeline, what the loop would reach if the host kept up.
  input pipeline   pipeline.train_batches alone, a new epoch's iterator each epoch as the
                   loop does: the batches/s the host can deliver.
  PyTorch eager    the same architecture (parameter counts printed), Adam, cross-entropy,
                   zero_grad/forward/backward/step on tensors already in memory (no loader),
                   median of timed windows after warm-up, with its default threads and with
                   one (faster at batch 1), the better.

Usage: python benchmarks/steps_per_execution.py [--ks 1,10,50,200] [--epochs 3] [--torch-steps 1000]
       [--windows 3] [--rounds 2]
"""

import argparse
import atexit
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import sunglasses_cnn  # noqa: E402
from labjax import models, parallel, tasks, train, writers  # noqa: E402
from labjax.data import pipeline  # noqa: E402


def s4_config(k: int, epochs: int):
    config = sunglasses_cnn.get_config()
    config.data.val_size = 16  # evaluation is not timed; keep it short
    config.num_epochs, config.steps_per_execution = epochs, k
    config.log_every_steps = 500  # once an epoch (the loop logs at chunk ends)
    return config


def loop_rate(k: int, epochs: int) -> tuple[float, int]:
    """(median steps/s of the epochs after the first, parameter count) of train_and_evaluate."""
    with tempfile.TemporaryDirectory() as workdir:
        with contextlib.redirect_stdout(io.StringIO()):
            train.train_and_evaluate(s4_config(k, epochs), workdir)
        rows = [row for row in writers.read_rows(Path(workdir) / "metrics.jsonl") if "epoch" in row]
        params = json.loads((Path(workdir) / "status.json").read_text())["num_params"]
    rates = [(b["step"] - a["step"]) / (b["training_time_s"] - a["training_time_s"]) for a, b in zip(rows, rows[1:])]
    return statistics.median(rates), params


def compute_rate(k: int, steps: int) -> float:
    """Steps/s of the jitted step (k = 1) or k-step program on batches already on the device."""
    config = s4_config(k, 1)
    data = pipeline.load(config, "zero_one")
    mesh = parallel.make_mesh()
    spe = pipeline.steps_per_epoch(data, config.batch_size)
    model, frozen = models.build(config.model, data.num_classes, data.input_shape)
    state = train.create_train_state(config, model, mesh, data.input_shape, frozen, spe, spe)
    if k == 1:
        step = train.make_train_step(mesh, data.num_classes)
        inputs = [parallel.to_global(batch, mesh) for batch in pipeline.train_batches(data, config, 0)]

        def run(state, metrics, batch):
            state, new = step(state, batch)
            return state, (new if metrics is None else metrics.merge(new))  # the loop's host merge
    else:
        multi = train.make_multi_step(mesh, k, data.num_classes)
        chunks = pipeline.train_batches(data, config, 0, steps_per_chunk=k)
        inputs = [train.chunk_to_global(chunk, k, k, mesh) for chunk in chunks if len(chunk["label"]) == k]
        empty = jax.device_put(tasks.TrainMetrics.empty(), parallel.replicated(mesh))

        def run(state, metrics, chunk):
            state, metrics, _ = multi(state, empty if metrics is None else metrics, chunk, np.int32(k))
            return state, metrics

    state, metrics = run(state, None, inputs[0])  # compile
    jax.block_until_ready(metrics)
    done, start = 0, time.perf_counter()
    while done < steps:
        for batch in inputs:
            state, metrics = run(state, metrics, batch)
            done += k
    jax.block_until_ready(metrics)
    return done / (time.perf_counter() - start)


def pipeline_rate(epochs: int, k: int) -> tuple[float, float]:
    """Batches/s of pipeline.train_batches in chunks of k: (over whole epochs, each epoch's iterator
    built anew as the loop does; the same without the building)."""
    config = s4_config(k, epochs)
    data = pipeline.load(config, "zero_one")
    next(pipeline.train_batches(data, config, 0, steps_per_chunk=k))  # tf.data's function tracing, once
    count, total, building = 0, 0.0, 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        chunks = pipeline.train_batches(data, config, epoch, steps_per_chunk=k)
        building += time.perf_counter() - start
        count += sum(len(chunk["label"]) for chunk in chunks)
        total += time.perf_counter() - start
    return count / total, count / (total - building)


def torch_rate(steps: int, windows: int) -> tuple[float, int, int]:
    """(median steps/s, parameter count, threads) of PyTorch eager training ConvNN_1 at batch 1,
    with its default intra-op threads and with one (often faster at batch 1): the better."""
    import torch

    default_threads = torch.get_num_threads()
    best = (0.0, 0, 0)
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        rate, params = _torch_rate(steps, windows)
        best = max(best, (rate, params, threads))
    torch.set_num_threads(default_threads)
    return best


def _torch_rate(steps: int, windows: int) -> tuple[float, int]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=(2, 1)),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 40),
        nn.ReLU(),
        nn.Linear(40, 2),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002, eps=1e-8)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = torch.rand(500, 1, 1, 30, 32), torch.randint(0, 2, (500, 1))

    def window(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            optimizer.zero_grad()
            loss = loss_fn(model(images[i % 500]), labels[i % 500])
            loss.backward()
            optimizer.step()
        return n / (time.perf_counter() - start)

    window(100)  # warm-up
    rates = [window(steps) for _ in range(windows)]
    return statistics.median(rates), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,10,50,200", help="steps per dispatch to time, comma-separated")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of 500 steps per labjax run (>= 2)")
    parser.add_argument("--torch-steps", type=int, default=1000, help="steps per PyTorch timed window")
    parser.add_argument("--windows", type=int, default=3, help="PyTorch timed windows")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every way; each way's best is kept")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    # A fresh compilation cache: later rounds reuse the first round's programs (compiling is not timed).
    cache = tempfile.mkdtemp(prefix="xla_cache_")
    atexit.register(shutil.rmtree, cache, True)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    # Rounds interleave the ways, so a change in the machine's load touches all of them alike.
    torch_best, loops, computes, params = (0.0, 0, 0), {}, {}, 0
    for round_index in range(args.rounds):
        torch_best = max(torch_best, torch_rate(args.torch_steps, args.windows))
        print(f"round {round_index + 1}: PyTorch {torch_best[0]:.0f} steps/s", flush=True)
        for k in ks:
            loop, params = loop_rate(k, max(args.epochs, 2))
            loops[k] = max(loops.get(k, 0.0), loop)
            computes[k] = max(computes.get(k, 0.0), compute_rate(k, 2000))
            print(f"round {round_index + 1}: k={k} loop {loop:.0f} steps/s, compute {computes[k]:.0f}", flush=True)
    torch_steps_s, torch_params, torch_threads = torch_best
    hosts = {k: pipeline_rate(2, k) for k in sorted({1, max(ks)})}

    print(
        f"\nConvNN_1, 30x32x1, batch 1, Adam; {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"parameters: labjax {params:,}, PyTorch {torch_params:,}")
    print(f"PyTorch eager: {torch_steps_s:.0f} steps/s ({torch_threads} thread(s); best of {args.rounds} rounds)")
    for k, (whole, iterating) in hosts.items():
        print(
            f"input pipeline alone, chunks of {k}: {whole:.0f} batches/s with each epoch's set-up, "
            f"{iterating:.0f} without"
        )
    print()
    print("| steps per dispatch | labjax loop steps/s | loop / PyTorch | labjax compute steps/s | compute / PyTorch |")
    print("|---|---|---|---|---|")
    for k in ks:
        loop, compute = loops[k], computes[k]
        print(f"| {k} | {loop:.0f} | {loop / torch_steps_s:.2f}x | {compute:.0f} | {compute / torch_steps_s:.2f}x |")


if __name__ == "__main__":
    main()
