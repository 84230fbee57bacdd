"""Runs page: every run on disk, one opened in the live view, several compared on one set of charts."""

import streamlit as st

from app import charts, loaders, state
from app.run_data import TABLE_WIDTHS_PX, UNREADABLE, escape_markdown, runs_dir, runs_table
from app.run_view import show_run
from engine.spec import STRATEGIES

state.seed()
st.title("Runs")
root = runs_dir()
runs = loaders.list_runs()
if not runs:
    st.info(f"No runs in {root.resolve()} yet: launch one on the Train page.", icon=":material/info:")
    st.stop()

readable = [r for r in runs if r.get("state") != UNREADABLE]
table = runs_table([loaders.summary(r["run_id"]) if r in readable else r for r in runs])
st.dataframe(
    table, hide_index=True, key=state.RUNS_TABLE, width="stretch",
    column_config={
        **{name: st.column_config.Column(width=px) for name, px in TABLE_WIDTHS_PX.items()},
        "loss": st.column_config.NumberColumn(format="%.4f", width=TABLE_WIDTHS_PX["loss"], help="Loss of the newest step (mean over ranks)"),
        "accuracy": st.column_config.NumberColumn(format="%.1f%%", width=TABLE_WIDTHS_PX["accuracy"],
                                                  help="Held-out accuracy of the newest evaluation, in percent"),
        "traffic": st.column_config.NumberColumn(format="%.2f Ψ", width=TABLE_WIDTHS_PX["traffic"],
                                                      help=f"Rank 0's traffic per step in units of Ψ ({charts.TRAFFIC_NOTE})"),
        "model state": st.column_config.TextColumn(width=TABLE_WIDTHS_PX["model state"],
                                                   help="Exact model-state bytes per rank: one value, or min–max over ranks"),
        "peak RSS": st.column_config.TextColumn(width=TABLE_WIDTHS_PX["peak RSS"],
                                                help="Peak resident memory per rank process: one value, or min–max over ranks"),
        "note": None,  # 240 px past the other columns ran off a 1,280 px window: the notes are listed below instead
    },
)
st.caption(f"{len(runs)} runs in {root.resolve()}, newest first. Memory per rank: one value, or the range over ranks.")
if "note" in table:
    noted = table[table["note"].astype(bool)]
    st.warning("\n".join(f"- **{row.run}** ({row.status}): {escape_markdown(row.note)}" for row in noted.itertuples()),
               icon=":material/info:")
ids = [r["run_id"] for r in readable]
# The strategy leads: a compare panel's header is cut to its width, and runs launched together share a timestamp.
short = {r["run_id"]: f"{STRATEGIES.get(r['spec'].get('strategy'), {}).get('label', '?')} · {r['run_id']}" for r in readable}
labels = {r["run_id"]: f"{short[r['run_id']]} · {r['spec'].get('nproc')} ranks · {r['state']}" for r in readable}

open_tab, compare_tab = st.tabs(["Open a run", "Compare runs"])
with open_tab:
    if st.session_state[state.RUNS_OPEN] not in ids:
        st.session_state[state.RUNS_OPEN] = None
    run_id = st.selectbox("Run", ids, key=state.RUNS_OPEN, format_func=labels.get, index=None,
                          placeholder="Choose a run to open")
    if run_id:
        st.download_button("Download metrics (CSV)", loaders.csv(run_id), file_name=f"{run_id}-metrics.csv",
                           mime="text/csv", icon=":material/download:", key=state.RUNS_DOWNLOAD, on_click="ignore")
        show_run(run_id, key=state.RUNS_VIEW)

with compare_tab:
    st.session_state[state.RUNS_COMPARE] = [r for r in st.session_state[state.RUNS_COMPARE] if r in ids]
    chosen = st.multiselect("Runs to compare", ids, key=state.RUNS_COMPARE, format_func=labels.get,
                            placeholder="Choose two or more runs")
    if len(chosen) < 2:
        st.info("Choose two or more runs. With the same model, data and seed, DDP and every ZeRO stage should "
                "draw the same loss curve: they compute the same update.", icon=":material/info:")
    else:
        snaps, unreadable = loaders.snapshots({r: short[r] for r in chosen})
        for r, why in unreadable.items():
            st.warning(f"Run '{r}' cannot be read: {why}", icon=":material/help:")
        waiting = [k for k, s in snaps.items() if s.train.empty]
        if waiting:
            st.caption("No training step yet (nothing to draw): " + ", ".join(f"{k} ({snaps[k].state})" for k in waiting))
        st.altair_chart(charts.compare_loss_chart({k: s.train for k, s in snaps.items()}), width="stretch")
        st.altair_chart(charts.compare_memory_chart({k: s.latest for k, s in snaps.items()}))
        st.altair_chart(charts.compare_comm_chart({k: s.latest for k, s in snaps.items()},
                                                  {k: s.param_count for k, s in snaps.items()},
                                                  {k: s.bytes_per_element for k, s in snaps.items()}))
        st.caption("Model state is exact tensor bytes per rank after the newest step. Traffic follows the ZeRO paper "
                   "(an all-reduce counts twice its payload), so DDP : ZeRO-2 : ZeRO-3 read 2 : 2 : 3; hover a bar for "
                   "the raw payload per collective.")
