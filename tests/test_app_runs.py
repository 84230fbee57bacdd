"""The Runs page through AppTest, on fixture run directories in the contract format."""

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import state
from engine import runstore
from tests.app_fixtures import charts_by_title, write_fixture_run

PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "runs.py")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(path))
    st.cache_resource.clear()
    st.cache_data.clear()
    return path


def test_no_runs_says_where_it_looked(runs):
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    assert str(runs.resolve()) in at.info[0].value


def test_lists_every_run_on_disk_with_its_numbers(runs):
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2)
    write_fixture_run(runs, "b-zero3", strategy="zero3", nproc=4, steps=10, steps_done=4, state="failed", error="boom")
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("run")
    assert set(table.index) == {"a-ddp", "b-zero3"}
    assert table.loc["a-ddp", "status"] == "succeeded" and table.loc["b-zero3", "status"] == "failed"
    assert table.loc["b-zero3", "strategy"] == "ZeRO-3" and table.loc["b-zero3", "ranks"] == 4
    assert table.loc["b-zero3", "steps"] == "4/10"
    assert table.loc["a-ddp", "loss"] == pytest.approx(2.3 * 2.718281828 ** (-20 / 40) + 0.105, rel=1e-6)
    # Traffic in the paper's units of Ψ: DDP's all-reduce counts twice its payload, ZeRO-3 gathers twice.
    assert table.loc["a-ddp", "traffic"] == pytest.approx(2.0)
    assert table.loc["b-zero3", "traffic"] == pytest.approx(3.0)
    # Per-rank memory in one short cell whatever the rank count (the fixture's RSS differs by 1 kB per rank).
    assert table.loc["b-zero3", "peak RSS"] == "300 MiB"
    assert table.loc["b-zero3", "note"] == "boom"


def test_open_a_run_draws_it_and_offers_its_metrics_as_csv(runs):
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2, steps=12)
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    at.selectbox(key=state.RUNS_OPEN).set_value("a-ddp").run()
    assert not at.exception
    charts = charts_by_title(at)
    assert len(charts["Training loss"][0]) == 3 * 12
    assert set(charts["Memory per rank after the newest step"][0]["rank"]) == {"rank 0", "rank 1"}
    download = at.get("download_button")[0]
    assert download.proto.label == "Download metrics (CSV)"
    assert state.cancel_key(state.RUNS_VIEW) not in [b.key for b in at.button]


def test_metrics_csv_holds_every_train_record(runs):
    from app.run_data import metrics_csv

    run = write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2, steps=12)
    table = pd.read_csv(io.BytesIO(metrics_csv(run)))
    assert len(table) == 24 and {"step", "rank", "loss", "mem/step/params_bytes", "comm/all_reduce/bytes"} <= set(table)
    # The held-out evaluation is in the file too, on the rows of the step it ran at (the fixture's last).
    evaluated = table.dropna(subset=["eval_accuracy"])
    assert evaluated["step"].tolist() == [12, 12] and evaluated["eval_accuracy"].tolist() == [0.91, 0.91]


def compare(runs, *ids) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    at.multiselect(key=state.RUNS_COMPARE).set_value(list(ids)).run()
    assert not at.exception, at.exception
    return at


def chart_spec(at, title: str) -> dict:
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        text = spec.get("title", "")
        if (text.get("text") if isinstance(text, dict) else text) == title:
            return spec
    raise AssertionError(f"no chart {title!r}")


def test_compare_draws_two_runs_on_one_set_of_charts(runs):
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2, steps=12)
    write_fixture_run(runs, "b-zero3", strategy="zero3", nproc=2, steps=12)
    at = compare(runs, "a-ddp", "b-zero3")
    charts = charts_by_title(at)
    loss = charts["Loss (mean over ranks), runs overlaid"][0]
    assert set(loss["run"]) == {"DDP · a-ddp", "ZeRO-3 · b-zero3"} and len(loss) == 24
    memory = charts["Model state per rank"][0]
    per_run = memory.groupby("run")["bytes"].sum()
    assert per_run["DDP · a-ddp"] == pytest.approx(2 * per_run["ZeRO-3 · b-zero3"], rel=0.01)  # 16Ψ vs 8Ψ per 2 ranks
    traffic = charts["Traffic per step"][0]
    assert set(traffic["op"]) == {"all_reduce", "all_gather", "reduce_scatter"}
    # Paper convention: DDP 2Ψ, ZeRO-3 3Ψ per rank (raw payload would read 1 : 3).
    per_rank = traffic.groupby("run")["traffic_bytes"].sum() / 2
    assert per_rank["ZeRO-3 · b-zero3"] / per_rank["DDP · a-ddp"] == pytest.approx(1.5)
    assert traffic.groupby("run")["psi_units"].sum().div(2).round(6).to_dict() == {"DDP · a-ddp": 2.0, "ZeRO-3 · b-zero3": 3.0}
    # Distinct colours per run, and a loss axis that fits the curves rather than starting at zero.
    spec = chart_spec(at, "Loss (mean over ranks), runs overlaid")
    colors = spec["encoding"]["color"]["scale"]["range"]
    assert len(set(colors)) == 2
    assert spec["encoding"]["y"]["scale"]["zero"] is False


@pytest.mark.parametrize("state_, steps_done", [("cancelled", 0), ("failed", 0), ("running", 0), ("queued", 0)])
def test_compare_with_a_run_that_has_no_training_step(runs, state_, steps_done):
    """Used to raise 'If using all scalar values, you must pass an index' in app/charts.py."""
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2, steps=12)
    write_fixture_run(runs, "b-early", strategy="zero2", nproc=2, steps=12, steps_done=steps_done, state=state_)
    at = compare(runs, "a-ddp", "b-early")
    loss = charts_by_title(at)["Loss (mean over ranks), runs overlaid"][0]
    assert set(loss["run"]) == {"DDP · a-ddp"}
    assert any("No training step yet" in c.value and "b-early" in c.value for c in at.caption)


def test_an_unreadable_run_is_a_row_with_its_reason(runs, monkeypatch):
    """runstore.list_runs lists a broken folder as state 'unreadable' with an 'error' string (the contract)."""
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2)
    (runs / "b-broken").mkdir()
    (runs / "b-broken" / "spec.json").write_text("[]")  # JSON, but not a spec
    real = runstore.list_runs

    def with_unreadable(root=None):
        listed = [r for r in real(root) if r["run_id"] != "b-broken"]
        return listed + [{"run_id": "b-broken", "state": "unreadable", "error": "spec.json: not a JSON object"}]

    monkeypatch.setattr(runstore, "list_runs", with_unreadable)
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["b-broken", "status"] == "unreadable"
    assert table.loc["b-broken", "note"] == "spec.json: not a JSON object"
    # The note column would run past a 1,280 px window: it is hidden, and the note is listed under the table.
    assert json.loads(at.dataframe[0].proto.columns)["note"]["hidden"] is True
    assert [w.value for w in at.warning] == ["- **b-broken** (unreadable): spec\\.json: not a JSON object"]
    assert at.multiselect(key=state.RUNS_COMPARE).options == ["DDP · a-ddp · 2 ranks · succeeded"]


def test_a_folder_whose_spec_is_not_an_object_does_not_break_the_page(runs):
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2)
    (runs / "b-broken").mkdir()
    (runs / "b-broken" / "spec.json").write_text("[]")
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["b-broken", "status"] == "unreadable"


def test_compare_needs_two_runs(runs):
    write_fixture_run(runs, "a-ddp")
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    at.multiselect(key=state.RUNS_COMPARE).set_value(["a-ddp"]).run()
    assert "Choose two or more runs" in at.info[0].value
    assert "Loss (mean over ranks), runs overlaid" not in charts_by_title(at)
