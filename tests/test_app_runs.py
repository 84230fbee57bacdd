"""The Runs page through AppTest, on fixture run directories in the contract format."""

import io
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import state
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
    assert table.loc["a-ddp", "final loss"] == pytest.approx(2.3 * 2.718281828 ** (-20 / 40) + 0.105, rel=1e-6)
    assert len(table.loc["b-zero3", "peak RSS per rank (MiB)"].split(" · ")) == 4


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
    assert "runs_cancel" not in [b.key for b in at.button]


def test_metrics_csv_holds_every_train_record(runs):
    from app.run_data import metrics_csv

    run = write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2, steps=12)
    table = pd.read_csv(io.BytesIO(metrics_csv(run)))
    assert len(table) == 24 and {"step", "rank", "loss", "mem/step/params_bytes", "comm/all_reduce/bytes"} <= set(table)


def test_compare_draws_two_runs_on_one_set_of_charts(runs):
    write_fixture_run(runs, "a-ddp", strategy="ddp", nproc=2, steps=12)
    write_fixture_run(runs, "b-zero3", strategy="zero3", nproc=2, steps=12)
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    at.multiselect(key=state.RUNS_COMPARE).set_value(["a-ddp", "b-zero3"]).run()
    assert not at.exception
    charts = charts_by_title(at)
    loss = charts["Loss (mean over ranks), runs overlaid"][0]
    assert set(loss["run"]) == {"a-ddp · DDP", "b-zero3 · ZeRO-3"} and len(loss) == 24
    memory = charts["Model state per rank"][0]
    per_run = memory.groupby("run")["bytes"].sum()
    assert per_run["a-ddp · DDP"] == pytest.approx(2 * per_run["b-zero3 · ZeRO-3"], rel=0.01)  # 16Ψ vs 8Ψ per 2 ranks
    comm = charts["Communication per step"][0]
    assert set(comm["op"]) == {"all_reduce", "all_gather", "reduce_scatter"}


def test_compare_needs_two_runs(runs):
    write_fixture_run(runs, "a-ddp")
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    at.multiselect(key=state.RUNS_COMPARE).set_value(["a-ddp"]).run()
    assert "Choose two or more runs" in at.info[0].value
    assert "Loss (mean over ranks), runs overlaid" not in charts_by_title(at)
