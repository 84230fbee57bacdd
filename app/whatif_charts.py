"""Chart and table builders of the What-if page: pure functions from the estimator's rows (in bytes) to Altair charts
and to the tables the page shows.

Each chart converts bytes to one display unit (engine.units: binary GiB = 2^30, or the ZeRO paper's
decimal GB) chosen from the bars themselves, and names it in the axis title. A GPU's capacity is drawn
as a rule only when it is on the bars' scale; far above them it is named in the subtitle instead, so
small bars never shrink to nothing against an 80 GiB axis. No streamlit here.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from app.charts import CATEGORY_COLORS  # the run charts' model-state colours: one definition for the whole app
from engine.estimate import MAX_RANKS, format_count
from engine.runstore import CATEGORY_LABELS  # the estimator's and the run's category keys -> the names charts show
from engine.units import display_unit, format_bytes, unit_note

TERM_COLORS = {  # the estimator's term names -> colours, the run charts' where they overlap
    "parameters": CATEGORY_COLORS["parameters"],
    "gradients": CATEGORY_COLORS["gradients"],
    "optimizer state": CATEGORY_COLORS["optimizer state"],
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
LEGEND_COLUMNS = 2  # legends sit above the plots in two columns: they fit a half-width chart at 1,280 px
RULE_SCALE = 3  # draw the capacity rule when it is at most this many times the tallest bar
BAR_TITLE = "Memory per GPU by stage"
LINE_TITLE = "Memory per GPU vs GPUs"
COMPARE_TITLE = "Model state per rank: predicted vs measured"
NO_VALUE = "–"  # a cell with no number: not measured, or a percentage of 0 predicted bytes


TITLE_PADDING = {"top": 12, "left": 5, "right": 5, "bottom": 5}  # room above the title: Streamlit crops a flush one
# Width fits the column, height is the plot's own: Streamlit's default ("fit") squeezes title, legend and axis into
# the height too, which left the stage bars about 100 px tall once their legend moved above them.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")
PLOT_HEIGHT = 220  # the two side-by-side charts' plot areas, the same height


def _title(text: str, subtitle: str) -> alt.TitleParams:
    return alt.TitleParams(text, subtitle=["the busiest rank", subtitle] if subtitle else "the busiest rank", anchor="start")


def _capacity_layer(capacity_bytes: int | None, divisor: float, label: str, top: float, above: str):
    """(rule layer or None, subtitle): the rule when capacity is on the chart's scale, else a subtitle line saying it
    is far above what the chart draws (`above`: "these bars", "every line")."""
    if capacity_bytes is None:
        return None, ""
    value = capacity_bytes / divisor
    if value > RULE_SCALE * top:
        return None, f"{label} ({format_bytes(capacity_bytes)}) is far above {above}"
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
            x=alt.X("stage:N", sort=STAGE_ORDER, title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("value:Q", stack="zero", title=f"per GPU ({unit_note(unit)})"),
            color=alt.Color(
                "term:N",
                scale=alt.Scale(domain=terms_present, range=[TERM_COLORS[t] for t in terms_present]),
                title=None,
                # Above the bars, not beside them: on the right the term names took over half a half-column.
                legend=alt.Legend(orient="top", columns=LEGEND_COLUMNS, labelLimit=180),
            ),
            order=alt.Order("order:Q"),
            tooltip=["stage:N", "term:N", alt.Tooltip("value:Q", title=unit, format=",.3f"), alt.Tooltip("bytes:Q", format=",")],
        )
        .properties(height=PLOT_HEIGHT)
    )
    rule, subtitle = _capacity_layer(capacity_bytes, divisor, gpu_label, top_bytes / divisor, "these bars")
    chart = (bars + rule) if rule is not None else bars
    return chart.properties(title=_title(BAR_TITLE, subtitle), padding=TITLE_PADDING, autosize=FIT_WIDTH)


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
            # The curve's own ends: niced, 400,000 GPUs' axis ran to 1,048,576, past what the estimator takes.
            x=alt.X("ranks:Q", scale=alt.Scale(type="log", base=2, domain=[1, int(frame["ranks"].max())], nice=False),
                    title="GPUs (N, log scale)"),
            y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=f"per GPU ({unit_note(unit)}, log)"),
            color=alt.Color("stage:N", scale=alt.Scale(domain=STAGE_ORDER, range=STAGE_COLORS), title=None,
                            legend=alt.Legend(orient="top", columns=LEGEND_COLUMNS)),  # as the stage chart's
            tooltip=["stage:N", "ranks:Q", alt.Tooltip("value:Q", title=unit, format=",.3f")],
        )
        .properties(height=PLOT_HEIGHT)
    )
    rule, subtitle = _capacity_layer(capacity_bytes, divisor, gpu_label, top_bytes / divisor, "every line")
    chart = (lines + rule) if rule is not None else lines
    return chart.properties(title=_title(LINE_TITLE, subtitle), padding=TITLE_PADDING, autosize=FIT_WIDTH)


def curve_ranks(ranks: int, most: int = MAX_RANKS) -> list[int]:
    """The N the line chart draws: powers of two up to 4N (at least 1,024) and N itself, never past the most the
    estimator takes (a curve to 4 x 400,000 GPUs rounded up asked it for 1,048,576 and blanked the page)."""
    top = min(max(ranks * 4, 1024), most)
    return sorted({2**k for k in range(top.bit_length())} | {ranks})


def predicted_vs_measured_chart(rows: pd.DataFrame) -> alt.Chart:
    """Per rank and category, predicted beside measured bytes (columns of estimate.compare_with_measured), in the
    run charts' category names and colours."""
    frame = rows[rows["category"] != "total"].melt(
        id_vars=["rank", "category"], value_vars=["predicted_bytes", "measured_bytes"], var_name="source", value_name="bytes"
    )
    frame["source"] = frame["source"].map({"predicted_bytes": "predicted", "measured_bytes": "measured"})
    frame["category"] = frame["category"].map(CATEGORY_LABELS)
    order = [c for c in CATEGORY_COLORS if c in set(frame["category"])]
    frame["order"] = frame["category"].map(order.index)
    divisor, unit = display_unit(max([*frame["bytes"].fillna(0).tolist(), 1]))
    frame["value"] = frame["bytes"] / divisor
    return (
        alt.Chart(frame, title=COMPARE_TITLE)
        .mark_bar()
        .encode(
            x=alt.X("source:N", title=None, sort=["predicted", "measured"]),
            y=alt.Y("value:Q", stack="zero", title=f"bytes ({unit_note(unit)})"),
            color=alt.Color("category:N", title=None,
                            scale=alt.Scale(domain=order, range=[CATEGORY_COLORS[c] for c in order]),
                            legend=alt.Legend(orient="top", labelLimit=400)),
            order=alt.Order("order:Q"),
            column=alt.Column("rank:O", title="rank"),
            tooltip=["rank:O", "category:N", "source:N", alt.Tooltip("bytes:Q", format=",")],
        )
        .properties(height=CHART_HEIGHT - 60, width=90)
    )


# ------------------------------------------------------------------------------ tables
# One row per stage holds about twenty numbers: far wider than a 1,280 px window. The page shows the columns a
# reader needs first (summary_table) and the whole breakdown turned so the stages are the columns (terms_by_stage).

def stage_table(rows: list[dict], divisor: float, unit: str, ranks: int) -> pd.DataFrame:
    """One row per stage (estimate.stage_rows, with capacity answers), every number in its unit, named in its label."""
    size = lambda b: b / divisor
    return pd.DataFrame(
        {
            "stage": r["stage"],
            f"parameters ({unit})": size(r["params_bytes"]),
            f"gradients ({unit})": size(r["grads_bytes"]),
            f"optimizer state ({unit})": size(r["optimizer_bytes"]),
            f"master weights ({unit})": size(r["master_bytes"]),
            f"model states ({unit})": size(r["model_states_bytes"]),
            f"gathered layers ({unit})": size(r["gathered_bytes"]),
            f"activations ({unit})": size(r["activations_bytes"]),
            f"overheads ({unit})": size(r["context_bytes"] + r["comm_buffers_bytes"] + r["reserve_bytes"]),
            f"total per GPU ({unit})": size(r["total_bytes"]),
            "total bytes": r["total_bytes"],
            "model states bytes": r["model_states_bytes"],
            f"offloaded per GPU ({unit})": size(r["cpu_bytes"]),
            f"host per node ({unit})": size(r["host_bytes_per_node"]),
            "fits": r["fits"],
            "fits host": r["fits_host"],
            "fewest GPUs that fit": "never" if r["min_ranks_to_fit"] is None else f"{r['min_ranks_to_fit']:,}",
            f"largest model on {ranks:,} GPUs": format_count(r["max_params_to_fit"]),
            "comm per step (elements)": r["comm_elements"],
            "comm per step (bytes)": r["comm_bytes"],
        }
        for r in rows
    )


def summary_table(table: pd.DataFrame, unit: str) -> pd.DataFrame:
    """The columns a reader needs first: the total, whether it fits, and the four parts that add up to it."""
    return table[["stage", f"total per GPU ({unit})", "fits", f"model states ({unit})", f"gathered layers ({unit})",
                  f"activations ({unit})", f"overheads ({unit})"]]


def _cell(value) -> str:
    """A breakdown cell written out: a stage column mixes bytes, display units, yes/no and words."""
    if value is None:  # a question not asked (no host memory given)
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.3f}"
    return str(value)


def terms_by_stage(table: pd.DataFrame) -> pd.DataFrame:
    """stage_table turned: one row per quantity (its unit in its label), one column per stage, cells as text."""
    turned = table.set_index("stage").T
    return pd.DataFrame(
        {"quantity": turned.index, **{stage: [_cell(v) for v in turned[stage]] for stage in turned.columns}}
    )


def _bytes_cell(value) -> str:
    return NO_VALUE if value is None or pd.isna(value) else f"{int(value):,}"


def _percent_cell(value, digits: int) -> str:
    return NO_VALUE if value is None or pd.isna(value) else f"{value:.{digits}f}"


def compare_table(rows: pd.DataFrame) -> pd.DataFrame:
    """estimate.compare_with_measured's rows as the page shows them: the run charts' category names, headers with
    their units, numbers written out and a dash where there is none (not measured; a percentage of 0 bytes)."""
    return pd.DataFrame({
        "rank": rows["rank"],
        "category": rows["category"].map({**CATEGORY_LABELS, "total": "total"}),
        "predicted (bytes)": [_bytes_cell(v) for v in rows["predicted_bytes"]],
        "measured (bytes)": [_bytes_cell(v) for v in rows["measured_bytes"]],
        "difference (bytes)": [_bytes_cell(v) for v in rows["difference_bytes"]],
        "difference (%)": [_percent_cell(v, 4) for v in rows["difference_pct"]],
    })


def activations_table(predicted_bytes: int, measured: list[tuple[int, int | None]]) -> pd.DataFrame:
    """Per rank (rank, measured bytes or None), the predicted activation bytes beside the measured, as compare_table
    writes them."""
    return pd.DataFrame(
        {"rank": rank, "predicted (bytes)": _bytes_cell(predicted_bytes), "measured (bytes)": _bytes_cell(got),
         "difference (%)": NO_VALUE if got is None or not predicted_bytes
         else _percent_cell(100.0 * (got - predicted_bytes) / predicted_bytes, 2)}
        for rank, got in measured
    )
