"""Session-state keys, named once, and their seeds.

Only view state lives here (form values, which run is open). Run state always comes from disk
through engine.runstore, so a reload or an app restart loses nothing that matters.
"""

from __future__ import annotations

import streamlit as st

from engine.spec import JobSpec

# Train form: one widget key per JobSpec field it edits.
FORM_FIELDS = {
    "model": "train_model",
    "size": "train_size",
    "dataset": "train_dataset",
    "device": "train_device",
    "nproc": "train_nproc",
    "strategy": "train_strategy",
    "steps": "train_steps",
    "global_batch": "train_global_batch",
    "lr": "train_lr",
    "optimizer": "train_optimizer",
    "precision": "train_precision",
    "eval_interval": "train_eval_interval",
    "seed": "train_seed",
    "memory_accurate": "train_memory_accurate",
    "memory_budget_mb": "train_memory_budget_mb",
}
FORM_ERRORS = "train_form_errors"  # {JobSpec field or "": message} from the last Launch click
LAUNCH_BUTTON = "train_launch"
SESSION_ID = "session_id"  # a random id per browser session: who asked for the warm standby
LAST_LAUNCH = "train_last_launch"  # {"values", "token", "run_id"} of the last run this session launched
FIRST_STEP_DRAWN = "first_step_drawn"  # the run whose first step the live view has drawn (its timer then slows)
CURRENT_RUN = "train_current_run"  # the run the Train page shows (also mirrored in the URL as ?run=)
RUN_QUERY_PARAM = "run"  # ?run=<run id>: a plain run id inside the runs folder, nothing else
TRAIN_VIEW = "train"  # widget-key prefix of the run view on the Train page (its Cancel is "train_cancel")
RUNS_OPEN = "runs_open"  # the run opened on the Runs page
RUNS_COMPARE = "runs_compare"  # runs selected for comparison
RUNS_TABLE = "runs_table"
RUNS_DOWNLOAD = "runs_download"
RUNS_VIEW = "runs"  # widget-key prefix of the run view on the Runs page

# "Run it on a cluster" (app/cluster_commands.py): the cluster's shape, which this machine's form cannot offer.
CLUSTER_FIELDS = {
    "nnodes": "cluster_nnodes",
    "nproc": "cluster_nproc",
    "device": "cluster_device",
    "rdzv_endpoint": "cluster_rdzv_endpoint",
}
CLUSTER_DEFAULTS = {"nnodes": 2, "nproc": 8, "device": "cuda", "rdzv_endpoint": "node0:29500"}

# The first click trains something that teaches: a 12.7M-parameter MLP on digits, 2 CPU ranks, for about half a
# minute with held-out accuracy every 20 steps. Its model state (16 bytes per parameter under Adam, ~194 MiB)
# is over a third of a DDP rank's RSS, and memory-accurate RSS makes the OS's numbers tell the same story as the
# model state (ZeRO-3's RSS below DDP's). Measured numbers: bench/bench_engine.py and the issue 8 report.
FIRST_RUN = JobSpec(model="mlp", size="medium", nproc=2, device="cpu", steps=120, eval_interval=20,
                    memory_accurate=True)


def seed() -> None:
    """Gives every key its starting value once per session; widgets then own their keys."""
    for field, key in FORM_FIELDS.items():
        # Re-assigning keeps a widget's value when its page is not shown (Streamlit drops unrendered widget keys).
        st.session_state[key] = st.session_state.get(key, getattr(FIRST_RUN, field))
    st.session_state.setdefault(FORM_ERRORS, {})
    st.session_state.setdefault(LAST_LAUNCH, None)
    st.session_state.setdefault(CURRENT_RUN, None)
    st.session_state.setdefault(RUNS_OPEN, None)
    st.session_state.setdefault(RUNS_COMPARE, [])


def form_values() -> dict:
    """The Train form's current values, as JobSpec keyword arguments."""
    return {field: st.session_state[key] for field, key in FORM_FIELDS.items()}


def cancel_key(view: str) -> str:
    """The Cancel button's key in a run view (TRAIN_VIEW or RUNS_VIEW)."""
    return f"{view}_cancel"


# What-if page: every widget's session-state key, named once (the widgets own their values).
WHATIF_KEYS = {
    "source": "whatif_source",
    "arch": "whatif_arch",
    "model": "whatif_model",
    "size": "whatif_size",
    "dataset": "whatif_dataset",
    "params": "whatif_params",
    "largest_layer": "whatif_largest_layer",
    "config": "whatif_config",
    "memory_model": "whatif_memory_model",
    "memory_model_for": "whatif_memory_model_default_for",  # not a widget: the source kind that default was for
    "nodes": "whatif_nodes",
    "ranks": "whatif_ranks",  # GPUs per node
    "precision": "whatif_precision",
    "engine_precision": "whatif_engine_precision",
    "optimizer": "whatif_optimizer",
    "offload": "whatif_offload",
    "offload_params": "whatif_offload_params",
    "prefetch": "whatif_prefetch_depth",
    "gpu": "whatif_gpu",
    "gpu_custom": "whatif_gpu_custom_gib",
    "host_mem": "whatif_host_mem_gib",
    "units": "whatif_units",
    "batch": "whatif_batch",
    "seq": "whatif_seq",
    "recompute": "whatif_recompute",
    "attention": "whatif_attention",
    "dropout": "whatif_dropout",
    "context": "whatif_context_gib",
    "reserve": "whatif_reserve_pct",
    "comm": "whatif_comm_buffers_mib",
    "run": "whatif_run",
    "arch_seen": "whatif_activation_defaults_for",  # not a widget: the architecture the defaults above belong to
}


# ---- Compare view and Learn page (classroom lessons): which group of runs is open, the map's choices.
COMPARE_GROUP = "compare_group"  # the group of runs the Compare page shows (also in the URL as ?group=)
COMPARE_URL_GROUP = "compare_url_group"  # the ?group= the Compare page last wrote or obeyed: a new one is a link
COMPARE_ERROR = "compare_error"  # why the last "Compare all four" click launched nothing
COMPARE_LAST_LAUNCH = "compare_last_launch"  # {"kind", "spec", "group_id", "runs"}: a double click starts one group
MAP_STRATEGY = "map_strategy"  # sharding map: which strategy
MAP_PHASE = "map_phase"  # sharding map: after which phase
LEARN_MAP_RANKS = "learn_map_ranks"  # Learn page: ranks in the estimator's sharding map


def seed_lessons() -> None:
    st.session_state.setdefault(COMPARE_GROUP, None)
    st.session_state.setdefault(COMPARE_URL_GROUP, None)
    st.session_state.setdefault(COMPARE_ERROR, "")
    st.session_state.setdefault(COMPARE_LAST_LAUNCH, None)
    st.session_state.setdefault(MAP_STRATEGY, "zero3")
    st.session_state.setdefault(MAP_PHASE, "forward")
    st.session_state.setdefault(LEARN_MAP_RANKS, 2)
