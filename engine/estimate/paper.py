"""The ZeRO paper's memory model (Rajbhandari et al. 2020): Ψ parameters, K bytes of optimizer state per
parameter, each term sharded by 1/N from its stage on. ModelStates is the per-rank itemisation every
memory model returns (paper, DeepSpeed, PyTorch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.estimate.inputs import (
    OPTIMIZER_STATES,
    PAPER_PRECISIONS,
    EstimateError,
    check_params,
    check_ranks,
    choice,
    parse_stage,
)


@dataclass(frozen=True)
class ModelStates:
    """Model-state bytes one rank holds, itemised the way the worker measures them; cpu_* live in host memory."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    master_bytes: int
    cpu_optimizer_bytes: int = 0  # offloaded to host memory: not on the GPU
    cpu_master_bytes: int = 0
    cpu_grads_bytes: int = 0
    cpu_params_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """On the device (what must fit in the GPU)."""
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.master_bytes

    @property
    def cpu_bytes(self) -> int:
        return self.cpu_optimizer_bytes + self.cpu_master_bytes + self.cpu_grads_bytes + self.cpu_params_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total_bytes, "cpu_bytes": self.cpu_bytes}


def check_common(num_params: int, ranks: int, precision: str, optimizer: str) -> None:
    check_params(num_params)
    check_ranks(ranks)
    choice("precision", precision, PAPER_PRECISIONS)
    choice("optimizer", optimizer, OPTIMIZER_STATES)


def optimizer_elem_bytes(precision: str, optimizer: str) -> int:
    """Bytes per parameter the optimizer owns: fp32 master (mixed precision) plus its state tensors."""
    p = PAPER_PRECISIONS[choice("precision", precision, PAPER_PRECISIONS)]
    return p.master_bytes + OPTIMIZER_STATES[choice("optimizer", optimizer, OPTIMIZER_STATES)] * p.state_bytes


def bytes_per_param(
    stage: int, precision: str = "bf16", optimizer: str = "adam", offload_optimizer: bool = False
) -> tuple[int, int]:
    """(replicated, sharded) device bytes per parameter: a rank holds replicated*Ψ + sharded*ceil(Ψ/N)."""
    stage = parse_stage(stage)
    p = PAPER_PRECISIONS[choice("precision", precision, PAPER_PRECISIONS)]
    optimizer_elem = 0 if offload_optimizer else optimizer_elem_bytes(precision, optimizer)
    terms = [(p.param_bytes, stage >= 3), (p.grad_bytes, stage >= 2), (optimizer_elem, stage >= 1)]
    replicated = sum(b for b, sharded in terms if not sharded)
    return replicated, sum(b for b, sharded in terms if sharded)


def estimate_model_states(
    num_params: int,
    ranks: int,
    stage: int | str,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
) -> ModelStates:
    """The ZeRO paper's per-rank model states: stage 1 shards optimizer state (and master), 2 adds grads, 3 params.

    With bf16/fp16 mixed precision and Adam (K = 12): 16Ψ, 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N.
    """
    stage = parse_stage(stage)
    check_common(num_params, ranks, precision, optimizer)
    p = PAPER_PRECISIONS[precision]
    # A flat partition padded to equal shares (as DeepSpeed pads its flat buffers): ceil(Ψ/N) each.
    shard = -(-num_params // ranks)
    params = (shard if stage >= 3 else num_params) * p.param_bytes
    grads = (shard if stage >= 2 else num_params) * p.grad_bytes
    owned = shard if stage >= 1 else num_params  # optimizer-owned elements: master and states
    optimizer_bytes = owned * OPTIMIZER_STATES[optimizer] * p.state_bytes
    master = owned * p.master_bytes
    if offload_optimizer:
        if stage == 0:
            raise EstimateError("optimizer offload is a ZeRO feature (stage 1 to 3): DDP has no partition to offload")
        # ZeRO-Offload keeps the fp32 master and the states on the host and runs the update there:
        # both leave the GPU, each rank's host holding its own partition.
        return ModelStates(params, grads, 0, 0, optimizer_bytes, master)
    return ModelStates(params, grads, optimizer_bytes, master)
