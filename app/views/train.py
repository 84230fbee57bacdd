"""Train page: the job form, then the live view of the run it launched."""

import streamlit as st

from app import state
from app.compare_view import compare_button
from app.run_view import show_run
from app.train_form import render_state_preview, render_train_form

state.seed()
st.title("Train")
run_id = st.session_state[state.CURRENT_RUN] or st.query_params.get(state.RUN_QUERY_PARAM)
if run_id:
    # The run is the point of this page now: the form folds away above it, one click to reopen.
    with st.expander("New run: model, ranks, strategy", icon=":material/tune:"):
        render_train_form()
        compare_button()
    show_run(run_id, key=state.TRAIN_VIEW)
else:
    st.caption("Pick a model, a number of ranks and a strategy, then press Launch: a real `torchrun` job starts, "
               "and its loss, memory per rank and communication appear below as it trains. The defaults "
               "(a 12.7M-parameter MLP on handwritten digits, 2 CPU ranks, DDP) train for about half a minute.")
    with st.container(border=True):
        render_train_form()
        compare_button()
    render_state_preview()
