"""The Compare page through AppTest, with the launch stubbed: what its buttons start."""

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import state
from engine import compare, runstore
from tests.app_fixtures import write_fixture_run

PAGE = str(Path(__file__).resolve().parent.parent / "app" / "views" / "compare.py")


@pytest.fixture
def launches(tmp_path, monkeypatch):
    """Replaces compare.launch_all: each call writes its runs as 'running' fixtures and a group, and is recorded."""
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    calls = []

    def fake_launch_all(spec, runs_dir=None, strategies=compare.ORDER, kind="compare"):
        n = len(calls)
        runs = {s: write_fixture_run(tmp_path, f"g{n}-{s}", strategy=s, state="running", steps_done=1).name
                for s in strategies}
        calls.append((kind, spec))
        return runstore.write_group(runs, tmp_path, kind=kind), runs

    monkeypatch.setattr(compare, "launch_all", fake_launch_all)
    return calls


@pytest.mark.parametrize("button, kind", [("compare_wall", "memory_wall"), ("compare_launch", "compare")])
def test_a_double_click_starts_one_group(launches, button, kind):
    """Both clicks of a double click reach the server: the wall demo started 4 runs instead of 2."""
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.button(key=button).click().run()
    first = at.session_state[state.COMPARE_GROUP]
    at.button(key=button).click().run()  # the second click, while the group's runs are still running
    assert not at.exception
    assert [k for k, _ in launches] == [kind]
    assert at.session_state[state.COMPARE_GROUP] == first


def test_a_new_group_starts_once_the_last_one_has_finished(launches, tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.button(key="compare_wall").click().run()
    for run_id in at.session_state[state.COMPARE_LAST_LAUNCH]["runs"].values():
        write_fixture_run(tmp_path, run_id, state="succeeded")
    at.button(key="compare_wall").click().run()
    assert [k for k, _ in launches] == ["memory_wall", "memory_wall"]


DAMAGE = {
    "deleted": (None, "no run 'gone-ddp'"),
    "spec": (("spec.json", "[]"), "spec.json holds list, not a spec object"),
    "status": (("status.json", "[1,2]"), "status.json holds list, not an object"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_group_whose_run_was_deleted_or_damaged_draws_the_rest(tmp_path, monkeypatch, how):
    """A group file outlives its runs: a deleted or damaged member raised into the page."""
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    st.cache_resource.clear()
    write_fixture_run(tmp_path, "ok-zero3", strategy="zero3")
    damage, says = DAMAGE[how]
    if damage:
        name, text = damage
        (write_fixture_run(tmp_path, "gone-ddp") / name).write_text(text)
    group = runstore.write_group({"ddp": "gone-ddp", "zero3": "ok-zero3"}, tmp_path)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["group"] = group
    at.run()
    assert not at.exception
    (warning,) = [w.value for w in at.warning if w.value.startswith("DDP cannot be drawn")]
    assert says in warning
    assert [m.value for m in at.markdown if m.value.startswith("**ZeRO-3**")]  # the readable member is drawn


@pytest.mark.parametrize("button, kind", [("compare_wall", "memory_wall"), ("compare_launch", "compare")])
def test_a_launch_switches_the_page_to_its_new_group(launches, tmp_path, button, kind):
    """With a group already shown (its id in the URL), a new launch started its runs but the page kept showing the
    old group: the URL's ?group= won over the callback's choice on the rerun."""
    shown = runstore.write_group({"zero3": write_fixture_run(tmp_path, "old-zero3", strategy="zero3").name}, tmp_path)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["group"] = shown  # a link or a reload brought the old group
    at.run()
    assert at.selectbox(key=state.COMPARE_GROUP).value == shown
    at.button(key=button).click().run()
    assert not at.exception
    new = at.session_state[state.COMPARE_LAST_LAUNCH]["group_id"]
    assert [k for k, _ in launches] == [kind] and new != shown
    assert at.selectbox(key=state.COMPARE_GROUP).value == new
    assert [m.value for m in at.markdown if m.value.startswith("**DDP**")]  # the new group's runs are drawn
    at.run()  # a later rerun (the live view's timer) keeps the new group
    assert at.selectbox(key=state.COMPARE_GROUP).value == new


def test_a_group_in_the_url_is_opened(launches, tmp_path):
    """The Learn page's evidence links and the Train page's button open ?group=<id>, not the newest group."""
    older = runstore.write_group({"zero3": write_fixture_run(tmp_path, "a-zero3", strategy="zero3").name}, tmp_path)
    runstore.write_group({"zero3": write_fixture_run(tmp_path, "b-zero3", strategy="zero3").name}, tmp_path)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["group"] = older
    at.run()
    assert at.selectbox(key=state.COMPARE_GROUP).value == older
