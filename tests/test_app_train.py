"""The Train page through AppTest: the form, inline spec errors, and a real launch whose charts hold its data."""

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import state
from tests.app_fixtures import charts_by_title, write_fixture_run
from engine.spec import JobSpec, SpecError
from engine.registry import MODELS

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "app" / "views" / "train.py")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(path))  # the app reads it at call time
    st.cache_resource.clear()
    st.cache_data.clear()
    return path


def train_page(**query) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def errors(at) -> list[str]:
    return [e.value for e in at.error]


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(global_batch=30, nproc=4), "global_batch"),
        (dict(lr=0.0), "lr"),
        (dict(model="gpt", dataset="digits"), "dataset"),
        (dict(size="huge"), "size"),
        (dict(strategy="zero4"), "strategy"),
        (dict(steps=0), "steps"),
        (dict(nproc=65), "nproc"),
    ],
)
def test_every_spec_error_maps_to_its_field(changes, field):
    with pytest.raises(SpecError) as caught:
        JobSpec(**changes)
    assert caught.value.field == field


def test_form_starts_with_a_first_run_that_trains_in_seconds(runs):
    at = train_page()
    assert not at.exception and not errors(at)
    keys = state.FORM_FIELDS
    assert at.selectbox(key=keys["model"]).value == "mlp"
    assert at.selectbox(key=keys["size"]).value == state.FIRST_RUN.size
    assert at.selectbox(key=keys["dataset"]).value == "digits"
    assert at.number_input(key=keys["nproc"]).value == 2
    assert at.radio(key=keys["strategy"]).options == ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert any("ZeroRedundancyOptimizer" in c for c in at.radio(key=keys["strategy"]).proto.captions)
    assert at.button(key="train_launch")


def test_choosing_a_text_model_offers_only_text_data(runs):
    at = train_page()
    at.selectbox(key=state.FORM_FIELDS["model"]).set_value("gpt").run()
    dataset = at.selectbox(key=state.FORM_FIELDS["dataset"])
    assert dataset.value == "text" and len(dataset.options) == 1
    kept = state.FIRST_RUN.size if state.FIRST_RUN.size in MODELS["gpt"].presets else "tiny"  # kept if gpt has it
    assert at.selectbox(key=state.FORM_FIELDS["size"]).value == kept


def test_invalid_batch_shows_the_error_at_the_field_and_launches_nothing(runs):
    at = train_page()
    at.number_input(key=state.FORM_FIELDS["nproc"]).set_value(4)
    at.number_input(key=state.FORM_FIELDS["global_batch"]).set_value(30)
    at.button(key="train_launch").click().run()
    assert errors(at) == ["global batch 30 is not divisible by 4 ranks (try 28)"]
    assert at.session_state[state.FORM_ERRORS] == {"global_batch": errors(at)[0]}
    assert at.session_state[state.CURRENT_RUN] is None
    assert not runs.exists() or not any(runs.iterdir())
    # The error sits in the optimize column, right after the global-batch input.
    column = at.columns[2]
    kinds = [type(e).__name__ for e in column]
    assert "Error" in kinds


def test_a_failed_run_says_why_at_the_top(runs):
    write_fixture_run(runs, "broken", steps=5, steps_done=2, state="failed", error="RuntimeError: injected failure")
    at = train_page(run="broken")
    assert errors(at)[0] == "Rank 1 stopped with an error: RuntimeError: injected failure."
    assert not at.button(key="train_cancel") if "train_cancel" in [b.key for b in at.button] else True


def test_active_run_shows_cancel_and_progress(runs):
    write_fixture_run(runs, "live", steps=100, steps_done=40, state="running")
    at = train_page(run="live")
    assert "train_cancel" in [b.key for b in at.button]
    assert "step 40 of 100" in at.get("progress")[0].proto.text
    titles = charts_by_title(at)
    assert len(titles["Training loss"][0]) == 3 * 40


@pytest.mark.torchrun
def test_launch_trains_a_real_run_and_the_charts_hold_its_data(runs):
    from engine import launcher, runstore

    at = train_page()
    at.number_input(key=state.FORM_FIELDS["steps"]).set_value(6)
    at.button(key="train_launch").click().run()
    assert not errors(at), errors(at)
    run_id = at.session_state[state.CURRENT_RUN]
    assert run_id and (runs / run_id / "spec.json").is_file()
    assert json.loads((runs / run_id / "spec.json").read_text())["steps"] == 6
    assert launcher.wait(run_id, runs_dir=runs, timeout_s=180)["state"] == "succeeded"

    at.run()
    assert not at.exception and not errors(at)
    charts = charts_by_title(at)
    train = runstore.metrics_frame(runs / run_id)
    loss = charts["Training loss"][0]
    assert set(loss["series"]) == {"rank 0", "rank 1", "mean over ranks"}
    for rank in (0, 1):
        drawn = loss[loss["series"] == f"rank {rank}"].sort_values("step")
        assert drawn["step"].tolist() == list(range(1, 7))
        assert drawn["loss"].tolist() == pytest.approx(train[train["rank"] == rank]["loss"].tolist())
    memory = charts["Memory per rank after the newest step"][0]
    assert set(memory["rank"]) == {"rank 0", "rank 1"}
    params = memory[(memory["category"] == "parameters") & (memory["rank"] == "rank 0")]["bytes"].item()
    assert params == train[(train["rank"] == 0) & (train["step"] == 6)]["mem/step/params_bytes"].item() > 0
    comm = charts["Communication per step (payload, by collective)"]
    assert set(comm[0]["op"]) == {"all_reduce"}
    metrics = [m.value for m in at.metric]
    assert metrics[3] == "2.00 Ψ"  # DDP: the paper's 2Ψ
    (final_eval,) = [r for r in runstore.read_metrics(runs / run_id) if r["kind"] == "eval" and r["rank"] == 0]
    assert metrics[1] == f"{final_eval['eval_accuracy']:.1%}"  # one eval (after the last step): a number, no chart
    assert "train_cancel" not in [b.key for b in at.button]

    # The Runs page lists the finished run (read back from disk, not from this session).
    runs_page = AppTest.from_file(str(ROOT / "app" / "views" / "runs.py"), default_timeout=60).run()
    table = runs_page.dataframe[0].value
    assert table["run"].tolist() == [run_id]
    assert table["status"].tolist() == ["succeeded"] and table["strategy"].tolist() == ["DDP"]


def test_accuracy_is_charted_once_there_are_two_evaluations(runs):
    run = write_fixture_run(runs, "evals", steps=20)
    with open(run / "metrics" / "rank0.jsonl", "a") as f:  # an eval at step 10 as well as the final one
        f.write(json.dumps({"kind": "eval", "step": 10, "rank": 0, "t": 1.0, "eval_loss": 0.9, "eval_accuracy": 0.5}) + "\n")
    accuracy = charts_by_title(train_page(run="evals"))["Held-out accuracy"][0]
    assert accuracy.sort_values("step")["eval_accuracy"].tolist() == [0.5, 0.91]
