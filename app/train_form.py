"""The Train form: choose a job, validate it through JobSpec, launch it through engine.launcher.

A SpecError is shown under the field it names and nothing launches; the form never checks rules
of its own, so the CLI and the form refuse exactly the same specs.
"""

from __future__ import annotations

import streamlit as st

from app import state
from app.run_data import runs_dir
from engine import runstore, standby
from engine.units import format_bytes
from engine.registry import DATASETS, MODELS
from engine.spec import OPTIMIZERS, PRECISIONS, STRATEGIES, JobSpec, SpecError

MAX_CPU_RANKS_IN_FORM = 8  # ranks are processes sharing this machine's cores; more only crawls
PRECISION_HELP = {
    "fp32": "fp32 — 4-byte floats everywhere",
    "bf16": "bf16 mixed — bf16 compute, fp32 parameters and optimizer state",
    "fp64": "fp64 — 8-byte floats (bitwise comparisons)",
}
OPTIMIZER_HELP = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "sgd_momentum": "SGD with momentum"}

def count_gpus() -> int:
    from engine import launcher

    try:
        return launcher.count_gpus()
    except Exception:  # NVML missing or broken: train on CPU
        return 0


def launch_from_form() -> None:
    """Launch button callback: runs before the page redraws, so errors appear under their fields."""
    errors: dict[str, str] = {}
    st.session_state[state.FORM_ERRORS] = errors
    try:
        spec = JobSpec(**state.form_values())
        from engine import launcher

        run_id = launcher.launch(spec, runs_dir=runs_dir())
    except SpecError as error:
        errors[error.field] = str(error)  # shown under that field ("": above Launch)
        return
    except Exception as error:  # the launcher could not start torchrun at all
        errors[""] = f"Could not start the run: {error}"
        return
    st.session_state[state.CURRENT_RUN] = run_id
    st.query_params["run"] = run_id


def keep_standby_warm() -> None:
    """Keeps one warm torchrun job of the form's shape (engine/standby.py), so Launch skips the cold start.
    Not while this session's run trains: its warm-up would take the cores from the run being watched."""
    if not standby.enabled():
        return
    current = st.session_state[state.CURRENT_RUN]
    try:
        if current and runstore.read_status(runs_dir() / current).get("state") in runstore.ACTIVE_STATES:
            return
        folder = standby.ensure(JobSpec(**state.form_values()), runs_dir())
        warm = next((s for s in standby.status(runs_dir()) if s["folder"] == str(folder)), None)
        if warm and warm["ready_ranks"]:
            st.caption(f"A warm torchrun job of this shape is ready ({warm['ready_ranks']} ranks holding "
                       f"{format_bytes(warm['rss_bytes'])} RSS): Launch hands it the run instead of a cold start.")
    except SpecError:
        return  # the form shows the error on Launch; no standby for a shape that cannot run
    except OSError:  # a runs folder we cannot write: Launch reports it; the page must still render
        return


def _field_error(field: str) -> None:
    message = st.session_state[state.FORM_ERRORS].get(field)
    if message:
        st.error(message, icon=":material/error:")


def _keep_valid(key: str, options: list) -> None:
    """A choice that the new options no longer offer falls back to the first one."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def render_train_form() -> None:
    keys = state.FORM_FIELDS
    gpus = count_gpus()
    what, split, optimize = st.columns([1, 1.3, 1], gap="large")

    with what:
        st.markdown("**What to train**")
        st.selectbox("Model", list(MODELS), key=keys["model"],
                     format_func=lambda m: f"{m} — {MODELS[m].describe}")
        _field_error("model")
        presets = MODELS[st.session_state[keys["model"]]].presets
        _keep_valid(keys["size"], list(presets))
        st.selectbox("Size preset", list(presets), key=keys["size"],
                     format_func=lambda s: f"{s}  ({', '.join(f'{k} {v}' for k, v in presets[s].items())})")
        _field_error("size")
        kind = MODELS[st.session_state[keys["model"]]].input_kind
        datasets = [name for name, info in DATASETS.items() if info.kind == kind]
        _keep_valid(keys["dataset"], datasets)
        st.selectbox("Dataset", datasets, key=keys["dataset"],
                     format_func=lambda d: f"{d} — {DATASETS[d].describe}")
        _field_error("dataset")

    with split:
        st.markdown("**How to split it**")
        if gpus:
            st.segmented_control("Device", ["cuda", "cpu"], key=keys["device"], required=True,
                                 format_func=lambda d: f"{gpus} GPU{'s' * (gpus > 1)} (NCCL)" if d == "cuda" else "CPU processes (gloo)")
        else:
            st.session_state[keys["device"]] = "cpu"
        _field_error("device")
        on_gpu = st.session_state[keys["device"]] == "cuda"
        max_ranks = gpus if on_gpu else MAX_CPU_RANKS_IN_FORM
        st.session_state[keys["nproc"]] = min(max(1, int(st.session_state[keys["nproc"]])), max_ranks)
        st.number_input(f"Ranks (1–{max_ranks})", min_value=1, max_value=max_ranks, step=1, key=keys["nproc"])
        if on_gpu:
            st.caption("One rank per GPU, found through NVML.")
        else:
            st.caption("No GPU in use: each rank is a CPU process, and all ranks share this machine's cores."
                       if not gpus else "Each rank is a CPU process sharing this machine's cores.")
        _field_error("nproc")
        st.radio("Strategy", list(STRATEGIES), key=keys["strategy"],
                 format_func=lambda s: STRATEGIES[s]["label"],
                 captions=[f"{v['explain']}  \n`{v['pytorch']}`" for v in STRATEGIES.values()])
        _field_error("strategy")

    with optimize:
        st.markdown("**How to optimize**")
        st.number_input("Steps", min_value=1, max_value=1_000_000, step=10, key=keys["steps"])
        _field_error("steps")
        st.number_input("Global batch (split evenly over ranks)", min_value=1, step=8, key=keys["global_batch"])
        _field_error("global_batch")
        st.number_input("Learning rate", min_value=0.0, max_value=10.0, step=1e-4, format="%.5f", key=keys["lr"])
        _field_error("lr")
        st.selectbox("Optimizer", list(OPTIMIZERS), key=keys["optimizer"], format_func=OPTIMIZER_HELP.get)
        _field_error("optimizer")
        st.selectbox("Precision", list(PRECISIONS), key=keys["precision"], format_func=PRECISION_HELP.get)
        _field_error("precision")
        with st.expander("More options"):
            st.number_input("Evaluate every N steps (0 = after the last step only)", min_value=0, step=10,
                            key=keys["eval_interval"])
            _field_error("eval_interval")
            st.number_input("Seed", min_value=0, step=1, key=keys["seed"])
            st.checkbox("Memory-accurate RSS (returns freed buffers to the OS; 20–40% slower on CPU)",
                        key=keys["memory_accurate"])

    _field_error("")
    keep_standby_warm()
    st.button("Launch", type="primary", icon=":material/rocket_launch:", key="train_launch",
              on_click=launch_from_form)
