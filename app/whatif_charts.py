"""Chart builders of the What-if page: pure functions from the estimator's rows (in bytes) to Altair charts.

Each chart converts bytes to one display unit, binary (GiB = 2^30) or the ZeRO paper's decimal
GB (1e9), and names it in the axis title. No streamlit here.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

TERM_COLORS = {  # the estimator's term names -> colours shared with the run charts where they overlap
    "parameters": "#4C78A8",
    "gradients": "#F58518",
    "optimizer state": "#E45756",
    "master weights": "#72B7B2",
    "activations": "#54A24B",
    "framework/CUDA context": "#BAB0AC",
    "communication buffers": "#B279A2",
}
STAGE_ORDER = ["DDP (stage 0)", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
STAGE_COLORS = ["#4C78A8", "#F58518", "#E45756", "#54A24B"]  # four hues a reader tells apart at a glance
CHART_HEIGHT = 300


def display_unit(max_bytes: float, decimal: bool = False) -> tuple[float, str]:
    """(divisor, name) keeping the largest value readable: KiB..TiB, or kB..TB when decimal."""
    steps = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")] if decimal else [
        (2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB")]
    for divisor, name in steps:
        if max_bytes >= divisor:
            return divisor, name
    return 1.0, "bytes"


def _unit_note(unit: str) -> str:
    return {"GiB": "GiB = 2^30 bytes", "GB": "GB = 1e9 bytes"}.get(unit, unit)


def _capacity_rule(capacity_bytes: int | None, divisor: float, label: str) -> alt.Chart | None:
    if capacity_bytes is None:
        return None
    frame = pd.DataFrame({"capacity": [capacity_bytes / divisor], "label": [label]})
    rule = alt.Chart(frame).mark_rule(color="black", strokeDash=[6, 3]).encode(y="capacity:Q")
    text = alt.Chart(frame).mark_text(align="left", dx=4, dy=-6).encode(y="capacity:Q", text="label:N", x=alt.value(0))
    return rule + text


def stage_bar_chart(
    terms: pd.DataFrame, capacity_bytes: int | None = None, gpu_label: str = "GPU", decimal: bool = False
) -> alt.Chart:
    """Stacked bar per stage (columns: stage, term, bytes), with the GPU's capacity as a dashed rule."""
    frame = terms[terms["bytes"] > 0].copy()
    totals = frame.groupby("stage")["bytes"].sum()
    divisor, unit = display_unit(max([*totals.tolist(), capacity_bytes or 0, 1]), decimal)
    frame["value"] = frame["bytes"] / divisor
    terms_present = [t for t in TERM_COLORS if t in set(frame["term"])]
    frame["order"] = frame["term"].map({t: i for i, t in enumerate(TERM_COLORS)})
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("stage:N", sort=STAGE_ORDER, title=None),
            y=alt.Y("value:Q", stack="zero", title=f"per GPU ({_unit_note(unit)})"),
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
    rule = _capacity_rule(capacity_bytes, divisor, f"{gpu_label}: {capacity_bytes / divisor:,.1f} {unit}" if capacity_bytes else "")
    chart = (bars + rule) if rule is not None else bars
    return chart.properties(title="Memory per GPU by stage (the busiest rank)")


def ranks_line_chart(
    curve: pd.DataFrame, capacity_bytes: int | None = None, gpu_label: str = "GPU", decimal: bool = False
) -> alt.Chart:
    """Per-GPU memory vs number of GPUs (columns: stage, ranks, total_bytes), both axes logarithmic."""
    frame = curve.copy()
    divisor, unit = display_unit(max([*frame["total_bytes"].tolist(), capacity_bytes or 0, 1]), decimal)
    frame["value"] = frame["total_bytes"] / divisor
    lines = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("ranks:Q", scale=alt.Scale(type="log", base=2), title="GPUs (N, log scale)"),
            y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=f"per GPU ({_unit_note(unit)}, log scale)"),
            color=alt.Color("stage:N", scale=alt.Scale(domain=STAGE_ORDER, range=STAGE_COLORS), title="stage"),
            tooltip=["stage:N", "ranks:Q", alt.Tooltip("value:Q", title=unit, format=",.3f")],
        )
        .properties(height=CHART_HEIGHT)
    )
    rule = _capacity_rule(capacity_bytes, divisor, f"{gpu_label}" if capacity_bytes else "")
    chart = (lines + rule) if rule is not None else lines
    return chart.properties(title="Memory per GPU vs number of GPUs")


def predicted_vs_measured_chart(rows: pd.DataFrame) -> alt.Chart:
    """Per rank and category, predicted beside measured bytes (columns of estimate.compare_with_measured)."""
    frame = rows[rows["category"] != "total"].melt(
        id_vars=["rank", "category"], value_vars=["predicted_bytes", "measured_bytes"], var_name="source", value_name="bytes"
    )
    frame["source"] = frame["source"].map({"predicted_bytes": "predicted", "measured_bytes": "measured"})
    divisor, unit = display_unit(max([*frame["bytes"].fillna(0).tolist(), 1]))
    frame["value"] = frame["bytes"] / divisor
    return (
        alt.Chart(frame, title="Model state per rank: predicted vs measured")
        .mark_bar()
        .encode(
            x=alt.X("source:N", title=None),
            y=alt.Y("value:Q", stack="zero", title=f"bytes ({unit})"),
            color=alt.Color("category:N", title="category"),
            column=alt.Column("rank:O", title="rank"),
            tooltip=["rank:O", "category:N", "source:N", alt.Tooltip("bytes:Q", format=",")],
        )
        .properties(height=CHART_HEIGHT - 60, width=90)
    )
