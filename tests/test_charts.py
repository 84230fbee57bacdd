"""Pure dashboard code: metric frames -> chart data, without a browser or a server."""

import json

import numpy as np
import pandas as pd
import pytest

from app import charts
from app.lesson_charts import loss_overlay_chart
from app.run_data import (MetricsTail, RunSnapshot, downsample, failure_in_words, find_run, latest_per_rank, load_snapshot,
                          progress, runs_table, split_shutdown_noise)
from tests.app_fixtures import CANCELLED_LOG_TAIL, train_record, write_fixture_run

PSI = 9_098


def frame(strategy="ddp", nproc=2, steps=3, psi=PSI) -> pd.DataFrame:
    return pd.DataFrame([train_record(s, r, nproc, strategy, psi, 100.0 + s) for r in range(nproc) for s in range(1, steps + 1)])


@pytest.mark.parametrize(
    "n_bytes, title",
    [(10, "memory (bytes)"), (2048, "memory (KiB = 2^10 bytes)"), (5 * 2**20, "memory (MiB = 2^20 bytes)"),
     (3 * 2**30, "memory (GiB = 2^30 bytes)"), (5 * 2**40, "memory (TiB = 2^40 bytes)"), (float("nan"), "memory (bytes)")],
)
def test_byte_axes_use_the_one_unit_helper(n_bytes, title):
    divisor, axis_title = charts.byte_axis(n_bytes, "memory")
    assert axis_title == title
    assert n_bytes != n_bytes or 1 <= n_bytes / divisor < 1024 or n_bytes < 1024


def test_loss_frame_has_a_line_per_rank_and_the_global_mean():
    train = frame(nproc=3)
    data = charts.loss_frame(train)
    assert set(data["series"]) == {"rank 0", "rank 1", "rank 2", charts.MEAN_LABEL}
    mean = data[data["series"] == charts.MEAN_LABEL].set_index("step")["loss"]
    assert mean.to_dict() == train[train["rank"] == 0].set_index("step")["loss_global"].to_dict()
    rank2 = data[data["series"] == "rank 2"]["loss"].tolist()
    assert rank2 == train[train["rank"] == 2]["loss"].tolist()


@pytest.mark.parametrize("strategy, master", [("ddp", False), ("zero1", False), ("zero2", True), ("zero3", False)])
def test_memory_frame_other_is_rss_minus_model_state(strategy, master):
    latest = latest_per_rank(frame(strategy, nproc=4))
    data = charts.memory_frame(latest)
    for rank, rows in data.groupby("rank"):
        rec = latest[latest["rank"] == rank].iloc[0]
        assert rows["bytes"].sum() == rec["mem/step/rss_bytes"]
        state = rows[rows["category"] != charts.OTHER_LABEL]["bytes"].sum()
        assert state == sum(rec[f"mem/step/{c}_bytes"] for c in ("params", "master", "grads", "optimizer"))
    assert (charts.STATE_CATEGORIES["master"] in set(data["category"])) == master


def test_memory_frame_shows_the_zero_staircase():
    totals = {}
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        data = charts.memory_frame(latest_per_rank(frame(strategy, nproc=4)))
        totals[strategy] = data[(data["rank"] == 0) & (data["category"] != charts.OTHER_LABEL)]["bytes"].sum()
    assert totals["ddp"] > totals["zero1"] > totals["zero2"] > totals["zero3"]
    assert totals["ddp"] == 16 * PSI


def test_phase_frame_shows_gradient_storage_as_real_runs_keep_it():
    """The worker zeroes gradients without freeing them: no gradient before the first backward, full after."""
    train = frame("ddp", steps=3)
    first = charts.phase_frame(train[train["step"] == 1].reset_index(drop=True))
    grads = first[first["category"] == "gradients"].set_index(["rank", "phase"])["bytes"]
    assert grads[(0, "forward")] == 0 and grads[(0, "backward")] == 4 * PSI
    later = charts.phase_frame(latest_per_rank(train))
    grads = later[later["category"] == "gradients"].set_index(["rank", "phase"])["bytes"]
    assert grads[(0, "forward")] == grads[(0, "backward")] == grads[(0, "step")] == 4 * PSI


@pytest.mark.parametrize("strategy, psi_units", [("ddp", 2.0), ("zero1", 3.0), ("zero2", 2.0), ("zero3", 3.0)])
def test_comm_in_units_of_psi_counts_all_reduce_twice(strategy, psi_units):
    latest = latest_per_rank(frame(strategy, nproc=4))
    assert charts.comm_psi_total(latest, PSI, 4) == pytest.approx(psi_units)
    data = charts.comm_frame(latest, PSI, 4)
    assert set(data["rank"]) == {0, 1, 2, 3}
    assert data["bytes"].sum() == latest["comm/payload_bytes"].sum()


@pytest.mark.parametrize("strategy, ratio", [("ddp", 2), ("zero1", 3), ("zero2", 2), ("zero3", 3)])
def test_every_comm_chart_draws_traffic_in_the_paper_convention(tmp_path, strategy, ratio):
    """DDP : ZeRO-2 : ZeRO-3 read 2 : 2 : 3 (ZeroRedundancyOptimizer 3); the raw payload rides along for tooltips."""
    snap = load_snapshot(write_fixture_run(tmp_path, "r", strategy=strategy, nproc=4, steps=5))
    psi_bytes = 4 * PSI
    drawn = charts.comm_chart(snap.latest, snap.param_count).to_dict()
    bars = drawn["datasets"][drawn["layer"][0]["data"]["name"]]
    rank0 = [b for b in bars if b["rank"] == "rank 0"]
    assert sum(b["traffic_bytes"] for b in rank0) == ratio * psi_bytes
    assert sum(b["bytes"] for b in rank0) == snap.latest.iloc[0]["comm/payload_bytes"]
    assert drawn["layer"][0]["encoding"]["y"]["field"] == "amount"
    cumulative = charts.cumulative_traffic_frame(snap.train)
    newest = cumulative[(cumulative["rank"] == 0) & (cumulative["step"] == 5)].iloc[0]
    assert newest["traffic_bytes"] == 5 * ratio * psi_bytes and newest["payload_bytes"] == snap.latest.iloc[0]["comm/cum_payload_bytes"]
    compared = charts.compare_comm_chart({"a": snap.latest}, {"a": snap.param_count}, {"a": 4}).to_dict()
    (rows,) = compared["datasets"].values()
    assert sum(r["traffic_bytes"] for r in rows if r["rank"] == 0) == ratio * psi_bytes
    assert compared["spec"]["layer"][0]["encoding"]["y"]["field"] == "amount"


def test_comm_units_use_eight_bytes_per_element_for_fp64():
    latest = latest_per_rank(frame("ddp"))
    assert charts.comm_psi_total(latest, PSI, 8) == pytest.approx(1.0)
    assert charts.comm_psi_total(latest, None, 4) is None


def test_downsample_keeps_about_1k_common_steps_with_first_and_last():
    train = pd.DataFrame({"step": list(range(1, 10_001)) * 2, "rank": [0] * 10_000 + [1] * 10_000, "loss": 1.0})
    small = downsample(train, 1000)
    steps0 = small[small["rank"] == 0]["step"].tolist()
    assert len(steps0) == 1000 and steps0[0] == 1 and steps0[-1] == 10_000
    assert steps0 == small[small["rank"] == 1]["step"].tolist()
    assert downsample(train.head(500), 1000).equals(train.head(500))


def test_latest_per_rank_takes_the_newest_step_every_rank_reached():
    train = frame(nproc=2, steps=5)
    train = train[~((train["rank"] == 1) & (train["step"] == 5))]  # rank 1 is a step behind
    latest = latest_per_rank(train)
    assert latest["step"].tolist() == [4, 4] and latest["rank"].tolist() == [0, 1]


def test_metrics_tail_reads_only_complete_new_lines(tmp_path):
    run = write_fixture_run(tmp_path, "r", steps=3, state="running")
    tail = MetricsTail(run)
    assert len(tail.update()) == 6
    path = run / "metrics" / "rank0.jsonl"
    line = json.dumps(train_record(4, 0, 2, "ddp", PSI, 200.0)) + "\n"
    with open(path, "a") as f:
        f.write(line[:40])  # a writer mid-line
    assert len(tail.update()) == 6
    with open(path, "a") as f:
        f.write(line[40:])
    train = tail.update()
    assert len(train) == 7 and train[train["rank"] == 0]["step"].tolist() == [1, 2, 3, 4]
    assert [e["kind"] for e in tail.events] == ["start", "start"]


def test_snapshot_progress_and_eta(tmp_path):
    run = write_fixture_run(tmp_path, "r", steps=100, steps_done=40, state="running")
    snap = load_snapshot(run)
    p = progress(snap, now=snap.status["started_at"] + 5)
    assert (p["step"], p["total"], p["fraction"]) == (40, 100, 0.4)
    assert p["eta_s"] == pytest.approx(60 * 0.05)  # 0.05 s per step in the fixture
    assert p["elapsed_s"] == pytest.approx(5)


def test_failure_in_words_names_the_rank_and_the_message(tmp_path):
    run = write_fixture_run(tmp_path, "r", steps=5, steps_done=3, state="failed", error="RuntimeError: boom at step 3")
    assert failure_in_words(load_snapshot(run)) == "Rank 1 stopped with an error: RuntimeError: boom at step 3."
    ok = write_fixture_run(tmp_path, "ok")
    assert failure_in_words(load_snapshot(ok)) is None


@pytest.mark.parametrize("values, shown", [([36_000, 72_000], "35.2–70.3 KiB"), ([300 * 2**20, 300 * 2**20 + 1000], "300 MiB"),
                                           ([5, 5], "5 bytes"), ([], "–"), ([None, True], "–")])
def test_per_rank_memory_is_one_value_or_a_range(values, shown):
    from app.run_data import _range

    assert _range(values) == shown


def test_runs_table_rows(tmp_path):
    from engine import runstore

    run = write_fixture_run(tmp_path, "r", strategy="zero3", nproc=4)
    table = runs_table([runstore.summary(run)])
    row = table.iloc[0]
    assert (row["run"], row["status"], row["strategy"], row["ranks"]) == ("r", "succeeded", "ZeRO-3", 4)
    assert row["accuracy"] == pytest.approx(91.0) and row["traffic"] == pytest.approx(3.0)  # percent
    # ZeRO-3 shards everything: every rank holds 16Ψ/4 bytes (one value, not a range).
    assert row["model state"] == "35.5 KiB" and "note" not in table
    unreadable = runs_table([{"run_id": "x", "state": "unreadable", "error": "status.json: not UTF-8"}]).iloc[0]
    assert (unreadable["run"], unreadable["status"], unreadable["note"]) == ("x", "unreadable", "status.json: not UTF-8")


def test_every_chart_builds_a_valid_spec_from_a_fixture_run(tmp_path):
    snap: RunSnapshot = load_snapshot(write_fixture_run(tmp_path, "r", strategy="zero2", nproc=4))
    built = [
        charts.loss_chart(snap.train), charts.accuracy_chart(snap.evals), charts.memory_chart(snap.latest),
        charts.memory_over_steps_chart(snap.train), charts.phase_chart(snap.latest),
        charts.comm_chart(snap.latest, snap.param_count), charts.cumulative_comm_chart(snap.train),
        charts.throughput_chart(snap.train), charts.step_time_chart(snap.train),
        charts.compare_loss_chart({"a": snap.train, "b": snap.train}),
        charts.compare_memory_chart({"a": snap.latest, "b": snap.latest}),
        charts.compare_comm_chart({"a": snap.latest}, {"a": snap.param_count}, {"a": 4}),
        charts.shard_layout_chart(4),
    ]
    for chart in built:
        assert chart.to_dict()["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


@pytest.mark.parametrize("nproc", [2, 4, 8])
def test_per_rank_and_per_run_panels_wrap_within_a_1280_px_window(tmp_path, nproc):
    snap = load_snapshot(write_fixture_run(tmp_path, "r", strategy="zero3", nproc=nproc, steps=3))
    phase = charts.phase_chart(snap.latest).to_dict()
    per_panel = phase["spec"]["width"]["step"] * len(charts.PHASES) + charts.PANEL_GAP_PX + charts.FACET_SPACING_PX
    assert charts.AXIS_PX + phase["columns"] * per_panel <= charts.PANEL_BUDGET_PX
    assert phase["columns"] >= min(nproc, 3)  # a row still shows several ranks side by side
    six = {name: snap.latest for name in "abcdef"}  # the Runs page compares as many runs as a class picks
    for chart in (charts.compare_memory_chart(six), charts.compare_comm_chart(six, dict.fromkeys(six, PSI), dict.fromkeys(six, 4))):
        spec = chart.to_dict()
        width = spec["spec"]["width"]["step"] * nproc + charts.PANEL_GAP_PX + charts.FACET_SPACING_PX
        assert charts.AXIS_PX + spec["columns"] * width <= charts.PANEL_BUDGET_PX


def test_rss_axis_starts_at_zero_so_noise_does_not_look_like_growth():
    train = frame("ddp", steps=5)
    assert charts.memory_over_steps_chart(train).to_dict()["encoding"]["y"]["scale"]["zero"] is True


def test_compare_loss_skips_runs_without_a_step_and_colours_runs_apart():
    """A run with no training step yet used to raise 'If using all scalar values, you must pass an index'."""
    spec = charts.compare_loss_chart({"a": frame("ddp"), "b": pd.DataFrame(), "c": frame("zero3")}).to_dict()
    (rows,) = spec["datasets"].values()
    assert {r["run"] for r in rows} == {"a", "c"}
    assert spec["encoding"]["color"]["scale"]["domain"] == ["a", "b", "c"]
    assert len(set(spec["encoding"]["color"]["scale"]["range"])) == 3
    empty = charts.compare_loss_chart({"a": pd.DataFrame(), "b": pd.DataFrame()}).to_dict()
    assert not next(iter(empty["datasets"].values()))


def losses_train(losses: list[float], nproc: int = 2) -> pd.DataFrame:
    """rank, step, loss_global: every rank logs the same mean loss, step 1 onwards."""
    return pd.DataFrame([{"rank": r, "step": s, "loss_global": loss} for r in range(nproc)
                         for s, loss in enumerate(losses, start=1)])


@pytest.mark.parametrize("build", [
    lambda t: charts.compare_loss_chart({"a": t, "b": t}),  # Runs page, compare tab
    lambda t: loss_overlay_chart({"ddp": t[t["rank"] == 0].rename(columns={"loss_global": "loss"}),
                                  "zero3": t[t["rank"] == 0].rename(columns={"loss_global": "loss"})}),  # Compare page
])
def test_flat_loss_curves_get_an_axis_with_room_above_and_below(build):
    """One logged step (or runs at one value) gave a zero-width y domain: Vega drew a single tick labelled '2' for a
    loss of 2.3026. The axis now spans LOSS_MIN_SPAN of the loss about the curves (Vega's nice ticks then give
    about ten ticks on it: checked with vl-convert and in Chromium)."""
    for train in (losses_train([2.3026]), losses_train([2.3026] * 5), losses_train([0.01] * 3)):
        loss = float(train["loss_global"].iloc[0])
        low, high = build(train).to_dict()["encoding"]["y"]["scale"]["domain"]
        assert low < loss < high and high - low == pytest.approx(charts.LOSS_MIN_SPAN * max(loss, 1.0))
    descending = losses_train(list(np.linspace(2.3, 1.9, 20)))  # a real descent: fitted as before, no domain of ours
    assert build(descending).to_dict()["encoding"]["y"]["scale"] == {"zero": False}


def test_loss_scale_ignores_what_draws_no_point():
    assert charts.loss_scale(pd.Series([2.5, float("nan"), float("inf")])).to_dict()["domain"] == pytest.approx(
        [2.5 - 0.00125, 2.5 + 0.00125])
    assert charts.loss_scale(pd.Series([], dtype=float)).to_dict() == {"zero": False}


def test_shutdown_noise_of_a_cancel_is_set_apart():
    kept, noise = split_shutdown_noise(CANCELLED_LOG_TAIL, "cancelled")
    assert kept == "[rank0] step 12"
    assert noise.startswith("W1128") and "SignalException" in noise and "Connection closed by peer" in noise
    assert split_shutdown_noise(CANCELLED_LOG_TAIL, "failed") == (CANCELLED_LOG_TAIL, "")  # a failure is not noise


def test_find_run_accepts_only_a_run_id_inside_the_runs_folder(tmp_path):
    root = tmp_path / "runs"
    write_fixture_run(root, "20261128-013742-zero3")
    outside = write_fixture_run(tmp_path / "other", "elsewhere")
    (root / "link").symlink_to(outside)
    assert find_run("20261128-013742-zero3", root) == root / "20261128-013742-zero3"
    for bad in ["../other/elsewhere", str(outside), "x" * 5000, "..", ".", "", "link", "a\0b", None, 7, "missing"]:
        assert find_run(bad, root) is None, bad


def test_comm_chart_labels_totals_in_units_of_psi(tmp_path):
    snap = load_snapshot(write_fixture_run(tmp_path, "r", strategy="zero3", nproc=2))
    spec = charts.comm_chart(snap.latest, snap.param_count).to_dict()
    labels = [row["label"] for values in spec["datasets"].values() for row in values if "label" in row]
    assert labels == ["3.00 Ψ", "3.00 Ψ"]


def test_shard_layout_matches_the_stages():
    data = charts.shard_layout_frame(4)
    sharded = data[data["holding"] == "1/N shard"].groupby("stage")["part"].agg(set).to_dict()
    assert "DDP" not in sharded
    assert sharded["ZeRO-1"] == {"optimizer state"}
    assert sharded["ZeRO-2"] == {"optimizer state", "gradients"}
    assert sharded["ZeRO-3"] == {"optimizer state", "gradients", "parameters"}
    assert len(data) == 4 * 4 * 3


def test_on_gpu_other_is_cuda_allocated_minus_model_state():
    latest = latest_per_rank(frame("zero3"))
    latest = latest.assign(cuda_allocated_bytes=latest["mem/step/params_bytes"] * 10)
    data = charts.memory_frame(latest, cuda=True)
    assert charts.OTHER_LABEL_CUDA in set(data["category"]) and charts.OTHER_LABEL not in set(data["category"])
    rank0 = data[data["rank"] == 0]
    assert rank0["bytes"].sum() == latest.iloc[0]["cuda_allocated_bytes"]
    assert charts.memory_over_steps_chart(latest, cuda=True).to_dict()["title"] == "CUDA allocated per rank over steps"


def test_a_live_spec_is_the_same_from_the_empty_frame_to_the_last_step_and_carries_its_rows_apart():
    """The browser redraws a chart from nothing when its spec changes; rows added under the same spec only
    update it. The loss chart's spec must not change between the waiting frame, a first step logged by one
    rank only, and a full run."""
    train = frame("ddp")
    specs = [charts.live_spec(charts.loss_chart(t, ranks=range(4)))
             for t in (pd.DataFrame(), train[(train["step"] == 1) & (train["rank"] == 0)], train)]
    rows = [spec.pop("datasets")[charts.LIVE_ROWS] for spec in specs]
    assert [len(r) for r in rows] == [0, 2, len(charts.loss_frame(train))]
    assert json.dumps(specs[0]) == json.dumps(specs[1]) == json.dumps(specs[2])
    assert specs[0]["data"] == {"name": charts.LIVE_ROWS} and specs[0]["title"] == "Training loss"
    assert "config" not in specs[0], "Streamlit draws Altair charts without Altair's default 300 px view"
    # The plot keeps its height whatever the legend takes, so charts side by side have plots of one height.
    assert specs[0]["autosize"] == {"type": "fit-x", "contains": "padding"}
    assert "autosize" not in charts.live_spec(charts.phase_chart(latest_per_rank(train))), "a facet keeps its size"


def test_every_live_chart_of_the_run_view_validates_with_its_rows_under_the_fixed_name():
    snap_train = frame("zero3")
    latest = latest_per_rank(snap_train)
    for chart in (charts.loss_chart(snap_train), charts.memory_chart(latest), charts.memory_over_steps_chart(snap_train),
                  charts.phase_chart(latest), charts.cumulative_comm_chart(snap_train),
                  charts.throughput_chart(snap_train), charts.step_time_chart(snap_train)):
        spec = charts.live_spec(chart)
        assert spec["data"] == {"name": charts.LIVE_ROWS} and not spec["datasets"][charts.LIVE_ROWS].empty
    with pytest.raises(TypeError):
        charts.live_spec(charts.comm_chart(latest, 1000))  # two layers with rows of their own


def test_step_axes_show_whole_steps_only():
    """A run with a few steps drew ticks at 1.5, 2.5, ...: steps are whole."""
    train = frame("ddp")
    for chart in (charts.loss_chart(train), charts.throughput_chart(train), charts.step_time_chart(train),
                  charts.memory_over_steps_chart(train), charts.cumulative_comm_chart(train)):
        axis = chart.to_dict()["encoding"]["x"]["axis"]
        assert axis["tickMinStep"] == 1 and axis["format"] == "d"


def test_the_predicted_staircase_draws_the_chosen_strategy_in_full_and_the_others_faint():
    from app import lesson_charts
    from engine.estimate import ModelStates

    states = {s: [ModelStates(4000, 4000, 8000, 0)] * 2 for s in ("ddp", "zero1", "zero2", "zero3")}
    spec = lesson_charts.staircase_chart(lesson_charts.predicted_latest(states), chosen="zero2").to_dict()
    opacity = spec["encoding"]["opacity"]
    assert opacity["condition"]["test"] == "(datum.strategy === 'ZeRO-2')" and opacity["value"] < 1
    plain = lesson_charts.staircase_chart(lesson_charts.predicted_latest(states)).to_dict()["encoding"]
    assert plain["opacity"] == {"value": 1.0}, "without a pick (the Compare page) every bar is in full colour"
