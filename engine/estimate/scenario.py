"""Where the model comes from (one resolver for the CLI and the page), and one scenario estimated at every
stage under one memory model: rows for tables, long rows for charts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.architectures import (
    ARCHITECTURES,
    NOMINAL_MODELS,
    TransformerConfig,
    active_param_count,
    largest_layer_params,
    largest_unit_params,
    param_count,
    param_shapes,
    read_hf_config_bytes,
)
from engine.estimate import deepspeed as ds
from engine.estimate import exact
from engine.estimate.activations import registry_transformer
from engine.estimate.answers import (
    MemoryEstimate,
    Overheads,
    allocatable_bytes,
    comm_volume,
    max_params_to_fit,
    min_ranks_to_fit,
)
from engine.estimate.inputs import (
    ENGINE_PRECISIONS,
    MAX_CAPACITY_BYTES,
    MAX_NODES,
    OPTIMIZER_STATES,
    PAPER_PRECISIONS,
    STAGE_LABELS,
    STAGES,
    EstimateError,
    check_params,
    check_ranks,
    choice,
    parse_count,
    parse_stage,
    whole,
)
from engine.estimate.paper import ModelStates, bytes_per_param, estimate_model_states
from engine.spec import param_element_bytes

MEMORY_MODELS = {
    "paper": "the ZeRO paper's (Rajbhandari et al. 2020): Ψ and K bytes per parameter, sharded by 1/N",
    "deepspeed": "DeepSpeed's runtime (its estimate_zero2/zero3 formulas): fp32 gradient partition, "
                 "ZeRO-3's largest-layer buffers, optimizer and parameter offload",
    "pytorch": "PyTorch's (ShardLab's engine): FSDP2 per-parameter dim-0 shards with padding, "
               "ZeroRedundancyOptimizer's whole-parameter partition, exact per rank",
}
LEAVES_OUT = {
    "paper": ("communication and gathered-layer buffers (the paper's model states only)",
              "DeepSpeed's fp32 gradient partition", "parameter offload (ZeRO-Infinity)"),
    "deepspeed": ds.LEAVES_OUT,
    "pytorch": exact.LEAVES_OUT,
}
SHARDLAB_MODELS = ("mlp", "cnn", "gpt")
DEEPSPEED_REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce_bucket_size


@dataclass(frozen=True)
class ModelSource:
    """A model as the estimator needs it, whatever it came from: Ψ, and shapes or a layout when known."""

    label: str
    num_params: int
    kind: str  # "count", "nominal", "architecture", "config", "shardlab"
    arch: TransformerConfig | None = None  # a transformer layout: activations can be estimated
    shapes: tuple | None = None  # every parameter's shape: the PyTorch model is exact
    largest_layer_params: int = 0  # DeepSpeed's largest layer (0 = unknown)
    largest_unit_params: int = 0  # FSDP2's largest wrapped unit (a block, or the root)
    active_params: int | None = None  # mixture of experts: parameters one token uses
    unknown_keys: tuple[str, ...] = ()  # config.json keys neither used nor known to be neutral
    spec: dict = field(default_factory=dict)  # ShardLab model: model, size, dataset


def resolve_source(
    params: str | None = None,
    model: str | None = None,
    config: bytes | None = None,
    config_name: str = "config.json",
    size: str = "tiny",
    dataset: str = "",
    largest_layer: int | None = None,
) -> ModelSource:
    """The one place a source choice (a count, a name, a config.json) becomes Ψ, a layout and shapes."""
    if largest_layer is not None:
        check_params(largest_layer)
    if params is not None:
        psi = parse_count(params)
        if largest_layer is not None and largest_layer > psi:
            raise EstimateError(f"the largest layer ({largest_layer:,}) cannot hold more than the model ({psi:,})")
        return ModelSource(f"Ψ = {str(params).strip()}", psi, "count", largest_layer_params=largest_layer or 0)
    if config is not None:
        arch, unknown = read_hf_config_bytes(config, name=config_name)
        return _from_arch(arch, "config", f"{config_name} ({arch.family} layout)", largest_layer, unknown)
    if model in ARCHITECTURES:
        arch = ARCHITECTURES[model]
        return _from_arch(arch, "architecture", f"{arch.name} ({arch.source})", largest_layer)
    if model in NOMINAL_MODELS:
        psi = NOMINAL_MODELS[model]
        return ModelSource(f"ZeRO paper example, Ψ = {psi / 1e9:g}B", psi, "nominal", largest_layer_params=largest_layer or 0)
    if model in SHARDLAB_MODELS:
        dataset = dataset or ("text" if model == "gpt" else "digits")
        shapes = exact.engine_param_shapes(model, size, dataset)
        units = largest_unit_params(shapes) if model == "gpt" else largest_layer_params(shapes)  # mlp/cnn: one layer a unit
        return ModelSource(
            f"ShardLab {model}/{size} on {dataset}", sum(exact.numel(s) for _, s in shapes), "shardlab",
            registry_transformer(model, size, dataset), shapes, largest_layer or largest_layer_params(shapes), units,
            spec={"model": model, "size": size, "dataset": dataset},
        )
    raise EstimateError(
        f"unknown model {model!r} (choose {', '.join(SHARDLAB_MODELS)}, {', '.join(ARCHITECTURES)}, {', '.join(NOMINAL_MODELS)})"
    )


def _from_arch(arch: TransformerConfig, kind: str, label: str, largest_layer: int | None, unknown=()) -> ModelSource:
    shapes = param_shapes(arch)
    psi = param_count(arch)
    if psi > 10**15:
        raise EstimateError(f"{arch.name} has {psi:,} parameters: beyond the estimator's 1e15")
    active = active_param_count(arch) if arch.experts else None
    return ModelSource(label, psi, kind, arch, shapes, largest_layer or largest_layer_params(shapes),
                       largest_unit_params(shapes), active, tuple(unknown))


@dataclass(frozen=True)
class Scenario:
    """Everything an estimate depends on. `memory_model` picks paper, deepspeed or pytorch (shapes needed);
    without one, a scenario with `shapes` is the exact PyTorch model and one without is the paper's."""

    num_params: int
    ranks: int
    precision: str = "bf16"
    optimizer: str = "adam"
    offload_optimizer: bool = False
    activation_bytes: int = 0
    overheads: Overheads = Overheads()
    shapes: tuple | None = None
    memory_model: str | None = None
    nodes: int = 1
    offload_params: bool = False
    largest_layer_params: int = 0  # DeepSpeed's ZeRO-3 gathered layer
    largest_unit_params: int = 0  # FSDP2's largest unit (0: from the shapes)
    prefetch_depth: int = 1  # ZeRO-3 layers gathered ahead of the one computing
    auto_comm_buffers: bool = False  # fill the communication buffers from the memory model's defaults
    host_capacity_bytes: int | None = None  # host memory per node, for "fits on the host"

    def __post_init__(self) -> None:
        check_params(self.num_params)
        check_ranks(self.ranks)
        whole("number of nodes", self.nodes, 1, MAX_NODES)
        if self.ranks % self.nodes:
            raise EstimateError(f"{self.ranks:,} GPUs do not split evenly over {self.nodes:,} nodes")
        whole("activation bytes", self.activation_bytes, 0, MAX_CAPACITY_BYTES)
        whole("largest layer parameters", self.largest_layer_params, 0, self.num_params)
        whole("prefetch depth", self.prefetch_depth, 0, 64)
        choice("optimizer", self.optimizer, OPTIMIZER_STATES)
        choice("memory model", self.model, MEMORY_MODELS)
        if self.host_capacity_bytes is not None:
            whole("host memory per node", self.host_capacity_bytes, 1, MAX_CAPACITY_BYTES)
        if self.model == "pytorch":
            if self.shapes is None:
                raise EstimateError("the PyTorch model needs every parameter's shape: pick an architecture, a "
                                    "config.json or a ShardLab model (a bare count has none)")
            choice("engine precision", self.precision, ENGINE_PRECISIONS)
            if self.offload_optimizer or self.offload_params:
                raise EstimateError("ShardLab's engine (the PyTorch model) does not offload: turn offload off, "
                                    "or use the paper or DeepSpeed model")
        else:
            choice("precision", self.precision, PAPER_PRECISIONS)
        if self.offload_params and self.model != "deepspeed":
            raise EstimateError("parameter offload is modelled by DeepSpeed's model only (ZeRO-3 offload_param)")
        if self.offload_params and not self.offload_optimizer:
            raise EstimateError("parameter offload needs optimizer offload too (as DeepSpeed requires)")

    @property
    def model(self) -> str:
        return self.memory_model or ("pytorch" if self.shapes is not None else "paper")

    @property
    def engine_mode(self) -> bool:
        return self.model == "pytorch"

    @property
    def gpus_per_node(self) -> int:
        return self.ranks // self.nodes

    @property
    def formula_precision(self) -> str:
        """The paper-mode precision with the same bytes (engine bf16 keeps fp32 grads and optimizer state)."""
        return "bf16_fp32_grads" if self.precision == "bf16" and self.engine_mode else self.precision

    def offloads(self, stage: int) -> bool:
        return self.offload_optimizer and stage > 0  # DDP has no partition to offload: its row shows none

    def states_groups(self, stage: int, ranks: int) -> list[tuple[int, int, ModelStates]]:
        if self.model == "pytorch":
            return exact.engine_state_groups(self.shapes, STAGES[stage], ranks, self.precision, self.optimizer)
        if self.model == "deepspeed":
            states = ds.deepspeed_model_states(self.num_params, ranks, stage, self.precision, self.optimizer,
                                               self.offloads(stage), self.offload_params and stage == 3)
        else:
            states = estimate_model_states(self.num_params, ranks, stage, self.precision, self.optimizer, self.offloads(stage))
        return [(0, ranks - 1, states)]

    def gathered_bytes(self, stage: int) -> int:
        """Transient buffers of the layers being computed: ZeRO-3's gathered layer(s), FSDP2's unsharded grads."""
        if self.model == "deepspeed" and stage == 3:
            p = PAPER_PRECISIONS[self.precision]
            return ds.deepspeed_gathered_layer_bytes(stage, self.largest_layer_params, self.precision) + (
                self.prefetch_depth * p.param_bytes * self.largest_layer_params)
        if self.model == "pytorch" and stage >= 2:
            unit = self.largest_unit_params or exact_largest_unit(self.shapes)
            elem = param_element_bytes(self.precision)
            compute = 2 if self.precision == "bf16" else elem
            gathered = (1 + self.prefetch_depth) * compute * unit if stage == 3 else 0
            return gathered + elem * unit  # a unit's unsharded grads wait for their reduce-scatter
        return 0

    def stage_overheads(self, stage: int) -> Overheads:
        if not self.auto_comm_buffers:
            return self.overheads
        return replace(self.overheads, comm_buffer_bytes=default_comm_buffer_bytes(self.model, stage, self.precision))

    def groups(self, stage: int | str, ranks: int | None = None) -> list[tuple[int, int, MemoryEstimate]]:
        """(first rank, last rank, estimate) runs of identical ranks: one run except in the PyTorch model."""
        stage, ranks = parse_stage(stage), check_ranks(ranks or self.ranks)
        gathered, overheads = self.gathered_bytes(stage), self.stage_overheads(stage)
        return [
            (first, last, MemoryEstimate(stage, ranks, states, self.activation_bytes, overheads, gathered))
            for first, last, states in self.states_groups(stage, ranks)
        ]

    def per_rank(self, stage: int | str, ranks: int | None = None) -> list[MemoryEstimate]:
        """One estimate per rank (lists every rank: use groups() for large N)."""
        return [e for first, last, e in self.groups(stage, ranks) for _ in range(first, last + 1)]

    def busiest(self, stage: int | str, ranks: int | None = None) -> MemoryEstimate:
        """The rank that needs the most: the one that decides whether a stage fits."""
        return max((e for _, _, e in self.groups(stage, ranks)), key=lambda e: e.total_bytes)

    @property
    def fixed_bytes(self) -> int:
        return self.activation_bytes + self.overheads.context_bytes + self.overheads.comm_buffer_bytes

    def coefficients(self, stage: int) -> tuple[int, int]:
        """(replicated, sharded) device bytes per parameter of this memory model, for the fit answers."""
        if self.model == "pytorch":
            return exact.pytorch_coefficients(stage, self.precision, self.optimizer)
        if self.model == "deepspeed":
            total = lambda psi, n: ds.deepspeed_model_states(
                psi, n, stage, self.precision, self.optimizer, self.offloads(stage), self.offload_params and stage == 3,
            ).total_bytes
            one, two = total(1, 1), total(2, 2)  # r + s and 2r + s: the model is linear in Ψ and ceil(Ψ/N)
            return two - one, 2 * one - two
        return bytes_per_param(stage, self.precision, self.optimizer, self.offloads(stage))

    def host_bytes_per_node(self, stage: int) -> int:
        if self.model == "deepspeed":
            return ds.deepspeed_host_bytes_per_node(
                self.num_params, stage, self.gpus_per_node, self.nodes, self.largest_layer_params,
                self.offloads(stage), self.offload_params and stage == 3,
            )
        return self.gpus_per_node * self.busiest(stage).states.cpu_bytes

    def answers(self, stage: int | str, capacity_bytes: int) -> dict:
        """Fits (GPU, host)? The fewest GPUs and nodes that fit, and the largest model that fits on N GPUs."""
        stage = parse_stage(stage)
        whole("GPU capacity (bytes)", capacity_bytes, 1, MAX_CAPACITY_BYTES)
        worst = self.busiest(stage)
        room = allocatable_bytes(capacity_bytes, worst.overheads)
        fixed = worst.activation_bytes + worst.gathered_bytes + worst.overheads.comm_buffer_bytes
        coefficients = self.coefficients(stage)
        fewest = None if room < 0 else min_ranks_to_fit(
            self.num_params, stage, room, fixed_bytes=fixed, coefficients=coefficients)
        host = self.host_bytes_per_node(stage)
        return {
            "fits": worst.total_bytes <= capacity_bytes,
            "fits_host": None if self.host_capacity_bytes is None else host <= self.host_capacity_bytes,
            "min_ranks_to_fit": fewest,
            "min_nodes_to_fit": None if fewest is None else -(-fewest // self.gpus_per_node),
            "max_params_to_fit": 0 if room < 0 else max_params_to_fit(
                self.ranks, stage, room, fixed_bytes=fixed, coefficients=coefficients),
        }


def exact_largest_unit(shapes) -> int:
    return largest_unit_params(shapes)


def default_comm_buffer_bytes(memory_model: str, stage: int, precision: str) -> int:
    """Communication buffers each model's runtime allocates by default (0 where the model has none).

    DeepSpeed: the gradient reduce bucket (reduce_bucket_size = 5e8 elements, in the gradient dtype) at every
    ZeRO stage. PyTorch: DDP with gradient_as_bucket_view shares its buckets with the grads; FSDP2's buffers
    are the gathered units (counted apart). The paper counts none.
    """
    if memory_model == "deepspeed" and stage >= 1:
        return DEEPSPEED_REDUCE_BUCKET_ELEMENTS * PAPER_PRECISIONS[precision].grad_bytes
    return 0


def stage_rows(scenario: Scenario, capacity_bytes: int | None = None) -> list[dict]:
    """One row per stage for a table: the busiest rank's itemised bytes, answers and communication."""
    rows = []
    for stage in STAGES:
        worst = scenario.busiest(stage)
        comm = comm_volume(scenario.num_params, stage, scenario.formula_precision)
        row = {"stage": STAGE_LABELS[stage], "memory_model": scenario.model}
        row.update(
            params_bytes=worst.states.params_bytes, grads_bytes=worst.states.grads_bytes,
            optimizer_bytes=worst.states.optimizer_bytes, master_bytes=worst.states.master_bytes,
            gathered_bytes=worst.gathered_bytes, activations_bytes=worst.activation_bytes,
            context_bytes=worst.overheads.context_bytes, comm_buffers_bytes=worst.overheads.comm_buffer_bytes,
            reserve_bytes=worst.reserve_bytes, model_states_bytes=worst.states.total_bytes,
            total_bytes=worst.total_bytes, cpu_bytes=worst.states.cpu_bytes,
            host_bytes_per_node=scenario.host_bytes_per_node(stage), offloaded=scenario.offloads(stage),
        )
        if capacity_bytes is not None:
            row.update(scenario.answers(stage, capacity_bytes))
        row["comm_elements"] = comm["elements"]
        row["comm_bytes"] = comm["bytes"]
        rows.append(row)
    return rows


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


def memory_model_note(memory_model: str) -> str:
    """One line a table carries: which model it shows and what that model leaves out."""
    return f"Memory model: {MEMORY_MODELS[memory_model]}. Leaves out: {'; '.join(LEAVES_OUT[memory_model])}."
