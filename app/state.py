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
CURRENT_RUN = "train_current_run"  # the run the Train page shows (also mirrored in the URL as ?run=)
RUNS_OPEN = "runs_open"  # the run opened on the Runs page
RUNS_COMPARE = "runs_compare"  # runs selected for comparison

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
    st.session_state.setdefault(CURRENT_RUN, None)
    st.session_state.setdefault(RUNS_OPEN, None)
    st.session_state.setdefault(RUNS_COMPARE, [])


def form_values() -> dict:
    """The Train form's current values, as JobSpec keyword arguments."""
    return {field: st.session_state[key] for field, key in FORM_FIELDS.items()}
