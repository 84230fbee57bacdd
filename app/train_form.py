"""The Train form: choose a job, validate it through JobSpec, launch it through engine.launcher.

A SpecError is shown under the field it names and nothing launches; the form checks one rule of its
own (how many ranks this machine offers), so the CLI and the form refuse the same specs. Number fields
have no min/max: a browser clamps an out-of-range typed value back to the last valid one and launches
that, so the value as typed goes to JobSpec and a bad one is refused under its field.
"""

from __future__ import annotations

import dataclasses
import uuid

import streamlit as st

from app import lesson_charts, state
from app.cluster_commands import render_cluster_commands
from app.run_data import runs_dir
from engine import launcher, runstore, standby
from engine.gpus import GpuInventory, find_gpus
from engine.units import format_bytes
from engine.registry import DATASETS, MODELS
from engine.spec import OPTIMIZERS, PRECISIONS, STRATEGIES, JobSpec, SpecError

MAX_CPU_RANKS_IN_FORM = 8  # ranks are processes sharing this machine's cores; more only crawls
GPU_COUNT_TTL_S = 60  # NVML is asked at most once a minute, not on every rerun of every session
PRECISION_HELP = {
    "fp32": "fp32 — 4-byte floats everywhere",
    "bf16": "bf16 mixed — bf16 compute, fp32 parameters and optimizer state",
    "fp64": "fp64 — 8-byte floats (bitwise comparisons)",
}
OPTIMIZER_HELP = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "sgd_momentum": "SGD with momentum"}


@st.cache_resource(ttl=GPU_COUNT_TTL_S, show_spinner=False)
def gpu_inventory() -> GpuInventory:
    """What NVML finds (none without a driver, and why), shared by every session."""
    return find_gpus()


def count_gpus() -> int:
    return gpu_inventory().count


def max_ranks(device: str) -> int:
    return count_gpus() if device == "cuda" else MAX_CPU_RANKS_IN_FORM


def form_spec(values: dict) -> JobSpec:
    """The JobSpec the form's values make, or the SpecError that refuses them (the form's rank cap first)."""
    cap = max_ranks(values["device"])
    nproc = values["nproc"]
    if isinstance(nproc, int) and not isinstance(nproc, bool) and nproc > cap:
        where = "GPUs found" if values["device"] == "cuda" else "CPU ranks this form starts on one machine"
        raise SpecError(f"{nproc} ranks is more than the {cap} {where} (choose 1 to {cap})", "nproc")
    return JobSpec(**values)


def form_errors(values: dict) -> dict[str, str]:
    """Every field the form would refuse, not just the first: JobSpec stops at its first error, so a field it
    refuses is set back to the first run's value and the spec checked again. A class that typed steps 0, lr 50
    and batch -5 sees all three errors at once, each under its field."""
    errors: dict[str, str] = {}
    trial = dict(values)
    while True:
        try:
            form_spec(trial)
            return errors
        except SpecError as error:
            field = error.field if error.field in state.FORM_FIELDS else ""
            if field in errors or field == "":
                errors.setdefault(field, str(error))
                return errors
            errors[field] = str(error)
            trial[field] = getattr(state.FIRST_RUN, field)


def _start(spec: JobSpec, token: str) -> str:
    # The launcher turns a repeated call with the same token and spec into the run it already started, so a
    # retried click starts nothing new.
    return launcher.launch(spec, runs_dir=runs_dir(), client_token=token)


def _still_active(run_id: str) -> bool:
    path = runs_dir() / run_id
    return path.is_dir() and runstore.read_status(path).get("state") in runstore.ACTIVE_STATES


def _show(run_id: str) -> None:
    st.session_state[state.CURRENT_RUN] = run_id
    st.query_params[state.RUN_QUERY_PARAM] = run_id


def launch_from_form() -> None:
    """Launch button callback: runs before the page redraws, so errors appear under their fields.

    A double click reaches the server as two clicks before the page redraws. The second finds that this
    session's last launch, with the same form values, is still queued or running, and launches nothing.
    """
    errors: dict[str, str] = {}
    st.session_state[state.FORM_ERRORS] = errors
    values = state.form_values()
    last = st.session_state[state.LAST_LAUNCH]
    if last and last["values"] == values and _still_active(last["run_id"]):
        _show(last["run_id"])
        return
    token = uuid.uuid4().hex
    errors.update(form_errors(values))
    if errors:
        return
    try:
        run_id = _start(form_spec(values), token)
    except SpecError as error:
        # Shown under its field; a field the form does not show (log_interval, ...) above Launch.
        errors[error.field if error.field in state.FORM_FIELDS else ""] = str(error)
        return
    except (OSError, RuntimeError) as error:  # no run folder, no free run id, or torchrun could not start
        errors[""] = f"Could not start the run: {error}"
        return
    st.session_state[state.LAST_LAUNCH] = {"values": values, "token": token, "run_id": run_id}
    _show(run_id)


def _session_id() -> str:
    """This browser session's id: who asked for a standby (engine/standby.py keeps one for the whole machine)."""
    return st.session_state.setdefault(state.SESSION_ID, uuid.uuid4().hex)


def keep_standby_warm() -> None:
    """Keeps one warm torchrun job of the form's shape (engine/standby.py), so Launch skips the cold start.
    Not while this session's run trains: its warm-up would take the cores from the run being watched."""
    if not standby.enabled():
        return
    current = st.session_state[state.CURRENT_RUN]
    try:
        if current and runstore.read_status(runs_dir() / current).get("state") in runstore.ACTIVE_STATES:
            return
        folder = standby.ensure(JobSpec(**state.form_values()), runs_dir(), requester=_session_id())
        if folder is None:
            return  # another session's standby holds the machine's one slot: Launch starts cold
        warm = next((s for s in standby.status(runs_dir()) if s["folder"] == str(folder)), None)
        if warm and warm["ready_ranks"]:
            st.caption(f"A warm torchrun job of this shape is ready ({warm['ready_ranks']} ranks holding "
                       f"{format_bytes(warm['rss_bytes'])} RSS): Launch hands it the run instead of a cold start.")
    except SpecError:
        return  # the form shows the error on Launch; no standby for a shape that cannot run
    except OSError:  # a runs folder we cannot write: Launch reports it; the page must still render
        return


PREVIEW_TITLE = "What each rank will hold: model state predicted for this model and rank count"


@st.cache_data(max_entries=64, show_spinner=False)
def _predicted_staircase(spec: dict) -> dict:
    from engine.estimate import estimate_for_spec  # lays the model out on the meta device: imports torch

    return lesson_charts.predicted_latest({s: estimate_for_spec({**spec, "strategy": s}) for s in STRATEGIES})


def render_state_preview() -> None:
    """The staircase the four strategies will climb down, predicted from the model's tensor shapes before any
    run: the picture a class reads while the form is filled in. It also gives the first Launch a head start:
    the browser loads its charting code here, and the server imports torch and lays the model out (the shapes
    are cached, and Launch's memory check reads the same cache), so the run's first loss point waits for neither."""
    try:
        spec = form_spec(state.form_values())
        predicted = _predicted_staircase(dataclasses.asdict(spec))
    except ValueError as error:  # a SpecError from the form, or a model the estimator cannot lay out
        st.caption(f"No prediction of what each rank will hold for this form: {error}.")
        return  # nothing launched; Launch shows the same reason under its field
    st.altair_chart(lesson_charts.staircase_chart(predicted, title=PREVIEW_TITLE, chosen=spec.strategy),
                    width="stretch")
    ranks = spec.nproc * spec.nnodes
    st.caption(
        f"Predicted by the estimator's exact mode (engine/estimate) from the tensor shapes of {spec.model} {spec.size}, "
        f"{spec.precision}, {OPTIMIZER_HELP[spec.optimizer]}: one bar per rank, rank 0 to rank {ranks - 1} from left "
        f"to right; your pick, **{STRATEGIES[spec.strategy]['label']}**, in full colour. A run measures the same bytes "
        "(the run view's memory panels). ZeRO-2 here is FSDP2 keeping the full parameters between steps: each rank "
        "holds them for compute, plus its own shard that the optimizer updates (the master shard), in fp32 too.")


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
        st.caption(gpu_inventory().describe(), help="What NVIDIA's management library (NVML) reports on this machine.")
        on_gpu = st.session_state[keys["device"]] == "cuda"
        st.number_input(f"Ranks (1–{max_ranks(st.session_state[keys['device']])})", step=1, key=keys["nproc"])
        _field_error("nproc")
        if on_gpu:
            st.caption("One rank per GPU, found through NVML.")
        else:
            st.caption("No GPU in use: each rank is a CPU process, and all ranks share this machine's cores."
                       if not gpus else "Each rank is a CPU process sharing this machine's cores.")
        st.radio("Strategy", list(STRATEGIES), key=keys["strategy"],
                 format_func=lambda s: STRATEGIES[s]["label"],
                 captions=[f"{v['explain']}  \n`{v['pytorch']}`" for v in STRATEGIES.values()])
        _field_error("strategy")

    with optimize:
        st.markdown("**How to optimize**")
        st.number_input("Steps", step=10, key=keys["steps"])
        _field_error("steps")
        st.number_input("Global batch (split evenly over ranks)", step=8, key=keys["global_batch"])
        _field_error("global_batch")
        st.number_input("Learning rate", step=1e-4, format="%.5f", key=keys["lr"])
        _field_error("lr")
        st.selectbox("Optimizer", list(OPTIMIZERS), key=keys["optimizer"], format_func=OPTIMIZER_HELP.get)
        _field_error("optimizer")
        st.selectbox("Precision", list(PRECISIONS), key=keys["precision"], format_func=PRECISION_HELP.get)
        _field_error("precision")
        with st.expander("More options"):
            st.number_input("Evaluate every N steps (0 = after the last step only)", step=10,
                            key=keys["eval_interval"])
            _field_error("eval_interval")
            st.number_input("Seed", step=1, key=keys["seed"])
            _field_error("seed")
            st.checkbox("Memory-accurate RSS (returns freed buffers to the OS; 20–40% slower on CPU)",
                        key=keys["memory_accurate"])
            st.number_input("Memory budget per rank, MiB (0 = none; on CPU a simulated device of that size)",
                            step=1, key=keys["memory_budget_mb"],
                            help="A rank that needs more stops with 'rank r needs X MiB, budget Y MiB'. On a GPU the "
                                 "CUDA allocator enforces it (torch.cuda.set_per_process_memory_fraction).")
            _field_error("memory_budget_mb")
            _field_error("memory_accurate")

    _field_error("")
    keep_standby_warm()
    st.button("Launch", type="primary", icon=":material/rocket_launch:", key=state.LAUNCH_BUTTON,
              on_click=launch_from_form)
    render_cluster_commands(state.form_values())
