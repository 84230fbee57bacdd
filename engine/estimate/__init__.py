"""What-if memory estimator: per-rank bytes for any model, ZeRO stage, memory model and cluster, and answers.

One module per concern:
  inputs       limits, validation, precisions, stages, the GPU table
  paper        the ZeRO paper's model (Rajbhandari et al. 2020); ModelStates, the per-rank itemisation
  deepspeed    DeepSpeed's runtime model and its published cold estimators
  exact        the PyTorch model (ShardLab's engine, to the byte): FSDP2 shards, ZeroRedundancyOptimizer
  activations  Korthikanti et al. 2022, by precision and attention kernel
  answers      the whole per-GPU estimate, fits / fewest GPUs / largest model, communication volume
  scenario     where the model comes from (one resolver), one scenario at every stage: table and chart rows
  cli          `python -m engine estimate`
Pure functions; bytes are the unit of record; torch is imported only to build registry models on the meta device.
"""

from engine.estimate.activations import (
    Activations,
    activation_bytes_for,
    activations_for_spec,
    estimate_activations,
    registry_transformer,
)
from engine.estimate.answers import (
    DEFAULT_CONTEXT_BYTES,
    DEFAULT_RESERVE_PCT,
    MemoryEstimate,
    Overheads,
    allocatable_bytes,
    comm_volume,
    default_overheads,
    estimate_memory,
    max_params_to_fit,
    min_ranks_to_fit,
)
from engine.estimate.cli import add_estimate_arguments, build_report, build_reports, format_report, run_estimate_command
from engine.estimate.deepspeed import (
    deepspeed_cold_estimate,
    deepspeed_gathered_layer_bytes,
    deepspeed_host_bytes_per_node,
    deepspeed_model_states,
)
from engine.estimate.exact import (
    ADAM_STEP_BYTES,
    compare_with_measured,
    engine_param_shapes,
    engine_state_groups,
    estimate_engine_states,
    estimate_for_spec,
    shard_numel,
    shard_rows,
    zero_redundancy_partition,
)
from engine.estimate.inputs import (
    ACTIVATION_BYTES,
    ATTENTION,
    ENGINE_PRECISIONS,
    GB,
    GIB,
    GPUS,
    MAX_PARAMS,
    MAX_RANKS,
    MIB,
    OPTIMIZER_STATES,
    PAPER_PRECISIONS,
    RECOMPUTE,
    STAGE_LABELS,
    STAGES,
    EstimateError,
    Precision,
    capacity_from_gib,
    format_count,
    parse_count,
    parse_stage,
)
from engine.estimate.paper import ModelStates, bytes_per_param, estimate_model_states
from engine.estimate.scenario import (
    LEAVES_OUT,
    MEMORY_MODELS,
    ModelSource,
    Scenario,
    default_comm_buffer_bytes,
    memory_model_note,
    ranks_curve,
    resolve_source,
    stage_rows,
    stage_terms,
)

PRECISIONS = PAPER_PRECISIONS  # the name this dict had before the split (the engine's three are ENGINE_PRECISIONS)
