"""Who holds what, when: which slice of every parameter, gradient and optimizer-state tensor each rank holds
after each phase of a step, with its bytes. Pure functions of the model's parameter shapes and the strategy.

  ddp    every rank holds every tensor in full
  zero1  parameters and gradients in full; optimizer state only for the whole parameters this rank's
         ZeroRedundancyOptimizer owns (engine.estimate.zero_redundancy_partition: uneven shares)
  zero2  FSDP2: full compute parameters on every rank, plus the dim-0 shard the optimizer updates
         ("master"), sharded gradients and optimizer state
  zero3  FSDP2: every tensor as its dim-0 shard (rows a..b, torch.chunk's ceil(d/N)-row chunks, the
         last ones short or empty: FSDP2 pads them to equal storage); a unit's full parameters exist
         only while it computes (gathered, then freed: see the collective log)

The bytes per (rank, phase, category) equal what the worker measures in mem/<phase>/<category>_bytes
(tests/test_lessons.py checks it on real runs). In the first step the gradients do not exist before the
first backward, nor Adam's state before the first optimizer step; from the second step on they do
(the worker zeroes gradients without freeing them).
"""

from __future__ import annotations

import math

from engine.estimate import ADAM_STEP_BYTES, engine_param_shapes, shard_rows, zero_redundancy_partition
from engine.spec import param_element_bytes

PHASES = ("forward", "backward", "step")  # the state is read after each (the worker's mem/<phase>/ keys)
PHASE_LABELS = {"forward": "after forward", "backward": "after backward", "step": "after the optimizer step"}
CATEGORIES = ("params", "master", "grads", "optimizer")
CATEGORY_LABELS = {"params": "parameters", "master": "master shard (ZeRO-2)", "grads": "gradients",
                   "optimizer": "optimizer state"}
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0, "sgd_momentum": 1}


def _rows(dim0: int, ranks: int, rank: int) -> tuple[int, int]:
    """[first, end) rows of FSDP2's dim-0 shard for `rank`."""
    chunk = -(-dim0 // ranks)
    first = min(dim0, rank * chunk)
    return first, first + shard_rows(dim0, ranks, rank)


def sharding_map(shapes, strategy: str, ranks: int, precision: str = "fp32", optimizer: str = "adam",
                 first_step: bool = False) -> list[dict]:
    """One row per (rank, phase, category, tensor) a rank holds any of; `shapes` is ((name, shape), ...).

    Each row: rank, phase, category, tensor, layer (index in model order), dim0, rows_from, rows_to
    (exclusive), numel, bytes, holding ('full', 'shard k of N', 'owner (whole tensor)') and label.
    """
    if strategy not in ("ddp", "zero1", "zero2", "zero3"):
        raise ValueError(f"unknown strategy '{strategy}'")
    elem = param_element_bytes(precision)
    compute_elem = 2 if (precision == "bf16" and strategy == "zero2") else elem
    n_states = OPTIMIZER_STATES[optimizer]
    step_bytes = ADAM_STEP_BYTES if optimizer in ("adam", "adamw") else 0
    numels = [math.prod(shape) for _, shape in shapes]
    owners = {i: r for r, mine in enumerate(zero_redundancy_partition(numels, ranks)) for i in mine}
    fsdp = strategy in ("zero2", "zero3")
    rows = []
    for phase in PHASES:
        has_grads = not (first_step and phase == "forward")
        has_state = not (first_step and phase != "step")
        for rank in range(ranks):
            for layer, (name, shape) in enumerate(shapes):
                dim0 = shape[0] if shape else 1
                inner = numels[layer] // dim0 if dim0 else 0
                first, end = _rows(dim0, ranks, rank) if fsdp else (0, dim0)
                local = (end - first) * inner
                shard = f"shard {rank + 1} of {ranks}"

                def add(category, numel, size, holding):
                    rows.append({"rank": rank, "phase": phase, "category": category, "tensor": name, "layer": layer,
                                 "dim0": dim0, "rows_from": first if holding.startswith("shard") else 0,
                                 "rows_to": end if holding.startswith("shard") else dim0, "numel": numel,
                                 "bytes": size, "holding": holding,
                                 "label": holding if not holding.startswith("shard")
                                 else f"{shard}: rows {first}..{end - 1}" if end > first else f"{shard}: no rows"})

                if strategy == "zero3":
                    add("params", local, local * elem, shard)
                else:
                    add("params", numels[layer], numels[layer] * compute_elem, "full")
                if strategy == "zero2":
                    add("master", local, local * elem, shard)
                if has_grads:
                    if fsdp:
                        add("grads", local, local * elem, shard)
                    else:
                        add("grads", numels[layer], numels[layer] * elem, "full")
                if has_state and (n_states or step_bytes):
                    if fsdp:  # every sharded parameter (even one with no rows here) gets its own step counter
                        add("optimizer", local * n_states, local * n_states * elem + step_bytes, shard)
                    elif strategy == "ddp":
                        add("optimizer", numels[layer] * n_states, numels[layer] * n_states * elem + step_bytes, "full")
                    elif owners[layer] == rank:
                        add("optimizer", numels[layer] * n_states, numels[layer] * n_states * elem + step_bytes,
                            "owner (whole tensor)")
    return rows


def sharding_map_for_spec(spec: dict, first_step: bool = False) -> list[dict]:
    """The map for a JobSpec's fields (a dict), from the estimator's exact engine mode: no run needed."""
    shapes = engine_param_shapes(spec["model"], spec["size"], spec["dataset"])
    ranks = spec.get("nproc", 1) * spec.get("nnodes", 1)
    return sharding_map(shapes, spec["strategy"], ranks, spec.get("precision", "fp32"), spec.get("optimizer", "adam"),
                        first_step)


def map_totals(rows: list[dict]) -> dict[tuple[int, str, str], int]:
    """(rank, phase, category) -> bytes, every category present (0 where the rank holds none of it)."""
    ranks = {r["rank"] for r in rows}
    totals = {(rank, phase, c): 0 for rank in ranks for phase in PHASES for c in CATEGORIES}
    for r in rows:
        totals[(r["rank"], r["phase"], r["category"])] += r["bytes"]
    return totals


def measured_totals(train_records: list[dict]) -> dict[tuple[int, str, str], int]:
    """The same keys from one logged step's train records (one per rank): mem/<phase>/<category>_bytes."""
    return {(rec["rank"], phase, c): int(rec.get(f"mem/{phase}/{c}_bytes", 0) or 0)
            for rec in train_records for phase in PHASES for c in CATEGORIES}


def shard_unit_of(model: str, size: str, dataset: str) -> dict[str, str]:
    """Parameter name -> the FSDP unit (a block in the model's shard_units, else 'root') that gathers it."""
    from engine.data import data_shape  # torch: only when a registry model is asked for
    from engine.models import meta_model
    from engine.registry import model_context

    module = meta_model(model, size, data_shape(dataset, model_context(model, size)))
    names = {id(m): n for n, m in module.named_modules()}
    owner = {}
    for unit in module.shard_units:
        for name, _ in unit.named_parameters():
            owner[f"{names[id(unit)]}.{name}"] = names[id(unit)]
    return {name: owner.get(name, "root") for name, _ in module.named_parameters()}


def gathered_map(rows: list[dict], shapes, unit_of: dict[str, str], unit: str, precision: str = "fp32") -> list[dict]:
    """ZeRO-3 inside the forward pass: while `unit` computes, its parameters are gathered in full on every rank
    (an all-gather, freed right after); every other tensor stays a shard. Derived from the 'forward' rows, not a
    measured snapshot: the collective log shows the all-gather that makes it."""
    elem = param_element_bytes(precision)
    numel = {name: math.prod(shape) for name, shape in shapes}
    out = []
    for r in rows:
        if r["phase"] != "forward":
            continue
        r = {**r, "phase": f"inside {unit}"}
        if r["category"] == "params" and unit_of.get(r["tensor"]) == unit:
            r.update(holding="gathered in full (freed after)", label="gathered in full (freed after)", rows_from=0,
                     rows_to=r["dim0"], numel=numel[r["tensor"]], bytes=numel[r["tensor"]] * elem)
        out.append(r)
    return out


def map_phases(spec: dict) -> list[str]:
    """The phases a map can show for a spec: the three measured ones, and for ZeRO-3 one per unit inside forward."""
    if spec["strategy"] != "zero3":
        return list(PHASES)
    units = dict.fromkeys(shard_unit_of(spec["model"], spec["size"], spec["dataset"]).values())
    return ["forward", *(f"inside {u}" for u in units), "backward", "step"]


def map_for_phase(spec: dict, phase: str, first_step: bool = False) -> list[dict]:
    """The map's rows for one phase of `map_phases(spec)`."""
    rows = sharding_map_for_spec(spec, first_step)
    if not phase.startswith("inside "):
        return [r for r in rows if r["phase"] == phase]
    shapes = engine_param_shapes(spec["model"], spec["size"], spec["dataset"])
    unit_of = shard_unit_of(spec["model"], spec["size"], spec["dataset"])
    return gathered_map(rows, shapes, unit_of, phase.removeprefix("inside "), spec.get("precision", "fp32"))
