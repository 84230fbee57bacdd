"""Train page: the job form, then the live view of the run it launched."""

import streamlit as st

from app import state
from app.run_view import show_run
from app.train_form import render_train_form

state.seed()
st.title("Train")
st.caption("Pick a model, a number of ranks and a strategy, then press Launch: a real `torchrun` job starts, "
           "and its loss, memory per rank and communication appear below as it trains.")
with st.container(border=True):
    render_train_form()

run_id = st.session_state[state.CURRENT_RUN] or st.query_params.get("run")
if run_id:
    show_run(run_id, key="train")
else:
    st.info("Nothing launched yet. The defaults (a tiny MLP on handwritten digits, 2 CPU ranks, DDP) "
            "train in a few seconds.", icon=":material/info:")
