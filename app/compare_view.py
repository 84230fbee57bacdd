"""The compare view: a group of runs (all four strategies on one spec and seed) drawn as they train, with
the sharding map, the collectives timeline and the memory wall. Everything is read from the run
directories on each refresh; the group itself is a file in the runs folder (engine.runstore)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from app import lesson_charts, state
from app.run_data import MetricsTail, latest_per_rank, runs_dir
from engine import compare, runstore
from engine.sharding import PHASE_LABELS, map_for_phase, map_phases, measured_totals, sharding_map_for_spec
from engine.spec import STRATEGIES, JobSpec, SpecError, param_element_bytes

REFRESH_S = 1.0
LABELS = lesson_charts.LABELS
WHY = {
    "loss": "All four compute the same update: every rank runs the full forward and backward on its own slice, "
            "and the gradients are summed exactly once. Only the floating-point rounding of the sums can differ.",
    "memory": "DDP keeps a full copy of everything on every rank. ZeRO-1 splits the optimizer state, ZeRO-2 also "
              "the gradients, ZeRO-3 also the parameters, so each step down the stairs holds less.",
    "traffic": "DDP all-reduces the gradients (2Ψ). PyTorch's ZeroRedundancyOptimizer (ZeRO-1) does the same all-reduce "
               "and then broadcasts each updated parameter from its owner (+Ψ = 3Ψ). ZeRO-2 reduce-scatters gradients and "
               "all-gathers parameters (2Ψ); ZeRO-3 all-gathers them twice, for forward and again for backward (3Ψ).",
    "time": "On CPU ranks sharing two cores, FSDP's many small collectives and copies cost more than the "
            "arithmetic of a tiny model; on GPUs with fast links the gaps shrink. Memory, not speed, is what ZeRO buys.",
}


@st.cache_resource(max_entries=64, show_spinner=False)
def _tail(run_dir: str) -> MetricsTail:
    return MetricsTail(Path(run_dir))


def _active_repeat(kind: str, spec: JobSpec) -> str | None:
    """The group this session last launched, if it is the same kind and spec and one of its runs is still queued
    or running: a double click reaches the server as two clicks, and the second must not start a second group."""
    last = st.session_state.get(state.COMPARE_LAST_LAUNCH)
    if not last or last["kind"] != kind or last["spec"] != spec.to_json():
        return None
    for run_id in last["runs"].values():
        path = runs_dir() / run_id
        if path.is_dir() and runstore.read_status(path).get("state") in runstore.ACTIVE_STATES:
            return last["group_id"]
    return None


def _launch_group(kind: str, spec: JobSpec, launch) -> None:
    st.session_state[state.COMPARE_ERROR] = ""
    again = _active_repeat(kind, spec)
    if again:
        st.session_state[state.COMPARE_GROUP] = again
        return
    try:
        group_id, runs = launch()
    except (SpecError, runstore.RunError, OSError, RuntimeError) as error:
        st.session_state[state.COMPARE_ERROR] = str(error)
        return
    st.session_state[state.COMPARE_LAST_LAUNCH] = {"kind": kind, "spec": spec.to_json(), "group_id": group_id,
                                                   "runs": runs}
    st.session_state[state.COMPARE_GROUP] = group_id


def launch_compare_from_form() -> None:
    """'Compare all four' callback: the Train form's spec, once per strategy, as one group."""
    try:
        spec = JobSpec(**state.form_values())
    except SpecError as error:
        st.session_state[state.COMPARE_ERROR] = str(error)
        return
    _launch_group("compare", spec, lambda: compare.launch_all(spec, runs_dir()))


def launch_lesson_compare() -> None:
    """The Compare page's 'Compare all four': the lesson's own small spec (engine.compare.LESSON_SPEC)."""
    _launch_group("compare", compare.LESSON_SPEC, lambda: compare.launch_all(compare.LESSON_SPEC, runs_dir()))


def launch_wall() -> None:
    _launch_group("memory_wall", compare.WALL_SPEC, lambda: compare.launch_memory_wall(runs_dir()))


def compare_button() -> None:
    """The Train page's 'Compare all four' button: launches, then opens the Compare page on the new group."""
    state.seed_lessons()
    st.button("Compare all four", icon=":material/compare_arrows:", key="train_compare_all",
              on_click=launch_compare_from_form,
              help="Launch DDP, ZeRO-1, ZeRO-2 and ZeRO-3 on this spec and seed, and watch them side by side.")
    if st.session_state[state.COMPARE_ERROR]:
        st.error(st.session_state[state.COMPARE_ERROR], icon=":material/error:")
    elif st.session_state.get("train_compare_all") and st.session_state[state.COMPARE_GROUP]:
        st.switch_page("views/compare.py", query_params={"group": st.session_state[state.COMPARE_GROUP]})


# ---------------------------------------------------------------- reading a group


class GroupData:
    """What the view draws, read once per refresh: per strategy its train frame, events and status."""

    def __init__(self, group: dict):
        self.group = group
        self.runs: dict[str, str] = {}
        self.unreadable: dict[str, str] = {}  # strategy -> why its run cannot be drawn (deleted, damaged)
        self.status, self.train, self.events, self.spec = {}, {}, {}, {}
        for strategy, run_id in group["runs"].items():
            # A group file outlives its runs: a folder deleted or damaged since is named, not raised.
            try:
                path = runstore.run_dir(run_id, runs_dir())
                spec = json.loads(runstore.read_spec(path).to_json())
            except runstore.RunError as error:
                self.unreadable[strategy] = f"{run_id}: {error}"
                continue
            status = runstore.read_status(path)
            if status.get("state") == runstore.UNREADABLE:
                self.unreadable[strategy] = f"{run_id}: {status.get('error')}"
                continue
            self.runs[strategy] = run_id
            self.status[strategy] = status
            self.spec[strategy] = spec
            tail = _tail(str(path))
            self.train[strategy] = tail.update()
            self.events[strategy] = list(tail.events)

    @property
    def active(self) -> bool:
        return any(s.get("state") in runstore.ACTIVE_STATES for s in self.status.values())

    def losses(self) -> dict[str, pd.DataFrame]:
        out = {}
        for strategy, train in self.train.items():
            if not train.empty:
                rank0 = train[train["rank"] == 0]
                out[strategy] = pd.DataFrame({"step": rank0["step"], "loss": rank0["loss_global"]})
        return out

    def latest(self) -> dict[str, pd.DataFrame]:
        return {s: latest_per_rank(t) for s, t in self.train.items() if not t.empty}

    def param_counts(self) -> dict[str, int]:
        return {s: next((e["param_count"] for e in ev if e.get("kind") == "start"), None) for s, ev in self.events.items()}

    def kind(self, strategy: str, kind: str) -> list[dict]:
        return [e for e in self.events[strategy] if e.get("kind") == kind]

    def collectives(self) -> dict[str, list[dict]]:
        return {s: runstore.collectives(self.events[s]) for s in self.runs if runstore.collectives(self.events[s])}

    def needs(self) -> dict[str, list[dict]]:
        return {s: runstore.memory_need(self.events[s]) for s in self.runs if runstore.memory_need(self.events[s])}

    def errors(self) -> dict[str, str]:
        out = {}
        for s in self.runs:
            messages = [e.get("message", "") for e in self.kind(s, "error")]
            if messages:
                out[s] = messages[0]
            elif self.status[s].get("state") == "failed":
                out[s] = self.status[s].get("error") or "failed"
        return out


def largest_loss_difference(losses: dict[str, pd.DataFrame]) -> tuple[float | None, int]:
    """(largest per-step difference between the curves, steps compared)."""
    diffs = compare.loss_differences({s: dict(zip(f["step"], f["loss"])) for s, f in losses.items()})
    return (max(diffs.values()) if diffs else None), len(diffs)


def traffic_ratio_text(frame: pd.DataFrame) -> str:
    totals = frame.groupby("strategy")["psi_units"].sum()
    names = [n for n in lesson_charts.STRATEGY_ORDER if n in totals]
    return f"{' : '.join(names)} = {' : '.join(f'{totals[n]:.2f}' for n in names)} (units of Ψ)"


# ---------------------------------------------------------------- drawing


def show_group(group_id: str) -> None:
    try:
        group = runstore.read_group(group_id, runs_dir())
    except (FileNotFoundError, ValueError) as error:
        st.warning(str(error))
        return
    active = GroupData(group).active
    st.fragment(run_every=REFRESH_S if active else None)(_live)(group, active)


def _live(group: dict, was_active: bool) -> None:
    data = GroupData(group)
    if was_active and not data.active:
        st.rerun()  # stop the timer
    for strategy, why in data.unreadable.items():
        st.warning(f"{LABELS.get(strategy, strategy)} cannot be drawn: {why}", icon=":material/help:")
    if not data.runs:
        return
    _status_line(data)
    if group.get("kind") == "memory_wall":
        _memory_wall(data)  # the lesson here is who fits; one run's curves would teach nothing
    else:
        _all_four(data)
        _memory_wall(data)
    _collectives(data)
    _sharding(data)


def _status_line(data: GroupData) -> None:
    spec = next(iter(data.spec.values()), {})
    cols = st.columns(len(data.runs))
    for col, (strategy, run_id) in zip(cols, data.runs.items()):
        train = data.train[strategy]
        step = int(train["step"].max()) if not train.empty else 0
        st_state = data.status[strategy].get("state", "queued")
        icon = {"succeeded": ":green-badge[succeeded]", "failed": ":red-badge[failed]",
                "running": ":blue-badge[running]", "cancelled": ":orange-badge[cancelled]"}.get(st_state, ":gray-badge[queued]")
        col.markdown(f"**{LABELS[strategy]}** {icon}  \nstep {step} of {spec.get('steps', '?')} · `{run_id}`")
    budget = spec.get("memory_budget_mb")
    st.caption(f"{spec.get('model')} {spec.get('size')} on {spec.get('dataset')}, {spec.get('nproc')} ranks, "
               f"{spec.get('precision')}, {spec.get('optimizer')}, seed {spec.get('seed')}, global batch "
               f"{spec.get('global_batch')}" + (f", budget {budget} MiB per rank" if budget else "") + ".")
    for strategy, message in data.errors().items():
        st.error(f"{LABELS[strategy]}: {message}", icon=":material/error:")


def _all_four(data: GroupData) -> None:
    losses = data.losses()
    if not losses:
        st.info("Waiting for the first steps: torchrun is starting the ranks.", icon=":material/hourglass_top:")
        return
    st.subheader("Same update, same loss", anchor="loss")
    diff, steps = largest_loss_difference(losses)
    left, right = st.columns([3, 1])
    left.altair_chart(lesson_charts.loss_overlay_chart(losses), width="stretch")
    right.metric("Largest loss difference", f"{diff:.3g}" if diff is not None else "–",
                 help="Over the steps every run has logged: the largest minus the smallest mean loss.")
    right.caption(f"over {steps} steps that all {len(losses)} runs have logged")
    st.caption(WHY["loss"])

    latest = data.latest()
    memory, traffic = st.columns(2)
    with memory:
        st.subheader("Memory per rank: the staircase", anchor="memory")
        st.altair_chart(lesson_charts.staircase_chart(latest), width="stretch")
        st.caption(WHY["memory"])
    with traffic:
        st.subheader("Traffic per step", anchor="traffic")
        frame = lesson_charts.traffic_frame(latest, data.param_counts(),
                                            param_element_bytes(next(iter(data.spec.values()), {}).get("precision")))
        if not frame.empty:
            st.altair_chart(lesson_charts.traffic_chart(frame), width="stretch")
            st.markdown(f"**{traffic_ratio_text(frame)}**")
        st.caption(WHY["traffic"])

    times = {s: compare_median_step_time(t) for s, t in data.train.items() if not t.empty}
    st.subheader("Step time", anchor="time")
    left, right = st.columns([1, 1])
    left.altair_chart(lesson_charts.step_time_chart(pd.DataFrame(
        {"strategy": [LABELS[s] for s in times], "step_time_s": list(times.values())})), width="stretch")
    right.caption(WHY["time"])


def compare_median_step_time(train: pd.DataFrame) -> float:
    rank0 = train[train["rank"] == 0]["step_time_s"]
    return float(rank0.iloc[1:].median() if len(rank0) > 1 else rank0.median())


FADED_NOTE = ("Faded bars: ranks that went over the budget and stopped; a rank measures its need in each phase and "
              "records it before it stops, so the bar is what it needed up to the phase that went over. ")


def _memory_wall(data: GroupData) -> None:
    needs = data.needs()
    if not needs:
        return
    spec = next(iter(data.spec.values()), {})
    budget = int(spec.get("memory_budget_mb") or 0) * 2**20
    st.subheader("The memory wall", anchor="wall")
    st.altair_chart(lesson_charts.memory_wall_chart(needs, budget), width="stretch")
    where = "a simulated device" if spec.get("device", "cpu") == "cpu" else "the GPU"
    st.caption(
        "Each bar is what one rank measured it needs in its fullest phase of the first two steps: exact bytes of its "
        "parameters, gradients and optimizer state, the activations saved for backward, and (ZeRO-3) one layer "
        "gathered in full while it computes. "
        + (FADED_NOTE if any(n.get("over_budget") for ranks in needs.values() for n in ranks) else "")
        + (f"The red line is the per-rank budget on {where}: a rank above it stops with 'rank r needs X MiB, "
           "budget Y MiB'. Same model, same budget: only the strategy decides who fits." if budget else
           "Give a run a memory budget (memory_budget_mb) to draw the wall.")
    )


def _collectives(data: GroupData) -> None:
    logs = data.collectives()
    if not logs:
        return
    st.subheader("Which collective runs when", anchor="collectives")
    st.altair_chart(lesson_charts.collectives_timeline_chart(logs))
    st.caption("Recorded by the worker for one steady-state step (step 2), in the order the rank issued them; bar "
               "height is the payload, the label the module it serves. DDP all-reduces gradient buckets during "
               "backward; ZeRO-1 adds one broadcast per parameter after the step; ZeRO-2 reduce-scatters in backward "
               "and all-gathers after the step; ZeRO-3 all-gathers each layer in forward and again in backward.")


def map_controls(strategies: list[str], spec_of, left, right) -> tuple[str, str]:
    """Strategy and phase pickers for a sharding map; ZeRO-3 adds one phase per unit inside the forward pass."""
    if st.session_state[state.MAP_STRATEGY] not in strategies:
        st.session_state[state.MAP_STRATEGY] = strategies[-1]
    strategy = left.segmented_control("Strategy", strategies, key=state.MAP_STRATEGY, format_func=LABELS.get,
                                      required=True)
    phases = map_phases(spec_of(strategy))
    if st.session_state[state.MAP_PHASE] not in phases:
        st.session_state[state.MAP_PHASE] = "forward"
    phase = right.segmented_control("When", phases, key=state.MAP_PHASE, required=True,
                                    format_func=lambda p: PHASE_LABELS[p] if p in PHASE_LABELS else p)
    return strategy, phase


GATHER_NOTE = ("Purple: while a unit computes, ZeRO-3 all-gathers its parameters in full on every rank and frees "
               "them right after (each rank's own shard stays); derived from the map, the all-gather itself is in "
               "the collective log.")


def _sharding(data: GroupData) -> None:
    st.subheader("Who holds what, when", anchor="sharding")
    state.seed_lessons()
    strategies = [s for s in data.runs if not data.train[s].empty]
    if not strategies:
        return
    strategy, phase = map_controls(strategies, data.spec.get, st.container(), st.container())
    latest = data.latest()[strategy]
    first = int(latest["step"].iloc[0]) == 1
    st.altair_chart(lesson_charts.sharding_map_chart(map_for_phase(data.spec[strategy], phase, first), phase))
    rows = sharding_map_for_spec(data.spec[strategy], first_step=first)
    table = lesson_charts.totals_frame(rows, measured_totals(latest.to_dict("records")))
    equal = int(table["equal"].sum())
    st.caption(f"Computed from the model's parameter shapes and the strategy; per rank, phase and category the map's "
               f"bytes equal the run's measured bytes in {equal} of {len(table)} cells (step "
               f"{int(latest['step'].iloc[0])}). FSDP (ZeRO-2/3) splits every tensor by rows (dim 0), padding the "
               "last shard; ZeroRedundancyOptimizer (ZeRO-1) gives each rank whole tensors, so its shares are uneven. "
               + (GATHER_NOTE if strategy == "zero3" else ""))
    with st.expander("Map bytes beside measured bytes"):
        st.dataframe(table, hide_index=True)
