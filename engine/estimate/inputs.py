"""The estimator's inputs: limits, validation, precisions, optimizers, stages and the GPU table.

Every estimate function checks its inputs here, so a bad value fails with one readable line
(EstimateError, a ValueError) before any arithmetic, and never as an OverflowError or a traceback.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.spec import PRECISIONS as ENGINE_PRECISIONS  # what ShardLab's worker runs: fp32, bf16, fp64
from engine.units import GB, GIB, MIB  # noqa: F401  (re-exported: the estimator's callers use them)

MAX_PARAMS = 10**15  # a quadrillion parameters: 1,000x the largest model trained; beyond is a typo
MAX_RANKS = 10**6  # a million GPUs
MAX_NODES = MAX_RANKS
MAX_CAPACITY_BYTES = 2**50  # 1 PiB on one GPU (or one node's host memory)
MAX_BATCH = 2**20
MAX_SEQ = 2**24


class EstimateError(ValueError):
    """An estimate that cannot be made; the message says which input is wrong."""


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter element of each model-state term, and per activation element."""

    label: str
    param_bytes: int  # the copy forward/backward compute with
    grad_bytes: int
    master_bytes: int  # fp32 copy the optimizer updates; 0 when the compute copy is already full precision
    state_bytes: int  # each optimizer state element (momentum, variance)
    activation_bytes: int  # each stored activation element (autocast's compute dtype)

    @property
    def mixed(self) -> bool:
        return self.master_bytes > 0


# The paper-level precisions (and DeepSpeed's, which builds on them). The engine's three live in spec.py.
PAPER_PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32 everywhere", 4, 4, 0, 4, 4),
    "fp64": Precision("fp64 everywhere", 8, 8, 0, 8, 8),
    # The ZeRO paper's mixed precision: 2Ψ + 2Ψ + KΨ with K = 12 for Adam (4 master + 4 + 4 states).
    "bf16": Precision("bf16 mixed: bf16 params and grads, fp32 master and optimizer", 2, 2, 4, 4, 2),
    "fp16": Precision("fp16 mixed: fp16 params and grads, fp32 master and optimizer", 2, 2, 4, 4, 2),
    # Accumulating gradients in fp32 (e.g. FSDP reduce_dtype=fp32, Megatron's main_grad) costs 2 more bytes each.
    "bf16_fp32_grads": Precision("bf16 mixed with fp32 gradient accumulation", 2, 4, 4, 4, 2),
    "fp16_fp32_grads": Precision("fp16 mixed with fp32 gradient accumulation", 2, 4, 4, 4, 2),
}
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}  # bytes per stored activation, by compute dtype
OPTIMIZER_STATES: dict[str, int] = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "sgd": 0}  # state tensors per parameter
STAGES: dict[int, str] = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
STAGE_LABELS: dict[int, str] = {0: "DDP (stage 0)", 1: "ZeRO-1", 2: "ZeRO-2", 3: "ZeRO-3"}
RECOMPUTE = ("none", "selective", "full")
ATTENTION = ("flash", "eager")  # flash: torch SDPA / FlashAttention (no s^2 scores stored); eager: Korthikanti

# Total memory as nvidia-smi reports it (MiB); a little of it is never usable (CUDA context, reserved).
GPUS: dict[str, int] = {
    "NVIDIA T4 16 GB": 15360 * MIB,
    "NVIDIA V100 16 GB": 16384 * MIB,
    "NVIDIA V100 32 GB": 32768 * MIB,
    "NVIDIA A10G 24 GB": 23028 * MIB,
    "NVIDIA L4 24 GB": 23034 * MIB,
    "NVIDIA RTX 4090 24 GB": 24564 * MIB,
    "NVIDIA A100 40 GB": 40960 * MIB,
    "NVIDIA A100 80 GB": 81920 * MIB,
    "NVIDIA H100 80 GB": 81559 * MIB,
    "NVIDIA H200 141 GB": 143771 * MIB,
}


def whole(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """A whole number in [minimum, maximum], or an EstimateError naming the input."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EstimateError(f"{name} must be a whole number (got {value!r})")
    if value < minimum:
        raise EstimateError(f"{name} must be at least {minimum:,} (got {value:,})")
    if maximum is not None and value > maximum:
        raise EstimateError(f"{name} must be at most {maximum:,} (got {value:,})")
    return value


def choice(name: str, value, options):
    if value not in options:
        raise EstimateError(f"unknown {name} {value!r} (choose {', '.join(map(str, options))})")
    return value


def check_params(num_params) -> int:
    return whole("parameter count", num_params, 1, MAX_PARAMS)


def check_ranks(ranks, name: str = "number of ranks (GPUs)") -> int:
    return whole(name, ranks, 1, MAX_RANKS)


def parse_stage(value) -> int:
    """0..3, or a strategy name: ddp, zero1, zero2, zero3."""
    names = {name: stage for stage, name in STAGES.items()}
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, str) and value.isdigit() and len(value) < 3:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in STAGES:
        return value
    raise EstimateError(f"unknown stage {value!r} (choose 0, 1, 2, 3 or {', '.join(names)})")


_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBtT]?)\s*")


def parse_count(text) -> int:
    """'7.5B', '124M', '1T', '1e12' or '124439808' -> a parameter count from 1 to 1e15."""
    text = str(text)
    match = _COUNT.fullmatch(text) if len(text) <= 64 else None
    if not match:
        raise EstimateError(f"cannot read a parameter count from {text[:64]!r} (try 124M, 7.5B, 1T or 1e12)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}[match.group(2).lower()]
    value = float(match.group(1)) * scale  # 1e400 reads as inf: refused below, never an OverflowError
    if not math.isfinite(value) or value > MAX_PARAMS:
        raise EstimateError(f"parameter count {text.strip()!r} is beyond {MAX_PARAMS:.0e} (the estimator's limit)")
    count = round(value)
    if count < 1:
        raise EstimateError(f"parameter count must be at least 1 (got {text.strip()!r})")
    return count


def capacity_from_gib(gib, name: str = "--gpu-mem") -> int:
    """GiB (a float) -> bytes, refusing inf, nan, <= 0 and more than 1 PiB with one line."""
    if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib <= 0:
        raise EstimateError(f"{name} must be a positive number of GiB (got {gib})")
    if gib * GIB > MAX_CAPACITY_BYTES or gib * GIB < 1:
        raise EstimateError(f"{name} must be between 1 byte and {MAX_CAPACITY_BYTES // GIB:,} GiB (got {gib})")
    return int(gib * GIB)


def format_count(n: int) -> str:
    """124.4M, 7.5B, 1.0T parameters: what a reader scans; the exact number goes beside it."""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= scale:
            return f"{n / scale:,.1f}{suffix}" if n / scale < 1000 or suffix == "T" else f"{n / scale:,.0f}{suffix}"
    return f"{n:,}"
