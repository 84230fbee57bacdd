"""Learn page: who holds which shard, memory and communication per rank from the ZeRO paper, common misconceptions."""

import pandas as pd
import streamlit as st

from app import charts

st.title("Learn: DDP and the three ZeRO stages")

st.markdown(
    """
**Data parallelism.** Every rank (one process, one GPU or a share of the CPU) runs the **full forward and backward
pass on its own slice** of each global batch. The ranks then combine their gradients so that all of them apply the
**same update**. DDP keeps a full copy of everything on every rank; ZeRO removes the copies by giving each rank a
1/N shard of the optimizer state (stage 1), also of the gradients (stage 2), and also of the parameters (stage 3).
"""
)
n_ranks = st.slider("Ranks in the picture", 2, 8, 4, key="learn_ranks")
st.altair_chart(charts.shard_layout_chart(n_ranks))
st.caption("Blue: every rank holds the whole thing. Yellow: each rank holds one 1/N shard; the shards together make "
           "one copy. ZeRO-3 gathers each layer's parameters just before it computes and frees them after.")

st.subheader("Memory and communication per rank", anchor=False)
st.markdown(
    "For mixed-precision Adam (the ZeRO paper's setting) a model of Ψ parameters needs 2Ψ bytes of fp16 parameters, "
    "2Ψ of fp16 gradients and 12Ψ of optimizer state (fp32 master weights, momentum and variance) — 16Ψ in all. "
    "Communication is counted in the paper's way: an all-reduce is a reduce-scatter plus an all-gather, so it moves 2Ψ."
)
psi_b = st.number_input("Ψ, parameters (billions)", min_value=0.001, value=7.5, step=0.5, key="learn_psi")
n = st.number_input("N, ranks", min_value=1, value=64, step=1, key="learn_n")
psi = psi_b * 1e9
stages = [
    ("DDP", "16Ψ", 16 * psi, "2Ψ", "all-reduce the gradients"),
    ("ZeRO-1", "4Ψ + 12Ψ/N", 4 * psi + 12 * psi / n, "2Ψ", "reduce-scatter gradients, all-gather parameters"),
    ("ZeRO-2", "2Ψ + 14Ψ/N", 2 * psi + 14 * psi / n, "2Ψ", "reduce-scatter gradients, all-gather parameters"),
    ("ZeRO-3", "16Ψ/N", 16 * psi / n, "3Ψ", "all-gather parameters for forward and for backward, reduce-scatter gradients"),
]
st.dataframe(
    pd.DataFrame(
        [{"stage": s, "bytes per rank": f, "GB per rank (10^9 bytes)": round(b / 1e9, 2), "traffic per step": c,
          "collectives": how} for s, f, b, c, how in stages]
    ),
    hide_index=True,
)
st.caption("With Ψ = 7.5 billion and N = 64 this is the paper's Figure 1: 120 GB, 31.4 GB, 16.6 GB and 1.9 GB per rank. "
           "Activations, temporary buffers and fragmentation come on top. ShardLab's runs use fp32 Adam "
           "(4Ψ parameters + 4Ψ gradients + 8Ψ optimizer state = 16Ψ as well). PyTorch's ZeroRedundancyOptimizer, "
           "used for ZeRO-1 here, all-reduces full gradients and then broadcasts updated parameters: 3Ψ, not 2Ψ.")

st.subheader("Common misconceptions", anchor=False)
st.markdown(
    """
- **“ZeRO converges faster than DDP.”** No. With the same data order and seed, DDP and all three ZeRO stages compute
  the *same* update; their loss curves differ only by floating-point rounding. Compare runs on the Runs page: the
  curves overlap.
- **“With ZeRO each rank computes only its shard's gradients.”** No. Every rank runs the full forward and backward on
  its own data. ZeRO partitions the *storage* of optimizer state, gradients and parameters, not the computation.
- **“ZeRO communicates less.”** Stages 1 and 2 move the same 2Ψ per step as DDP; stage 3 moves 3Ψ. ZeRO trades
  memory for (at most 1.5×) communication.
- **“Calling all-reduce on `model.parameters()` is DDP.”** Collectives take tensors, and DDP overlaps bucketed
  gradient all-reduces with the backward pass. Use `DistributedDataParallel`; write collectives by hand only to learn.
- **“A ZeRO demo is DDP plus a few extra calls.”** If nothing is partitioned, memory per rank does not drop. Look at
  the memory-per-rank chart of a run: the bars shrink from DDP to ZeRO-3.
"""
)
