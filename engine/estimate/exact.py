"""The PyTorch memory model: what PyTorch-native ZeRO holds per rank, to the byte, for any parameter shapes.

It is the model of ShardLab's own strategies (DDP, ZeroRedundancyOptimizer, FSDP2), held equal to what real
runs measure on every rank (tests/test_estimate_vs_measured.py), and generalised to any architecture's
shapes: FSDP2 shards each parameter on dim 0 with padding; ZeroRedundancyOptimizer gives whole parameters
to ranks. Ranks with identical bytes collapse into one group, so a million ranks cost milliseconds.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict
from functools import lru_cache

from engine.estimate.inputs import (
    ENGINE_PRECISIONS,
    OPTIMIZER_STATES,
    EstimateError,
    check_ranks,
    choice,
)
from engine.estimate.paper import ModelStates
from engine.spec import param_element_bytes

ADAM_STEP_BYTES = 4  # Adam/AdamW keep state['step'] as a 0-dim float32 tensor per parameter
LEAVES_OUT = (
    "FSDP2's CPUOffloadPolicy (offload is modelled by the paper and DeepSpeed models)",
    "DDP's bucket copy: ShardLab builds DDP with gradient_as_bucket_view=True, which removes it",
)


def engine_param_shapes(model: str, size: str, dataset: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every parameter of a registry model, in model.parameters() order; nothing allocated."""
    return _engine_param_shapes(model, size, dataset)


@lru_cache(maxsize=64)
def _engine_param_shapes(model: str, size: str, dataset: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from engine.data import data_shape  # torch: only when a registry model is asked for
    from engine.models import meta_model
    from engine.registry import DATASETS, MODELS, model_context

    choice("model", model, MODELS)
    choice(f"size for model {model}", size, MODELS[model].presets)
    choice("dataset", dataset, DATASETS)
    if MODELS[model].input_kind != DATASETS[dataset].kind:
        raise EstimateError(f"model {model} needs {MODELS[model].input_kind} data; dataset {dataset} is {DATASETS[dataset].kind}")
    shape = data_shape(dataset, model_context(model, size))
    return tuple((name, tuple(p.shape)) for name, p in meta_model(model, size, shape).named_parameters())


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def shard_rows(dim0: int, ranks: int, rank: int) -> int:
    """Rows of a dim-0 size `dim0` that FSDP2 gives `rank`: torch.chunk's ceil(d/N)-row chunks, empty at the end."""
    chunk = -(-dim0 // ranks)
    return max(0, min(chunk, dim0 - rank * chunk))


def shard_numel(shape: tuple[int, ...], ranks: int, rank: int) -> int:
    if not shape:
        raise EstimateError("FSDP2 shards on dim 0; a 0-dim parameter has none")
    return shard_rows(shape[0], ranks, rank) * numel(shape[1:])


def zero_redundancy_partition(numels: list[int], ranks: int) -> list[list[int]]:
    """Parameter indices each rank's ZeroRedundancyOptimizer owns (torch 2.13 `_partition_parameters`).

    Whole parameters, largest first (a stable sort: ties keep model order), each to the rank
    with the fewest elements so far (the first such rank on ties). So ranks are uneven.
    """
    owned: list[list[int]] = [[] for _ in range(ranks)]
    for index, rank in _zero_redundancy_owner(tuple(numels), ranks):
        owned[rank].append(index)
    return owned


def _zero_redundancy_owner(numels: tuple[int, ...], ranks: int) -> list[tuple[int, int]]:
    """(parameter index, owning rank) pairs; a heap of (elements, rank) keeps it O(T log N) for any N."""
    heap = [(0, rank) for rank in range(min(ranks, len(numels)))]  # ranks beyond T never receive one
    pairs = []
    for index in sorted(range(len(numels)), key=lambda i: numels[i], reverse=True):
        size, rank = heapq.heappop(heap)
        pairs.append((index, rank))
        heapq.heappush(heap, (size + numels[index], rank))
    return pairs


def _fsdp2_local_numel_groups(shapes, ranks: int) -> list[tuple[int, int, int]]:
    """(first rank, last rank, local elements) runs of FSDP2's per-rank shard sizes, by a sweep over breakpoints.

    Rank r holds ceil(d/N) rows of a d-row parameter while r < d // ceil(d/N), the remainder at that rank,
    none after: each parameter changes the sum at two ranks at most.
    """
    start = 0
    changes: dict[int, int] = {}
    for _, shape in shapes:
        if not shape:
            raise EstimateError("FSDP2 shards on dim 0; a 0-dim parameter has none")
        d, rest = shape[0], numel(shape[1:])
        chunk = -(-d // ranks) if d else 0
        if chunk == 0:
            continue
        full, rem = d // chunk, d % chunk
        start += chunk * rest
        if full < ranks:
            changes[full] = changes.get(full, 0) + (rem - chunk) * rest
            if full + 1 < ranks:
                changes[full + 1] = changes.get(full + 1, 0) - rem * rest
    groups, value, first = [], start, 0
    for at in sorted(changes):
        if changes[at] == 0:
            continue
        groups.append((first, at - 1, value))
        value += changes[at]
        first = at
    groups.append((first, ranks - 1, value))
    return [g for g in groups if g[0] <= g[1]]


def engine_state_groups(
    shapes, strategy: str, ranks: int, precision: str = "fp32", optimizer: str = "adam",
) -> list[tuple[int, int, ModelStates]]:
    """(first rank, last rank, ModelStates) for runs of ranks that hold the same bytes, in rank order.

    ddp: DDP(gradient_as_bucket_view=True): full params, grads and optimizer state on every rank.
    zero1: DDP + ZeroRedundancyOptimizer: full params and grads; state only for owned parameters.
    zero2: FSDP2, parameters re-gathered after the step: full compute params, plus the sharded
           parameters the optimizer owns (`master`), sharded grads and state.
    zero3: FSDP2 resharded: every term sharded, no separate master.
    """
    from engine.spec import STRATEGIES

    choice("strategy", strategy, STRATEGIES)
    check_ranks(ranks, "number of ranks")
    choice("engine precision", precision, ENGINE_PRECISIONS)
    n_states = OPTIMIZER_STATES[choice("optimizer", optimizer, OPTIMIZER_STATES)]
    numels = [numel(shape) for _, shape in shapes]
    # fp32/fp64 keep one dtype everywhere. bf16 (mixed): DDP/ZeRO-1 autocast leaves every stored tensor
    # fp32; FSDP2's MixedPrecisionPolicy(param_dtype=bf16) makes only the gathered compute params bf16.
    elem = param_element_bytes(precision)
    compute_elem = 2 if (precision == "bf16" and strategy == "zero2") else elem
    step = ADAM_STEP_BYTES if optimizer in ("adam", "adamw") else 0  # SGD keeps no step tensor

    def state_bytes(elements: int, n_params: int) -> int:
        return elements * n_states * elem + n_params * step

    # DDP with gradient_as_bucket_view=True: .grad tensors are views into the all-reduce buckets,
    # so the bucket copy that plain DDP keeps beside the grads is 0 bytes here.
    full = sum(numels)
    if strategy == "ddp":
        return [(0, ranks - 1, ModelStates(full * elem, full * elem, state_bytes(full, len(numels)), 0))]
    if strategy == "zero1":
        elements, counts = [0] * min(ranks, len(numels)), [0] * min(ranks, len(numels))
        for index, rank in _zero_redundancy_owner(tuple(numels), ranks):
            elements[rank] += numels[index]
            counts[rank] += 1
        per_rank = [ModelStates(full * elem, full * elem, state_bytes(e, c), 0) for e, c in zip(elements, counts)]
        if ranks > len(per_rank):  # more ranks than parameters: the rest own nothing
            per_rank.append(ModelStates(full * elem, full * elem, 0, 0))
        return _runs(per_rank, ranks)
    groups = []
    for first, last, local in _fsdp2_local_numel_groups(shapes, ranks):
        # Every sharded parameter gets a grad (possibly 0 rows) and so its own Adam step tensor.
        states = state_bytes(local, len(shapes))
        if strategy == "zero2":
            groups.append((first, last, ModelStates(full * compute_elem, local * elem, states, local * elem)))
        else:
            groups.append((first, last, ModelStates(local * elem, local * elem, states, 0)))
    return groups


def _runs(per_rank: list[ModelStates], ranks: int) -> list[tuple[int, int, ModelStates]]:
    """Consecutive equal entries as (first, last, value); the last entry stands for every rank after it."""
    groups: list[tuple[int, int, ModelStates]] = []
    for rank, states in enumerate(per_rank):
        last = ranks - 1 if rank == len(per_rank) - 1 else rank
        if groups and groups[-1][2] == states:
            groups[-1] = (groups[-1][0], last, states)
        else:
            groups.append((rank, last, states))
    return groups


def estimate_engine_states(
    shapes, strategy: str, ranks: int, precision: str = "fp32", optimizer: str = "adam",
) -> list[ModelStates]:
    """Per-rank model-state bytes ShardLab's worker measures after the optimizer step, one entry per rank."""
    return [
        states
        for first, last, states in engine_state_groups(shapes, strategy, ranks, precision, optimizer)
        for _ in range(first, last + 1)
    ]


def estimate_for_spec(spec) -> list[ModelStates]:
    """The engine-mode prediction for a JobSpec (or its dict): what each rank should measure."""
    values = spec if isinstance(spec, dict) else asdict(spec)
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


def pytorch_coefficients(stage: int, precision: str, optimizer: str) -> tuple[int, int]:
    """(replicated, sharded) bytes per parameter of the PyTorch recipes with an even split (for fit answers)."""
    choice("engine precision", precision, ENGINE_PRECISIONS)
    elem = param_element_bytes(precision)
    states = OPTIMIZER_STATES[choice("optimizer", optimizer, OPTIMIZER_STATES)] * elem
    compute = 2 if precision == "bf16" else elem
    return {0: (2 * elem + states, 0), 1: (2 * elem, states), 2: (compute, 2 * elem + states), 3: (0, 2 * elem + states)}[stage]
