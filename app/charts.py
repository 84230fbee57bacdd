"""Chart builders: pure functions from the contract's metric frames to Altair charts (no streamlit).

Frames are in bytes, as recorded; each chart converts to one display unit (KiB = 2^10, MiB = 2^20,
GiB = 2^30 bytes) picked from its largest value and names it in the axis title.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from engine import runstore

# Model state as the ZeRO paper splits it, plus what the process holds besides (RSS or CUDA allocated).
STATE_CATEGORIES = runstore.CATEGORY_LABELS  # category key -> label a student reads (defined in runstore)
OTHER_LABEL = "other (RSS − model state)"
OTHER_LABEL_CUDA = "other (CUDA allocated − model state)"
CATEGORY_COLORS = {
    "parameters": "#4C78A8",
    "master params (ZeRO-2 shards)": "#72B7B2",
    "gradients": "#F58518",
    "optimizer state": "#E45756",
    OTHER_LABEL: "#BAB0AC",
    OTHER_LABEL_CUDA: "#BAB0AC",
}
PHASES = {"forward": "forward", "backward": "backward", "step": "optimizer step"}  # state read after each
OP_COLORS = {"all_reduce": "#4C78A8", "broadcast": "#54A24B", "all_gather": "#B279A2", "reduce_scatter": "#F58518"}
# The ZeRO paper's convention: a ring all-reduce is a reduce-scatter plus an all-gather, so it moves 2x its payload.
PAPER_WEIGHT = {"all_reduce": 2}
MEAN_LABEL = "mean over ranks"
CHART_HEIGHT = 300
RANK_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D", "#FF9DA6"]


def byte_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, label) of the binary unit that keeps the largest value readable."""
    for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if max_bytes >= 1024**power:
            return float(1024**power), f"{name} (2^{10 * power} bytes)"
    return 1.0, "bytes"


def _rank_label(ranks: pd.Series) -> pd.Series:
    return "rank " + ranks.astype(int).astype(str)


def _categories(frame: pd.DataFrame, prefix: str) -> list[tuple[str, str]]:
    """Categories present in the frame; `master` only where some rank holds any (ZeRO-2)."""
    present = [(k, label) for k, label in STATE_CATEGORIES.items() if f"{prefix}{k}_bytes" in frame]
    return [(k, label) for k, label in present if k != "master" or frame[f"{prefix}{k}_bytes"].fillna(0).any()]


def _rank_colors(labels: pd.Series) -> alt.Scale:
    """The same colour for rank r in every chart."""
    ranks = sorted({int(str(label).split()[-1]) for label in labels.unique()})
    return alt.Scale(domain=[f"rank {r}" for r in ranks], range=[RANK_COLORS[r % len(RANK_COLORS)] for r in ranks])


def _rank_scale(ranks) -> alt.Scale:
    """Rank colours, with the mean over ranks in near-black so it reads as 'the' curve."""
    ranks = sorted(set(int(r) for r in ranks))
    return alt.Scale(domain=[f"rank {r}" for r in ranks] + [MEAN_LABEL],
                     range=[RANK_COLORS[r % len(RANK_COLORS)] for r in ranks] + ["#222222"])


# ---------- shaping (pure pandas, tested on their own) ----------


def loss_frame(train: pd.DataFrame) -> pd.DataFrame:
    """Long form: step, series ('rank r' or the mean over ranks), loss."""
    per_rank = pd.DataFrame({"step": train["step"], "series": _rank_label(train["rank"]), "loss": train["loss"]})
    rank0 = train[train["rank"] == train["rank"].min()]
    mean = pd.DataFrame({"step": rank0["step"], "series": MEAN_LABEL, "loss": rank0["loss_global"]})
    return pd.concat([per_rank, mean], ignore_index=True)


def memory_frame(latest: pd.DataFrame, phase: str = "step", cuda: bool = False) -> pd.DataFrame:
    """Long form per rank: category, bytes; 'other' is the process total minus model state (never negative)."""
    rows = []
    total_key = "cuda_allocated_bytes" if cuda else f"mem/{phase}/rss_bytes"
    for _, rec in latest.iterrows():
        state = 0
        for key, label in _categories(latest, f"mem/{phase}/"):
            value = float(rec[f"mem/{phase}/{key}_bytes"] or 0)
            state += value
            rows.append({"rank": int(rec["rank"]), "category": label, "bytes": value})
        if total_key in latest and pd.notna(rec[total_key]):
            rows.append({"rank": int(rec["rank"]), "category": OTHER_LABEL_CUDA if cuda else OTHER_LABEL,
                         "bytes": max(0.0, float(rec[total_key]) - state)})
    return pd.DataFrame(rows, columns=["rank", "category", "bytes"])


def phase_frame(latest: pd.DataFrame) -> pd.DataFrame:
    """Long form: rank, phase, category, bytes of model state after each phase of the newest step."""
    rows = []
    for phase, phase_label in PHASES.items():
        for _, rec in latest.iterrows():
            for key, label in _categories(latest, f"mem/{phase}/"):
                rows.append({"rank": int(rec["rank"]), "phase": phase_label, "category": label,
                             "bytes": float(rec[f"mem/{phase}/{key}_bytes"] or 0)})
    return pd.DataFrame(rows, columns=["rank", "phase", "category", "bytes"])


def comm_frame(latest: pd.DataFrame, param_count: int | None, bytes_per_element: int = 4) -> pd.DataFrame:
    """Long form per rank and collective: payload bytes this step and the paper's multiple of Ψ.

    psi_units = weight x payload / (param_count x bytes_per_element), weight 2 for all-reduce, else 1.
    """
    ops = sorted({k.split("/")[1] for k in latest.columns if k.startswith("comm/") and k.endswith("/bytes")})
    rows = []
    for _, rec in latest.iterrows():
        for op in ops:
            payload = rec.get(f"comm/{op}/bytes")
            if pd.isna(payload) or not payload:
                continue
            psi_bytes = param_count * bytes_per_element if param_count else None
            rows.append({"rank": int(rec["rank"]), "op": op, "bytes": float(payload),
                         "psi_units": PAPER_WEIGHT.get(op, 1) * float(payload) / psi_bytes if psi_bytes else None})
    return pd.DataFrame(rows, columns=["rank", "op", "bytes", "psi_units"])


def comm_psi_total(latest: pd.DataFrame, param_count: int | None, bytes_per_element: int = 4) -> float | None:
    """The newest step's traffic per rank in the paper's units of Ψ (rank 0's; every rank moves the same)."""
    frame = comm_frame(latest, param_count, bytes_per_element)
    if frame.empty or frame["psi_units"].isna().all():
        return None
    return float(frame[frame["rank"] == frame["rank"].min()]["psi_units"].sum())


# ---------- charts ----------


def loss_chart(train: pd.DataFrame) -> alt.Chart:
    """Loss vs step: a line per rank (its own slice of the batch) and a dashed one for the mean over ranks."""
    data = loss_frame(train)
    series = alt.Color("series:N", title=None, scale=_rank_scale(train["rank"].unique()),
                       legend=alt.Legend(orient="top", symbolStrokeWidth=3))
    return (
        alt.Chart(data, title="Training loss")
        .mark_line(strokeWidth=2)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("loss:Q", title="loss (cross-entropy)", scale=alt.Scale(zero=False)),
            color=series,
            # Field scales, not alt.condition: a dict channel costs Altair ~10 ms to wrap on every refresh.
            opacity=alt.Opacity("is_mean:N", scale=alt.Scale(domain=[0, 1], range=[0.75, 1.0]), legend=None),
            strokeDash=alt.StrokeDash("is_mean:N", scale=alt.Scale(domain=[0, 1], range=[[1, 0], [6, 3]]), legend=None),
            order=alt.Order("is_mean:Q"),  # the mean is drawn last, on top
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4f")],
        )
        .transform_calculate(is_mean=f"datum.series == '{MEAN_LABEL}' ? 1 : 0")
        .properties(height=CHART_HEIGHT)
    )


def accuracy_chart(evals: pd.DataFrame) -> alt.Chart:
    """Held-out accuracy (computed over the whole held-out set, the same on every rank)."""
    return (
        alt.Chart(evals, title="Held-out accuracy")
        .mark_line(point=True, color="#54A24B")
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("eval_accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            tooltip=[alt.Tooltip("step:Q"), alt.Tooltip("eval_accuracy:Q", format=".1%"), alt.Tooltip("eval_loss:Q", format=".4f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def memory_chart(latest: pd.DataFrame, cuda: bool = False) -> alt.Chart:
    """Stacked bars, one per rank: what each rank holds after the newest optimizer step."""
    data = memory_frame(latest, "step", cuda)
    divisor, unit = byte_unit(data.groupby("rank")["bytes"].sum().max() if not data.empty else 0)
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["bytes"] / divisor)
    return (
        alt.Chart(data, title="Memory per rank after the newest step")
        .mark_bar()
        .encode(
            x=alt.X("rank:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=unit, stack="zero"),
            color=_category_color(data["category"], legend_columns=2),
            order=alt.Order("category_order:Q"),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("category:N"), alt.Tooltip("amount:Q", title=unit, format=",.3f"),
                     alt.Tooltip("bytes:Q", format=",.0f")],
        )
        .transform_calculate(category_order=f"indexof({_category_order(data['category'])!r}, datum.category)")
        .properties(height=CHART_HEIGHT)
    )


def memory_over_steps_chart(train: pd.DataFrame, cuda: bool = False) -> alt.Chart:
    """Each rank's process memory over steps: RSS on CPU, CUDA allocated on GPU."""
    key, what = ("cuda_allocated_bytes", "CUDA allocated") if cuda else ("rss_bytes", "RSS")
    data = pd.DataFrame({"step": train["step"], "rank": _rank_label(train["rank"]), "bytes": train[key]})
    divisor, unit = byte_unit(data["bytes"].max() if not data.empty else 0)
    data["amount"] = data["bytes"] / divisor
    return (
        alt.Chart(data, title=f"{what} per rank over steps")
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("amount:Q", title=unit, scale=alt.Scale(zero=False)),
            color=alt.Color("rank:N", title=None, scale=_rank_colors(data["rank"]), legend=alt.Legend(orient="top")),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("step:Q"), alt.Tooltip("amount:Q", title=unit, format=",.2f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def _category_order(categories: pd.Series) -> list[str]:
    return [c for c in CATEGORY_COLORS if c in set(categories)]


def _category_color(categories: pd.Series, legend_columns: int | None = None) -> alt.Color:
    """Model-state categories in their fixed colours and order, legend on top (shared by the memory charts)."""
    order = _category_order(categories)
    legend = alt.Legend(orient="top", columns=legend_columns) if legend_columns else alt.Legend(orient="top")
    return alt.Color("category:N", title=None, scale=alt.Scale(domain=order, range=[CATEGORY_COLORS[c] for c in order]),
                     legend=legend)


def phase_chart(latest: pd.DataFrame) -> alt.Chart:
    """Model state after forward, after backward and after the optimizer step, one panel per rank."""
    data = phase_frame(latest)
    top = data.groupby(["rank", "phase"])["bytes"].sum().max() if not data.empty else 0
    divisor, unit = byte_unit(top)
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["bytes"] / divisor)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("phase:N", title="after", sort=list(PHASES.values()), axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=f"model state, {unit}", stack="zero"),
            color=_category_color(data["category"]),
            column=alt.Column("rank:N", title=None, header=alt.Header(labelFontSize=13, labelFontWeight="bold")),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("phase:N"), alt.Tooltip("category:N"), alt.Tooltip("amount:Q", title=unit, format=",.3f")],
        )
        .properties(height=CHART_HEIGHT - 40, width=alt.Step(95), title="Model state by phase of the newest step")
    )


def comm_chart(latest: pd.DataFrame, param_count: int | None, bytes_per_element: int = 4) -> alt.LayerChart:
    """Payload bytes of the newest step per rank, stacked by collective, labelled with the paper's multiple of Ψ."""
    data = comm_frame(latest, param_count, bytes_per_element)
    totals = data.groupby("rank", as_index=False).agg(bytes=("bytes", "sum"), psi_units=("psi_units", "sum"))
    divisor, unit = byte_unit(totals["bytes"].max() if not totals.empty else 0)
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["bytes"] / divisor)
    totals = totals.assign(rank=_rank_label(totals["rank"]), amount=totals["bytes"] / divisor,
                           label=totals["psi_units"].map(lambda u: f"{u:.2f} Ψ" if pd.notna(u) else ""))
    ops = list(dict.fromkeys([*[o for o in OP_COLORS if o in set(data["op"])], *sorted(set(data["op"]))]))
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("rank:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=f"payload per step, {unit}", stack="zero"),
            color=alt.Color("op:N", title=None, scale=alt.Scale(domain=ops, range=[OP_COLORS.get(o, "#9D755D") for o in ops]),
                            legend=alt.Legend(orient="top")),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("op:N"), alt.Tooltip("bytes:Q", format=",.0f", title="payload bytes"),
                     alt.Tooltip("psi_units:Q", format=".2f", title="paper units of Ψ")],
        )
    )
    labels = alt.Chart(totals).mark_text(dy=-8, fontSize=14, fontWeight="bold").encode(
        x=alt.X("rank:N", sort=None), y=alt.Y("amount:Q"), text=alt.Text("label:N")
    )
    return alt.layer(bars, labels).properties(title="Communication per step (payload, by collective)",
                                                         height=CHART_HEIGHT)


def cumulative_comm_chart(train: pd.DataFrame) -> alt.Chart:
    """Payload bytes sent since the start, per rank."""
    data = pd.DataFrame({"step": train["step"], "rank": _rank_label(train["rank"]),
                         "bytes": train.get("comm/cum_payload_bytes", pd.Series(dtype=float))})
    divisor, unit = byte_unit(data["bytes"].max() if not data.empty else 0)
    data["amount"] = data["bytes"] / divisor
    return (
        alt.Chart(data, title="Cumulative communication payload")
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("amount:Q", title=unit),
            color=alt.Color("rank:N", title=None, scale=_rank_colors(data["rank"]), legend=alt.Legend(orient="top")),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("step:Q"), alt.Tooltip("amount:Q", title=unit, format=",.2f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def throughput_chart(train: pd.DataFrame) -> alt.Chart:
    """Global samples per second (every rank reports the same global figure; rank 0's is drawn)."""
    rank0 = train[train["rank"] == train["rank"].min()]
    data = pd.DataFrame({"step": rank0["step"], "samples_per_s": rank0["samples_per_s"]})
    return (
        alt.Chart(data, title="Throughput (global samples/s)")
        .mark_line(color="#54A24B")
        .encode(x=alt.X("step:Q", title="step"), y=alt.Y("samples_per_s:Q", title="samples/s"),
                tooltip=[alt.Tooltip("step:Q"), alt.Tooltip("samples_per_s:Q", format=",.0f")])
        .properties(height=CHART_HEIGHT - 60)
    )


def step_time_chart(train: pd.DataFrame) -> alt.Chart:
    """Wall-clock time of each step, per rank, in milliseconds."""
    data = pd.DataFrame({"step": train["step"], "rank": _rank_label(train["rank"]),
                         "step_time_ms": train["step_time_s"] * 1000})
    return (
        alt.Chart(data, title="Step time")
        .mark_line()
        .encode(x=alt.X("step:Q", title="step"), y=alt.Y("step_time_ms:Q", title="ms per step"),
                color=alt.Color("rank:N", title=None, scale=_rank_colors(data["rank"]), legend=alt.Legend(orient="top")),
                tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("step:Q"), alt.Tooltip("step_time_ms:Q", format=",.1f")])
        .properties(height=CHART_HEIGHT - 60)
    )


# ---------- comparing runs ----------

RUN_PANEL_STEP = 80  # px per rank bar: a panel is wide enough to carry its run's name


def _panel_px(data: pd.DataFrame) -> int:
    return max(120, RUN_PANEL_STEP * (data["rank"].nunique() if not data.empty else 1))



def compare_loss_chart(trains: dict[str, pd.DataFrame]) -> alt.Chart:
    """The mean-over-ranks loss of several runs on one axis (DDP and every ZeRO stage should overlap)."""
    parts = []
    for label, train in trains.items():
        rank0 = train[train["rank"] == train["rank"].min()] if not train.empty else train
        parts.append(pd.DataFrame({"run": label, "step": rank0.get("step"), "loss": rank0.get("loss_global")}))
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "step", "loss"])
    return (
        alt.Chart(data, title="Loss (mean over ranks), runs overlaid")
        .mark_line(strokeWidth=2.5, opacity=0.8)
        .encode(x=alt.X("step:Q", title="step"), y=alt.Y("loss:Q", title="loss"),
                color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top", columns=1, labelLimit=400)),
                strokeDash=alt.StrokeDash("run:N", legend=None),
                tooltip=[alt.Tooltip("run:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".5f")])
        .properties(height=CHART_HEIGHT + 40)
    )


def compare_memory_chart(latests: dict[str, pd.DataFrame]) -> alt.Chart:
    """Model state per rank after the newest step, one panel per run, on one shared axis."""
    parts = [memory_frame(latest).assign(run=label) for label, latest in latests.items()]
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["rank", "category", "bytes", "run"])
    data = data[~data["category"].isin([OTHER_LABEL, OTHER_LABEL_CUDA])]  # compare model state; RSS noise hides it
    divisor, unit = byte_unit(data.groupby(["run", "rank"])["bytes"].sum().max() if not data.empty else 0)
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["bytes"] / divisor)
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("rank:N", title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=f"model state, {unit}", stack="zero"),
            color=_category_color(data["category"]),
            column=alt.Column("run:N", title=None, header=alt.Header(labelFontSize=12, labelLimit=_panel_px(data))),
            tooltip=[alt.Tooltip("run:N"), alt.Tooltip("rank:N"), alt.Tooltip("category:N"), alt.Tooltip("amount:Q", title=unit, format=",.3f")],
        )
        .properties(height=CHART_HEIGHT, width=alt.Step(RUN_PANEL_STEP), title="Model state per rank")
    )


def compare_comm_chart(latests: dict[str, pd.DataFrame], param_counts: dict[str, int | None],
                       bytes_per_element: dict[str, int]) -> alt.Chart:
    """Payload per step per rank, one panel per run, stacked by collective."""
    parts = [comm_frame(latest, param_counts.get(label), bytes_per_element.get(label, 4)).assign(run=label)
             for label, latest in latests.items()]
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["rank", "op", "bytes", "psi_units", "run"])
    divisor, unit = byte_unit(data.groupby(["run", "rank"])["bytes"].sum().max() if not data.empty else 0)
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["bytes"] / divisor)
    ops = [o for o in OP_COLORS if o in set(data["op"])] + sorted(set(data["op"]) - set(OP_COLORS))
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("rank:N", title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=f"payload per step, {unit}", stack="zero"),
            color=alt.Color("op:N", title=None, scale=alt.Scale(domain=ops, range=[OP_COLORS.get(o, "#9D755D") for o in ops]),
                            legend=alt.Legend(orient="top")),
            column=alt.Column("run:N", title=None, header=alt.Header(labelFontSize=12, labelLimit=_panel_px(data))),
            tooltip=[alt.Tooltip("run:N"), alt.Tooltip("rank:N"), alt.Tooltip("op:N"), alt.Tooltip("bytes:Q", format=",.0f"),
                     alt.Tooltip("psi_units:Q", format=".2f", title="paper units of Ψ")],
        )
        .properties(height=CHART_HEIGHT, width=alt.Step(RUN_PANEL_STEP), title="Communication per step")
    )


# ---------- the Learn page's picture ----------

STAGE_SHARDS = {  # stage -> which model-state parts each rank keeps only a 1/N shard of
    "DDP": (),
    "ZeRO-1": ("optimizer state",),
    "ZeRO-2": ("optimizer state", "gradients"),
    "ZeRO-3": ("optimizer state", "gradients", "parameters"),
}
PARTS = ("parameters", "gradients", "optimizer state")


def shard_layout_frame(n_ranks: int) -> pd.DataFrame:
    """stage, rank, part, holding ('full copy' or 'shard k of N') for the Learn page's grid."""
    rows = []
    for stage, sharded in STAGE_SHARDS.items():
        for rank in range(n_ranks):
            for part in PARTS:
                full = part not in sharded
                rows.append({"stage": stage, "rank": f"rank {rank}", "part": part,
                             "holding": "full copy" if full else "1/N shard",
                             "label": "full" if full else f"{rank + 1}/{n_ranks}"})
    return pd.DataFrame(rows)


def shard_layout_chart(n_ranks: int) -> alt.FacetChart:
    """Ranks x {parameters, gradients, optimizer state}, shaded full copy or shard, one panel per stage."""
    data = shard_layout_frame(n_ranks)
    base = alt.Chart().encode(
        x=alt.X("part:N", title=None, sort=list(PARTS), axis=alt.Axis(labelAngle=-30, orient="top")),
        y=alt.Y("rank:N", title=None, sort=None),
    )
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("holding:N", title=None, scale=alt.Scale(domain=["full copy", "1/N shard"],
                                                                 range=["#4C78A8", "#F2CF5B"]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("stage:N"), alt.Tooltip("rank:N"), alt.Tooltip("part:N"), alt.Tooltip("holding:N")],
    )
    text = base.mark_text(fontSize=12, color="black").encode(text=alt.Text("label:N"))
    return (
        alt.layer(cells, text, data=data)
        .properties(width=alt.Step(70), height=alt.Step(28))
        .facet(column=alt.Column("stage:N", title=None, sort=list(STAGE_SHARDS),
                                 header=alt.Header(labelFontSize=14, labelFontWeight="bold", labelOrient="bottom")))
    )
