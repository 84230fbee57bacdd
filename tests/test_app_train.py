"""The Train page through AppTest: the form, inline spec errors, and a real launch whose charts hold its data."""

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import state
from tests.app_fixtures import CANCELLED_LOG_TAIL, charts_by_title, write_fixture_run
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
    assert at.button(key=state.LAUNCH_BUTTON)


def test_the_form_shows_the_predicted_staircase_for_its_model_and_ranks(runs):
    from app.train_form import PREVIEW_TITLE
    from engine.estimate import estimate_for_spec

    at = train_page()
    (drawn,) = charts_by_title(at)[PREVIEW_TITLE]
    per_rank = drawn.groupby(["strategy", "rank"])["bytes"].sum()
    for strategy, label in (("ddp", "DDP"), ("zero3", "ZeRO-3")):
        predicted = estimate_for_spec({**state.FIRST_RUN.__dict__, "strategy": strategy})
        assert [per_rank[(label, f"rank {r}")] for r in range(state.FIRST_RUN.nproc)] == [
            p.total_bytes for p in predicted]
    assert per_rank[("DDP", "rank 0")] > per_rank[("ZeRO-3", "rank 0")]
    at.number_input(key=state.FORM_FIELDS["nproc"]).set_value(4).run()
    (drawn,) = charts_by_title(at)[PREVIEW_TITLE]
    assert set(drawn["rank"]) == {f"rank {r}" for r in range(4)}, "the preview follows the form"
    at.number_input(key=state.FORM_FIELDS["global_batch"]).set_value(30).run()
    assert PREVIEW_TITLE not in charts_by_title(at), "no prediction for a spec the form refuses"
    (why,) = [c.value for c in at.caption if c.value.startswith("No prediction")]
    assert "not divisible" in why and not (runs.exists() and any(runs.iterdir())), "said why; launched nothing"


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
    at.button(key=state.LAUNCH_BUTTON).click().run()
    assert errors(at) == ["global batch 30 is not divisible by 4 ranks (try 28)"]
    assert at.session_state[state.FORM_ERRORS] == {"global_batch": errors(at)[0]}
    assert at.session_state[state.CURRENT_RUN] is None
    assert not runs.exists() or not any(runs.iterdir())
    # The error sits in the optimize column, right after the global-batch input.
    column = at.columns[2]
    kinds = [type(e).__name__ for e in column]
    assert "Error" in kinds


def in_page_order(node) -> list:
    """Every element of an AppTest tree, depth first, in the order the page draws them."""
    children = getattr(node, "children", None)
    if not children:
        return [node]
    return [leaf for index in sorted(children) for leaf in in_page_order(children[index])]


def error_under(at, key: str) -> str | None:
    """The message of the error drawn right after the widget `key`, if the next element is an error."""
    elements = in_page_order(at._tree)
    for here, after in zip(elements, elements[1:]):
        if getattr(here, "key", None) == key:
            return after.value if type(after).__name__ == "Error" else None
    raise AssertionError(f"no widget {key}")


def no_run_folder(runs) -> bool:
    return not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    "field, typed, says",
    [
        ("steps", 0, "steps must be a whole number of at least 1 (got 0)"),
        ("lr", 50.0, "learning rate must be between 0 and 10 (got 50.0)"),
        ("nproc", 9, "9 ranks is more than the 8 CPU ranks this form starts on one machine (choose 1 to 8)"),
        ("global_batch", -5, "global_batch must be a whole number of at least 1 (got -5)"),
    ],
)
def test_an_out_of_range_number_is_refused_under_its_field_as_typed(runs, field, typed, says):
    """The browser used to clamp these back to the last valid value and launch that (steps 0 launched 50)."""
    at = train_page()
    key = state.FORM_FIELDS[field]
    at.number_input(key=key).set_value(typed)
    at.button(key=state.LAUNCH_BUTTON).click().run()
    assert not at.exception
    assert at.number_input(key=key).value == typed  # kept as typed, not reverted
    assert error_under(at, key) == says
    assert errors(at) == [says]
    assert at.session_state[state.CURRENT_RUN] is None and no_run_folder(runs)


def test_every_out_of_range_number_is_refused_at_once_each_under_its_field(runs):
    """JobSpec stops at its first error; a class that typed four bad numbers used to see one error per click."""
    at = train_page()
    typed = {"steps": 0, "lr": 50.0, "nproc": 9, "global_batch": -5}
    for field, value in typed.items():
        at.number_input(key=state.FORM_FIELDS[field]).set_value(value)
    at.button(key=state.LAUNCH_BUTTON).click().run()
    assert not at.exception
    assert set(at.session_state[state.FORM_ERRORS]) == set(typed)
    assert error_under(at, state.FORM_FIELDS["steps"]) == "steps must be a whole number of at least 1 (got 0)"
    assert error_under(at, state.FORM_FIELDS["lr"]) == "learning rate must be between 0 and 10 (got 50.0)"
    assert error_under(at, state.FORM_FIELDS["nproc"]).startswith("9 ranks is more than the 8 CPU ranks")
    assert error_under(at, state.FORM_FIELDS["global_batch"]) == "global_batch must be a whole number of at least 1 (got -5)"
    assert all(at.number_input(key=state.FORM_FIELDS[f]).value == v for f, v in typed.items())
    assert at.session_state[state.CURRENT_RUN] is None and no_run_folder(runs)


def test_a_batch_that_does_not_split_over_valid_ranks_is_one_error(runs):
    at = train_page()
    at.number_input(key=state.FORM_FIELDS["nproc"]).set_value(3)
    at.button(key=state.LAUNCH_BUTTON).click().run()
    assert at.session_state[state.FORM_ERRORS] == {"global_batch": "global batch 64 is not divisible by 3 ranks (try 63)"}
    assert no_run_folder(runs)


@pytest.mark.torchrun
def test_a_double_click_on_launch_starts_one_run(runs):
    from engine import launcher

    at = train_page()
    at.number_input(key=state.FORM_FIELDS["steps"]).set_value(5)
    at.button(key=state.LAUNCH_BUTTON).click().run()
    first = at.session_state[state.CURRENT_RUN]
    try:
        assert first and not errors(at)
        at.button(key=state.LAUNCH_BUTTON).click().run()  # the second click of the double click
        assert at.session_state[state.CURRENT_RUN] == first
        assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == [first]  # .queue is the launch queue
    finally:
        launcher.cancel(first, runs_dir=runs)


def test_a_failed_run_says_why_at_the_top(runs):
    write_fixture_run(runs, "broken", steps=5, steps_done=2, state="failed", error="RuntimeError: injected failure")
    at = train_page(run="broken")
    assert errors(at)[0] == "Rank 1 stopped with an error: RuntimeError: injected failure."
    assert state.cancel_key(state.TRAIN_VIEW) not in [b.key for b in at.button]  # nothing to cancel


def test_active_run_shows_cancel_and_progress(runs):
    write_fixture_run(runs, "live", steps=100, steps_done=40, state="running")
    at = train_page(run="live")
    assert state.cancel_key(state.TRAIN_VIEW) in [b.key for b in at.button]
    assert "step 40 of 100" in at.get("progress")[0].proto.text
    titles = charts_by_title(at)
    assert len(titles["Training loss"][0]) == 3 * 40


def test_a_run_waiting_for_its_first_step_lays_out_the_loss_chart_its_first_step_fills(runs):
    """The browser only adds rows to a chart whose spec is unchanged and at the same place; a new spec or
    place is drawn from nothing (about a second on a busy machine), so the first point would wait for it."""
    def loss_spec(at):
        (element,) = [e for e in at.get("vega_lite_chart") if "Training loss" in e.proto.spec]
        rows = sum(len(frame) for frame in charts_by_title(at)["Training loss"])
        return element.proto.spec, rows

    write_fixture_run(runs, "starting", steps=100, steps_done=0, state="running")
    at = train_page(run="starting")
    assert any("Waiting for the first step" in i.value for i in at.info)
    waiting_spec, waiting_rows = loss_spec(at)
    write_fixture_run(runs, "started", steps=100, steps_done=1, state="running")
    started_spec, started_rows = loss_spec(train_page(run="started"))
    assert (waiting_rows, started_rows) == (0, 3)
    assert waiting_spec == started_spec


@pytest.mark.torchrun
def test_launch_trains_a_real_run_and_the_charts_hold_its_data(runs):
    from engine import launcher, runstore

    at = train_page()
    at.number_input(key=state.FORM_FIELDS["steps"]).set_value(6)
    at.button(key=state.LAUNCH_BUTTON).click().run()
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
    comm = charts["Traffic per step, by collective"]
    assert set(comm[0]["op"]) == {"all_reduce"}
    all_reduce = train[(train["rank"] == 0) & (train["step"] == 6)]["comm/all_reduce/bytes"].item()
    assert comm[0][comm[0]["rank"] == "rank 0"]["traffic_bytes"].item() == 2 * all_reduce  # paper convention
    metrics = [m.value for m in at.metric]
    assert metrics[3] == "2.00 Ψ"  # DDP: the paper's 2Ψ
    (final_eval,) = [r for r in runstore.read_metrics(runs / run_id) if r["kind"] == "eval" and r["rank"] == 0]
    assert metrics[1] == f"{final_eval['eval_accuracy']:.1%}"  # one eval (after the last step): a number, no chart
    assert state.cancel_key(state.TRAIN_VIEW) not in [b.key for b in at.button]

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


def warnings(at) -> list[str]:
    return [w.value for w in at.warning]


@pytest.mark.parametrize("value", ["../other/elsewhere", "ABSOLUTE", "x" * 5000, "..", ".", "a/../elsewhere"])
def test_run_parameter_accepts_only_a_run_id_inside_the_runs_folder(runs, tmp_path, value):
    """A running run outside the runs folder would otherwise be shown, with a working Cancel."""
    write_fixture_run(runs, "mine", steps=10, steps_done=5, state="running")
    elsewhere = write_fixture_run(tmp_path / "other", "elsewhere", steps=10, steps_done=5, state="running")
    at = train_page(run=str(elsewhere) if value == "ABSOLUTE" else value)
    assert not at.exception
    (message,) = warnings(at)
    assert message.startswith("No such run:") and len(message) < 400
    assert state.cancel_key(state.TRAIN_VIEW) not in [b.key for b in at.button]
    assert not charts_by_title(at) and not at.get("progress")
    assert train_page(run="mine").get("progress")  # the same page opens a run that is in the folder


def test_a_cancelled_run_reads_as_a_cancel(runs):
    write_fixture_run(runs, "stopped", steps=100, steps_done=12, state="cancelled", log=CANCELLED_LOG_TAIL)
    at = train_page(run="stopped")
    assert not at.exception and not errors(at)
    assert any(i.value.startswith("Cancelled on request after step 12 of 100") for i in at.info)
    accuracy = at.metric[1]
    assert accuracy.value == "skipped" and "Not evaluated: the run was cancelled" in accuracy.proto.help
    by_label = {e.label.split(" (")[0]: e for e in at.expander}
    log, shutdown = by_label["Log"], by_label["Shutdown messages after cancel"]
    assert log.code[0].value == "[rank0] step 12"
    # Nothing but shutdown noise: the Log says so instead of showing an empty box.
    write_fixture_run(runs, "stopped-early", steps=100, steps_done=0, state="cancelled",
                      log=CANCELLED_LOG_TAIL.split("\n", 1)[1])
    at = train_page(run="stopped-early")
    by_label = {e.label.split(" (")[0]: e for e in at.expander}
    assert by_label["Log"].code[0].value.startswith("torchrun printed nothing before the cancel")
    assert by_label["Log"].code[0].proto.wrap_lines, "long log lines wrap instead of scrolling sideways"
    assert "SignalException" in shutdown.code[0].value and "Connection closed by peer" in shutdown.code[0].value


def test_a_running_run_still_promises_its_evaluation(runs):
    write_fixture_run(runs, "live", steps=100, steps_done=12, state="running")
    assert [m.value for m in train_page(run="live").metric][1] == "at step 100"  # evaluated after the last step
    spec = json.loads((runs / "live" / "spec.json").read_text())
    (runs / "live" / "spec.json").write_text(json.dumps({**spec, "eval_interval": 20}))
    assert [m.value for m in train_page(run="live").metric][1] == "at step 20"


@pytest.mark.parametrize("field, typed, says", [("nnodes", 2000, "Choose 1 to 1024 (got 2,000)."),
                                                ("nproc", 0, "Choose 1 to 64 (got 0).")])
def test_cluster_panel_refuses_an_out_of_range_shape_as_typed(runs, field, typed, says):
    """With min/max the browser kept the last valid node count and the page printed the script for that."""
    at = train_page()
    assert len(at.code) == 2  # the torchrun line and the Slurm script for the default 2 x 8
    key = state.CLUSTER_FIELDS[field]
    at.number_input(key=key).set_value(typed).run()
    assert not at.exception
    assert at.number_input(key=key).value == typed
    assert says in errors(at)
    assert not at.code  # no script for a shape other than the one shown


def test_cluster_panel_wraps_its_long_lines(runs):
    """The Slurm script's lines run far past a 1,280 px window: wrapped, not scrolled sideways."""
    at = train_page()
    assert [c.proto.wrap_lines for c in at.code] == [True, True]  # the torchrun line and the Slurm script
    assert max(len(line) for line in at.code[1].value.splitlines()) > 100  # long enough to need it


def test_a_quiet_succeeded_runs_log_says_what_happened_not_empty(runs):
    """torchrun prints nothing for a clean run: the Log read '(empty)'."""
    write_fixture_run(runs, "quiet", steps=20, state="succeeded", log="")
    at = train_page(run="quiet")
    assert not at.exception
    log = {e.label.split(" (")[0]: e for e in at.expander}["Log"].code[0].value
    assert log.startswith("torchrun printed nothing: a clean run is quiet")
    assert "succeeded" in log and "(9.0 s), exit code 0" in log
    assert "rank 0 started on fixture (pid 1000" in log and "rank 1 started on fixture (pid 1001" in log
