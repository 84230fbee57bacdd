"""Chart builders for the classroom lessons (compare view, sharding map, collectives timeline, memory wall):
pure functions from records or frames to Altair charts, no streamlit. Bytes in, one display unit out
(engine.units picks it and names it: KiB = 2^10, MiB = 2^20 bytes).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts import loss_scale
from app.charts import STEP_AXIS
from engine.compare import ORDER, PAPER_WEIGHT, traffic_psi
from engine.runstore import mem_key
from engine.sharding import CATEGORY_LABELS, PHASE_LABELS
from engine.spec import STRATEGIES
from engine.units import display_unit, format_bytes

LABELS = {s: STRATEGIES[s]["label"] for s in ORDER}
STRATEGY_ORDER = [LABELS[s] for s in ORDER]
STRATEGY_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2"]
OP_COLORS = {"all_reduce": "#4C78A8", "broadcast": "#54A24B", "all_gather": "#B279A2", "reduce_scatter": "#F58518"}
CATEGORY_COLORS = {"parameters": "#4C78A8", "master shard (ZeRO-2)": "#72B7B2", "gradients": "#F58518",
                   "optimizer state": "#E45756"}
HOLDING_COLORS = {"full copy": "#9ECAE9", "shard k of N (rows a..b)": "#F2CF5B", "whole tensor, owned (ZeRO-1)": "#FF9D98",
                  "gathered in full, freed after (ZeRO-3)": "#B279A2"}
PHASE_COLORS = {"forward": "#DCE9F5", "backward": "#FBE3D0", "optimizer": "#DDF0DA"}
NEED_PARTS = {"model_state_bytes": "model state", "activation_bytes": "saved activations",
              "gathered_bytes": "gathered unit (ZeRO-3)"}
NEED_COLORS = ["#4C78A8", "#BAB0AC", "#B279A2"]
# A rank over its budget writes its need and then stops (engine.budget.MemoryNeed): its bar is drawn faded, and
# the legend says why, so a faded bar never reads as a measurement of a run that trained.
WALL_OUTCOMES = {False: "within the budget", True: "over the budget: the run stopped (need measured before it stopped)"}
WALL_OPACITY = {False: 1.0, True: 0.45}
HEIGHT = 260


def _strategy_scale() -> alt.Scale:
    return alt.Scale(domain=STRATEGY_ORDER, range=STRATEGY_COLORS)


def _unit(max_bytes: float) -> tuple[float, str]:
    divisor, name = display_unit(max_bytes)
    return float(divisor), name


# ---------------------------------------------------------------- all four at once


def loss_frame(losses: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """strategy label, step, loss (rank 0's loss_global: the mean over ranks)."""
    parts = [pd.DataFrame({"strategy": LABELS[s], "step": f["step"], "loss": f["loss"]}) for s, f in losses.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["strategy", "step", "loss"])


def loss_overlay_chart(losses: dict[str, pd.DataFrame]) -> alt.Chart:
    """The four loss curves on one axis; dashes of different lengths keep overlapping curves visible."""
    data = loss_frame(losses)
    return (
        alt.Chart(data, title="Loss, four strategies overlaid")
        .mark_line(strokeWidth=2.5)
        .encode(
            x=alt.X("step:Q", title="step", axis=STEP_AXIS),
            y=alt.Y("loss:Q", title="loss (mean over ranks)", scale=loss_scale(data["loss"])),
            color=alt.Color("strategy:N", title=None, scale=_strategy_scale(), legend=alt.Legend(orient="top")),
            strokeDash=alt.StrokeDash("strategy:N", scale=alt.Scale(domain=STRATEGY_ORDER,
                                      range=[[1, 0], [8, 4], [4, 4], [2, 3]]), legend=None),
            tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".7f")],
        )
        .properties(height=HEIGHT)
    )


def staircase_frame(latest: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """strategy, rank, category, bytes: model state after the optimizer step of the newest logged step."""
    rows = []
    for strategy, frame in latest.items():
        for _, rec in frame.iterrows():
            for key, label in CATEGORY_LABELS.items():
                value = rec.get(f"mem/step/{key}_bytes")
                if pd.notna(value) and value:
                    rows.append({"strategy": LABELS[strategy], "rank": f"rank {int(rec['rank'])}", "category": label,
                                 "bytes": float(value)})
    return pd.DataFrame(rows, columns=["strategy", "rank", "category", "bytes"])


def predicted_latest(per_strategy: dict) -> dict[str, pd.DataFrame]:
    """The estimator's per-rank ModelStates (strategy -> list, rank order) in the shape of a run's newest step,
    so the staircase draws a prediction exactly as it draws a measurement."""
    return {strategy: pd.DataFrame([{"rank": rank, **{mem_key("step", key): getattr(states, f"{key}_bytes")
                                                      for key in CATEGORY_LABELS}}
                                    for rank, states in enumerate(ranks)])
            for strategy, ranks in per_strategy.items()}


def staircase_chart(latest: dict[str, pd.DataFrame], title: str = "Model state per rank (after the optimizer step)",
                    chosen: str | None = None) -> alt.Chart:
    """Model state per rank, DDP to ZeRO-3 left to right, a bar per rank: the staircase. With `chosen` (a
    strategy key) the other strategies' bars are drawn faint."""
    data = staircase_frame(latest)
    divisor, unit = _unit(data.groupby(["strategy", "rank"])["bytes"].sum().max() if not data.empty else 0)
    data = data.assign(amount=data["bytes"] / divisor)
    categories = [c for c in CATEGORY_COLORS if c in set(data["category"])]
    opacity = (alt.condition(alt.datum.strategy == LABELS[chosen], alt.value(1.0), alt.value(0.35))
               if chosen else alt.value(1.0))
    return (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=alt.X("strategy:N", title=None, sort=STRATEGY_ORDER, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("rank:N"),
            y=alt.Y("amount:Q", title=f"bytes held, {unit}", stack="zero"),
            color=alt.Color("category:N", title=None, legend=alt.Legend(orient="right"),
                            scale=alt.Scale(domain=categories, range=[CATEGORY_COLORS[c] for c in categories])),
            opacity=opacity,
            order=alt.Order("category:N"),
            tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip("rank:N"), alt.Tooltip("category:N"),
                     alt.Tooltip("bytes:Q", format=",.0f")],
        )
        .properties(height=HEIGHT)
    )


def traffic_frame(latest: dict[str, pd.DataFrame], param_counts: dict[str, int], bytes_per_element: int = 4) -> pd.DataFrame:
    """strategy, op, psi_units (paper convention, rank 0's newest step; every rank moves the same)."""
    rows = []
    for strategy, frame in latest.items():
        if frame.empty or not param_counts.get(strategy):
            continue
        rec = frame.iloc[0]
        for key in frame.columns:
            if key.startswith("comm/") and key.endswith("/bytes") and key.count("/") == 2:
                op = key.split("/")[1]
                if pd.notna(rec[key]) and rec[key]:
                    rows.append({"strategy": LABELS[strategy], "op": op,
                                 "psi_units": traffic_psi({op: float(rec[key])}, param_counts[strategy], bytes_per_element),
                                 "weight": PAPER_WEIGHT.get(op, 1)})
    return pd.DataFrame(rows, columns=["strategy", "op", "psi_units", "weight"])


def traffic_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Traffic per step per rank in units of Ψ, stacked by collective, with the total written on top."""
    ops = [o for o in OP_COLORS if o in set(frame["op"])]
    totals = frame.groupby("strategy", as_index=False)["psi_units"].sum()
    totals["text"] = totals["psi_units"].map(lambda v: f"{v:.2f} Ψ")
    x = alt.X("strategy:N", title=None, sort=STRATEGY_ORDER, axis=alt.Axis(labelAngle=0))
    bars = alt.Chart(frame).mark_bar().encode(
        x=x, y=alt.Y("psi_units:Q", title="traffic per step, units of Ψ", stack="zero"),
        color=alt.Color("op:N", title=None, legend=alt.Legend(orient="bottom", columns=2),
                        scale=alt.Scale(domain=ops, range=[OP_COLORS[o] for o in ops])),
        tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip("op:N"), alt.Tooltip("psi_units:Q", format=".3f")],
    )
    text = alt.Chart(totals).mark_text(dy=-8, fontSize=13, fontWeight="bold").encode(
        x=x, y=alt.Y("psi_units:Q"), text=alt.Text("text:N"))
    return alt.layer(bars, text).properties(height=HEIGHT, title="Traffic per step (all-reduce counts twice)")


def step_time_chart(frame: pd.DataFrame) -> alt.Chart:
    """frame: strategy label, step_time_s (median over logged steps after the first)."""
    data = frame.assign(ms=frame["step_time_s"] * 1000)
    return (
        alt.Chart(data, title="Step time (median)")
        .mark_bar()
        .encode(
            x=alt.X("strategy:N", title=None, sort=STRATEGY_ORDER, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("ms:Q", title="milliseconds per step"),
            color=alt.Color("strategy:N", scale=_strategy_scale(), legend=None),
            tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip("ms:Q", format=".1f")],
        )
        .properties(height=HEIGHT)
    )


# ---------------------------------------------------------------- who holds what, when


def phase_label(phase: str) -> str:
    return PHASE_LABELS.get(phase, f"while {phase.removeprefix('inside ')} computes (forward)")


def sharding_frame(rows: list[dict], phase: str) -> pd.DataFrame:
    """One phase of engine.sharding's map, with display columns."""
    data = pd.DataFrame([r for r in rows if r["phase"] == phase])
    if data.empty:
        return pd.DataFrame(columns=["rank", "category", "tensor", "holding", "kind", "title", "label", "bytes", "text",
                                     "amount"])
    data["rank"] = "rank " + data["rank"].astype(str)
    data["category"] = data["category"].map(CATEGORY_LABELS)
    data["kind"] = data["holding"].map(
        lambda h: "shard k of N (rows a..b)" if h.startswith("shard") else "full copy" if h == "full"
        else "gathered in full, freed after (ZeRO-3)" if h.startswith("gathered") else "whole tensor, owned (ZeRO-1)")
    data["title"] = data["holding"].map(lambda h: h if h.startswith("shard") else "full" if h == "full"
                                        else "gathered" if h.startswith("gathered") else "owner")
    data["text"] = data.apply(
        lambda r: (f"all {r['dim0']} rows" if not r["holding"].startswith("shard") else
                   f"rows {r['rows_from']}..{r['rows_to'] - 1}" if r["rows_to"] > r["rows_from"] else "no rows"),
        axis=1)
    # Each cell in its own unit: on one shared unit a 1 KiB bias read "0.0 MiB" beside a 0.5 MiB weight.
    data["amount"] = data["bytes"].map(format_bytes)
    return data


MAP_TENSORS_PER_BAND = 5  # 120 px per tensor: five and the row labels fit a 1,280 px window's main column


def sharding_map_chart(rows: list[dict], phase: str) -> alt.VConcatChart:
    """Ranks x tensors, one panel per state category: which slice each rank holds, its rows and bytes.

    Tensors come in bands of MAP_TENSORS_PER_BAND stacked top to bottom, so a GPT's 29 or 149 tensors wrap
    down the page instead of running thousands of pixels off its right edge."""
    data = sharding_frame(rows, phase)
    tensors = list(dict.fromkeys(data["tensor"]))
    kinds = [k for k in HOLDING_COLORS if k in set(data["kind"])]
    categories = [c for c in CATEGORY_LABELS.values() if c in set(data["category"])]
    color = alt.Color("kind:N", title=None, scale=alt.Scale(domain=kinds, range=[HOLDING_COLORS[k] for k in kinds]),
                      legend=alt.Legend(orient="bottom", labelLimit=320))
    bands = [tensors[i:i + MAP_TENSORS_PER_BAND] for i in range(0, len(tensors), MAP_TENSORS_PER_BAND)] or [[]]

    def band(chunk: list[str]) -> alt.FacetChart:
        base = alt.Chart().encode(
            x=alt.X("tensor:N", title=None, sort=chunk, axis=alt.Axis(labelAngle=0, orient="top", labelLimit=112, labelOverlap=False, labelFontSize=10)),
            y=alt.Y("rank:N", title=None),
        )
        cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
            color=color,
            tooltip=[alt.Tooltip("rank:N"), alt.Tooltip("category:N"), alt.Tooltip("tensor:N"), alt.Tooltip("label:N"),
                     alt.Tooltip("bytes:Q", format=",.0f")],
        )
        title_text = base.mark_text(fontSize=10, dy=-12, fontWeight="bold").encode(text=alt.Text("title:N"))
        rows_text = base.mark_text(fontSize=10, dy=0).encode(text=alt.Text("text:N"))
        bytes_text = base.mark_text(fontSize=10, dy=12).encode(text=alt.Text("amount:N"))
        return (
            alt.layer(cells, title_text, rows_text, bytes_text)
            .properties(width=alt.Step(120), height=alt.Step(48))
            .facet(row=alt.Row("category:N", title=None, sort=categories,
                               header=alt.Header(labelFontSize=13, labelFontWeight="bold", labelAngle=0, labelAlign="left")),
                   data=data)  # one frame for every band: Altair stores it once
            .transform_filter(alt.FieldOneOfPredicate(field="tensor", oneOf=chunk))
        )

    return alt.vconcat(*[band(chunk) for chunk in bands]).properties(
        title=f"Who holds what {phase_label(phase)}")


def totals_frame(rows: list[dict], measured: dict | None) -> pd.DataFrame:
    """Per rank, phase and category: the map's bytes beside the run's measured bytes (when there is a run)."""
    from engine.sharding import map_totals

    out = []
    for (rank, phase, category), size in sorted(map_totals(rows).items()):
        entry = {"rank": rank, "phase": PHASE_LABELS[phase], "category": CATEGORY_LABELS[category], "map bytes": size}
        if measured is not None:
            entry["measured bytes"] = measured.get((rank, phase, category))
            entry["equal"] = entry["measured bytes"] == size
        out.append(entry)
    return pd.DataFrame(out)


# ---------------------------------------------------------------- which collective runs when


def collectives_frame(logs: dict[str, list[dict]]) -> pd.DataFrame:
    """strategy, order (1, 2, ... within the step), op, bytes, phase, module."""
    rows = []
    for strategy, ops in logs.items():
        for i, op in enumerate(ops, 1):
            rows.append({"strategy": LABELS.get(strategy, strategy), "order": i, "op": op["op"], "bytes": op["bytes"],
                         "phase": op["phase"] or "?", "module": op.get("module") or "",
                         "short": (op.get("module") or "").split(":")[0]})
    return pd.DataFrame(rows, columns=["strategy", "order", "op", "bytes", "phase", "module", "short"])


TIMELINE_WIDTH_PX = 700  # a lane's width that fits a 1,280 px window's main column beside its label


def timeline_step_px(data: pd.DataFrame) -> int:
    """Width per collective: 44 px, narrower when a lane has many (ZeRO-1 broadcasts every parameter of a GPT),
    so the longest lane stays within TIMELINE_WIDTH_PX (module labels need 12 px; below that the tooltip has them)."""
    longest = int(data.groupby("strategy").size().max()) if not data.empty else 1
    return max(3, min(44, TIMELINE_WIDTH_PX // longest))


def collectives_timeline_chart(logs: dict[str, list[dict]]) -> alt.FacetChart:
    """One lane per strategy: each collective of one step in the order issued, its height the payload,
    the background its phase (forward, backward, optimizer)."""
    data = collectives_frame(logs)
    divisor, unit = _unit(data["bytes"].max() if not data.empty else 0)
    data = data.assign(amount=data["bytes"] / divisor)
    step_px = timeline_step_px(data)
    if step_px < 12:
        data = data.assign(short="")
    phases = [p for p in PHASE_COLORS if p in set(data["phase"])]
    ops = [o for o in OP_COLORS if o in set(data["op"])]
    x = alt.X("order:O", title="collectives of one step, in the order issued", axis=alt.Axis(labelAngle=0, labelOverlap=True))
    background = alt.Chart().mark_rect(opacity=0.9).encode(
        x=x,
        color=alt.Color("phase:N", title="phase", scale=alt.Scale(domain=phases, range=[PHASE_COLORS[p] for p in phases]),
                        legend=alt.Legend(orient="top")),
    )
    bars = alt.Chart().mark_bar(width=alt.RelativeBandSize(0.35)).encode(
        x=x,
        y=alt.Y("amount:Q", title=f"payload, {unit}"),
        fill=alt.Fill("op:N", title="collective", scale=alt.Scale(domain=ops, range=[OP_COLORS[o] for o in ops]),
                      legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip("order:Q"), alt.Tooltip("op:N"), alt.Tooltip("phase:N"),
                 alt.Tooltip("module:N"), alt.Tooltip("bytes:Q", format=",.0f")],
    )
    labels = alt.Chart().mark_text(angle=270, align="left", dx=4, fontSize=10).encode(
        x=x, y=alt.value(118), text=alt.Text("short:N"))
    return (
        alt.layer(background, bars, labels, data=data)
        .properties(width=alt.Step(step_px), height=120)
        .facet(row=alt.Row("strategy:N", title=None, sort=STRATEGY_ORDER,
                           header=alt.Header(labelFontSize=13, labelFontWeight="bold", labelAngle=0, labelAlign="left")))
        .resolve_scale(x="independent", y="independent")
        .properties(title="Which collective runs when")
    )


# ---------------------------------------------------------------- the memory wall


def wall_frame(needs: dict[str, list[dict]]) -> pd.DataFrame:
    """strategy, rank, part, bytes, over_budget: each rank's measured need in its largest phase, by part."""
    rows = []
    for strategy, per_rank in needs.items():
        for entry in per_rank:
            phase = max(entry["need_bytes"], key=entry["need_bytes"].get)
            for key, label in NEED_PARTS.items():
                rows.append({"strategy": LABELS[strategy], "rank": f"rank {entry['rank']}", "part": label,
                             "bytes": float(entry["parts"][phase][key]), "phase": PHASE_LABELS[phase],
                             "over_budget": bool(entry.get("over_budget")),
                             "outcome": WALL_OUTCOMES[bool(entry.get("over_budget"))]})
    return pd.DataFrame(rows, columns=["strategy", "rank", "part", "bytes", "phase", "over_budget", "outcome"])


def memory_wall_chart(needs: dict[str, list[dict]], budget_bytes: int) -> alt.LayerChart:
    """Measured need per rank, stacked by part, against a horizontal line: the budget (the wall)."""
    data = wall_frame(needs)
    top = max(data.groupby(["strategy", "rank"])["bytes"].sum().max() if not data.empty else 0, budget_bytes)
    divisor, unit = _unit(top)
    data = data.assign(amount=data["bytes"] / divisor)
    outcomes = [o for o in WALL_OUTCOMES if o in set(data["over_budget"])]
    faded = True in outcomes  # a legend only when a bar is faded: one entry 'fits' alone explains nothing
    x = alt.X("strategy:N", title=None, sort=STRATEGY_ORDER, axis=alt.Axis(labelAngle=0))
    bars = alt.Chart(data).mark_bar().encode(
        x=x, xOffset=alt.XOffset("rank:N"),
        y=alt.Y("amount:Q", title=f"needed on the device, {unit}", stack="zero"),
        color=alt.Color("part:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=list(NEED_PARTS.values()), range=NEED_COLORS)),
        opacity=alt.Opacity("outcome:N", title=None, scale=alt.Scale(domain=[WALL_OUTCOMES[o] for o in outcomes],
                                            range=[WALL_OPACITY[o] for o in outcomes]),
                            legend=alt.Legend(orient="bottom", labelLimit=480, symbolFillColor=NEED_COLORS[0])
                            if faded else None),
        tooltip=[alt.Tooltip("strategy:N"), alt.Tooltip("rank:N"), alt.Tooltip("part:N"), alt.Tooltip("phase:N"),
                 alt.Tooltip("bytes:Q", format=",.0f"), alt.Tooltip("outcome:N")],
    )
    if budget_bytes <= 0:
        return alt.layer(bars).properties(height=HEIGHT + 40, title="Memory each rank needs")
    wall = pd.DataFrame({"amount": [budget_bytes / divisor],
                         "text": [f"budget: simulated device of {budget_bytes / 2**20:g} MiB"]})
    rule = alt.Chart(wall).mark_rule(color="#D62728", strokeWidth=3).encode(y="amount:Q")
    text = alt.Chart(wall).mark_text(color="#D62728", align="left", x=5, dy=-8, fontWeight="bold").encode(
        y="amount:Q", text="text:N")
    return alt.layer(bars, rule, text).properties(height=HEIGHT + 40, title="The memory wall")
