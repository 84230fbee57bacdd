"""Chart builders: pure functions from the contract's metric frames to Altair charts (no streamlit).

Frames are in bytes, as recorded; each chart converts to one display unit picked by engine.units from
its largest value and says what the unit means in the axis title. Communication is drawn as traffic in
the ZeRO paper's convention (an all-reduce counts twice its payload); the raw payload per collective
stays in the tooltips and in the metrics CSV. Every chart fits a 1,280 px window at 2 to 8 ranks:
per-rank and per-run panels wrap into rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from engine import runstore
from engine.compare import traffic_bytes  # the ZeRO paper's convention, defined once
from engine.units import display_unit, unit_note

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
PHASES = {"forward": "forward", "backward": "backward", "step": "step"}  # state read after each (step: optimizer step)
OP_COLORS = {"all_reduce": "#4C78A8", "broadcast": "#54A24B", "all_gather": "#B279A2", "reduce_scatter": "#F58518"}
TRAFFIC_NOTE = "ZeRO paper convention: an all-reduce counts twice its payload"
MEAN_LABEL = "mean over ranks"
CHART_HEIGHT = 300
STEP_AXIS = alt.Axis(tickMinStep=1, format="d")  # steps are whole: no "1.5" ticks while a run has few steps
RANK_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D", "#FF9DA6"]
# Runs compared on one axis: distinct hues (Streamlit's own palette starts with two blues).
RUN_COLORS = ["#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#17BECF"]
# Width a chart may take beside the sidebar in a 1,280 px window; faceted panels wrap into rows beyond it.
PANEL_BUDGET_PX = 820  # measured: the main column is 820 px wide at 1,280 px with the sidebar open
PANEL_GAP_PX = 40  # padding between panels; the shared y axis is drawn once per row
# Measured in Chromium: a header may run PANEL_GAP_PX past its panel, Vega-Lite adds its 20 px facet spacing,
# and the row's y axis with its title takes about 60 px. Six 2-rank runs came to 930 px without these.
FACET_SPACING_PX = 20
AXIS_PX = 60


# A loss axis spans at least this much of the loss (or of 1, for a loss below 1). Flat curves (one step logged,
# or runs that all sit at one value) give a zero-width domain, and Vega then draws one tick labelled with the
# value rounded ('2' for 2.3026).
LOSS_MIN_SPAN = 1e-3


def loss_scale(losses: pd.Series) -> alt.Scale:
    """A y scale fitted to the curves (not from zero) that never collapses to one tick: a span narrower than
    LOSS_MIN_SPAN is widened about its middle, so the axis shows ticks above and below the curves."""
    values = pd.to_numeric(pd.Series(losses), errors="coerce").astype(float)
    values = values[np.isfinite(values)]  # NaN and a diverged run's inf draw no point
    if values.empty:
        return alt.Scale(zero=False)
    low, high = float(values.min()), float(values.max())
    middle = (low + high) / 2
    floor = LOSS_MIN_SPAN * max(abs(middle), 1.0)
    if high - low >= floor:
        return alt.Scale(zero=False)
    return alt.Scale(zero=False, domain=[middle - floor / 2, middle + floor / 2])


def byte_axis(max_bytes: float, what: str) -> tuple[int, str]:
    """(divisor, axis title) for bytes: the unit engine.units picks for the largest value, and what it means."""
    divisor, name = display_unit(max_bytes if pd.notna(max_bytes) else 0)
    return divisor, f"{what} ({unit_note(name)})"


def _wrap_columns(panel_px: int) -> int:
    """How many panels of this width fit side by side in the chart budget."""
    return max(1, (PANEL_BUDGET_PX - AXIS_PX) // (panel_px + PANEL_GAP_PX + FACET_SPACING_PX))


def _rank_step_px(n_ranks: int) -> int:
    """Bar width per rank: narrower when there are many ranks, so 8 still fit."""
    return 44 if n_ranks <= 4 else 28


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


LIVE_ROWS = "rows"  # the one dataset name every live chart's spec refers to (live_spec)
# Width fits the column, height is the plot's own: under Streamlit's default ("fit" both ways) a legend on top
# takes its height from the plot, and two charts side by side, one with a legend, got plots of unequal height
# (the step-time plot beside throughput shrank to a 90 px strip).
PLOT_HEIGHT_FIXED = {"type": "fit-x", "contains": "padding"}
ALTAIR_THEME_VIEW = ("continuousWidth", "continuousHeight")  # Altair's default theme; Streamlit draws without it


def live_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart as a Vega-Lite spec whose rows travel beside it under one fixed dataset name.

    st.altair_chart names a chart's dataset after a hash of its rows, so every refresh that adds a step
    changes the spec, and the browser compiles and lays out the chart again from nothing (the run view's
    charts cost a loaded 2-core machine about a second that way). With the name fixed, the spec is
    byte-identical from refresh to refresh while only rows change, and Streamlit's frontend puts the new
    rows into the chart already drawn. Pass the result to st.vega_lite_chart(spec=...)."""
    if not isinstance(chart.data, pd.DataFrame):
        raise TypeError("live_spec needs a chart whose rows are one DataFrame at its top level")
    bare = chart.copy(deep=False)
    bare.data = alt.NamedData(name=LIVE_ROWS)
    spec = bare.to_dict()
    view = spec.get("config", {}).get("view", {})
    for key in ALTAIR_THEME_VIEW:
        view.pop(key, None)
    if "config" in spec and not view:
        spec["config"].pop("view", None)
        if not spec["config"]:
            del spec["config"]
    if "facet" not in spec:  # a facet chart keeps its natural size; Streamlit lays it out as content
        spec.setdefault("autosize", PLOT_HEIGHT_FIXED)
    spec["datasets"] = {LIVE_ROWS: chart.data}
    return spec


# ---------- shaping (pure pandas, tested on their own) ----------


def loss_frame(train: pd.DataFrame) -> pd.DataFrame:
    """Long form: step, series ('rank r' or the mean over ranks), loss (no rows before the first step)."""
    if train.empty:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "series": pd.Series(dtype=object),
                             "loss": pd.Series(dtype="float64")})
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


def comm_ops(frame: pd.DataFrame) -> list[str]:
    """Collectives recorded in a frame (from the `comm/<op>/bytes` keys)."""
    return sorted({k.split("/")[1] for k in frame.columns if k.startswith("comm/") and k.endswith("/bytes")})


def comm_frame(latest: pd.DataFrame, param_count: int | None, bytes_per_element: int = 4) -> pd.DataFrame:
    """Long form per rank and collective: payload bytes this step, traffic bytes and the paper's multiple of Ψ.

    traffic_bytes = weight x payload (weight 2 for all-reduce, else 1); psi_units = traffic / (Ψ x bytes_per_element).
    """
    ops = comm_ops(latest)
    psi_bytes = param_count * bytes_per_element if param_count else None
    rows = []
    for _, rec in latest.iterrows():
        for op in ops:
            payload = rec.get(f"comm/{op}/bytes")
            if pd.isna(payload) or not payload:
                continue
            traffic = traffic_bytes(op, float(payload))
            rows.append({"rank": int(rec["rank"]), "op": op, "bytes": float(payload), "traffic_bytes": traffic,
                         "psi_units": traffic / psi_bytes if psi_bytes else None})
    return pd.DataFrame(rows, columns=["rank", "op", "bytes", "traffic_bytes", "psi_units"])


def cumulative_traffic_frame(train: pd.DataFrame) -> pd.DataFrame:
    """step, rank, cumulative payload bytes and cumulative traffic bytes (paper convention).

    The worker records the cumulative payload; each record's own traffic/payload ratio turns it into
    traffic. That is exact because a strategy issues the same collectives every step.
    """
    ops = comm_ops(train)
    payload = train[[f"comm/{op}/bytes" for op in ops]].fillna(0).sum(axis=1) if ops else pd.Series(0.0, index=train.index)
    traffic = sum((traffic_bytes(op, 1.0) * train[f"comm/{op}/bytes"].fillna(0) for op in ops),
                  pd.Series(0.0, index=train.index))
    ratio = (traffic / payload.where(payload > 0)).fillna(1.0)
    cum_payload = train["comm/cum_payload_bytes"] if "comm/cum_payload_bytes" in train else pd.Series(float("nan"), index=train.index)
    return pd.DataFrame({"step": train["step"], "rank": train["rank"], "payload_bytes": cum_payload,
                         "traffic_bytes": cum_payload * ratio}, index=train.index)


def comm_psi_total(latest: pd.DataFrame, param_count: int | None, bytes_per_element: int = 4) -> float | None:
    """The newest step's traffic per rank in the paper's units of Ψ (rank 0's; every rank moves the same)."""
    frame = comm_frame(latest, param_count, bytes_per_element)
    if frame.empty or frame["psi_units"].isna().all():
        return None
    return float(frame[frame["rank"] == frame["rank"].min()]["psi_units"].sum())


def comm_traffic_total(latest: pd.DataFrame) -> float | None:
    """The newest step's traffic per rank in bytes, paper convention (rank 0's; every rank moves the same)."""
    frame = comm_frame(latest, None)
    if frame.empty:
        return None
    return float(frame[frame["rank"] == frame["rank"].min()]["traffic_bytes"].sum())


# ---------- charts ----------


def loss_chart(train: pd.DataFrame, ranks: Sequence[int] | None = None) -> alt.Chart:
    """Loss vs step: a line per rank (its own slice of the batch) and a dashed one for the mean over ranks.
    `ranks` (the run's, from its spec) fixes the legend before every rank has logged, so the chart's spec is
    the same from the empty frame laid out while the ranks start to the last step."""
    data = loss_frame(train)
    ranks = sorted(set(int(r) for r in (train["rank"].unique() if ranks is None else ranks)))
    series = alt.Color("series:N", title=None, scale=_rank_scale(ranks),
                       legend=_rank_legend(pd.Series([f"rank {r}" for r in ranks], dtype=object), extra=1))
    return (
        alt.Chart(data, title="Training loss")
        .mark_line(strokeWidth=2)
        .encode(
            x=alt.X("step:Q", title="step", axis=STEP_AXIS),
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
            x=alt.X("step:Q", title="step", axis=STEP_AXIS),
            y=alt.Y("eval_accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            tooltip=[alt.Tooltip("step:Q"), alt.Tooltip("eval_accuracy:Q", format=".1%"), alt.Tooltip("eval_loss:Q", format=".4f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def memory_chart(latest: pd.DataFrame, cuda: bool = False) -> alt.Chart:
    """Stacked bars, one per rank: what each rank holds after the newest optimizer step."""
    data = memory_frame(latest, "step", cuda)
    divisor, unit = byte_axis(data.groupby("rank")["bytes"].sum().max() if not data.empty else 0, "memory")
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
    divisor, unit = byte_axis(data["bytes"].max() if not data.empty else 0, what)
    data["amount"] = data["bytes"] / divisor
    return (
        alt.Chart(data, title=f"{what} per rank over steps")
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step", axis=STEP_AXIS),
            # From zero: a 0.2 MiB wobble on 311 MiB must not look like growth.
            y=alt.Y("amount:Q", title=unit, scale=alt.Scale(zero=True)),
            color=alt.Color("rank:N", title=None, scale=_rank_colors(data["rank"]), legend=_rank_legend(data["rank"])),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("step:Q"), alt.Tooltip("amount:Q", title=unit, format=",.2f")],
        )
        .properties(height=CHART_HEIGHT)
    )


def _category_order(categories: pd.Series) -> list[str]:
    return [c for c in CATEGORY_COLORS if c in set(categories)]


def _category_color(categories: pd.Series, legend_columns: int | None = None) -> alt.Color:
    """Model-state categories in their fixed colours and order, legend on top (shared by the memory charts)."""
    order = _category_order(categories)
    legend = (alt.Legend(orient="top", columns=legend_columns, labelLimit=400) if legend_columns
              else alt.Legend(orient="top", labelLimit=400))  # "master params (ZeRO-2 shards)" in full
    return alt.Color("category:N", title=None, scale=alt.Scale(domain=order, range=[CATEGORY_COLORS[c] for c in order]),
                     legend=legend)


def phase_chart(latest: pd.DataFrame) -> alt.FacetChart:
    """Model state after forward, after backward and after the optimizer step, one panel per rank (wrapping)."""
    data = phase_frame(latest)
    top = data.groupby(["rank", "phase"])["bytes"].sum().max() if not data.empty else 0
    divisor, unit = byte_axis(top, "model state")
    ranks = sorted(data["rank"].unique()) if not data.empty else [0]
    step_px = 50
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["bytes"] / divisor)
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            # Angled: level labels three to a 150 px panel would drop "backward" as overlapping.
            x=alt.X("phase:N", title="after", sort=list(PHASES.values()), axis=alt.Axis(labelAngle=-30, labelOverlap=False)),
            y=alt.Y("amount:Q", title=unit, stack="zero"),
            color=_category_color(data["category"]),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("phase:N"), alt.Tooltip("category:N"),
                     alt.Tooltip("amount:Q", title=unit, format=",.3f"), alt.Tooltip("bytes:Q", format=",.0f")],
        )
        .properties(height=CHART_HEIGHT - 110, width=alt.Step(step_px))
    )
    return alt.FacetChart(
        data=data, spec=bars,
        facet=alt.Facet("rank:N", title=None, sort=[f"rank {r}" for r in ranks],
                        header=alt.Header(labelFontSize=13, labelFontWeight="bold")),
        columns=_wrap_columns(step_px * len(PHASES)),
        title="Model state by phase of the newest step",
    )


def comm_chart(latest: pd.DataFrame, param_count: int | None, bytes_per_element: int = 4) -> alt.LayerChart:
    """Traffic of the newest step per rank (paper convention), stacked by collective, labelled in units of Ψ."""
    data = comm_frame(latest, param_count, bytes_per_element)
    totals = data.groupby("rank", as_index=False).agg(traffic_bytes=("traffic_bytes", "sum"), psi_units=("psi_units", "sum"))
    divisor, unit = byte_axis(totals["traffic_bytes"].max() if not totals.empty else 0, "traffic per step")
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["traffic_bytes"] / divisor)
    totals = totals.assign(rank=_rank_label(totals["rank"]), amount=totals["traffic_bytes"] / divisor,
                           label=totals["psi_units"].map(lambda u: f"{u:.2f} Ψ" if pd.notna(u) and u else ""))
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("rank:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=unit, stack="zero"),
            color=_op_color(data["op"]),
            tooltip=_comm_tooltip(unit),
        )
    )
    labels = alt.Chart(totals).mark_text(dy=-8, fontSize=14 if len(totals) <= 4 else 11, fontWeight="bold").encode(
        x=alt.X("rank:N", sort=None), y=alt.Y("amount:Q"), text=alt.Text("label:N")
    )
    return alt.layer(bars, labels).properties(
        title=alt.Title("Traffic per step, by collective", subtitle=TRAFFIC_NOTE), height=CHART_HEIGHT,
        autosize=alt.AutoSizeParams(**PLOT_HEIGHT_FIXED),  # as live_spec's charts: its neighbour's plot height
    )


def _op_color(ops: pd.Series) -> alt.Color:
    present = set(ops)
    order = [o for o in OP_COLORS if o in present] + sorted(present - set(OP_COLORS))
    return alt.Color("op:N", title=None, scale=alt.Scale(domain=order, range=[OP_COLORS.get(o, "#9D755D") for o in order]),
                     legend=alt.Legend(orient="top"))


def _comm_tooltip(unit: str, run: bool = False) -> list:
    """Traffic as drawn, and the raw payload each rank handed to the collective."""
    return [*([alt.Tooltip("run:N")] if run else []), alt.Tooltip("rank:N"), alt.Tooltip("op:N"),
            alt.Tooltip("amount:Q", title=unit, format=",.3f"),
            alt.Tooltip("traffic_bytes:Q", format=",.0f", title="traffic bytes (all-reduce ×2)"),
            alt.Tooltip("bytes:Q", format=",.0f", title="payload bytes (raw)"),
            alt.Tooltip("psi_units:Q", format=".2f", title="units of Ψ")]


def cumulative_comm_chart(train: pd.DataFrame) -> alt.Chart:
    """Traffic since the start, per rank, in the paper's convention (raw payload in the tooltip)."""
    data = cumulative_traffic_frame(train)
    divisor, unit = byte_axis(data["traffic_bytes"].max() if not data.empty else 0, "traffic since start")
    data = data.assign(rank=_rank_label(data["rank"]), amount=data["traffic_bytes"] / divisor)
    return (
        alt.Chart(data, title=alt.Title("Cumulative traffic", subtitle=TRAFFIC_NOTE))
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step", axis=STEP_AXIS),
            y=alt.Y("amount:Q", title=unit),
            color=alt.Color("rank:N", title=None, scale=_rank_colors(data["rank"]), legend=_rank_legend(data["rank"])),
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("step:Q"), alt.Tooltip("amount:Q", title=unit, format=",.2f"),
                     alt.Tooltip("payload_bytes:Q", format=",.0f", title="payload bytes (raw)")],
        )
        .properties(height=CHART_HEIGHT)
    )


def _rank_legend(labels: pd.Series, extra: int = 0) -> alt.Legend:
    """A legend on top that wraps into two rows rather than running off a half-width chart at 8 ranks."""
    n = labels.nunique() + extra
    return alt.Legend(orient="top", columns=n if n <= 5 else (n + 1) // 2, symbolStrokeWidth=3)


def throughput_chart(train: pd.DataFrame) -> alt.Chart:
    """Global samples per second (every rank reports the same global figure; rank 0's is drawn)."""
    rank0 = train[train["rank"] == train["rank"].min()]
    data = pd.DataFrame({"step": rank0["step"], "samples_per_s": rank0["samples_per_s"]})
    return (
        alt.Chart(data, title="Throughput (global samples/s)")
        .mark_line(color="#54A24B")
        .encode(x=alt.X("step:Q", title="step", axis=STEP_AXIS), y=alt.Y("samples_per_s:Q", title="samples/s"),
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
        .encode(x=alt.X("step:Q", title="step", axis=STEP_AXIS), y=alt.Y("step_time_ms:Q", title="ms per step"),
                color=alt.Color("rank:N", title=None, scale=_rank_colors(data["rank"]), legend=_rank_legend(data["rank"])),
                tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("step:Q"), alt.Tooltip("step_time_ms:Q", format=",.1f")])
        .properties(height=CHART_HEIGHT - 60)
    )


# ---------- comparing runs ----------


def compare_loss_chart(trains: dict[str, pd.DataFrame]) -> alt.Chart:
    """The mean-over-ranks loss of several runs on one axis (DDP and every ZeRO stage should overlap).

    A run without a training step yet (cancelled early, failed at start, still starting) adds no line.
    """
    parts = []
    for label, train in trains.items():
        if train.empty or "loss_global" not in train:
            continue
        rank0 = train[train["rank"] == train["rank"].min()]
        parts.append(pd.DataFrame({"run": label, "step": rank0["step"], "loss": rank0["loss_global"]}))
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "step", "loss"])
    labels = list(trains)
    return (
        alt.Chart(data, title="Loss (mean over ranks), runs overlaid")
        .mark_line(strokeWidth=2.5, opacity=0.85)
        .encode(x=alt.X("step:Q", title="step", axis=STEP_AXIS),
                y=alt.Y("loss:Q", title="loss (cross-entropy)", scale=loss_scale(data["loss"])),  # fit the curves
                color=alt.Color("run:N", title=None, scale=alt.Scale(domain=labels, range=_run_colors(labels)),
                                legend=alt.Legend(orient="top", columns=1, labelLimit=400)),
                strokeDash=alt.StrokeDash("run:N", legend=None),  # identical curves overlap: dashes show both
                tooltip=[alt.Tooltip("run:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".5f")])
        .properties(height=CHART_HEIGHT + 40)
    )


def _run_colors(labels: list[str]) -> list[str]:
    return [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(labels))]


def _run_facet(data: pd.DataFrame, runs: list[str], panel_px: int) -> dict:
    """One panel per run, wrapping into rows, each headed by the run's name."""
    return dict(facet=alt.Facet("run:N", title=None, sort=runs, header=alt.Header(labelFontSize=12, labelLimit=panel_px + 40)),
                columns=_wrap_columns(panel_px))


def compare_memory_chart(latests: dict[str, pd.DataFrame]) -> alt.FacetChart:
    """Model state per rank after the newest step, one panel per run, on one shared axis."""
    parts = [memory_frame(latest).assign(run=label) for label, latest in latests.items()]
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["rank", "category", "bytes", "run"])
    data = data[~data["category"].isin([OTHER_LABEL, OTHER_LABEL_CUDA])]  # compare model state; RSS noise hides it
    divisor, unit = byte_axis(data.groupby(["run", "rank"])["bytes"].sum().max() if not data.empty else 0, "model state")
    n_ranks = max(1, data["rank"].nunique())
    step_px = _rank_step_px(n_ranks)
    data = data.assign(rank=data["rank"].astype(int), amount=data["bytes"] / divisor)
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=alt.X("rank:O", title="rank", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("amount:Q", title=unit, stack="zero"),
            color=_category_color(data["category"]),
            tooltip=[alt.Tooltip("run:N"), alt.Tooltip("rank:O"), alt.Tooltip("category:N"),
                     alt.Tooltip("amount:Q", title=unit, format=",.3f"), alt.Tooltip("bytes:Q", format=",.0f")],
        )
        .properties(height=CHART_HEIGHT - 60, width=alt.Step(step_px))
    )
    return alt.FacetChart(data=data, spec=bars, title="Model state per rank",
                          **_run_facet(data, list(latests), step_px * n_ranks))


def compare_comm_chart(latests: dict[str, pd.DataFrame], param_counts: dict[str, int | None],
                       bytes_per_element: dict[str, int]) -> alt.FacetChart:
    """Traffic per step per rank (paper convention), one panel per run, stacked by collective, totals in Ψ."""
    parts = [comm_frame(latest, param_counts.get(label), bytes_per_element.get(label, 4)).assign(run=label)
             for label, latest in latests.items()]
    columns = ["rank", "op", "bytes", "traffic_bytes", "psi_units", "run"]
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    divisor, unit = byte_axis(data.groupby(["run", "rank"])["traffic_bytes"].sum().max() if not data.empty else 0,
                              "traffic per step")
    n_ranks = max(1, data["rank"].nunique())
    step_px = _rank_step_px(n_ranks)
    data = data.assign(rank=data["rank"].astype(int), amount=data["traffic_bytes"] / divisor)
    bars = alt.Chart().mark_bar().encode(
        x=alt.X("rank:O", title="rank", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("amount:Q", title=unit, stack="zero"),
        color=_op_color(data["op"]),
        tooltip=_comm_tooltip(unit, run=True),
    )
    totals = (
        alt.Chart()
        .transform_aggregate(total="sum(amount)", psi="sum(psi_units)", groupby=["run", "rank"])
        .transform_calculate(label="datum.psi > 0 ? format(datum.psi, '.1f') + ' Ψ' : ''")
        .mark_text(dy=-7, fontSize=11 if n_ranks <= 4 else 9, fontWeight="bold")
        .encode(x=alt.X("rank:O"), y=alt.Y("total:Q"), text=alt.Text("label:N"))
    )
    return alt.FacetChart(
        data=data, spec=alt.LayerChart(layer=[bars, totals]).properties(height=CHART_HEIGHT - 60, width=alt.Step(step_px)),
        title=alt.Title("Traffic per step", subtitle=TRAFFIC_NOTE),
        **_run_facet(data, list(latests), step_px * n_ranks),
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
        .properties(width=alt.Step(52), height=alt.Step(28))  # four stages side by side fit a 1,280 px window
        .facet(column=alt.Column("stage:N", title=None, sort=list(STAGE_SHARDS),
                                 header=alt.Header(labelFontSize=14, labelFontWeight="bold", labelOrient="bottom")))
    )
