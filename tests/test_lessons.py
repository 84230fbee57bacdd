"""Classroom lessons: all four strategies at once, the sharding map, the collective log and the memory wall.

Pure parts are checked on their own; one module-scoped set of real runs (four strategies launched from the
Train page's button, plus the two-run memory wall demo, all at once) serves every real-run test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import state
from engine import compare, launcher, runstore
from engine.budget import MIB, OverBudget, check_budget
from engine.estimate import engine_param_shapes, estimate_engine_states
from engine.sharding import map_totals, measured_totals, sharding_map, sharding_map_for_spec
from tests.app_fixtures import charts_by_title

ROOT = Path(__file__).resolve().parent.parent
ENTRY = str(ROOT / "app" / "shardlab.py")
STEPS = 12


# ------------------------------------------------------------------ pure: the map, the budget, the groups


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3"])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("model, size, dataset", [("mlp", "tiny", "digits"), ("cnn", "tiny", "digits"),
                                                  ("gpt", "tiny", "text")])
def test_map_after_the_step_matches_the_engine_estimator(strategy, ranks, model, size, dataset):
    """The estimator's engine mode is held to real runs byte for byte; the map must agree with it."""
    shapes = engine_param_shapes(model, size, dataset)
    totals = map_totals(sharding_map(shapes, strategy, ranks))
    for rank, want in enumerate(estimate_engine_states(shapes, strategy, ranks)):
        got = {c: totals[(rank, "step", c)] for c in ("params", "master", "grads", "optimizer")}
        assert got == {"params": want.params_bytes, "master": want.master_bytes, "grads": want.grads_bytes,
                       "optimizer": want.optimizer_bytes}


def test_fsdp_shards_by_rows_with_a_short_last_shard():
    rows = sharding_map((("bias", (10,)),), "zero3", 4)
    params = [r for r in rows if r["phase"] == "step" and r["category"] == "params"]
    assert [(r["rows_from"], r["rows_to"]) for r in params] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [r["label"] for r in params][:2] == ["shard 1 of 4: rows 0..2", "shard 2 of 4: rows 3..5"]
    assert [r["bytes"] for r in params] == [12, 12, 12, 4]


def test_zero2_keeps_full_parameters_and_zero1_owns_whole_tensors():
    shapes = (("big", (100, 10)), ("small", (10,)))
    zero2 = [r for r in sharding_map(shapes, "zero2", 2) if r["phase"] == "forward"]
    assert {r["holding"] for r in zero2 if r["category"] == "params"} == {"full"}
    assert {r["holding"] for r in zero2 if r["category"] == "master"} == {"shard 1 of 2", "shard 2 of 2"}
    zero1 = [r for r in sharding_map(shapes, "zero1", 2) if r["phase"] == "step" and r["category"] == "optimizer"]
    owned = {r["rank"]: r["tensor"] for r in zero1}
    assert owned == {0: "big", 1: "small"}  # whole tensors: rank 0 holds 100x more state than rank 1
    first = [r for r in sharding_map(shapes, "ddp", 2, first_step=True) if r["phase"] == "forward"]
    assert {r["category"] for r in first} == {"params"}  # no gradients or Adam state before the first backward/step


def test_budget_message_names_rank_need_and_budget():
    check_budget(0, "step", 6 * MIB, 6)  # exactly at the budget fits
    with pytest.raises(OverBudget, match=r"rank 1 needs 8\.50 MiB after the optimizer step, budget 6 MiB "
                                         r"\(simulated device of 6 MiB\)"):
        check_budget(1, "step", int(8.5 * MIB), 6)


def test_groups_round_trip_and_are_not_runs(tmp_path):
    group_id = runstore.write_group({"ddp": "a", "zero3": "b"}, tmp_path, kind="memory_wall")
    assert runstore.read_group(group_id, tmp_path)["runs"] == {"ddp": "a", "zero3": "b"}
    assert [g["group_id"] for g in runstore.list_groups(tmp_path, kind="memory_wall")] == [group_id]
    assert runstore.list_runs(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        runstore.read_group("../nope", tmp_path)


def test_loss_differences_use_common_steps_only():
    diffs = compare.loss_differences({"ddp": {1: 2.0, 2: 1.5, 3: 1.0}, "zero3": {1: 2.0, 2: 1.5 + 1e-7}})
    assert list(diffs) == [1, 2] and diffs[2] == pytest.approx(1e-7)


def test_cli_compare_refuses_a_bad_spec_and_launches_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "compare", "--nproc", "3", "--batch", "64",
                             "--runs-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "not divisible by 3 ranks" in result.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# ------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def lessons(tmp_path_factory):
    """Four strategies launched by the Train page's button, and the memory wall demo, running together."""
    root = tmp_path_factory.mktemp("lesson-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHARDLAB_RUNS_DIR", str(root))
        st.cache_resource.clear()
        at = AppTest.from_file(ENTRY, default_timeout=120).run()
        at.selectbox(key=state.FORM_FIELDS["size"]).set_value("tiny")  # the lesson's model, not the form's default
        at.checkbox(key=state.FORM_FIELDS["memory_accurate"]).uncheck()
        at.number_input(key=state.FORM_FIELDS["steps"]).set_value(STEPS)
        at.button(key="train_compare_all").click().run()
        assert not at.exception, at.exception
        group_id = at.session_state[state.COMPARE_GROUP]
        wall_id, wall_runs = compare.launch_memory_wall(root)
        group = runstore.read_group(group_id, root)
        for run_id in [*group["runs"].values(), *wall_runs.values()]:
            launcher.wait(run_id, root, timeout_s=400)
        page = AppTest.from_file(ENTRY, default_timeout=120)
        page.switch_page("views/compare.py")
        page.query_params["group"] = group_id
        yield {"root": root, "group": group, "app": at, "wall": runstore.read_group(wall_id, root),
               "page": page.run()}
        st.cache_resource.clear()


def _run(lessons, strategy: str) -> Path:
    return lessons["root"] / lessons["group"]["runs"][strategy]


@pytest.mark.torchrun
def test_compare_all_four_from_the_train_page(lessons):
    assert lessons["app"].title[0].value.startswith("Compare")  # the button opened the compare view
    group = lessons["group"]
    assert list(group["runs"]) == ["ddp", "zero1", "zero2", "zero3"]
    specs = {s: json.loads((_run(lessons, s) / "spec.json").read_text()) for s in group["runs"]}
    assert {json.dumps({k: v for k, v in spec.items() if k != "strategy"}, sort_keys=True)
            for spec in specs.values()} == {json.dumps({k: v for k, v in specs["ddp"].items() if k != "strategy"},
                                                       sort_keys=True)}  # same spec and seed
    report = compare.compare_report(group["group_id"], lessons["root"])
    assert set(report["states"].values()) == {"succeeded"}, [runstore.log_tail(_run(lessons, s)) for s in group["runs"]]
    assert report["steps_compared"] == STEPS and report["max_loss_diff"] < 1e-4
    assert report["traffic_psi"] == {s: pytest.approx(compare.engine_traffic_psi(s), abs=1e-3) for s in compare.ORDER}

    page = lessons["page"]
    assert not page.exception and page.title[0].value.startswith("Compare")
    (shown,) = [m.value for m in page.metric]
    assert float(shown) < 1e-4 and float(shown) == pytest.approx(report["max_loss_diff"], abs=1e-12)
    assert any("DDP : ZeRO-1 : ZeRO-2 : ZeRO-3 = 2.00 : 3.00 : 2.00 : 3.00" in m.value for m in page.markdown)
    charts = charts_by_title(page)
    loss = charts["Loss, four strategies overlaid"][0]
    assert sorted(set(loss["strategy"])) == ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"] and len(loss) == 4 * STEPS
    traffic = charts["Traffic per step (all-reduce counts twice)"][0]
    assert traffic.groupby("strategy")["psi_units"].sum().round(2).to_dict() == {
        "DDP": 2.0, "ZeRO-1": 3.0, "ZeRO-2": 2.0, "ZeRO-3": 3.0}
    staircase = charts["Model state per rank (after the optimizer step)"][0].groupby("strategy")["bytes"].sum()
    assert staircase["DDP"] > staircase["ZeRO-1"] > staircase["ZeRO-3"] and staircase["ZeRO-2"] > staircase["ZeRO-3"]


@pytest.mark.torchrun
@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3"])
def test_sharding_map_bytes_equal_measured_bytes(lessons, strategy):
    path = _run(lessons, strategy)
    spec = json.loads((path / "spec.json").read_text())
    train = [r for r in runstore.read_metrics(path) if r["kind"] == "train"]
    for step, first in ((1, True), (STEPS, False)):
        measured = measured_totals([r for r in train if r["step"] == step])
        assert map_totals(sharding_map_for_spec(spec, first_step=first)) == measured, (strategy, step)


@pytest.mark.torchrun
def test_collective_log_orders_each_strategys_collectives_by_phase(lessons):
    logs = {s: runstore.summary(_run(lessons, s))["collectives"] for s in compare.ORDER}
    steps = {op["step"] for log in logs.values() for op in log}
    assert steps == {2}  # the first steady-state step
    ddp = logs["ddp"]
    assert ddp and {(op["op"], op["phase"]) for op in ddp} == {("all_reduce", "backward")}
    assert all(op["module"].startswith("bucket ") for op in ddp)
    zero1 = logs["zero1"]
    spec = runstore.read_spec(_run(lessons, "zero1"))
    tensors = len(engine_param_shapes(spec.model, spec.size, spec.dataset))  # mlp tiny 6, the form's medium 10
    assert [op["op"] for op in zero1 if op["phase"] == "optimizer"] == ["broadcast"] * tensors  # one per parameter
    zero2 = logs["zero2"]
    assert {op["op"] for op in zero2 if op["phase"] == "backward"} == {"reduce_scatter"}
    assert {op["op"] for op in zero2 if op["phase"] == "optimizer"} == {"all_gather"}
    zero3 = [(op["op"], op["phase"], op["module"]) for op in logs["zero3"]]
    forward = [z for z in zero3 if z[1] == "forward"]
    assert forward == [("all_gather", "forward", m) for m in ("hidden.0", "hidden.1", "head")]  # one per block
    backward = [z for z in zero3 if z[1] == "backward"]
    assert sorted(m for op, _, m in backward if op == "all_gather") == ["head", "hidden.0", "hidden.1"]
    assert sorted(m for op, _, m in backward if op == "reduce_scatter") == ["head", "hidden.0", "hidden.1"]
    assert not [z for z in zero3 if z[1] == "optimizer"]
    # The log is the same traffic the per-step counters report for that step.
    for strategy, log in logs.items():
        (record,) = [r for r in runstore.read_metrics(_run(lessons, strategy))
                     if r["kind"] == "train" and r["rank"] == 0 and r["step"] == 2]
        assert sum(op["bytes"] for op in log) == record["comm/payload_bytes"]
    assert "Which collective runs when" in charts_by_title(lessons["page"])


@pytest.mark.torchrun
def test_memory_wall_ddp_fails_naming_the_budget_and_zero3_trains(lessons):
    wall = lessons["wall"]
    ddp, zero3 = (lessons["root"] / wall["runs"][s] for s in ("ddp", "zero3"))
    status = runstore.read_status(ddp)
    assert status["state"] == "failed"
    errors = [r["message"] for r in runstore.read_metrics(ddp) if r["kind"] == "error"]
    assert errors and all("needs" in m and "budget 6 MiB" in m and "simulated device of 6 MiB" in m for m in errors)
    assert runstore.read_status(zero3)["state"] == "succeeded"
    need_ddp = [n["need_max_bytes"] for n in runstore.summary(ddp)["memory_need"]]
    need_zero3 = [n["need_max_bytes"] for n in runstore.summary(zero3)["memory_need"]]
    assert min(need_ddp) > 6 * MIB > max(need_zero3)

    page = AppTest.from_file(ENTRY, default_timeout=120)
    page.switch_page("views/compare.py")
    page.query_params["group"] = wall["group_id"]
    page.run()
    assert not page.exception
    assert any("DDP" in e.value and "budget 6 MiB" in e.value for e in page.error)
    wall_chart = charts_by_title(page)["The memory wall"]
    assert {"DDP", "ZeRO-3"} <= set(wall_chart[0]["strategy"])


def test_zero3_gathers_one_unit_in_full_inside_the_forward_pass():
    from engine.sharding import map_for_phase, map_phases

    spec = {"model": "mlp", "size": "tiny", "dataset": "digits", "strategy": "zero3", "nproc": 2}
    assert map_phases(spec) == ["forward", "inside hidden.0", "inside hidden.1", "inside head", "backward", "step"]
    inside = [r for r in map_for_phase(spec, "inside hidden.1") if r["category"] == "params"]
    gathered = {(r["rank"], r["tensor"]): r["bytes"] for r in inside if r["holding"].startswith("gathered")}
    assert gathered == {(rank, t): b for rank in (0, 1) for t, b in (("hidden.1.weight", 64 * 64 * 4),
                                                                       ("hidden.1.bias", 64 * 4))}
    assert {r["holding"] for r in inside if not r["tensor"].startswith("hidden.1")} == {"shard 1 of 2", "shard 2 of 2"}
    assert map_phases({**spec, "strategy": "zero2"}) == ["forward", "backward", "step"]  # ZeRO-2 never re-gathers


def test_memory_budget_flag_comes_from_the_spec_and_is_validated(tmp_path, capsys):
    from engine.cli import main

    assert main(["train", "--memory-budget-mb", "-1", "--runs-dir", str(tmp_path)]) == 2
    assert "memory budget" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_the_compare_pages_button_launches_the_lesson_spec_not_the_forms(tmp_path, monkeypatch):
    """The Train form's first run is a larger model (it should train for half a minute); the Compare page's
    lesson runs all four in about a minute, so it launches its own small spec."""
    launched = []
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(compare, "launch_all", lambda spec, root: launched.append(spec) or ("g", {}))
    page = AppTest.from_file(str(ROOT / "app" / "views" / "compare.py"), default_timeout=60).run()
    page.button(key="compare_launch").click().run()
    assert launched == [compare.LESSON_SPEC] and state.FIRST_RUN != compare.LESSON_SPEC
    assert not page.exception


def _need(rank: int, over_budget: bool, model_state: int) -> dict:
    parts = {"forward": {"model_state_bytes": model_state, "activation_bytes": 1000, "gathered_bytes": 0}}
    return {"rank": rank, "need_bytes": {"forward": model_state + 1000}, "parts": parts,
            "need_max_bytes": model_state + 1000, "over_budget": over_budget}


WALL_NEEDS = {"ddp": [_need(0, True, 9 * MIB), _need(1, True, 9 * MIB)],
              "zero3": [_need(0, False, 2 * MIB), _need(1, False, 2 * MIB)]}


def test_the_memory_wall_says_what_a_faded_bar_means():
    """DDP's bars were drawn faded with no legend entry while the caption said each bar is what a rank measured."""
    from app.lesson_charts import WALL_OUTCOMES, memory_wall_chart

    spec = memory_wall_chart(WALL_NEEDS, 6 * MIB).to_dict()
    (bars,) = [layer for layer in spec["layer"] if layer["mark"] in ("bar", {"type": "bar"})]
    opacity = bars["encoding"]["opacity"]
    assert opacity["legend"] is not None and opacity["field"] == "outcome"
    faded = dict(zip(opacity["scale"]["domain"], opacity["scale"]["range"]))
    assert faded[WALL_OUTCOMES[True]] < faded[WALL_OUTCOMES[False]] == 1.0
    assert "stopped" in WALL_OUTCOMES[True] and "measured before" in WALL_OUTCOMES[True]
    # Nothing faded, nothing to explain: no legend of one entry.
    calm = memory_wall_chart({"zero3": WALL_NEEDS["zero3"]}, 6 * MIB).to_dict()
    (bars,) = [layer for layer in calm["layer"] if layer["mark"] in ("bar", {"type": "bar"})]
    assert bars["encoding"]["opacity"]["legend"] is None


def test_the_wall_caption_explains_faded_bars(tmp_path, monkeypatch):
    from engine.spec import JobSpec
    from tests.app_fixtures import write_fixture_run

    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(tmp_path))
    st.cache_resource.clear()
    runs = {}
    for strategy, run_state in (("ddp", "failed"), ("zero3", "succeeded")):
        run = write_fixture_run(tmp_path, f"wall-{strategy}", strategy=strategy, state=run_state)
        JobSpec(strategy=strategy, nproc=2, steps=20, memory_budget_mb=6).save(run / "spec.json")
        for need in WALL_NEEDS[strategy]:
            with open(run / "metrics" / f"rank{need['rank']}.jsonl", "a") as f:
                f.write(json.dumps({"kind": runstore.MEMORY_NEED, "t": 0, **need}) + "\n")
        runs[strategy] = run.name
    page = AppTest.from_file(str(ROOT / "app" / "views" / "compare.py"), default_timeout=60)
    page.query_params["group"] = runstore.write_group(runs, tmp_path, kind="memory_wall")
    page.run()
    assert not page.exception
    (caption,) = [c.value for c in page.caption if c.value.startswith("Each bar is what one rank measured")]
    assert "Faded bars: ranks that went over the budget and stopped" in caption
    assert "records it before it stops" in caption
