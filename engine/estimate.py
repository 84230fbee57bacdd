"""What-if memory estimator: per-rank bytes for any model, ZeRO stage and GPU count, and answers from them.

Two models of memory live here. The *paper* model is the ZeRO paper's arithmetic
(Rajbhandari et al. 2020): Ψ parameters, K bytes of optimizer state per parameter,
sharded by 1/N at each stage. The *engine* model predicts, to the byte, what
ShardLab's own PyTorch-native strategies hold (DDP, ZeroRedundancyOptimizer,
FSDP2), so a prediction can be set beside what a run measured. Activations follow
Korthikanti et al. 2022. Pure functions; bytes are the unit of record; torch is
imported only to build registry models on the meta device.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from engine.architectures import (
    ARCHITECTURES,
    NOMINAL_MODELS,
    ArchitectureError,
    TransformerConfig,
    param_count,
    parse_hf_config,
)

GB = 10**9  # the ZeRO paper's GB
GIB = 2**30  # GPU capacity is binary: nvidia-smi reports MiB
MIB = 2**20


class EstimateError(ValueError):
    """An estimate that cannot be made; the message says which input is wrong."""


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter element of each model-state term."""

    label: str
    param_bytes: int  # the copy forward/backward compute with
    grad_bytes: int
    master_bytes: int  # fp32 copy the optimizer updates; 0 when the compute copy is already full precision
    state_bytes: int  # each optimizer state element (momentum, variance)


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32 everywhere", 4, 4, 0, 4),
    "fp64": Precision("fp64 everywhere", 8, 8, 0, 8),
    # The ZeRO paper's mixed precision: 2Ψ + 2Ψ + KΨ with K = 12 for Adam (4 master + 4 + 4 states).
    "bf16": Precision("bf16 mixed: bf16 params and grads, fp32 master and optimizer", 2, 2, 4, 4),
    "fp16": Precision("fp16 mixed: fp16 params and grads, fp32 master and optimizer", 2, 2, 4, 4),
    # Accumulating gradients in fp32 (e.g. FSDP reduce_dtype=fp32, Megatron's main_grad) costs 2 more bytes each.
    "bf16_fp32_grads": Precision("bf16 mixed with fp32 gradient accumulation", 2, 4, 4, 4),
    "fp16_fp32_grads": Precision("fp16 mixed with fp32 gradient accumulation", 2, 4, 4, 4),
}
OPTIMIZER_STATES: dict[str, int] = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "sgd": 0}  # state tensors per parameter
STAGES: dict[int, str] = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
STAGE_LABELS: dict[int, str] = {0: "DDP (stage 0)", 1: "ZeRO-1", 2: "ZeRO-2", 3: "ZeRO-3"}
RECOMPUTE = ("none", "selective", "full")

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


def _whole(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EstimateError(f"{name} must be a whole number (got {value!r})")
    if value < minimum:
        raise EstimateError(f"{name} must be at least {minimum} (got {value:,})")
    return value


def _choice(name: str, value: str, options) -> str:
    if value not in options:
        raise EstimateError(f"unknown {name} '{value}' (choose {', '.join(map(str, options))})")
    return value


def parse_stage(value) -> int:
    """0..3, or a strategy name: ddp, zero1, zero2, zero3."""
    names = {name: stage for stage, name in STAGES.items()}
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in STAGES:
        return value
    raise EstimateError(f"unknown stage {value!r} (choose 0, 1, 2, 3 or {', '.join(names)})")


def parse_count(text: str) -> int:
    """'7.5B', '124M', '1T', '1e12' or '124439808' -> a parameter count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMbBtT]?)\s*", str(text))
    if not match:
        raise EstimateError(f"cannot read a parameter count from {text!r} (try 124M, 7.5B, 1T or 1e12)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}[match.group(2).lower()]
    count = round(float(match.group(1)) * scale)
    if count < 1:
        raise EstimateError(f"parameter count must be at least 1 (got {text!r})")
    return count


# ---------------------------------------------------------------- model states


@dataclass(frozen=True)
class ModelStates:
    """Model-state bytes one rank holds, itemised the way the worker measures them."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    master_bytes: int
    cpu_optimizer_bytes: int = 0  # offloaded to host memory: not on the GPU
    cpu_master_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """On the device (what must fit in the GPU)."""
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.master_bytes

    @property
    def cpu_bytes(self) -> int:
        return self.cpu_optimizer_bytes + self.cpu_master_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total_bytes, "cpu_bytes": self.cpu_bytes}


def _check_common(num_params: int, ranks: int, precision: str, optimizer: str) -> None:
    _whole("parameter count", num_params, 1)
    _whole("number of ranks (GPUs)", ranks, 1)
    _choice("precision", precision, PRECISIONS)
    _choice("optimizer", optimizer, OPTIMIZER_STATES)


def bytes_per_param(
    stage: int, precision: str = "bf16", optimizer: str = "adam", offload_optimizer: bool = False
) -> tuple[int, int]:
    """(replicated, sharded) device bytes per parameter: a rank holds replicated*Ψ + sharded*Ψ/N."""
    stage = parse_stage(stage)
    p = PRECISIONS[_choice("precision", precision, PRECISIONS)]
    optimizer_elem = 0 if offload_optimizer else p.master_bytes + OPTIMIZER_STATES[_choice("optimizer", optimizer, OPTIMIZER_STATES)] * p.state_bytes
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
    _check_common(num_params, ranks, precision, optimizer)
    p = PRECISIONS[precision]
    # A flat partition padded to equal shares (as DeepSpeed pads its flat buffers): ceil(Ψ/N) each.
    shard = -(-num_params // ranks)
    params = (shard if stage >= 3 else num_params) * p.param_bytes
    grads = (shard if stage >= 2 else num_params) * p.grad_bytes
    owned = shard if stage >= 1 else num_params  # optimizer-owned elements: master and states
    optimizer_bytes = owned * OPTIMIZER_STATES[optimizer] * p.state_bytes
    master = owned * p.master_bytes
    if offload_optimizer:
        # ZeRO-Offload keeps the fp32 master and the states on the host and runs the update there:
        # both leave the GPU, each rank's host holding its own partition.
        return ModelStates(params, grads, 0, 0, optimizer_bytes, master)
    return ModelStates(params, grads, optimizer_bytes, master)


# ---------------------------------------------------------------- activations and overheads


@dataclass(frozen=True)
class Activations:
    """Activation bytes one rank keeps for backward (per micro-batch); ZeRO does not shard them."""

    per_layer_bytes: int
    layers: int
    output_bytes: int  # final norm, output projection input, fp32 logits for the loss, embedding dropout
    recompute: str

    @property
    def layers_bytes(self) -> int:
        return self.per_layer_bytes * self.layers

    @property
    def total_bytes(self) -> int:
        return self.layers_bytes + self.output_bytes


def estimate_activations(
    cfg: TransformerConfig,
    micro_batch: int,
    seq_len: int,
    recompute: str = "none",
    activation_bytes: int = 2,
    dropout: bool | None = None,  # None: as the architecture was trained (cfg.dropout)
) -> Activations:
    """Korthikanti et al. 2022 (no tensor/sequence parallelism), generalised to GQA and SwiGLU.

    With 16-bit activations, 1-byte dropout masks and a GELU MLP of 4h this is exactly the paper's
    sbh(34 + 5as/h) per layer; selective recomputation keeps 34sbh (drops the attention-score
    terms), full recomputation keeps only each layer's input (2sbh).
    """
    _whole("micro-batch size", micro_batch, 1)
    _whole("sequence length", seq_len, 1)
    _whole("bytes per activation", activation_bytes, 1)
    _choice("recomputation", recompute, RECOMPUTE)
    s, b, h, a, e = seq_len, micro_batch, cfg.hidden, cfg.heads, activation_bytes
    if dropout is None:
        dropout = cfg.dropout
    mask = 1 if dropout else 0  # dropout keeps a 1-byte mask per element
    tokens = s * b
    if recompute == "full":
        per_layer = tokens * h * e  # only the layer input is stored; the rest is recomputed
    else:
        # Attention: QKV-matmul input h, Q h, K and V kv each, output-projection input h, dropout mask h.
        attention = tokens * ((3 * h + 2 * cfg.kv_dim) * e + h * mask)
        # MLP: GELU stores fc1 input h, GELU input f, fc2 input f (+ mask h); SwiGLU stores input h,
        # gate f, up f, silu(gate) f and their product f.
        mlp_elements = h + (2 * cfg.ffn if cfg.family == "gpt2" else 4 * cfg.ffn)
        mlp = tokens * (mlp_elements * e + h * mask)
        norms = tokens * 2 * h * e  # inputs of the two norms
        per_layer = attention + mlp + norms
        if recompute == "none":
            # Softmax output (a s^2 b), and with dropout its mask (1 byte) and dropout output.
            per_layer += a * s * s * b * (e + (mask + e) * mask)
    # Outside the layers: final norm and output-projection inputs, fp32 logits for the loss,
    # embedding dropout mask (Korthikanti et al. §4.3: 4sbh + 4sbv at 16 bits).
    output = tokens * (2 * h * e + 4 * cfg.vocab_size + h * mask)
    return Activations(per_layer, cfg.layers, output, recompute)


@dataclass(frozen=True)
class Overheads:
    """Memory besides model states and activations; set by the user because it depends on the stack."""

    context_bytes: int = 0  # CUDA context, cuDNN/cuBLAS workspaces, the framework itself
    comm_buffer_bytes: int = 0  # DDP gradient buckets, FSDP all-gather / reduce-scatter buffers

    def __post_init__(self) -> None:
        _whole("framework/CUDA context bytes", self.context_bytes, 0)
        _whole("communication buffer bytes", self.comm_buffer_bytes, 0)


# ---------------------------------------------------------------- whole estimate and answers


@dataclass(frozen=True)
class MemoryEstimate:
    stage: int
    ranks: int
    states: ModelStates
    activation_bytes: int = 0
    overheads: Overheads = Overheads()

    @property
    def total_bytes(self) -> int:
        """Per-rank device bytes: model states + activations + overheads."""
        return (
            self.states.total_bytes
            + self.activation_bytes
            + self.overheads.context_bytes
            + self.overheads.comm_buffer_bytes
        )

    def terms(self) -> dict[str, int]:
        """Itemised device bytes in the order a stacked bar draws them."""
        return {
            "parameters": self.states.params_bytes,
            "gradients": self.states.grads_bytes,
            "optimizer state": self.states.optimizer_bytes,
            "master weights": self.states.master_bytes,
            "activations": self.activation_bytes,
            "framework/CUDA context": self.overheads.context_bytes,
            "communication buffers": self.overheads.comm_buffer_bytes,
        }

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "strategy": STAGES[self.stage],
            "ranks": self.ranks,
            **self.states.as_dict(),
            "activation_bytes": self.activation_bytes,
            "context_bytes": self.overheads.context_bytes,
            "comm_buffer_bytes": self.overheads.comm_buffer_bytes,
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
    states = estimate_model_states(num_params, ranks, stage, precision, optimizer, offload_optimizer)
    _whole("activation bytes", activation_bytes, 0)
    return MemoryEstimate(parse_stage(stage), ranks, states, activation_bytes, overheads)


def min_ranks_to_fit(
    num_params: int,
    stage: int | str,
    capacity_bytes: int,
    precision: str = "bf16",
    optimizer: str = "adam",
    offload_optimizer: bool = False,
    fixed_bytes: int = 0,
) -> int | None:
    """Smallest N whose per-rank bytes fit, or None when no N does (the replicated part alone is too big)."""
    _check_common(num_params, 1, precision, optimizer)
    replicated, sharded = bytes_per_param(stage, precision, optimizer, offload_optimizer)
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
) -> int:
    """Largest Ψ whose per-rank model states plus `fixed_bytes` fit in `capacity_bytes` on N ranks (0 if none)."""
    _whole("number of ranks (GPUs)", ranks, 1)
    replicated, sharded = bytes_per_param(stage, precision, optimizer, offload_optimizer)

    def need(psi: int) -> int:
        return replicated * psi + sharded * -(-psi // ranks) + fixed_bytes

    # The continuous answer, then a short bisection for the ceil(Ψ/N) rounding.
    room = max(0, capacity_bytes - fixed_bytes)
    lo, hi = 0, room * ranks // max(1, replicated * ranks + sharded) + ranks + 1
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
    _check_common(num_params, 1, precision, "adam")
    p = PRECISIONS[precision]
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


# ---------------------------------------------------------------- this engine, to the byte

# Each matches real runs to the byte (tests/test_estimate_vs_measured.py).
ENGINE_PRECISIONS = ("fp32", "bf16", "fp64")
ADAM_STEP_BYTES = 4  # Adam/AdamW keep state['step'] as a 0-dim float32 tensor per parameter


def engine_param_shapes(model: str, size: str, dataset: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every parameter of a registry model, in model.parameters() order; nothing allocated."""
    return _engine_param_shapes(model, size, dataset)


@lru_cache(maxsize=64)
def _engine_param_shapes(model: str, size: str, dataset: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from engine.data import data_shape  # torch: only when a registry model is asked for
    from engine.models import meta_model
    from engine.registry import DATASETS, MODELS, model_context

    _choice("model", model, MODELS)
    _choice(f"size for model {model}", size, MODELS[model].presets)
    _choice("dataset", dataset, DATASETS)
    if MODELS[model].input_kind != DATASETS[dataset].kind:
        raise EstimateError(f"model {model} needs {MODELS[model].input_kind} data; dataset {dataset} is {DATASETS[dataset].kind}")
    shape = data_shape(dataset, model_context(model, size))
    return tuple((name, tuple(p.shape)) for name, p in meta_model(model, size, shape).named_parameters())


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def shard_rows(dim0: int, ranks: int, rank: int) -> int:
    """Rows of a dim-0 size `dim0` that FSDP2 gives `rank`: torch.chunk's ceil(d/N)-row chunks, empty at the end."""
    chunk = -(-dim0 // ranks)
    return max(0, min(chunk, dim0 - rank * chunk))


def shard_numel(shape: tuple[int, ...], ranks: int, rank: int) -> int:
    if not shape:
        raise EstimateError("FSDP2 shards on dim 0; a 0-dim parameter has none")
    return shard_rows(shape[0], ranks, rank) * _numel(shape[1:])


def zero_redundancy_partition(numels: list[int], ranks: int) -> list[list[int]]:
    """Parameter indices each rank's ZeroRedundancyOptimizer owns (torch 2.13 `_partition_parameters`).

    Whole parameters, largest first (a stable sort: ties keep model order), each to the rank
    with the fewest elements so far (the first such rank on ties). So ranks are uneven.
    """
    owned: list[list[int]] = [[] for _ in range(ranks)]
    sizes = [0] * ranks
    for index in sorted(range(len(numels)), key=lambda i: numels[i], reverse=True):
        rank = sizes.index(min(sizes))
        owned[rank].append(index)
        sizes[rank] += numels[index]
    return owned


def estimate_engine_states(
    shapes,
    strategy: str,
    ranks: int,
    precision: str = "fp32",
    optimizer: str = "adam",
) -> list[ModelStates]:
    """Per-rank model-state bytes ShardLab's worker measures after the optimizer step, one entry per rank.

    ddp: DDP(gradient_as_bucket_view=True): full params, grads and optimizer state on every rank.
    zero1: DDP + ZeroRedundancyOptimizer: full params and grads; state only for owned parameters.
    zero2: FSDP2, parameters re-gathered after the step: full compute params, plus the sharded
           parameters the optimizer owns (`master`), sharded grads and state.
    zero3: FSDP2 resharded: every term sharded, no separate master.
    """
    from engine.spec import STRATEGIES

    _choice("strategy", strategy, STRATEGIES)
    _whole("number of ranks", ranks, 1)
    _choice("engine precision", precision, ENGINE_PRECISIONS)
    n_states = OPTIMIZER_STATES[_choice("optimizer", optimizer, OPTIMIZER_STATES)]
    numels = [_numel(shape) for _, shape in shapes]
    # fp32/fp64 keep one dtype everywhere. bf16 (mixed): DDP/ZeRO-1 autocast leaves every stored tensor
    # fp32; FSDP2's MixedPrecisionPolicy(param_dtype=bf16) makes only the gathered compute params bf16.
    elem = 8 if precision == "fp64" else 4
    compute_elem = 2 if (precision == "bf16" and strategy == "zero2") else elem
    step = ADAM_STEP_BYTES if optimizer in ("adam", "adamw") else 0  # SGD keeps no step tensor

    def state_bytes(elements: int, n_params: int) -> int:
        return elements * n_states * elem + n_params * step

    # DDP with gradient_as_bucket_view=True: .grad tensors are views into the all-reduce buckets,
    # so the bucket copy that plain DDP keeps beside the grads is 0 bytes here.
    bucket_copy_bytes = 0
    full = sum(numels)
    if strategy == "ddp":
        return [ModelStates(full * elem, full * elem + bucket_copy_bytes, state_bytes(full, len(numels)), 0)] * ranks
    if strategy == "zero1":
        owned = zero_redundancy_partition(numels, ranks)
        return [
            ModelStates(full * elem, full * elem + bucket_copy_bytes, state_bytes(sum(numels[i] for i in mine), len(mine)), 0)
            for mine in owned
        ]
    result = []
    for rank in range(ranks):
        local = sum(shard_numel(shape, ranks, rank) for _, shape in shapes)
        # Every sharded parameter gets a grad (possibly 0 rows) and so its own Adam step tensor.
        states = state_bytes(local, len(shapes))
        if strategy == "zero2":
            result.append(ModelStates(full * compute_elem, local * elem, states, local * elem))
        else:
            result.append(ModelStates(local * elem, local * elem, states, 0))
    return result


def estimate_for_spec(spec) -> list[ModelStates]:
    """The engine-mode prediction for a JobSpec (or its dict): what each rank should measure."""
    if isinstance(spec, dict):
        values = spec
    else:
        values = asdict(spec)
    shapes = engine_param_shapes(values["model"], values["size"], values["dataset"])
    world = values.get("nproc", 1) * values.get("nnodes", 1)
    return estimate_engine_states(shapes, values["strategy"], world, values.get("precision", "fp32"), values.get("optimizer", "adam"))


def compare_with_measured(predicted: list[ModelStates], per_rank: list[dict]) -> list[dict]:
    """Rows of (rank, category, predicted, measured, difference bytes and percent) from a run summary's per_rank."""
    rows = []
    for entry in per_rank:
        rank = entry["rank"]
        measured = entry.get("model_state_bytes") or {}
        mine = predicted[rank]
        values = {
            "params": mine.params_bytes,
            "master": mine.master_bytes,
            "grads": mine.grads_bytes,
            "optimizer": mine.optimizer_bytes,
            "total": mine.total_bytes,
        }
        for category, want in values.items():
            got = measured.get(category)
            diff = None if got is None else got - want
            rows.append(
                {
                    "rank": rank,
                    "category": category,
                    "predicted_bytes": want,
                    "measured_bytes": got,
                    "difference_bytes": diff,
                    "difference_pct": None if diff is None or want == 0 else 100.0 * diff / want,
                }
            )
    return rows


# ---------------------------------------------------------------- one scenario, every stage


@dataclass(frozen=True)
class Scenario:
    """Everything an estimate depends on; `shapes` (a registry model's parameters) switches to engine mode."""

    num_params: int
    ranks: int
    precision: str = "bf16"
    optimizer: str = "adam"
    offload_optimizer: bool = False
    activation_bytes: int = 0
    overheads: Overheads = Overheads()
    shapes: tuple | None = None

    def __post_init__(self) -> None:
        _whole("parameter count", self.num_params, 1)
        _whole("number of ranks (GPUs)", self.ranks, 1)
        _whole("activation bytes", self.activation_bytes, 0)
        _choice("optimizer", self.optimizer, OPTIMIZER_STATES)
        if self.engine_mode:
            _choice("engine precision", self.precision, ENGINE_PRECISIONS)
            if self.offload_optimizer:
                raise EstimateError("ShardLab's engine does not offload the optimizer: turn offload off")
        else:
            _choice("precision", self.precision, PRECISIONS)

    @property
    def engine_mode(self) -> bool:
        return self.shapes is not None

    @property
    def formula_precision(self) -> str:
        """The paper-mode precision with the same bytes (engine bf16 keeps fp32 grads and optimizer state)."""
        return "bf16_fp32_grads" if self.precision == "bf16" and self.engine_mode else self.precision

    def per_rank(self, stage: int | str, ranks: int | None = None) -> list[MemoryEstimate]:
        stage, ranks = parse_stage(stage), ranks or self.ranks
        if self.engine_mode:
            states = estimate_engine_states(self.shapes, STAGES[stage], ranks, self.precision, self.optimizer)
        else:
            states = [
                estimate_model_states(self.num_params, ranks, stage, self.precision, self.optimizer, self.offload_optimizer)
            ] * ranks
        return [MemoryEstimate(stage, ranks, s, self.activation_bytes, self.overheads) for s in states]

    def busiest(self, stage: int | str, ranks: int | None = None) -> MemoryEstimate:
        """The rank that needs the most: the one that decides whether a stage fits."""
        if not self.engine_mode:  # every rank is the same: skip building N copies
            stage, ranks = parse_stage(stage), ranks or self.ranks
            states = estimate_model_states(self.num_params, ranks, stage, self.precision, self.optimizer, self.offload_optimizer)
            return MemoryEstimate(stage, ranks, states, self.activation_bytes, self.overheads)
        return max(self.per_rank(stage, ranks), key=lambda e: e.total_bytes)

    @property
    def fixed_bytes(self) -> int:
        return self.activation_bytes + self.overheads.context_bytes + self.overheads.comm_buffer_bytes

    def answers(self, stage: int | str, capacity_bytes: int) -> dict:
        """Fits? The fewest GPUs that fit, and the largest model that fits on N (by the formula)."""
        options = dict(
            precision=self.formula_precision, optimizer=self.optimizer,
            offload_optimizer=self.offload_optimizer, fixed_bytes=self.fixed_bytes,
        )
        return {
            "fits": self.busiest(stage).total_bytes <= capacity_bytes,
            "min_ranks_to_fit": min_ranks_to_fit(self.num_params, stage, capacity_bytes, **options),
            "max_params_to_fit": max_params_to_fit(self.ranks, stage, capacity_bytes, **options),
        }


def stage_rows(scenario: Scenario, capacity_bytes: int | None = None) -> list[dict]:
    """One row per stage for a table: the busiest rank's itemised bytes, answers and communication."""
    rows = []
    for stage in STAGES:
        worst = scenario.busiest(stage)
        comm = comm_volume(scenario.num_params, stage, scenario.formula_precision)
        row = {"stage": STAGE_LABELS[stage], **{f"{k}_bytes": v for k, v in _term_keys(worst).items()}}
        row["total_bytes"] = worst.total_bytes
        row["cpu_bytes"] = worst.states.cpu_bytes
        if capacity_bytes is not None:
            row.update(scenario.answers(stage, capacity_bytes))
        row["comm_elements"] = comm["elements"]
        row["comm_bytes"] = comm["bytes"]
        rows.append(row)
    return rows


def _term_keys(estimate: MemoryEstimate) -> dict[str, int]:
    names = ("params", "grads", "optimizer", "master", "activations", "context", "comm_buffers")
    return dict(zip(names, estimate.terms().values()))


def stage_terms(scenario: Scenario) -> list[dict]:
    """Long rows (stage, term, bytes) of each stage's busiest rank: what a stacked bar draws."""
    return [
        {"stage": STAGE_LABELS[stage], "term": term, "bytes": value}
        for stage in STAGES
        for term, value in scenario.busiest(stage).terms().items()
    ]


def ranks_curve(scenario: Scenario, ranks_list) -> list[dict]:
    """Long rows (stage, ranks, total_bytes) of the busiest rank at each N: memory per GPU as N grows."""
    return [
        {"stage": STAGE_LABELS[stage], "ranks": n, "total_bytes": scenario.busiest(stage, n).total_bytes}
        for stage in STAGES
        for n in ranks_list
    ]


def registry_transformer(model: str, size: str, dataset: str) -> TransformerConfig | None:
    """ShardLab's GPT as a TransformerConfig (for activations); None for the image models."""
    from engine.registry import MODELS

    if model != "gpt":
        return None
    preset = MODELS[model].presets[size]
    vocab = dict(engine_param_shapes(model, size, dataset))["token.weight"][0]
    w = preset["width"]
    return TransformerConfig(
        f"gpt/{size}", "gpt2", vocab, w, preset["layers"], preset["heads"], preset["heads"], 4 * w,
        preset["context"], False, source="engine/models.py GPT (untied head, no dropout)",
    )


# ---------------------------------------------------------------- command line


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m engine estimate` (the engine's CLI adds the subparser and calls run_estimate_command)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--params", help="parameter count: 124M, 7.5B, 1T or 1e12")
    source.add_argument(
        "--model",
        help=f"a ShardLab model (mlp, cnn, gpt: exact, engine mode), an architecture "
        f"({', '.join(ARCHITECTURES)}) or a ZeRO-paper size ({', '.join(NOMINAL_MODELS)})",
    )
    source.add_argument("--config", type=Path, help="a Hugging Face config.json (gpt2, llama, mistral)")
    parser.add_argument("--size", default="tiny", help="size preset of a ShardLab model (default tiny)")
    parser.add_argument("--dataset", default="", help="dataset a ShardLab model is sized by (default: digits or text)")
    parser.add_argument("--ranks", type=int, default=1, help="number of GPUs / ranks N (default 1)")
    parser.add_argument("--stage", default="all", help="0-3, ddp, zero1, zero2, zero3 or all (default all)")
    parser.add_argument(
        "--precision",
        default=None,
        help=f"paper mode: {', '.join(PRECISIONS)} (default bf16); engine mode: fp32, bf16, fp64 (default fp32)",
    )
    parser.add_argument("--optimizer", default="adam", choices=list(OPTIMIZER_STATES))
    parser.add_argument("--offload", action="store_true", help="optimizer state and master weights on the CPU")
    parser.add_argument("--gpu-mem", type=float, default=None, help="GPU capacity in GiB (2^30 bytes) for fit answers")
    parser.add_argument("--batch", type=int, default=0, help="micro-batch per rank for transformer activations (0 = leave out)")
    parser.add_argument("--seq", type=int, default=0, help="sequence length for activations (default: the model's context)")
    parser.add_argument("--recompute", default="none", choices=RECOMPUTE)
    parser.add_argument("--decimal", action="store_true", help="show GB = 1e9 bytes (the ZeRO paper's unit)")
    parser.add_argument("--json", action="store_true", help="print JSON (bytes) instead of a table")


def _resolve_source(args) -> dict:
    """Which model the flags name: its Ψ, a transformer config when there is one, or registry shapes."""
    if args.params is not None:
        return {"label": f"{args.params} parameters", "num_params": parse_count(args.params), "arch": None, "shapes": None}
    if args.config is not None:
        raw = Path(args.config).read_bytes()
        arch = parse_hf_config(raw, name=Path(args.config).name)
        return {"label": arch.name, "num_params": param_count(arch), "arch": arch, "shapes": None}
    name = args.model
    if name in ARCHITECTURES:
        arch = ARCHITECTURES[name]
        return {"label": arch.name, "num_params": param_count(arch), "arch": arch, "shapes": None}
    if name in NOMINAL_MODELS:
        return {"label": name, "num_params": NOMINAL_MODELS[name], "arch": None, "shapes": None}
    if name in ("mlp", "cnn", "gpt"):
        dataset = args.dataset or ("text" if name == "gpt" else "digits")
        shapes = engine_param_shapes(name, args.size, dataset)
        return {
            "label": f"{name}/{args.size} on {dataset}", "num_params": sum(_numel(s) for _, s in shapes),
            "arch": registry_transformer(name, args.size, dataset), "shapes": shapes,
        }
    raise EstimateError(
        f"unknown model '{name}' (choose mlp, cnn, gpt, {', '.join(ARCHITECTURES)}, {', '.join(NOMINAL_MODELS)})"
    )


def build_report(args) -> dict:
    """Everything `estimate` prints, as plain data (bytes throughout)."""
    source = _resolve_source(args)
    stages = list(STAGES) if args.stage == "all" else [parse_stage(args.stage)]
    capacity = None
    if args.gpu_mem is not None:
        if not args.gpu_mem > 0:
            raise EstimateError(f"--gpu-mem must be a positive number of GiB (got {args.gpu_mem})")
        capacity = int(args.gpu_mem * GIB)
    engine_mode = source["shapes"] is not None
    activation_bytes = 0
    if args.batch:
        if source["arch"] is None:
            raise EstimateError("activations need a transformer (--model gpt or an architecture, or --config FILE)")
        seq = args.seq or source["arch"].context
        activation_bytes = estimate_activations(source["arch"], args.batch, seq, args.recompute).total_bytes
    scenario = Scenario(
        source["num_params"], _whole("--ranks", args.ranks, 1),
        args.precision or ("fp32" if engine_mode else "bf16"), args.optimizer, bool(args.offload),
        activation_bytes, shapes=source["shapes"],
    )
    report = {
        "model": source["label"],
        "num_params": scenario.num_params,
        "mode": "engine" if engine_mode else "paper",
        "ranks": scenario.ranks,
        "precision": scenario.precision,
        "optimizer": scenario.optimizer,
        "offload_optimizer": scenario.offload_optimizer,
        "activation_bytes": activation_bytes,
        "gpu_capacity_bytes": capacity,
        "stages": [],
    }
    for stage in stages:
        per_rank = scenario.per_rank(stage)
        entry = {
            "stage": stage,
            "strategy": STAGES[stage],
            "per_rank": [{"rank": r, **e.as_dict()} for r, e in enumerate(per_rank)],
            "max_rank_total_bytes": max(e.total_bytes for e in per_rank),
            "comm": comm_volume(scenario.num_params, stage, scenario.formula_precision),
        }
        if capacity is not None:
            entry.update(scenario.answers(stage, capacity))
        report["stages"].append(entry)
    return report


def display_unit(max_bytes: float, decimal: bool = False) -> tuple[int, str]:
    """(divisor, name) that keeps the largest value readable: binary by default, the paper's GB when decimal."""
    steps = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB")) if decimal else (
        (2**40, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (2**10, "KiB"))
    for divisor, name in steps:
        if max_bytes >= divisor:
            return divisor, name
    return 1, "bytes"


def format_report(report: dict, decimal: bool = False) -> str:
    rows = [max(e["per_rank"], key=lambda r: r["total_bytes"]) | {"entry": e} for e in report["stages"]]
    divisor, unit = display_unit(max(r["total_bytes"] for r in rows), decimal)
    size = lambda b: f"{b / divisor:,.3f}" if divisor > 1 else f"{b:,}"
    columns = ("params_bytes", "grads_bytes", "optimizer_bytes", "master_bytes", "activation_bytes", "total_bytes")
    lines = [
        f"{report['model']}: {report['num_params']:,} parameters, N = {report['ranks']}, {report['precision']}, "
        f"{report['optimizer']}, {report['mode']} mode; per-rank {unit}"
        + (" (1 GB = 1e9 bytes)" if decimal else " (1 GiB = 2^30 bytes)" if unit == "GiB" else ""),
        f"{'stage':<14}" + "".join(f"{c[: -len('_bytes')]:>14}" for c in columns)
        + ("  fits  min GPUs  largest model" if report["gpu_capacity_bytes"] else ""),
    ]
    for row in rows:
        entry = row["entry"]
        line = f"{STAGE_LABELS[entry['stage']]:<14}" + "".join(f"{size(row[c]):>14}" for c in columns)
        if "fits" in entry:
            need = entry["min_ranks_to_fit"]
            line += f"  {'yes' if entry['fits'] else 'no':<4}  {'-' if need is None else need:>8}  {entry['max_params_to_fit']:,}"
        lines.append(line)
    if report["mode"] == "engine" and report["ranks"] > 1:
        lines.append("(the busiest rank is shown; --json lists every rank)")
    if report["offload_optimizer"]:
        cpu = max(r["cpu_bytes"] for r in rows)
        lines.append(f"offloaded to host memory per rank: up to {size(cpu)} {unit}")
    return "\n".join(lines)


def run_estimate_command(args) -> int:
    """`python -m engine estimate ...`: prints the estimate; 0 on success, 2 on bad input."""
    try:
        report = build_report(args)
    except (EstimateError, ArchitectureError) as err:
        print(f"estimate: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"estimate: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report, decimal=args.decimal))
    return 0
