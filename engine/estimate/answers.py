"""The whole per-GPU estimate (model states + activations + overheads), and the answers drawn from it:
does it fit, the fewest GPUs that fit, the largest model that fits, and the communication per step."""

from __future__ import annotations

from dataclasses import dataclass

from engine.estimate.inputs import (
    MAX_CAPACITY_BYTES,
    MAX_PARAMS,
    MIB,
    PAPER_PRECISIONS,
    STAGES,
    check_params,
    check_ranks,
    choice,
    parse_stage,
    whole,
)
from engine.estimate.paper import ModelStates, bytes_per_param, check_common, estimate_model_states

DEFAULT_CONTEXT_BYTES = 1024 * MIB  # CUDA context + cuBLAS/cuDNN/NCCL workspaces: 0.5-1 GiB is common; set yours
DEFAULT_RESERVE_PCT = 5  # the caching allocator's fragmentation and rounding, as a share of what is allocated


@dataclass(frozen=True)
class Overheads:
    """Memory besides model states and activations; user-set because it depends on the stack.

    The API's default is none (pure model states); the CLI and the page start from `default_overheads()`.
    """

    context_bytes: int = 0  # CUDA context, cuDNN/cuBLAS workspaces, the framework itself
    comm_buffer_bytes: int = 0  # DDP gradient buckets, DeepSpeed's reduce/all-gather buckets
    reserve_pct: int = 0  # allocator reserve: % of the allocated bytes (states, activations, buffers)

    def __post_init__(self) -> None:
        whole("framework/CUDA context bytes", self.context_bytes, 0, MAX_CAPACITY_BYTES)
        whole("communication buffer bytes", self.comm_buffer_bytes, 0, MAX_CAPACITY_BYTES)
        whole("allocator reserve (%)", self.reserve_pct, 0, 100)

    def reserve_bytes(self, allocated: int) -> int:
        return -(-allocated * self.reserve_pct // 100)


def default_overheads(comm_buffer_bytes: int = 0) -> Overheads:
    return Overheads(DEFAULT_CONTEXT_BYTES, comm_buffer_bytes, DEFAULT_RESERVE_PCT)


@dataclass(frozen=True)
class MemoryEstimate:
    stage: int
    ranks: int
    states: ModelStates
    activation_bytes: int = 0
    overheads: Overheads = Overheads()
    gathered_bytes: int = 0  # ZeRO-3: layers gathered for compute (and prefetched), their grads before reduction

    @property
    def allocated_bytes(self) -> int:
        return self.states.total_bytes + self.activation_bytes + self.gathered_bytes + self.overheads.comm_buffer_bytes

    @property
    def reserve_bytes(self) -> int:
        return self.overheads.reserve_bytes(self.allocated_bytes)

    @property
    def total_bytes(self) -> int:
        """Per-rank device bytes: model states + activations + gathered layers + overheads."""
        return self.allocated_bytes + self.reserve_bytes + self.overheads.context_bytes

    def terms(self) -> dict[str, int]:
        """Itemised device bytes in the order a stacked bar draws them."""
        return {
            "parameters": self.states.params_bytes,
            "gradients": self.states.grads_bytes,
            "optimizer state": self.states.optimizer_bytes,
            "master weights": self.states.master_bytes,
            "gathered layers (ZeRO-3)": self.gathered_bytes,
            "activations": self.activation_bytes,
            "communication buffers": self.overheads.comm_buffer_bytes,
            "allocator reserve": self.reserve_bytes,
            "framework/CUDA context": self.overheads.context_bytes,
        }

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "strategy": STAGES[self.stage],
            "ranks": self.ranks,
            **self.states.as_dict(),
            "model_states_bytes": self.states.total_bytes,
            "gathered_bytes": self.gathered_bytes,
            "activation_bytes": self.activation_bytes,
            "context_bytes": self.overheads.context_bytes,
            "comm_buffer_bytes": self.overheads.comm_buffer_bytes,
            "reserve_bytes": self.reserve_bytes,
            "total_bytes": self.total_bytes,
        }


def estimate_memory(
    num_params: int,
    ranks: int,
    stage: int | str,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
    activation_bytes: int = 0,
    overheads: Overheads = Overheads(),
) -> MemoryEstimate:
    """The paper's model states plus activations and overheads."""
    states = estimate_model_states(num_params, ranks, stage, precision, optimizer, offload_optimizer)
    whole("activation bytes", activation_bytes, 0, MAX_CAPACITY_BYTES)
    return MemoryEstimate(parse_stage(stage), ranks, states, activation_bytes, overheads)


def allocatable_bytes(capacity_bytes: int, overheads: Overheads) -> int:
    """The most a rank may allocate (states, activations, buffers) so that reserve and context still fit."""
    room = capacity_bytes - overheads.context_bytes
    if room < 0:
        return -1
    best = room * 100 // (100 + overheads.reserve_pct)
    while best + 1 + overheads.reserve_bytes(best + 1) <= room:  # ceil rounding: at most a step or two
        best += 1
    while best > 0 and best + overheads.reserve_bytes(best) > room:
        best -= 1
    return best


def min_ranks_to_fit(
    num_params: int,
    stage: int | str,
    capacity_bytes: int,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
    fixed_bytes: int = 0,
    coefficients: tuple[int, int] | None = None,
) -> int | None:
    """Smallest N whose per-rank bytes (replicated*Ψ + sharded*ceil(Ψ/N) + fixed) fit, or None when no N does.

    `coefficients` (replicated, sharded) bytes per parameter come from a memory model; the paper's by default.
    """
    check_common(num_params, 1, precision, optimizer)
    replicated, sharded = coefficients or bytes_per_param(stage, precision, optimizer, offload_optimizer)
    room = capacity_bytes - fixed_bytes - replicated * num_params
    if room < 0:
        return None
    if sharded == 0:
        return 1
    most_elements = room // sharded  # ceil(Ψ/N) may be at most this
    if most_elements == 0:
        return None
    return max(1, -(-num_params // most_elements))


def max_params_to_fit(
    ranks: int,
    stage: int | str,
    capacity_bytes: int,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
    fixed_bytes: int = 0,
    coefficients: tuple[int, int] | None = None,
) -> int:
    """Largest Ψ (up to the estimator's 1e15) whose per-rank bytes plus `fixed_bytes` fit on N ranks (0 if none)."""
    check_ranks(ranks)
    replicated, sharded = coefficients or bytes_per_param(stage, precision, optimizer, offload_optimizer)

    def need(psi: int) -> int:
        return replicated * psi + sharded * -(-psi // ranks) + fixed_bytes

    # The continuous answer, then a short bisection for the ceil(Ψ/N) rounding.
    room = max(0, capacity_bytes - fixed_bytes)
    lo, hi = 0, min(MAX_PARAMS, room * ranks // max(1, replicated * ranks + sharded) + ranks + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= capacity_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def comm_volume(num_params: int, stage: int | str, precision: str = "bf16") -> dict:
    """Per-rank communication per step as the ZeRO paper counts it (an all-reduce is 2Ψ).

    DDP all-reduces gradients (2Ψ); ZeRO-1/2 reduce-scatter gradients (Ψ) and all-gather
    updated parameters (Ψ); ZeRO-3 all-gathers parameters twice (forward and backward) and
    reduce-scatters gradients: 3Ψ.
    """
    stage = parse_stage(stage)
    check_params(num_params)
    p = PAPER_PRECISIONS[choice("precision", precision, PAPER_PRECISIONS)]
    psi = num_params
    ops = {
        0: {"all_reduce (gradients)": (2 * psi, p.grad_bytes)},
        1: {"reduce_scatter (gradients)": (psi, p.grad_bytes), "all_gather (parameters)": (psi, p.param_bytes)},
        2: {"reduce_scatter (gradients)": (psi, p.grad_bytes), "all_gather (parameters)": (psi, p.param_bytes)},
        3: {"all_gather (parameters, forward + backward)": (2 * psi, p.param_bytes), "reduce_scatter (gradients)": (psi, p.grad_bytes)},
    }[stage]
    return {
        "stage": stage,
        "elements": sum(n for n, _ in ops.values()),
        "bytes": sum(n * b for n, b in ops.values()),
        "ops": {name: {"elements": n, "bytes": n * b} for name, (n, b) in ops.items()},
    }
