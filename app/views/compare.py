"""Compare page: all four strategies on one spec and seed, filling in as they train; the memory wall demo."""

import streamlit as st

from app import state
from app.compare_view import launch_lesson_compare, launch_wall, show_group
from app.run_data import runs_dir
from engine import runstore
from engine.compare import LESSON_SPEC, WALL_SPEC

state.seed()
state.seed_lessons()
st.title("Compare: DDP and ZeRO, side by side")

from_url = st.query_params.get("group")
# The URL opens a group when it brings a new one (a link, the Train page's button) or the page has none; a ?group=
# this page wrote itself must not undo a launch button's or the list's newer choice on the next rerun.
if from_url and (from_url != st.session_state[state.COMPARE_URL_GROUP] or not st.session_state[state.COMPARE_GROUP]):
    st.session_state[state.COMPARE_GROUP] = from_url
    st.session_state[state.COMPARE_URL_GROUP] = from_url
groups = runstore.list_groups(runs_dir())
ids = [g["group_id"] for g in groups]
kinds = {g["group_id"]: g.get("kind", "compare") for g in groups}

left, middle, right = st.columns([3, 1.2, 1.2], vertical_alignment="bottom")
if st.session_state[state.COMPARE_GROUP] not in ids:
    st.session_state[state.COMPARE_GROUP] = ids[0] if ids else None
group_id = left.selectbox(
    "Group of runs", ids, key=state.COMPARE_GROUP, placeholder="No group yet: launch one",
    format_func=lambda g: f"{g} · {'memory wall' if kinds[g] == 'memory_wall' else 'all four'}",
)
middle.button("Compare all four", icon=":material/compare_arrows:", key="compare_launch",
              on_click=launch_lesson_compare, type="primary",
              help=f"DDP, ZeRO-1, ZeRO-2 and ZeRO-3 on {LESSON_SPEC.model} {LESSON_SPEC.size}, {LESSON_SPEC.nproc} ranks, "
                   f"{LESSON_SPEC.steps} steps, one seed (the Train page's button uses its form's settings).")
right.button("Memory wall demo", icon=":material/block:", key="compare_wall", on_click=launch_wall,
             help=f"{WALL_SPEC.model} {WALL_SPEC.size}, {WALL_SPEC.nproc} ranks, budget {WALL_SPEC.memory_budget_mb} MiB "
                  "per rank: DDP and ZeRO-3.")
if st.session_state[state.COMPARE_ERROR]:
    st.error(st.session_state[state.COMPARE_ERROR], icon=":material/error:")
if group_id:
    st.query_params["group"] = st.session_state[state.COMPARE_URL_GROUP] = group_id
    show_group(group_id)
else:
    st.info("Press **Compare all four**: four real torchrun jobs start, one per strategy, on the same model, data "
            "and seed, and this page fills in as they train (about a minute on two CPU cores).",
            icon=":material/info:")
