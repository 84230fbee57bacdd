"""Learn page: who holds which shard when, memory and traffic per rank, and what the seed article got wrong.

Every number comes from engine.estimate (the ZeRO paper's model and this engine's exact mode), from
engine.sharding, or from real runs; the page types no formula of its own."""

import pandas as pd
import streamlit as st
import altair as alt

from app import lesson_charts, state
from app.compare_view import map_controls
from app.run_data import runs_dir
from engine import runstore
from engine.compare import ENGINE_PAYLOAD_PSI, ORDER, PAPER_WEIGHT, engine_traffic_psi
from engine.estimate import MAX_PARAMS, MAX_RANKS, bytes_per_param, comm_volume, estimate_model_states
from engine.registry import MODELS
from engine.sharding import map_for_phase
from engine.spec import STRATEGIES

state.seed_lessons()
LABELS = {s: STRATEGIES[s]["label"] for s in ORDER}
LEARN_TABLE_PX = {"stage": 58, "bytes per parameter": 134, "GB per rank (10^9 bytes)": 154, "traffic per step": 96,
                  "what PyTorch sends here": 292, "measured": 80}  # 814 of 820 px; 'sends' needs 286 for ZeRO-1
LEARN_TABLE_HELP = {"measured": "Traffic per step per rank measured in the newest 'Compare all four' group "
                                "(Compare page), counted as the paper counts it.",
                    "what PyTorch sends here": "The collectives ShardLab's PyTorch recipe issues per step, each of "
                                               "payload Ψ; an all-reduce counts twice its payload."}
OPS = {"all_reduce": "all-reduce", "broadcast": "broadcast", "all_gather": "all-gather", "reduce_scatter": "reduce-scatter"}



def psi_text(units: float) -> str:
    return "Ψ" if units == 1 else f"{units:g}Ψ"


def sends_text(strategy: str) -> str:
    """What PyTorch's recipe sends per step, each collective counted as the paper counts it, so the sum reads:
    'all-reduce Ψ = 2Ψ' read as wrong arithmetic; an all-reduce of Ψ counts twice (a reduce-scatter + an all-gather)."""
    terms = [(f"{OPS[op]} of Ψ" if k == 1 else f"{k} {OPS[op]}s of Ψ", PAPER_WEIGHT.get(op, 1) * k)
             for op, k in ENGINE_PAYLOAD_PSI[strategy].items()]
    total = psi_text(engine_traffic_psi(strategy))
    if len(terms) == 1:
        what, counted = terms[0]
        return f"{what} (counted twice: {total})" if counted > 1 else f"{what} = {total}"
    weighted = any(PAPER_WEIGHT.get(op, 1) > 1 for op in ENGINE_PAYLOAD_PSI[strategy])
    return " + ".join(f"{what} ({psi_text(counted)})" if weighted else what for what, counted in terms) + f" = {total}"


st.title("Learn: DDP and the three ZeRO stages")
st.markdown(
    "Every rank runs the **full forward and backward pass on its own slice** of the batch, and all ranks apply the "
    "**same update**. DDP keeps a full copy of everything on every rank. ZeRO gives each rank one shard of the "
    "optimizer state (stage 1), also of the gradients (stage 2), and also of the parameters (stage 3)."
)

# ------------------------------------------------------------------ who holds what, when
# Each section checks its own inputs and returns on a bad one: its error stands in its place, the rest still renders.


def who_holds_what() -> None:
    st.subheader("Who holds what, when", anchor="who-holds-what")
    c1, c2, c3 = st.columns([1.2, 1, 3])
    model = c1.selectbox("Model", ["mlp", "cnn", "gpt"], key="learn_map_model")
    # No min/max on number inputs: the browser would keep the last valid value of an out-of-range one unseen.
    ranks = c2.number_input("Ranks", step=1, key=state.LEARN_MAP_RANKS)
    if not 1 <= ranks <= 8:
        c2.error(f"Choose 1 to 8 (got {ranks:,}).", icon=":material/error:")
        return

    def spec_of(strategy: str) -> dict:
        return {"model": model, "size": "tiny", "dataset": "text" if model == "gpt" else "digits", "nproc": int(ranks),
                "strategy": strategy, "precision": "fp32", "optimizer": "adam"}

    strategy, phase = map_controls(list(ORDER), spec_of, st.container(), st.container())
    st.altair_chart(lesson_charts.sharding_map_chart(map_for_phase(spec_of(strategy), phase), phase))
    st.caption(f"{model} tiny ({', '.join(f'{k} {v}' for k, v in MODELS[model].presets['tiny'].items())}), fp32 Adam, "
               "computed from the model's parameter shapes by the estimator's exact engine mode: a real run of this "
               "spec measures these same bytes (check it on the Compare page). Blue: a full copy. Yellow: shard k of N, "
               "rows a..b of that tensor. Pink: ZeRO-1 gives each rank *whole* tensors, so the shares are uneven. "
               "Pick ZeRO-3 and an *inside …* moment to see a layer gathered in full while it computes.")


# ------------------------------------------------------------------ memory and traffic per rank


def memory_and_traffic(groups: list[dict]) -> None:
    st.subheader("Memory and traffic per rank", anchor="memory-and-traffic")
    left, right = st.columns(2)
    # "%g": shown as typed (Streamlit's default "%0.2f" showed 0.004 as "0.00" while the chart used 0.004)
    psi_b = left.number_input("Ψ, parameters (billions)", value=7.5, step=0.5, format="%g", key="learn_psi")
    n = right.number_input("N, ranks", value=64, step=1, key="learn_n")
    if not 0.001 <= psi_b <= MAX_PARAMS / 1e9:
        left.error(f"Choose 0.001 to {MAX_PARAMS / 1e9:,.0f} billion (got {psi_b:,g}).", icon=":material/error:")
        return
    if not 1 <= n <= MAX_RANKS:
        right.error(f"Choose 1 to {MAX_RANKS:,} (got {n:,}).", icon=":material/error:")
        return
    psi = int(round(psi_b * 1e9))
    measured = {}
    if groups:
        from engine.compare import compare_report

        try:
            measured = compare_report(groups[0]["group_id"], runs_dir())["traffic_psi"]
        except (FileNotFoundError, ValueError, KeyError):
            measured = {}
    table = []
    for stage, strategy_name in enumerate(ORDER):
        replicated, sharded = bytes_per_param(stage, "bf16", "adam")
        states = estimate_model_states(psi, int(n), stage, "bf16", "adam")
        paper = comm_volume(psi, stage, "bf16")
        table.append({
            "stage": LABELS[strategy_name],
            "bytes per parameter": f"{replicated} + {sharded}/N" if sharded and replicated else
                                   (f"{sharded}/N" if sharded else f"{replicated}"),
            "GB per rank (10^9 bytes)": round(states.total_bytes / 1e9, 2),
            "traffic per step": f"{paper['elements'] / psi:g}Ψ",
            "what PyTorch sends here": sends_text(strategy_name),
            "measured": f"{measured[strategy_name]:.2f}Ψ" if strategy_name in measured else "–",
        })
    frame = pd.DataFrame(table)
    chart = (
        alt.Chart(frame, title=f"Model state per rank, Ψ = {psi_b:g} billion, N = {int(n)}")
        .mark_bar()
        .encode(x=alt.X("stage:N", sort=None, title=None, axis=alt.Axis(labelAngle=0)),
                y=alt.Y("GB per rank (10^9 bytes):Q"),
                color=alt.Color("stage:N", scale=alt.Scale(domain=lesson_charts.STRATEGY_ORDER,
                                                           range=lesson_charts.STRATEGY_COLORS), legend=None),
                tooltip=list(frame.columns))
        .properties(height=220)
    )
    st.altair_chart(chart, width="stretch")
    # Widths that fit the main column of a 1,280 px window (the last column ran off its right edge).
    st.dataframe(frame, hide_index=True, column_config={name: st.column_config.Column(width=px, help=LEARN_TABLE_HELP.get(name))
                                                        for name, px in LEARN_TABLE_PX.items()})
    st.caption("Mixed-precision Adam, the ZeRO paper's setting (engine.estimate.estimate_model_states and comm_volume); "
               "Ψ = 7.5 billion on N = 64 ranks is the paper's Figure 1. Traffic uses the paper's convention: an "
               "all-reduce counts twice its payload (a reduce-scatter plus an all-gather). **ZeRO-1 in PyTorch** "
               "(ZeroRedundancyOptimizer) keeps DDP's all-reduce of the full gradients and then broadcasts each updated "
               "parameter from its owner: 3Ψ, not the paper's 2Ψ. Activations and buffers come on top of these bytes.")


# ------------------------------------------------------------------ misconceptions, each with its evidence


def misconceptions(groups: list[dict]) -> None:
    st.subheader("Common misconceptions", anchor="misconceptions")
    group = groups[0]["group_id"] if groups else None
    walls = runstore.list_groups(runs_dir(), kind="memory_wall")

    def evidence(anchor: str, what: str, group_id: str | None = group) -> str:
        if group_id:
            return f"[{what}](compare?group={group_id}#{anchor})"
        return f"{what} (press *Compare all four* on the [Compare page](compare) first)"

    claims = [
        ("“ZeRO converges faster than DDP.”",
         "No. With the same data order and seed all four compute the *same* update; the curves differ only by rounding.",
         evidence("loss", "The four loss curves and their largest difference")),
        ("“With ZeRO each rank computes only its shard's gradients.”",
         "No. Every rank runs the full forward and backward on its own data; ZeRO splits where the state is *stored*.",
         evidence("collectives", "ZeRO-3 gathers every layer in full before it computes")),
        ("“ZeRO communicates less.”",
         "No. ZeRO-2 moves as much as DDP, ZeRO-3 half as much again; PyTorch's ZeRO-1 even moves 3Ψ.",
         evidence("traffic", "Traffic per step, measured")),
        ("“A ZeRO demo is DDP plus a few extra calls.”",
         "If nothing is partitioned, memory per rank does not drop. Real ZeRO makes it drop, stage by stage.",
         evidence("memory", "The staircase of memory per rank")),
        ("“ZeRO is only bookkeeping; it changes nothing you can feel.”",
         "It decides what fits: the same model under the same budget fails under DDP and trains under ZeRO-3.",
         evidence("wall", "The memory wall demo", walls[0]["group_id"] if walls else None)
         if walls else "The memory wall (press *Memory wall demo* on the [Compare page](compare))"),
        ("“Calling all-reduce on `model.parameters()` is DDP.”",
         "Collectives take tensors, and DDP all-reduces gradients in buckets *during* backward.",
         evidence("collectives", "DDP's bucketed all-reduce in the timeline")),
    ]
    for claim, truth, link in claims:
        st.markdown(f"- **{claim}** {truth} *Evidence:* {link}.")


# ------------------------------------------------------------------ the page
who_holds_what()
groups = runstore.list_groups(runs_dir(), kind="compare")  # newest first: the tables and links use the latest
memory_and_traffic(groups)
misconceptions(groups)
