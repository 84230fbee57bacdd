"""The live run view, shared by the Train and Runs pages: status, progress, loss, memory, communication, speed, log.

Everything is read from the run directory on each refresh. The fragment re-runs on a timer only while
the run is active; when it ends, one full rerun turns the timer off and removes the Cancel button.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, state
from app.loaders import metrics_tail
from app.run_data import (RunSnapshot, RunUnreadable, accuracy_text, failure_in_words, find_run, format_duration,
                          load_snapshot, progress, quiet_log, runs_dir, split_shutdown_noise)
from engine import launcher, runstore
from engine.spec import STRATEGIES
from engine.units import format_bytes

REFRESH_S = 1.0
FIRST_STEP_REFRESH_S = 0.2  # until the first step is on disk: its loss point is drawn within a fifth of a second
STATE_BADGES = {  # state -> (label, color, icon)
    "queued": ("queued", "gray", ":material/hourglass_empty:"),
    "running": ("running", "blue", ":material/autorenew:"),
    "succeeded": ("succeeded", "green", ":material/check_circle:"),
    "failed": ("failed", "red", ":material/error:"),
    "cancelled": ("cancelled", "orange", ":material/cancel:"),
    "unreadable": ("unreadable", "gray", ":material/help:"),
}
RSS_CAPTION = (
    "RSS is what the operating system counts for each rank's process. Under the default glibc malloc, "
    "freed buffers (ZeRO-3's gathered layers, for one) stay in the heap, so a ZeRO-3 rank's RSS can look "
    "*larger* than DDP's. Launch with *Memory-accurate RSS* for honest numbers; the model-state bars "
    "(parameters, gradients, optimizer state) are exact either way."
)
RSS_CAPTION_ACCURATE = (
    "This run used memory-accurate mode (MALLOC_MMAP_THRESHOLD_=65536): large freed buffers go back to the "
    "operating system, so RSS follows what each rank really holds."
)
COMM_CAPTION = (
    "Traffic in the ZeRO paper's convention: an all-reduce counts **2× its payload** (a ring all-reduce is a "
    "reduce-scatter followed by an all-gather), every other collective once. So DDP moves 2Ψ per step, ZeRO-2 2Ψ and "
    "ZeRO-3 3Ψ (one more all-gather of the parameters for the backward); PyTorch's ZeroRedundancyOptimizer (ZeRO-1 "
    "here) all-reduces the full gradients and then broadcasts the updated parameters: 3Ψ, not the paper's 2Ψ. "
    "Ψ = parameter count × {bpe} bytes. Hover a bar for the raw payload each rank handed to the collective (the "
    "metrics CSV holds it too); gloo's real wire traffic differs."
)
LONGEST_ID_SHOWN = 60  # characters of a refused ?run= value echoed back


def show_run(run_id: str, key: str) -> None:
    """Draws one run; `key` (state.TRAIN_VIEW or state.RUNS_VIEW) keeps widget keys apart between pages."""
    run_dir = find_run(run_id, runs_dir())
    if run_dir is None:
        shown = str(run_id)[:LONGEST_ID_SHOWN] + ("…" if len(str(run_id)) > LONGEST_ID_SHOWN else "")
        st.warning(f"No such run: '{shown}'. A run is named by its id alone, as listed on the Runs page "
                   f"(runs folder {runs_dir().resolve()}).", icon=":material/search_off:")
        return
    try:
        snap = load_snapshot(run_dir, metrics_tail(str(run_dir)))
    except RunUnreadable as error:
        st.warning(f"Run '{run_dir.name}' cannot be read: {error}", icon=":material/help:")
        return
    title, cancel = st.columns([5, 1], vertical_alignment="center")
    title.subheader(f"Run {run_dir.name}", anchor=False)
    if snap.active:
        cancel.button("Cancel", icon=":material/stop_circle:", key=state.cancel_key(key), on_click=_cancel,
                      args=(run_dir.name,))
    waiting = snap.active and snap.train.empty
    every = (FIRST_STEP_REFRESH_S if waiting else REFRESH_S) if snap.active else None
    st.fragment(run_every=every)(_live)(run_dir, snap.active, waiting)


def _cancel(run_id: str) -> None:
    launcher.cancel(run_id, runs_dir=runs_dir())


def _live(run_dir: Path, was_active: bool, was_waiting: bool) -> None:
    try:
        snap = load_snapshot(run_dir, metrics_tail(str(run_dir)))
    except RunUnreadable as error:  # the folder was damaged while the run was shown
        st.warning(f"Run '{run_dir.name}' cannot be read: {error}", icon=":material/help:")
        return
    first_drawn = was_waiting and st.session_state.get(state.FIRST_STEP_DRAWN) == run_dir.name
    if (was_active and not snap.active) or first_drawn:
        st.rerun()  # a full rerun stops (or, once the first step is drawn, slows) the timer and hides Cancel
    if was_waiting and not snap.train.empty:
        st.session_state[state.FIRST_STEP_DRAWN] = run_dir.name  # drawn now; the next tick slows the timer
    draw_snapshot(snap)


def _header(snap: RunSnapshot) -> None:
    failure = failure_in_words(snap)
    if failure:
        st.error(failure, icon=":material/error:")
    if snap.state == "cancelled":
        st.info(f"Cancelled on request after step {snap.steps_done} of {snap.total_steps}: the ranks were stopped, "
                "nothing failed.", icon=":material/cancel:")
    label, color, icon = STATE_BADGES.get(snap.state, (snap.state, "gray", None))
    spec = snap.spec
    strategy = STRATEGIES.get(spec.get("strategy"), {})
    pytorch = snap.starts[0].get("strategy_pytorch") if snap.starts else strategy.get("pytorch", "")
    psi = f" · Ψ = {snap.param_count:,} parameters" if snap.param_count else ""
    st.markdown(
        f":{color}-badge[{icon} {label}] **{strategy.get('label', spec.get('strategy'))}** on "
        f"{spec.get('nproc')} {'GPU' if spec.get('device') == 'cuda' else 'CPU'} ranks · "
        f"{spec.get('model')} {spec.get('size')} on {spec.get('dataset')}{psi}"
    )
    st.caption(f"`{pytorch}`")
    p = progress(snap)
    eta = f" · ETA {format_duration(p['eta_s'])}" if snap.active and p["eta_s"] is not None else ""
    st.progress(p["fraction"], text=f"step {p['step']} of {p['total']} · elapsed {format_duration(p['elapsed_s'])}{eta}")


def _headline(snap: RunSnapshot) -> None:
    last = snap.latest.iloc[0] if not snap.latest.empty else None
    psi_units = charts.comm_psi_total(snap.latest, snap.param_count, snap.bytes_per_element) if last is not None else None
    traffic = charts.comm_traffic_total(snap.latest) if last is not None else None
    cols = st.columns(4)
    cols[0].metric("Loss (mean over ranks)", f"{last['loss_global']:.4f}" if last is not None else "–")
    cols[1].metric("Held-out accuracy", accuracy_text(snap),
                   help=None if snap.active or not snap.evals.empty else f"Not evaluated: the run was {snap.state} before "
                   "its held-out evaluation.")
    cols[2].metric("Throughput (samples/s)", f"{last['samples_per_s']:,.0f}" if last is not None else "–")
    cols[3].metric("Traffic per step per rank", f"{psi_units:.2f} Ψ" if psi_units is not None else "–",
                   help=f"{charts.TRAFFIC_NOTE}." + (f" {format_bytes(traffic)} per step." if traffic else ""))


def _chart(where, chart, **options) -> None:
    """Draws a chart whose spec stays the same while rows are added (charts.live_spec), so a refresh updates
    the drawn chart in the browser instead of drawing it anew."""
    where.vega_lite_chart(spec=charts.live_spec(chart), **options)


def draw_snapshot(snap: RunSnapshot) -> None:
    """The run view. While an active run waits for its first step, the same layout stands with an empty loss
    chart of the same spec: the first step's point is then new rows in a chart the browser has already drawn,
    which is what makes it appear within a tick of reaching disk."""
    _header(snap)
    waiting = snap.train.empty
    notice = st.container()  # a slot of its own, so the elements below keep their place when it empties
    if waiting:
        notice.info("Waiting for the first step: torchrun is starting the ranks (a few seconds on CPU).",
                    icon=":material/hourglass_top:")
        if not snap.active:
            _log(snap, expanded=snap.state == "failed")
            return
    _headline(snap)
    cuda = snap.device == "cuda" and "cuda_allocated_bytes" in snap.latest
    stretch = dict(width="stretch")

    st.markdown("#### Loss")
    left, right = st.columns([2, 1]) if len(snap.evals) > 1 else (st.container(), None)
    _chart(left, charts.loss_chart(snap.train, ranks=range(int(snap.spec.get("nproc") or 1))), **stretch)
    if right is not None:
        _chart(right, charts.accuracy_chart(snap.evals), **stretch)
    st.caption("Coloured lines: each rank's loss on its own slice of the global batch. Dashed black line: the mean over "
               "ranks, which is the loss of the whole global batch — the same for DDP and every ZeRO stage.")
    if waiting:
        _log(snap, expanded=False)
        return

    st.markdown("#### Memory per rank")
    left, right = st.columns(2)
    _chart(left, charts.memory_chart(snap.latest, cuda), **stretch)
    _chart(right, charts.memory_over_steps_chart(snap.train, cuda), **stretch)
    st.caption(_state_share(snap.latest, cuda))
    _chart(st, charts.phase_chart(snap.latest))
    if cuda:
        st.caption("On GPU the bars use CUDA allocated bytes; model-state bars are exact bytes of the tensors each rank holds.")
    else:
        st.caption(RSS_CAPTION_ACCURATE if snap.spec.get("memory_accurate") else RSS_CAPTION)

    st.markdown("#### Communication")
    left, right = st.columns(2)
    # Two layers with their own rows (bars per collective, a total per rank): drawn as it is. Its rows are the
    # same from the second step on, so Streamlit's hashed dataset name, and with it the spec, stops changing.
    left.altair_chart(charts.comm_chart(snap.latest, snap.param_count, snap.bytes_per_element), **stretch)
    _chart(right, charts.cumulative_comm_chart(snap.train), **stretch)
    st.caption(COMM_CAPTION.format(bpe=snap.bytes_per_element))

    st.markdown("#### Speed")
    left, right = st.columns(2)
    _chart(left, charts.throughput_chart(snap.train), **stretch)
    _chart(right, charts.step_time_chart(snap.train), **stretch)
    _log(snap, expanded=snap.state == "failed")


def _state_share(latest, cuda: bool) -> str:
    """One sentence on how much of the process is model state (tiny models: almost none of it)."""
    data = charts.memory_frame(latest, "step", cuda)
    rank0 = data[data["rank"] == data["rank"].min()]
    other = rank0["category"].isin([charts.OTHER_LABEL, charts.OTHER_LABEL_CUDA])
    state_bytes, total_bytes = rank0[~other]["bytes"].sum(), rank0["bytes"].sum()
    if not total_bytes:
        return ""
    walked = latest[latest["rank"] == latest["rank"].min()].iloc[0].get(runstore.mem_measured_step_key("step"))
    when = (f" Model state was last walked at step {int(walked)}: the walk repeats only while it can change, every "
            "step until it holds still, then every 10th." if pd.notna(walked) else "")
    return (f"On rank 0, model state is {state_bytes / 2**20:,.2f} MiB of {total_bytes / 2**20:,.1f} MiB "
            f"({state_bytes / total_bytes:.2%}; MiB = 2^20 bytes). The rest is PyTorch, the data and activations: "
            f"the panel below shows model state alone, phase by phase.{when}")


def _log(snap: RunSnapshot, expanded: bool) -> None:
    log, shutdown = split_shutdown_noise(snap.log, snap.state)
    with st.expander("Log (last lines of torchrun's output)", expanded=expanded):
        st.code(log or quiet_log(snap), language=None, wrap_lines=True)
    if shutdown:
        with st.expander("Shutdown messages after cancel (expected: torchrun and gloo reporting the stop)"):
            st.code(shutdown, language=None, wrap_lines=True)
