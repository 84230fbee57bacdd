"""Metrics overhead at the step level: one process per rank alternates steps of an instrumented and a plain
copy of the same model, so both see the same machine load at the same moment (a shared, busy machine makes
run-against-run comparisons noisy). Instrumented = what engine/worker.py adds inside a timed step when
spec.instrument is on: the counting DDP comm hook and CommCounter on the collectives, three model-state
snapshots (ModelStateMeter) and three RSS reads.

    python -m torch.distributed.run --standalone --nproc-per-node=2 bench/step_overhead.py [--size small] [--steps 200]
    ... --control   (A/A: both copies plain; the ratio it prints is the noise floor to read the others against)
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
from engine.memory import ModelStateMeter, ProcessMemory  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.strategies import after_optimizer_step, apply_strategy, build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--control", action="store_true",
                        help="A/A: the 'on' copy is plain too, so its ratio is this machine's noise floor")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = load_dataset("digits")
    comm = CommCounter(world)
    memory = ProcessMemory()
    if rank == 0:
        print(f"mlp/{args.size}, {world} ranks, log_interval 1, {args.steps} alternating steps per copy "
              f"(medians after 10 warm-up steps)")
        print(f"{'strategy':<8} {'off (ms)':>9} {'on (ms)':>9} {'on/off':>7}")
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        copies = {}
        for copy in (False, True):
            instrument = copy and not args.control
            torch.manual_seed(0)
            if instrument:
                comm.install()  # FSDP2 looks the collectives up at call time; the hook is bound at wrap time
            model = apply_strategy(build_model("mlp", args.size, dataset.shape), strategy, torch.device("cpu"),
                                   "fp32", count_comm=instrument)
            optimizer = build_optimizer(model, strategy, "adam", 1e-3)
            comm.uninstall()
            copies[copy] = (model, optimizer, ModelStateMeter(model, optimizer))
        times = {False: [], True: []}
        for step in range(1, args.steps + 1):
            for copy in ((False, True) if step % 2 else (True, False)):
                model, optimizer, meter = copies[copy]
                instrument = copy and not args.control
                if instrument:
                    comm.install()
                    comm.reset_step()
                indices = rank_slice(global_batch_indices(step - 1, len(dataset), 64, 0), rank, world)
                x, y = dataset.batch(indices)
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
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
                elapsed = torch.tensor([time.perf_counter() - t0])
                comm.uninstall()
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
                times[copy].append(elapsed.item())
        if rank == 0:
            off, on = (statistics.median(times[k][10:]) for k in (False, True))
            print(f"{strategy:<8} {off * 1e3:9.2f} {on * 1e3:9.2f} {on / off:7.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
