"""One rank of one ShardLab run: the torchrun target. Reads top to bottom like nanoGPT's train.py.

On one machine (what the launcher runs):
  torchrun --standalone --nproc-per-node=2 -m engine.worker runs/<run_id>/spec.json
On two machines (print the exact line with `python -m engine torchrun-command`):
  torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
      -m engine.worker spec.json
Without torchrun it runs as a single rank (RANK/WORLD_SIZE absent), which is the full-batch reference.

Every number it reports is measured here and appended, one JSON line per record, to
<run dir>/metrics/rank<r>.jsonl (never to the shared stdout, where ranks' lines interleave); the record
kinds and key names belong to engine/runstore.py, which reads them back. A heartbeat thread touches
<run dir>/heartbeat/rank<r> every few seconds, so a stopped or frozen rank shows as stalled.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing import errors as elastic_errors

from engine import runstore
from engine.budget import MemoryNeed, cap_cuda_memory
from engine.comm import CommCounter, NoCommCounter
from engine.data import global_batch_indices, load_dataset, rank_slice
from engine.memory import DeviceMemory, ModelStateMeter, ProcessMemory, SavedActivations, SteadyFigure
from engine.models import build_model, count_parameters
from engine.registry import model_context
from engine.spec import STRATEGIES, JobSpec
from engine.strategies import after_optimizer_step, apply_strategy, build_optimizer, full_parameters, unwrap
from engine.supervisor import die_with_parent  # if torchrun is SIGKILLed, its ranks die too

MEASURED_STEPS = 2  # steps 1 and 2 measure the memory need (step 1 allocates, step 2 is the steady state)
TRAINING_NICENESS = 10  # ranks saturate the cores: a lower priority keeps the app and the browser responsive
EVAL_ITEMS = 512  # held-out samples per evaluation, split evenly over the ranks
DTYPES = {"fp32": torch.float32, "bf16": torch.float32, "fp64": torch.float64}  # bf16: fp32 weights, bf16 compute


@elastic_errors.record  # torchrun's error file gets this rank's traceback, and its failure report names the first failure
def main(spec_path: Path) -> None:
    # -------------------------------------------------------------------------------------- setup
    spec = JobSpec.load(spec_path)
    run_dir = spec_path.parent
    die_with_parent()
    lower_priority()
    stop_requested = False

    def request_stop(signum, frame):  # SIGTERM from torchrun (a cancel): finish this step, then leave
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)

    distributed = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if spec.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not distributed:  # a single process still needs a group for DDP/FSDP: a world of one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1")
    heartbeat = runstore.Heartbeat(run_dir, rank).start()
    if not dist.is_initialized():  # a warm standby (engine/standby_worker.py) initialised it before the run existed
        # A collective that waits longer than this (a peer stopped or hung) raises, so a hang ends as a failure.
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None,
                                timeout=timedelta(seconds=spec.collective_timeout_s))
    metrics = runstore.MetricsWriter(run_dir, rank)
    try:
        train(spec, run_dir, rank, world_size, device, backend, metrics, lambda: stop_requested)
    except BaseException as error:
        metrics.write(
            kind=runstore.ERROR, rank=rank, t=time.time(), message=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(),
        )
        raise
    finally:
        heartbeat.stop()
        dist.destroy_process_group()


def train(spec, run_dir, rank, world_size, device, backend, metrics, should_stop) -> None:
    # ------------------------------------------------------------------------ data and model
    torch.manual_seed(spec.seed)  # same seed on every rank: identical initial weights everywhere
    dataset = load_dataset(spec.dataset, model_context(spec.model, spec.size), spec.data_dir)
    if spec.global_batch > len(dataset):
        raise ValueError(f"global batch {spec.global_batch} is larger than the {len(dataset)} training samples")
    dtype = DTYPES[spec.precision]
    model = build_model(spec.model, spec.size, dataset.shape).to(device=device, dtype=dtype)
    param_count = count_parameters(model)

    comm = CommCounter(world_size).install() if spec.instrument else NoCommCounter()
    shard_units = model.shard_units
    model = apply_strategy(model, spec.strategy, device, spec.precision, count_comm=spec.instrument)
    optimizer = build_optimizer(model, spec.strategy, spec.optimizer, spec.lr)
    comm.name_parameters(model)
    # The memory wall: a GPU's allocator enforces the budget; a CPU rank checks its measured need against it.
    if spec.memory_budget_mb and device.type == "cuda":
        cap_cuda_memory(device, spec.memory_budget_mb)
    cpu_budget_mb = spec.memory_budget_mb if device.type == "cpu" else 0
    saved_activations = SavedActivations()  # bytes kept for backward, counted on logged and measured steps only
    activations_figure = SteadyFigure()  # ... and on logged steps only while the figure can still change
    need = MemoryNeed(
        unwrap(model), optimizer, shard_units, rank, cpu_budget_mb, saved_activations,
        on_over_budget=lambda record: metrics.write(kind=runstore.MEMORY_NEED, rank=rank, t=time.time(), over_budget=True,
                                                    budget_bytes=cpu_budget_mb * 2**20, simulated=True, **record),
    ) if (spec.instrument or cpu_budget_mb) else None
    collectives_step = min(2, spec.steps)  # step 2 is the steady state (step 1 also builds Adam's state)
    # DDP/ZeRO-1 compute in bf16 under autocast; FSDP2 casts through its MixedPrecisionPolicy instead.
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if spec.precision == "bf16" and spec.strategy in ("ddp", "zero1")
        else nullcontext()
    )
    process_memory, device_memory = ProcessMemory(), DeviceMemory(device)
    state_meter = ModelStateMeter(model, optimizer)
    metrics.write(
        kind=runstore.START, rank=rank, world_size=world_size, pid=os.getpid(), hostname=socket.gethostname(),
        node_rank=int(os.environ.get("GROUP_RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        backend=backend, device=str(device), param_count=param_count,
        strategy_pytorch=STRATEGIES[spec.strategy]["pytorch"], t=time.time(),
    )
    launched_at = (run_dir / "spec.json").stat().st_mtime  # when the launcher wrote the spec: the Launch click
    log_line(rank, f"started on {socket.gethostname()}, pid {os.getpid()}, device {device} ({backend}), rank {rank} "
                   f"of {world_size}; {param_count:,} parameters, {spec.strategy}; "
                   f"{time.time() - launched_at:.2f} s after the spec was written")

    def snapshot(phase: str) -> dict:
        if not spec.instrument:
            return {}
        state, walked_at_step = state_meter.measure(phase, step)  # walked only while it can change
        record = {runstore.mem_key(phase, category): size for category, size in state.items()}
        record[runstore.mem_measured_step_key(phase)] = walked_at_step
        record[runstore.mem_rss_key(phase)] = process_memory.rss_bytes()
        return record

    # ------------------------------------------------------------------------------ training
    step = 0
    while step < spec.steps and not should_stop():
        step += 1
        if step == spec.fail_at_step and rank == world_size - 1:
            raise RuntimeError(f"rank {rank} failed on purpose at step {step} (fail_at_step test hook)")
        logging_step = step % spec.log_interval == 0 or step == spec.steps
        comm.reset_step()
        process_memory.reset_peak()
        device_memory.reset_peak()
        t0 = time.perf_counter()

        indices = rank_slice(global_batch_indices(step - 1, len(dataset), spec.global_batch, spec.seed), rank, world_size)
        x, y = on_device(*dataset.batch(indices), device, dtype)
        measuring = need is not None and step <= MEASURED_STEPS
        counting_activations = logging_step and spec.instrument and activations_figure.due(step)
        saved_activations.start(enabled=counting_activations or measuring)
        if measuring:
            need.begin()
        comm.phase = "forward"
        if step == collectives_step:
            comm.start_log()
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, -2), y.flatten())
        saved_bytes = saved_activations.stop()
        if counting_activations:
            activations_figure.measured(saved_bytes, step)
        if measuring:
            need.after("forward")  # reads the saved storages
        saved_activations.forget()
        memory = snapshot("forward") if logging_step else {}
        comm.phase = "backward"
        loss.backward()
        if measuring:
            need.after("backward")
        memory |= snapshot("backward") if logging_step else {}
        comm.phase = "optimizer"
        optimizer.step()
        after_optimizer_step(model, spec.strategy)
        # Keep gradient storage (zeroed, not freed): DDP's buckets hold it anyway, and the memory shown stays honest.
        optimizer.zero_grad(set_to_none=False)
        if measuring:
            need.after("step")
        memory |= snapshot("step") if logging_step else {}
        if spec.instrument and step == collectives_step:
            metrics.write(kind=runstore.COLLECTIVES, step=step, rank=rank, t=time.time(), ops=comm.take_log())
        if measuring and step == min(MEASURED_STEPS, spec.steps):
            metrics.write(kind=runstore.MEMORY_NEED, step=step, rank=rank, t=time.time(),
                          budget_bytes=spec.memory_budget_mb * 2**20, simulated=device.type == "cpu", over_budget=False,
                          **need.record())
            need.close()
        if device.type == "cuda":
            torch.cuda.synchronize()  # a CPU-GPU sync point: the step is done only when the GPU is
        step_time_s = time.perf_counter() - t0
        if step == 1 and rank == 0:
            log_line(rank, f"first step done {time.time() - launched_at:.2f} s after the spec was written")

        if logging_step:
            record = dict(
                kind=runstore.TRAIN, step=step, rank=rank, world_size=world_size, t=time.time(),
                loss=loss.item(), step_time_s=step_time_s, samples_per_s=spec.global_batch / step_time_s,
                rss_bytes=process_memory.rss_bytes(), peak_rss_bytes=process_memory.peak_rss_bytes(),
            )
            if spec.instrument:
                record[runstore.ACTIVATION_KEY], record[runstore.ACTIVATION_MEASURED_STEP_KEY] = activations_figure.latest
            record |= comm.step_metrics()
            with comm.paused():  # bookkeeping, not the strategy's traffic
                record["loss_global"] = global_mean(loss.detach().float(), world_size)
            metrics.write(**record, **memory, **device_memory.metrics())
        if (spec.eval_interval and step % spec.eval_interval == 0) or step == spec.steps:
            with comm.paused():
                eval_loss, eval_accuracy = evaluate(model, dataset, rank, world_size, device, dtype, autocast)
            metrics.write(kind=runstore.EVAL, step=step, rank=rank, t=time.time(), eval_loss=eval_loss,
                          eval_accuracy=eval_accuracy)

    # ------------------------------------------------------------------------------ the end
    if spec.save_final_params:
        with comm.paused():
            params = full_parameters(model)  # a collective for sharded models: every rank takes part
        if rank == 0:
            torch.save(params, run_dir / "final_params.pt")
    metrics.write(kind=runstore.END, step=step, rank=rank, t=time.time(), cancelled=should_stop(),
                  completed=step == spec.steps)
    if rank == 0:
        log_line(rank, f"{'cancelled after' if should_stop() else 'finished'} {step} of {spec.steps} steps, "
                       f"{time.time() - launched_at:.2f} s after the spec was written")


def lower_priority(niceness: int = TRAINING_NICENESS) -> None:
    """At least this niceness (never lowered back: a standby's rank is already niced when it takes a run)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), niceness))
    except (OSError, AttributeError):  # not permitted, or no setpriority on this platform: run at normal priority
        pass


def log_line(rank: int, text: str) -> None:
    """One line of the run's log.txt (torchrun's stdout), in a single write so ranks' lines do not interleave."""
    os.write(1, f"[rank {rank}] {time.strftime('%H:%M:%S')} {text}\n".encode())


def on_device(x: torch.Tensor, y: torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in the model's dtype (images; text stays token ids), labels as they are."""
    return (x.to(device, dtype) if x.is_floating_point() else x.to(device)), y.to(device)


def global_mean(value: torch.Tensor, world_size: int) -> float:
    total = value.clone()
    dist.all_reduce(total)
    return total.item() / world_size


@torch.no_grad()
def evaluate(model, dataset, rank, world_size, device, dtype, autocast) -> tuple[float, float]:
    """Loss and accuracy over held-out data; each rank takes an equal slice, sums are all-reduced."""
    indices = dataset.held_out_indices(EVAL_ITEMS)
    indices = rank_slice(indices[: len(indices) // world_size * world_size], rank, world_size)
    x, y = on_device(*dataset.batch(indices, split="test"), device, dtype)
    model.eval()
    with autocast:
        logits = model(x).float().flatten(0, -2)
    model.train()
    y = y.flatten()
    sums = torch.tensor(
        [F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(-1) == y).sum().item(), y.numel()],
        dtype=torch.float64, device=device,
    )
    dist.all_reduce(sums)
    return sums[0].item() / sums[2].item(), sums[1].item() / sums[2].item()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torchrun ... -m engine.worker RUN_DIR/spec.json")
    main(Path(sys.argv[1]))
