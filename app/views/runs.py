"""Runs page: every run on disk, one opened in the live view, several compared on one set of charts."""

from pathlib import Path

import streamlit as st

from app import charts, state
from app.run_data import load_snapshot, metrics_csv, run_stamp, runs_dir, runs_table
from app.run_view import metrics_tail, show_run
from engine import runstore
from engine.spec import STRATEGIES


@st.cache_data(max_entries=512, show_spinner=False)
def run_summary(run_dir: str, stamp: tuple) -> dict:  # stamp: re-read only when the run changed
    return runstore.summary(Path(run_dir))


@st.cache_data(max_entries=8, show_spinner=False)
def run_csv(run_dir: str, stamp: tuple) -> bytes:
    return metrics_csv(Path(run_dir))


state.seed()
st.title("Runs")
root = runs_dir()
runs = runstore.list_runs(root)
for broken in [r for r in runs if r["state"] == runstore.UNREADABLE]:  # listed, never opened
    st.warning(f"{broken['run_id']}: {broken['detail']}", icon=":material/warning:")
runs = [r for r in runs if r["state"] != runstore.UNREADABLE]
if not runs:
    st.info(f"No runs in {root.resolve()} yet: launch one on the Train page.", icon=":material/info:")
    st.stop()

summaries = [run_summary(str(root / r["run_id"]), run_stamp(root / r["run_id"])) for r in runs]
st.dataframe(
    runs_table(summaries), hide_index=True, key="runs_table",
    column_config={
        "final loss": st.column_config.NumberColumn(format="%.4f"),
        "accuracy": st.column_config.NumberColumn(format="percent"),
    },
)
st.caption(f"{len(runs)} runs in {root.resolve()}, newest first. Memory in MiB (2^20 bytes), one value per rank.")
ids = [r["run_id"] for r in runs]
short = {r["run_id"]: f"{r['run_id']} · {STRATEGIES.get(r['spec'].get('strategy'), {}).get('label', '?')}" for r in runs}
labels = {r["run_id"]: f"{short[r['run_id']]} · {r['spec'].get('nproc')} ranks · {r['state']}" for r in runs}

open_tab, compare_tab = st.tabs(["Open a run", "Compare runs"])
with open_tab:
    if st.session_state[state.RUNS_OPEN] not in ids:
        st.session_state[state.RUNS_OPEN] = None
    run_id = st.selectbox("Run", ids, key=state.RUNS_OPEN, format_func=labels.get, index=None,
                          placeholder="Choose a run to open")
    if run_id:
        run_dir = root / run_id
        st.download_button("Download metrics (CSV)", run_csv(str(run_dir), run_stamp(run_dir)),
                           file_name=f"{run_id}-metrics.csv", mime="text/csv", icon=":material/download:",
                           key="runs_download", on_click="ignore")
        show_run(run_id, key="runs")

with compare_tab:
    st.session_state[state.RUNS_COMPARE] = [r for r in st.session_state[state.RUNS_COMPARE] if r in ids]
    chosen = st.multiselect("Runs to compare", ids, key=state.RUNS_COMPARE, format_func=labels.get,
                            placeholder="Choose two or more runs")
    if len(chosen) < 2:
        st.info("Choose two or more runs. With the same model, data and seed, DDP and every ZeRO stage should "
                "draw the same loss curve: they compute the same update.", icon=":material/info:")
    else:
        snaps = {short[r]: load_snapshot(root / r, metrics_tail(str(root / r))) for r in chosen}
        st.altair_chart(charts.compare_loss_chart({k: s.train for k, s in snaps.items()}), width="stretch")
        st.altair_chart(charts.compare_memory_chart({k: s.latest for k, s in snaps.items()}))
        st.altair_chart(charts.compare_comm_chart({k: s.latest for k, s in snaps.items()},
                                                     {k: s.param_count for k, s in snaps.items()},
                                                     {k: s.bytes_per_element for k, s in snaps.items()}))
        st.caption("Model state is exact tensor bytes per rank after the newest step; communication is payload per "
                   "step per rank (hover a bar for the paper's multiple of Ψ, where an all-reduce counts twice).")
