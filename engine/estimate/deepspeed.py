"""DeepSpeed's runtime memory model: what its ZeRO implementation allocates, as its own estimators count it.

DeepSpeed publishes two cold estimators (deepspeed.runtime.zero.stage_1_and_2 /
stage3 `estimate_zero{2,3}_model_states_mem_needs`). Per GPU, for bf16/fp16 mixed precision and Adam:
  ZeRO-2:                 2Ψ + 18Ψ/N  (16-bit params; 16-bit grads, fp32 grads, fp32 params, 2 Adam states sharded)
  ZeRO-2, offload optim:  2Ψ
  ZeRO-3:                 4L + 18Ψ/N  (L = largest layer: its gathered 16-bit params and grads)
  ZeRO-3, offload optim:  4L + 2Ψ/N
  ZeRO-3, offload all:    4L
and per node of host memory (1.5 = their additional_buffer_factor):
  ZeRO-2: 1.5 * 4Ψ * gpus_per_node; with offload 1.5 * Ψ * max(4 * total_gpus, 16)
  ZeRO-3: 1.5 * 4L * gpus_per_node (zero_init); offload optim 1.5 * 16Ψ / nodes; offload all 1.5 * 18Ψ / nodes.
This module itemises those sums term by term and generalises them to other precisions and optimizers;
DeepSpeed publishes no estimator for stages 0 and 1, which follow the same code (stage 1 keeps full 16-bit
grads). The formulas themselves are reproduced in `deepspeed_cold_estimate` (the tests hold both to them).
"""

from __future__ import annotations

from engine.estimate.inputs import (
    OPTIMIZER_STATES,
    PAPER_PRECISIONS,
    EstimateError,
    check_params,
    check_ranks,
    choice,
    parse_stage,
    whole,
)
from engine.estimate.paper import ModelStates, check_common

ADDITIONAL_BUFFER_FACTOR = 1.5  # DeepSpeed's own default in both estimators
# What the deepspeed model leaves out (said beside every table that shows it).
LEAVES_OUT = (
    "communication buckets (reduce_bucket_size, allgather_bucket_size: add them as overheads)",
    "ZeRO-3 prefetch beyond the largest layer (stage3_prefetch_bucket_size, stage3_max_live_parameters)",
    "a published estimator for stages 0 and 1 (there is none: here ZeRO-2's terms, nothing sharded at stage 0, "
    "full 16-bit grads at stage 1)",
)


def deepspeed_cold_estimate(
    total_params: int,
    stage: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    largest_layer_params: int = 0,
    cpu_offload: bool = False,
    cpu_offload_params: bool = False,
    zero_init: bool = True,
    additional_buffer_factor: float = ADDITIONAL_BUFFER_FACTOR,
) -> dict[str, int]:
    """DeepSpeed's published per-GPU and per-node-host bytes (bf16/fp16 + Adam), its formulas as it writes them."""
    total_gpus = num_nodes * num_gpus_per_node
    if stage == 2:
        if cpu_offload:
            gpu_mem = 2 * total_params
            cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
        else:
            gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
        return {"gpu_bytes": int(gpu_mem), "host_bytes_per_node": int(cpu_mem)}
    if stage != 3:
        raise EstimateError("DeepSpeed publishes cold estimators for ZeRO-2 and ZeRO-3 only")
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload and cpu_offload_params:
        gpu_mem = largest_layer_memory
        factor = 18 * gpus_factor if zero_init else max(4 * num_gpus_per_node, 18 * gpus_factor)
        cpu_mem = total_params * factor * additional_buffer_factor
    elif cpu_offload:
        gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
        factor = 16 * gpus_factor if zero_init else max(4 * num_gpus_per_node, 16 * gpus_factor)
        cpu_mem = total_params * factor * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        base = largest_layer_params if zero_init else total_params
        cpu_mem = base * 4 * num_gpus_per_node * additional_buffer_factor
    return {"gpu_bytes": int(gpu_mem), "host_bytes_per_node": int(cpu_mem), "largest_layer_bytes": largest_layer_memory}


def deepspeed_model_states(
    num_params: int,
    ranks: int,
    stage: int | str,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> ModelStates:
    """Per-rank model states as DeepSpeed allocates them (the gathered largest layer is `gathered_layer_bytes`).

    Mixed precision keeps an fp32 gradient partition beside the 16-bit grads (the 4 in DeepSpeed's 18);
    fp32/fp64 training has none. Shards are ceil(Ψ/N) (DeepSpeed pads its flat partitions).
    """
    stage = parse_stage(stage)
    check_common(num_params, ranks, precision, optimizer)
    if offload_optimizer and stage == 0:
        raise EstimateError("optimizer offload needs ZeRO (stage 1 to 3): DeepSpeed's stage 0 has no partition")
    if offload_params and not (stage == 3 and offload_optimizer):
        raise EstimateError("parameter offload is ZeRO-3's (offload_param) and needs optimizer offload too")
    p = PAPER_PRECISIONS[precision]
    shard = -(-num_params // ranks)
    fp32_grad = 4 if p.mixed else 0  # the fp32 gradient partition the optimizer steps on
    states = OPTIMIZER_STATES[optimizer] * p.state_bytes
    # 16-bit params: full below stage 3, a shard at stage 3 (the gathered layer is counted apart).
    params = (shard if stage == 3 else num_params) * p.param_bytes
    # 16-bit grads: full at stages 0-1; at stage 2 the reduced partition; at stage 3 only the gathered layer's.
    grads16 = {0: num_params, 1: num_params, 2: shard, 3: 0}[stage] * p.grad_bytes
    owned = num_params if stage == 0 else shard
    if p.mixed:
        grads = grads16 + owned * fp32_grad
    else:  # one dtype: the grads themselves, full below stage 2
        grads16, grads = 0, (num_params if stage < 2 else shard) * p.grad_bytes
    master, optimizer_bytes = owned * p.master_bytes, owned * states
    if not offload_optimizer:
        return ModelStates(params, grads, optimizer_bytes, master)
    # Offload: the fp32 grads, master and states live in pinned host memory; the update runs on the CPU.
    host_grads = owned * (fp32_grad if p.mixed else p.grad_bytes)
    # ZeRO-2/3 stream reduced grads straight to the host; stage 1 keeps its full grads for the reduction.
    gpu_grads = 0 if stage >= 2 else (grads16 if p.mixed else grads)
    if offload_params:
        return ModelStates(0, gpu_grads, 0, 0, optimizer_bytes, master, host_grads, params)
    return ModelStates(params, gpu_grads, 0, 0, optimizer_bytes, master, host_grads)


def deepspeed_gathered_layer_bytes(stage: int, largest_layer_params: int, precision: str = "bf16") -> int:
    """ZeRO-3 gathers one layer at a time: its 16-bit parameters and gradients (DeepSpeed's 4 x largest layer)."""
    p = PAPER_PRECISIONS[choice("precision", precision, PAPER_PRECISIONS)]
    whole("largest layer parameters", largest_layer_params, 0)
    return (p.param_bytes + p.grad_bytes) * largest_layer_params if parse_stage(stage) == 3 else 0


def deepspeed_host_bytes_per_node(
    num_params: int, stage: int, gpus_per_node: int, nodes: int, largest_layer_params: int = 0,
    offload_optimizer: bool = False, offload_params: bool = False,
) -> int:
    """Host memory per node, as DeepSpeed's estimators count it (with their 1.5 buffer factor).

    Stages 0 and 1 (no published estimator): ZeRO-2's non-offload figure, a 4Ψ fp32 load per local GPU.
    """
    check_params(num_params)
    check_ranks(gpus_per_node, "GPUs per node")
    check_ranks(nodes, "number of nodes")
    stage = parse_stage(stage)
    if stage < 2:
        return int(num_params * 4 * gpus_per_node * ADDITIONAL_BUFFER_FACTOR)
    return deepspeed_cold_estimate(
        num_params, stage, gpus_per_node, nodes, largest_layer_params, offload_optimizer, offload_params,
    )["host_bytes_per_node"]
