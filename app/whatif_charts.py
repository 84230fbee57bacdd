"""Chart builders of the What-if page: pure functions from the estimator's rows (in bytes) to Altair charts.

Each chart converts bytes to one display unit (engine.units: binary GiB = 2^30, or the ZeRO paper's
decimal GB) chosen from the bars themselves, and names it in the axis title. A GPU's capacity is drawn
as a rule only when it is on the bars' scale; far above them it is named in the subtitle instead, so
small bars never shrink to nothing against an 80 GiB axis. No streamlit here.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from engine.units import display_unit, format_bytes, unit_note

TERM_COLORS = {  # the estimator's term names -> colours shared with the run charts where they overlap
    "parameters": "#4C78A8",
    "gradients": "#F58518",
    "optimizer state": "#E45756",
    "master weights": "#72B7B2",
    "gathered layers (ZeRO-3)": "#9D755D",
    "activations": "#54A24B",
    "communication buffers": "#B279A2",
    "allocator reserve": "#D6C6B9",
    "framework/CUDA context": "#BAB0AC",
}
STAGE_ORDER = ["DDP (stage 0)", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
STAGE_COLORS = ["#4C78A8", "#F58518", "#E45756", "#54A24B"]  # four hues a reader tells apart at a glance
CHART_HEIGHT = 300
RULE_SCALE = 3  # draw the capacity rule when it is at most this many times the tallest bar
BAR_TITLE = "Memory per GPU by stage"
LINE_TITLE = "Memory per GPU vs GPUs"
COMPARE_TITLE = "Model state per rank: predicted vs measured"


TITLE_PADDING = {"top": 12, "left": 5, "right": 5, "bottom": 5}  # room above the title: Streamlit crops a flush one


def _title(text: str, subtitle: str) -> alt.TitleParams:
    return alt.TitleParams(text, subtitle=["the busiest rank", subtitle] if subtitle else "the busiest rank", anchor="start")


def _capacity_layer(capacity_bytes: int | None, divisor: float, label: str, top: float):
    """(rule layer or None, subtitle): the rule when capacity is on the bars' scale, else a subtitle line."""
    if capacity_bytes is None:
        return None, ""
    value = capacity_bytes / divisor
    if value > RULE_SCALE * top:
        return None, f"{label} ({format_bytes(capacity_bytes)}) is far above these bars"
    frame = pd.DataFrame({"capacity": [value], "label": [label]})
    rule = alt.Chart(frame).mark_rule(color="black", strokeDash=[6, 3]).encode(y="capacity:Q")
    text = alt.Chart(frame).mark_text(align="left", dx=4, dy=-6).encode(y="capacity:Q", text="label:N", x=alt.value(0))
    return rule + text, f"dashed: {label}"


def stage_bar_chart(
    terms: pd.DataFrame, capacity_bytes: int | None = None, gpu_label: str = "GPU", decimal: bool = False
) -> alt.Chart:
    """Stacked bar per stage (columns: stage, term, bytes), with the GPU's capacity as a dashed rule."""
    frame = terms[terms["bytes"] > 0].copy()
    top_bytes = max([*frame.groupby("stage")["bytes"].sum().tolist(), 1])
    divisor, unit = display_unit(top_bytes, decimal)
    frame["value"] = frame["bytes"] / divisor
    terms_present = [t for t in TERM_COLORS if t in set(frame["term"])]
    frame["order"] = frame["term"].map({t: i for i, t in enumerate(TERM_COLORS)})
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("stage:N", sort=STAGE_ORDER, title=None),
            y=alt.Y("value:Q", stack="zero", title=f"per GPU ({unit_note(unit)})"),
            color=alt.Color(
                "term:N",
                scale=alt.Scale(domain=terms_present, range=[TERM_COLORS[t] for t in terms_present]),
                title="term",
            ),
            order=alt.Order("order:Q"),
            tooltip=["stage:N", "term:N", alt.Tooltip("value:Q", title=unit, format=",.3f"), alt.Tooltip("bytes:Q", format=",")],
        )
        .properties(height=CHART_HEIGHT)
    )
    rule, subtitle = _capacity_layer(capacity_bytes, divisor, gpu_label, top_bytes / divisor)
    chart = (bars + rule) if rule is not None else bars
    return chart.properties(title=_title(BAR_TITLE, subtitle), padding=TITLE_PADDING)


def ranks_line_chart(
    curve: pd.DataFrame, capacity_bytes: int | None = None, gpu_label: str = "GPU", decimal: bool = False
) -> alt.Chart:
    """Per-GPU memory vs number of GPUs (columns: stage, ranks, total_bytes), both axes logarithmic."""
    frame = curve.copy()
    top_bytes = max([*frame["total_bytes"].tolist(), 1])
    divisor, unit = display_unit(top_bytes, decimal)
    frame["value"] = frame["total_bytes"] / divisor
    lines = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("ranks:Q", scale=alt.Scale(type="log", base=2), title="GPUs (N, log scale)"),
            y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=f"per GPU ({unit_note(unit)}, log)"),
            color=alt.Color("stage:N", scale=alt.Scale(domain=STAGE_ORDER, range=STAGE_COLORS), title="stage"),
            tooltip=["stage:N", "ranks:Q", alt.Tooltip("value:Q", title=unit, format=",.3f")],
        )
        .properties(height=CHART_HEIGHT)
    )
    rule, subtitle = _capacity_layer(capacity_bytes, divisor, gpu_label, top_bytes / divisor)
    chart = (lines + rule) if rule is not None else lines
    return chart.properties(title=_title(LINE_TITLE, subtitle), padding=TITLE_PADDING)


def predicted_vs_measured_chart(rows: pd.DataFrame) -> alt.Chart:
    """Per rank and category, predicted beside measured bytes (columns of estimate.compare_with_measured)."""
    frame = rows[rows["category"] != "total"].melt(
        id_vars=["rank", "category"], value_vars=["predicted_bytes", "measured_bytes"], var_name="source", value_name="bytes"
    )
    frame["source"] = frame["source"].map({"predicted_bytes": "predicted", "measured_bytes": "measured"})
    divisor, unit = display_unit(max([*frame["bytes"].fillna(0).tolist(), 1]))
    frame["value"] = frame["bytes"] / divisor
    return (
        alt.Chart(frame, title=COMPARE_TITLE)
        .mark_bar()
        .encode(
            x=alt.X("source:N", title=None),
            y=alt.Y("value:Q", stack="zero", title=f"bytes ({unit_note(unit)})"),
            color=alt.Color("category:N", title="category"),
            column=alt.Column("rank:O", title="rank"),
            tooltip=["rank:O", "category:N", "source:N", alt.Tooltip("bytes:Q", format=",")],
        )
        .properties(height=CHART_HEIGHT - 60, width=90)
    )
