"""The warm standby (engine/standby.py): a real torchrun job kept up before Launch, handed the run's spec.

A warm run must be indistinguishable on disk from a cold one (same status states, records, log), cancel must
reach it, and a standby must never outlive its reason to exist (shape change, idle, its app, a retirement).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from engine import launcher, runstore, standby
from engine.spec import JobSpec

pytestmark = pytest.mark.torchrun


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def standby_pids(folder: Path) -> list[int]:
    info = json.loads((folder / "standby.json").read_text())
    ranks = [json.loads(f.read_text())["pid"] for f in (folder / "ready").glob("rank*")]
    return [info["supervisor_pid"], info.get("torchrun_pid"), *ranks]


def alive(pids) -> list[int]:
    return [pid for pid in pids if pid and psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def ready(runs_dir: Path, nproc: int) -> dict:
    return wait_until(lambda: next((s for s in standby.status(runs_dir) if s["ready_ranks"] == nproc), None),
                      240, "a warm standby")


def test_a_warm_run_reads_like_a_cold_one_and_its_standby_leaves_nothing_behind(runs_dir):
    spec = JobSpec(model="mlp", size="tiny", nproc=2, steps=6, global_batch=16, eval_interval=3)
    folder = standby.ensure(spec, runs_dir)
    assert standby.ensure(spec, runs_dir) == folder, "one standby per shape, refreshed, not duplicated"
    info = ready(runs_dir, 2)
    assert info["usable"] and len(info["rank_rss_bytes"]) == 2 and info["rss_bytes"] > 0
    pids = standby_pids(folder)

    warm_id = launcher.launch(spec, runs_dir)
    cold_id = launcher.launch(spec, runs_dir)  # the standby is taken: this one starts cold
    warm, cold = (launcher.wait(i, runs_dir, timeout_s=300) for i in (warm_id, cold_id))
    assert warm["state"] == cold["state"] == "succeeded", (warm, runstore.log_tail(runs_dir / warm_id))
    assert warm.get("warm_start") is True and "warm_start" not in cold
    assert set(warm["worker_pids"]) <= set(pids), "the standby's own ranks trained the run"
    kinds = lambda run_id: sorted((r["kind"], r["rank"]) for r in runstore.read_metrics(runs_dir / run_id))
    for record in runstore.read_metrics(runs_dir / warm_id):
        if record["kind"] == "train":  # each model-state figure says when it was walked, never later than now
            assert 1 <= record["mem/step/measured_step"] <= record["step"]
    assert kinds(warm_id) == kinds(cold_id)
    assert runstore.summary(runs_dir / warm_id)["eval_accuracy"] == runstore.summary(runs_dir / cold_id)["eval_accuracy"]
    for run_id in (warm_id, cold_id):
        log = runstore.log_tail(runs_dir / run_id, 200)
        assert "torch.distributed.run --nproc-per-node=2" in log
        assert "[rank 0]" in log and "[rank 1]" in log and "started on" in log
        assert "first step done" in log and "finished 6 of 6 steps" in log and "succeeded" in log
    wait_until(lambda: not alive(pids), 30, "the standby's processes to end with its run")
    wait_until(lambda: not folder.exists(), 10, "the standby folder to be removed")
    assert {r["run_id"] for r in runstore.list_runs(runs_dir)} == {warm_id, cold_id}, "standbys are not runs"


def test_cancel_reaches_a_warm_run_and_a_new_shape_retires_the_old_standby(runs_dir):
    two = standby.ensure(JobSpec(model="mlp", size="tiny", nproc=2), runs_dir)
    wait_until(lambda: (two / "standby.json").exists() and json.loads((two / "standby.json").read_text())
               .get("torchrun_pid"), 60, "the first standby's torchrun")
    old_pids = standby_pids(two)
    one = standby.ensure(JobSpec(model="mlp", size="tiny", nproc=1), runs_dir)  # the form now shows 1 rank
    assert one != two
    wait_until(lambda: not alive(old_pids) and not two.exists(), 60, "the old shape's standby to leave")

    ready(runs_dir, 1)
    spec = JobSpec(model="mlp", size="tiny", nproc=1, steps=100_000, global_batch=16)
    run_id = launcher.launch(spec, runs_dir)
    wait_until(lambda: any(r["kind"] == "train" for r in runstore.read_metrics(runs_dir / run_id)), 60, "a step")
    running = runstore.read_status(runs_dir / run_id)
    assert all(psutil.Process(pid).nice() >= 10 for pid in running["worker_pids"]), "ranks train at low priority"
    status = launcher.cancel(run_id, runs_dir)
    assert status["state"] == "cancelled" and status["warm_start"] is True
    pids = [status["supervisor_pid"], status["torchrun_pid"], *status["worker_pids"]]
    wait_until(lambda: not alive(pids), 15, "every process of the cancelled warm run to end")


def test_an_idle_standby_and_one_whose_app_exited_leave_by_themselves(runs_dir, tmp_path):
    idle = standby.ensure(JobSpec(model="mlp", size="tiny", nproc=1), runs_dir, idle_s=1.0)
    wait_until(lambda: not idle.exists(), 60, "the idle standby to leave")

    app = psutil.Popen(["sleep", "3"])
    orphan = standby.ensure(JobSpec(model="mlp", size="tiny", nproc=1), runs_dir, owner_pid=app.pid)
    wait_until(lambda: json.loads((orphan / "standby.json").read_text()).get("torchrun_pid"), 60, "its torchrun")
    pids = standby_pids(orphan)
    app.wait()
    wait_until(lambda: not orphan.exists() and not alive(pids), 60, "the standby of an exited app to leave")
    assert standby.status(runs_dir) == []
