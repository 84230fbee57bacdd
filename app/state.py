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
}
FORM_ERRORS = "train_form_errors"  # {JobSpec field or "": message} from the last Launch click
LAUNCH_BUTTON = "train_launch"
LAST_LAUNCH = "train_last_launch"  # {"values", "token", "run_id"} of the last run this session launched
CURRENT_RUN = "train_current_run"  # the run the Train page shows (also mirrored in the URL as ?run=)
RUN_QUERY_PARAM = "run"  # ?run=<run id>: a plain run id inside the runs folder, nothing else
TRAIN_VIEW = "train"  # widget-key prefix of the run view on the Train page (its Cancel is "train_cancel")
RUNS_OPEN = "runs_open"  # the run opened on the Runs page
RUNS_COMPARE = "runs_compare"  # runs selected for comparison
RUNS_TABLE = "runs_table"
RUNS_DOWNLOAD = "runs_download"
RUNS_VIEW = "runs"  # widget-key prefix of the run view on the Runs page

# The first click should train something real in seconds: JobSpec defaults (mlp tiny on digits), 2 CPU ranks.
FIRST_RUN = JobSpec(nproc=2, device="cpu")


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
