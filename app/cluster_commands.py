"""Run the form's job on a cluster: the torchrun line for every node and a Slurm script, each with a copy button.

Both come from engine.cluster, the code behind `python -m engine torchrun-command` and `slurm-script`, so the
page and the CLI print the same lines for the same spec.
"""

from __future__ import annotations

import streamlit as st

from app import state
from app.run_data import runs_dir
from engine.cluster import slurm_script, torchrun_line
from engine.launcher import REPO_ROOT
from engine.spec import DEVICES, JobSpec, SpecError


CLUSTER_LIMITS = {"nnodes": (1, 1024), "nproc": (1, 64)}  # nodes; ranks (GPUs) per node


def render_cluster_commands(values: dict) -> None:
    """values: the Train form's JobSpec fields; the cluster's nodes, ranks per node and device come from here."""
    keys = state.CLUSTER_FIELDS
    for field, key in keys.items():
        st.session_state.setdefault(key, state.CLUSTER_DEFAULTS[field])
    with st.expander("Run it on a cluster: torchrun and Slurm", icon=":material/lan:"):
        nodes, ranks, device, endpoint = st.columns([1, 1, 1, 2])
        # No min/max on these: the browser would keep the last valid value of an out-of-range one and print
        # the script for that node count, under a field that shows the number as typed.
        nodes.number_input("Nodes", step=1, key=keys["nnodes"])
        ranks.number_input("Ranks per node", step=1, key=keys["nproc"])
        device.segmented_control("Device", list(DEVICES), key=keys["device"], required=True)
        endpoint.text_input("Node 0's address:port (torchrun's rendezvous)", key=keys["rdzv_endpoint"])
        cluster = {field: st.session_state[key] for field, key in keys.items()}
        for field, column in (("nnodes", nodes), ("nproc", ranks)):
            low, high = CLUSTER_LIMITS[field]
            if not low <= cluster[field] <= high:
                column.error(f"Choose {low} to {high} (got {cluster[field]:,}).", icon=":material/error:")
                return
        try:
            spec = JobSpec(**{**values, "nnodes": cluster["nnodes"], "nproc": cluster["nproc"],
                              "device": cluster["device"]})
        except SpecError as error:
            st.warning(f"On this cluster: {error}", icon=":material/warning:")  # not the form's own error
            return
        world = spec.world_size
        st.caption(f"{world} rank{'s' * (world > 1)} in all; each sees {spec.local_batch} samples per step. "
                   "The runs folder must sit on a filesystem every node sees: each node's ranks write their "
                   "metrics there, and this dashboard reads it like any local run.")
        by_hand, slurm = st.columns(2, gap="large")
        with by_hand:
            st.markdown("**torchrun**: copy `spec.json` to every node (same path), then on node *k* run "
                        "this line with `--node-rank=k`")
            st.code(torchrun_line(spec, "spec.json", 0, cluster["rdzv_endpoint"].strip() or None),
                    language="bash", wrap_lines=True)
            st.download_button("spec.json", spec.to_json() + "\n", file_name="spec.json",
                               mime="application/json", icon=":material/download:", key="cluster_spec_download")
        with slurm:
            st.markdown("**Slurm**: `sbatch job.sbatch` (one torchrun per node, rendezvous on the first node)")
            script = slurm_script(spec, runs_dir().resolve(), REPO_ROOT)
            st.code(script, language="bash", height=320, wrap_lines=True)  # no sideways scroll in a 1,280 px window
            st.download_button("job.sbatch", script, file_name="job.sbatch", mime="text/x-shellscript",
                               icon=":material/download:", key="cluster_script_download")
