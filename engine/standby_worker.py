"""One rank of a warm standby (engine/standby.py): pays the cold start before any run exists, then waits.

    torchrun --standalone --nproc-per-node=N -m engine.standby_worker <standby folder>

Up front: import torch and every module a run needs, initialise the process group, and run what each strategy
builds lazily once on a throwaway layer (DDP's constructor imports torch._dynamo, FSDP2 its DTensor operator
tables; seconds each on a small CPU). Then poll for handoff.json: a spec path continues as engine.worker.main on
that spec, in this process and process group; a retirement, a silent page (no keepalive) or a dead
supervisor ends the rank.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from engine.supervisor import die_with_parent

WORKER_IDLE_MARGIN_S = 60.0  # the supervisor retires an idle standby; this is the ranks' own safety net


def warm_up(device_name: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer  # noqa: F401  (ZeRO-1's import, paid now)

    from engine import worker  # noqa: F401  (engine.comm, data, memory, models, strategies with it)
    from engine.data import load_dataset

    load_dataset("digits")  # the default dataset's file read and numpy parse
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device_name == "cuda" else torch.device("cpu")
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 2).to(device),
                                                    device_ids=[device.index] if device.type == "cuda" else None)
    ddp(torch.zeros(2, 8, device=device)).sum().backward()
    layer = torch.nn.Linear(8, 2).to(device)
    fully_shard(layer)
    layer(torch.zeros(2, 8, device=device)).sum().backward()
    del ddp, layer
    dist.barrier()


def main(folder: Path) -> None:
    die_with_parent()  # torchrun gone (its supervisor killed): this rank goes too
    from engine.worker import lower_priority

    lower_priority()
    started = time.time()
    info = json.loads((folder / "standby.json").read_text())
    import torch
    import torch.distributed as dist

    device_name = info["shape"]["device"]
    if device_name == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device_name == "cuda" else "gloo",
                            device_id=torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                            if device_name == "cuda" else None,
                            timeout=timedelta(seconds=info["shape"]["collective_timeout_s"]))  # the run's own
    rank = dist.get_rank()
    warm_up(device_name)
    import psutil

    ready = {"rank": rank, "pid": os.getpid(), "t": time.time(), "warm_up_s": time.time() - started,
             "rss_bytes": psutil.Process().memory_info().rss}
    (folder / "ready" / f"rank{rank}").write_text(json.dumps(ready) + "\n")
    print(f"[standby rank {rank}] warm in {ready['warm_up_s']:.2f} s (pid {os.getpid()}, "
          f"RSS {ready['rss_bytes'] / 2**20:.0f} MiB); waiting for a run", flush=True)

    idle_s = float(info.get("idle_s", 300)) + WORKER_IDLE_MARGIN_S
    handoff_path = folder / "handoff.json"
    polls = 0
    while True:
        polls += 1
        if handoff_path.exists():  # a stat every 20 ms; the file is renamed into place whole
            try:
                handoff = json.loads(handoff_path.read_text())
            except OSError:  # the folder went away: the supervisor has retired it
                handoff = {"retire": True}
            if handoff.get("spec") or handoff.get("retire"):
                break
        if polls % 50 == 0:  # once a second: has the page stopped asking for us?
            try:
                idle = time.time() - (folder / "keepalive").stat().st_mtime
            except OSError:
                idle = float("inf")
            if idle > idle_s:
                handoff = {"retire": True}
                break
        time.sleep(0.02)
    if not handoff.get("spec"):
        dist.destroy_process_group()
        return

    from engine import worker

    spec_path = Path(handoff["spec"])
    print(f"[standby rank {rank}] taking run {spec_path.parent.name}", flush=True)
    worker.main(spec_path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torchrun ... -m engine.standby_worker STANDBY_FOLDER")
    main(Path(sys.argv[1]))
