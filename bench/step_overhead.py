"""Metrics overhead at the step level: one process per rank alternates steps of three copies of the same
model, so all three see the same machine load at the same moment (a shared, busy machine makes run-against-run
comparisons noisy): `off` plain, `on` with what engine/worker.py adds inside a timed step when spec.instrument
is on, and `A/A` plain again. Instrumented = the counting DDP comm hook and CommCounter on the collectives,
the saved-activation count and the three model-state snapshots on their steady cadence (SteadyFigure: every
step until a figure repeats, then every 10th), three RSS reads and the step's comm record. Each copy's step
time is divided by the `off` step it was interleaved with, and the median of those paired ratios printed; the
A/A column is this machine's noise floor, measured in the same run.

    python -m torch.distributed.run --standalone --nproc-per-node=2 bench/step_overhead.py [--size small] [--steps 600]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.comm import CommCounter  # noqa: E402
from engine.data import global_batch_indices, load_dataset, rank_slice  # noqa: E402
from engine.memory import ModelStateMeter, ProcessMemory, SavedActivations, SteadyFigure  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.strategies import after_optimizer_step, apply_strategy, build_optimizer  # noqa: E402


COPIES = ["off", "on", "A/A"]
WARMUP_STEPS = 20


def interleaved_steps(strategy: str, build_order: list[str], args, dataset, comm, memory, saved, rank, world) -> dict:
    """Step times of the three copies, built in `build_order` (where a copy's tensors land in memory shifts its
    speed by a percent or two, so repeats rotate it) and stepped in turn."""
    copies = {}
    for copy in build_order:
        instrument = copy == "on"
        torch.manual_seed(0)
        if instrument:
            comm.install()  # FSDP2 looks the collectives up at call time; the hook is bound at wrap time
        model = apply_strategy(build_model("mlp", args.size, dataset.shape), strategy, torch.device("cpu"),
                               "fp32", count_comm=instrument)
        optimizer = build_optimizer(model, strategy, "adam", 1e-3)
        comm.uninstall()
        copies[copy] = (model, optimizer, ModelStateMeter(model, optimizer), SteadyFigure())
    times = {copy: [] for copy in COPIES}
    for step in range(1, args.steps + 1):
        order = COPIES[step % 3:] + COPIES[:step % 3]  # each copy runs first, second and third in turn
        for copy in order:
            model, optimizer, meter, activations = copies[copy]
            instrument = copy == "on"
            if instrument:
                comm.install()
                comm.reset_step()
            indices = rank_slice(global_batch_indices(step - 1, len(dataset), 64, 0), rank, world)
            x, y = dataset.batch(indices)
            t0 = time.perf_counter()
            counting = instrument and activations.due(step)
            saved.start(enabled=counting)
            loss = F.cross_entropy(model(x), y)
            saved_bytes = saved.stop()
            if counting:
                activations.measured(saved_bytes, step)
            saved.forget()
            if instrument:
                meter.measure("forward", step), memory.rss_bytes()
            loss.backward()
            if instrument:
                meter.measure("backward", step), memory.rss_bytes()
            optimizer.step()
            after_optimizer_step(model, strategy)
            optimizer.zero_grad(set_to_none=False)
            if instrument:
                meter.measure("step", step), memory.rss_bytes()
                comm.step_metrics()
            elapsed = torch.tensor([time.perf_counter() - t0])
            comm.uninstall()
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
            times[copy].append(elapsed.item())
    return {copy: t[WARMUP_STEPS:] for copy, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=300, help="interleaved steps per copy and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="each with the copies built in another order")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = load_dataset("digits")
    comm = CommCounter(world)
    memory = ProcessMemory()
    saved = SavedActivations()
    if rank == 0:
        print(f"mlp/{args.size}, {world} ranks, log_interval 1; {args.repeats} repeats of {args.steps} interleaved "
              f"steps per copy ({WARMUP_STEPS} warm-up steps dropped). on/plain: median of each step's 'on' time "
              f"over the mean of the two plain copies' times in the same round; A/A: the two plain copies' "
              f"ratio, the noise floor. Per repeat, then the median of the repeats.")
        print(f"{'strategy':<8} {'plain (ms)':>10} {'on (ms)':>9} {'on/plain':>9} {'A/A':>7}   repeats (on/plain)")
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        rows = []
        for repeat in range(args.repeats):
            build_order = COPIES[repeat % 3:] + COPIES[:repeat % 3]
            t = interleaved_steps(strategy, build_order, args, dataset, comm, memory, saved, rank, world)
            plain = [(a + b) / 2 for a, b in zip(t["off"], t["A/A"])]
            rows.append((statistics.median(plain), statistics.median(t["on"]),
                         statistics.median(o / p for o, p in zip(t["on"], plain)),
                         statistics.median(b / a for a, b in zip(t["off"], t["A/A"]))))
        if rank == 0:
            plain_ms, on_ms, ratio, aa = (statistics.median(r[i] for r in rows) for i in range(4))
            print(f"{strategy:<8} {plain_ms * 1e3:10.2f} {on_ms * 1e3:9.2f} {ratio:9.3f} {aa:7.3f}   "
                  + " ".join(f"{r[2]:.3f}" for r in rows), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
