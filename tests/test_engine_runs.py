"""Real torchrun jobs on CPU (gloo): equivalence, memory, communication, cancel and failure.

The ZeRO paper's claims, checked against what the ranks really did. Ψ = parameter count.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from engine import launcher, runstore
from engine.spec import JobSpec

pytestmark = pytest.mark.torchrun

from tests.conftest import RANKS, STRATEGIES


def final_params(path):
    return torch.load(path / "final_params.pt")


def loss_curve(path):
    frame = runstore.metrics_frame(path)
    return frame[frame["rank"] == 0].sort_values("step")["loss_global"].tolist()


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_computes_the_same_update_as_one_process_on_the_full_batch(engine_runs, strategy, n):
    reference = final_params(engine_runs[("reference", 1)])
    params = final_params(engine_runs[(strategy, n)])
    assert params.keys() == reference.keys()
    worst = max((params[k] - reference[k]).abs().max().item() for k in reference)
    assert worst <= 1e-5, f"{strategy} x{n}: max abs parameter difference {worst:.3g} after 20 Adam steps"
    # Not a vacuous match: 20 steps moved the weights from their initial values far beyond that tolerance.
    initial = initial_params()
    moved = max((reference[k] - initial[k]).abs().max().item() for k in reference)
    assert moved > 100 * 1e-5, f"the reference weights moved only {moved:.3g} in 20 steps"
    ref_curve, curve = loss_curve(engine_runs[("reference", 1)]), loss_curve(engine_runs[(strategy, n)])
    assert len(curve) == len(ref_curve) == 20
    assert max(abs(a - b) for a, b in zip(curve, ref_curve)) <= 1e-5
    assert ref_curve[-1] < ref_curve[0]  # it learned something


def initial_params() -> dict:
    """The weights every run starts from, built exactly as the worker builds them (same seed, same order)."""
    from engine.data import load_dataset
    from engine.models import build_model
    from engine.registry import model_context

    torch.manual_seed(0)
    dataset = load_dataset("digits", model_context("mlp", "tiny"), "")
    return {k: v.detach().clone() for k, v in build_model("mlp", "tiny", dataset.shape).named_parameters()}


def per_rank(path):
    return runstore.summary(path)["per_rank"]


def padding_slack(n: int, element_bytes: int = 4) -> int:
    """Largest amount by which one rank's dim-0 shards can differ from an exact 1/N (torch.chunk: ceil rows)."""
    from engine.data import data_shape
    from engine.models import meta_model

    slack = 0
    for p in meta_model("mlp", "tiny", data_shape("digits")).parameters():
        rows = p.shape[0]
        if rows % n:
            slack += math.ceil(rows / n) * (p.numel() // rows) * element_bytes
    return slack


@pytest.mark.parametrize("n", RANKS)
def test_memory_staircase_matches_the_zero_paper(engine_runs, n):
    ddp = per_rank(engine_runs[("ddp", n)])[0]["model_state_bytes"]
    psi_bytes = engine_runs[("ddp", n)] and runstore.summary(engine_runs[("ddp", n)])["param_count"] * 4
    assert ddp["params"] == ddp["grads"] == psi_bytes
    # Adam: two moments per element plus one 4-byte step counter per parameter tensor.
    n_tensors = 6
    assert ddp["optimizer"] == 2 * psi_bytes + 4 * n_tensors
    slack = padding_slack(n)
    steps = 4 * n_tensors  # step counters stay whole on every rank

    zero1 = per_rank(engine_runs[("zero1", n)])
    assert sum(r["model_state_bytes"]["optimizer"] for r in zero1) == ddp["optimizer"]
    assert all(r["model_state_bytes"]["params"] == psi_bytes for r in zero1)

    zero2 = per_rank(engine_runs[("zero2", n)])
    for r in zero2:
        state = r["model_state_bytes"]
        assert state["params"] == psi_bytes  # full parameters at rest: the paper's ZeRO-2, not SHARD_GRAD_OP
        assert abs(state["grads"] - psi_bytes / n) <= slack
        assert abs(state["master"] - psi_bytes / n) <= slack
        assert abs(state["optimizer"] - steps - 2 * psi_bytes / n) <= 2 * slack
    assert sum(r["model_state_bytes"]["grads"] for r in zero2) == psi_bytes

    zero3 = per_rank(engine_runs[("zero3", n)])
    for r in zero3:
        state = r["model_state_bytes"]
        assert state["master"] == 0
        assert abs(state["params"] + state["grads"] + state["optimizer"] - steps - (ddp["total"] - steps) / n) <= 4 * slack
    assert sum(r["model_state_bytes"]["params"] for r in zero3) == psi_bytes


@pytest.mark.parametrize("n", RANKS)
@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("ddp", {"all_reduce": 1}),
        ("zero1", {"all_reduce": 1, "broadcast": 1}),
        ("zero2", {"all_gather": 1, "reduce_scatter": 1}),
        ("zero3", {"all_gather": 2, "reduce_scatter": 1}),
    ],
)
def test_communication_payload_per_step_equals_theory(engine_runs, strategy, n, expected):
    path = engine_runs[(strategy, n)]
    psi_bytes = runstore.summary(path)["param_count"] * 4
    # FSDP2 gathers and scatters dim-0 shards padded to equal size (a 10-row head over 4 ranks moves 12 rows),
    # so its exact payload is the padded Ψ; DDP's buckets and ZeRO-1's broadcasts move exactly Ψ.
    padded_bytes = psi_bytes + padding_bytes(n)
    exact = {op: multiple * (padded_bytes if op in ("all_gather", "reduce_scatter") else psi_bytes)
             for op, multiple in expected.items()}
    for rank in per_rank(path):
        measured = {op: b for op, b in rank["comm_bytes_per_step"].items() if b}
        assert measured == exact, (strategy, n, rank["rank"])
        if padding_bytes(n) <= 0.01 * psi_bytes:  # the paper's 2Ψ / 2Ψ / 3Ψ within 1% where padding is small
            for op, multiple in expected.items():
                assert measured[op] == pytest.approx(multiple * psi_bytes, rel=0.01)
    # Every logged step, not only the last one. zero2's first step also gathers the parameters that
    # fully_shard left sharded (one extra all-gather); from then on they stay gathered between steps.
    frame = runstore.metrics_frame(path)
    assert frame[frame["step"] >= 2]["comm/payload_bytes"].nunique() == 1
    first = frame[frame["step"] == 1]["comm/payload_bytes"].iloc[0]
    assert first == sum(exact.values()) + (padded_bytes if strategy == "zero2" else 0)


def padding_bytes(n: int) -> int:
    """Bytes FSDP2 adds to Ψ·4 when it pads each tensor's rows to a multiple of N."""
    from engine.data import data_shape
    from engine.models import meta_model

    return sum(
        (math.ceil(p.shape[0] / n) * n - p.shape[0]) * (p.numel() // p.shape[0]) * 4
        for p in meta_model("mlp", "tiny", data_shape("digits")).parameters()
    )


@pytest.mark.parametrize(
    "strategy, paper_multiple",  # the ZeRO paper's per-step volume in Ψ, an all-reduce counting twice
    [("ddp", 2), ("zero2", 2), ("zero3", 3), ("zero1", 3)],  # ZeroRedundancyOptimizer: all-reduce + broadcast
)
def test_paper_ratios_hold_within_1_percent_where_padding_is_negligible(engine_runs, strategy, paper_multiple):
    path = engine_runs[(strategy, 2)]
    psi_bytes = runstore.summary(path)["param_count"] * 4
    assert padding_bytes(2) <= 0.01 * psi_bytes  # mlp tiny's every dim 0 (64, 64, 10) splits evenly in two
    for rank in per_rank(path):
        volume = sum((2 if op == "all_reduce" else 1) * b for op, b in rank["comm_bytes_per_step"].items())
        assert volume == pytest.approx(paper_multiple * psi_bytes, rel=0.01), (strategy, rank["rank"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_record_says_when_its_steady_figures_were_measured_and_they_hold_at_every_step(engine_runs, strategy):
    """Model state and saved activations are measured only while they can change (engine.memory.SteadyFigure):
    each train record carries the step its figure was measured at, never later than its own, and a figure
    carried over is the one measured at that step."""
    records = [r for r in runstore.read_metrics(engine_runs[(strategy, 2)]) if r["kind"] == "train"]
    assert [r["step"] for r in records if r["rank"] == 0] == list(range(1, 21))  # logged every step
    by_step = {(r["rank"], r["step"]): r for r in records}
    skipped = 0
    for r in records:
        for figure, at_key in ((runstore.ACTIVATION_KEY, runstore.ACTIVATION_MEASURED_STEP_KEY),
                               (runstore.mem_key("step", "params"), runstore.mem_measured_step_key("step"))):
            at = r[at_key]
            assert 1 <= at <= r["step"]
            assert r[figure] == by_step[(r["rank"], at)][figure]
            skipped += at < r["step"]
    assert skipped > len(records), "most steps reuse a figure once it is steady: the point of the cadence"


def test_cli_summary_prints_the_documented_fields(engine_runs):
    path = engine_runs[("zero3", 4)]
    out = subprocess.run(
        [sys.executable, "-m", "engine", "summary", path.name, "--runs-dir", str(path.parent)],
        capture_output=True, text=True, check=True,
    ).stdout
    summary = json.loads(out)
    assert summary["status"] == "succeeded" and summary["spec"]["strategy"] == "zero3"
    assert summary["param_count"] == 8970 and summary["final_loss"] > 0
    assert 0 <= summary["eval_accuracy"] <= 1
    assert [r["rank"] for r in summary["per_rank"]] == [0, 1, 2, 3]
    for rank in summary["per_rank"]:
        assert set(rank["model_state_bytes"]) >= {"params", "grads", "optimizer"}
        assert rank["peak_rss_bytes"] > 10 * 2**20
        assert set(rank["comm_bytes_per_step"]) >= {"all_gather", "reduce_scatter"}


def run_processes(status: dict) -> list[int]:
    return [p for p in [status.get("supervisor_pid"), status.get("torchrun_pid"), *status.get("worker_pids", [])] if p]


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def wait_for_train_records(path, count=1, timeout_s=120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if len([r for r in runstore.read_metrics(path) if r.get("kind") == "train"]) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"no train records after {timeout_s}s:\n{runstore.log_tail(path)}")


def test_cancel_leaves_no_process_of_the_run_alive_within_5_s(runs_dir):
    run_id = launcher.launch(JobSpec(strategy="zero3", nproc=4, steps=10_000, global_batch=16), runs_dir)
    path = runs_dir / run_id
    wait_for_train_records(path, count=8)
    status = runstore.read_status(path)
    pids = run_processes(status)
    assert len(pids) >= 2 + 4, status  # supervisor, torchrun and four workers were all recorded
    started = time.time()
    final = launcher.cancel(run_id, runs_dir)
    while alive(pids) and time.time() - started < 5:
        time.sleep(0.05)
    assert alive(pids) == [], f"still alive {time.time() - started:.1f}s after cancel"
    assert final["state"] == "cancelled"
    assert len([r for r in runstore.read_metrics(path) if r.get("kind") == "train"]) >= 8


def test_a_rank_that_raises_marks_the_run_failed_with_its_error(runs_dir):
    run_id = launcher.launch(JobSpec(nproc=2, steps=50, global_batch=16, fail_at_step=3), runs_dir)
    status = launcher.wait(run_id, runs_dir, timeout_s=120)
    assert status["state"] == "failed"
    assert "rank 1" in status["error"] and "failed on purpose at step 3" in status["error"]
    assert status["exit_code"] != 0


def test_a_killed_job_leaves_its_metrics_readable(runs_dir):
    run_id = launcher.launch(JobSpec(nproc=2, steps=10_000, global_batch=16), runs_dir)
    path = runs_dir / run_id
    wait_for_train_records(path, count=4)
    status = runstore.read_status(path)
    for pid in run_processes(status):  # kill -9 everything: no chance to clean up
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with open(path / "metrics" / "rank0.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "step": 99999, "loss": 1.')  # a torn last line, as a kill mid-write leaves
    records = [r for r in runstore.read_metrics(path) if r.get("kind") == "train"]
    assert len(records) >= 4 and all(r["step"] != 99999 for r in records)
    deadline = time.time() + 5  # a signal is delivered asynchronously
    while runstore.read_status(path)["state"] != "lost" and time.time() < deadline:
        time.sleep(0.05)
    lost = runstore.read_status(path)
    assert lost["state"] == "lost" and "supervisor" in lost["error"]  # not "running" forever, and says why
    assert not runstore.metrics_frame(path).empty


def test_invalid_spec_launches_nothing(runs_dir):
    from engine.spec import SpecError

    with pytest.raises(SpecError):
        launcher.launch(JobSpec(device="cuda", nproc=8, global_batch=64), runs_dir)
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- issue 7
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_record(path, rank: int, timeout_s: float = 120) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for r in runstore.read_metrics(path):
            if r["kind"] == "start" and r["rank"] == rank:
                return r
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started:\n{runstore.log_tail(path)}")


def worker_identity(path, rank: int) -> dict:
    """The recorded identity of rank's worker (its pid from its start record, checked against the status)."""
    pid = start_record(path, rank)["pid"]
    deadline = time.time() + 10
    while time.time() < deadline:
        for identity in runstore.read_status(path).get("workers", []):
            if identity["pid"] == pid:
                return identity
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} (pid {pid}) not among the recorded workers")


def test_a_relative_runs_folder_works_from_any_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("SHARDLAB_RUNS_DIR", None)
    result = subprocess.run([sys.executable, "-m", "engine", "train", "--runs-dir", "rel", "--nproc", "1",
                             "--steps", "3", "--wait"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert runstore.read_status(tmp_path / "rel" / run_id)["state"] == "succeeded"


def test_the_queue_runs_one_at_a_time_in_launch_order_and_a_double_click_starts_one_run(runs_dir, monkeypatch):
    monkeypatch.delenv("SHARDLAB_MAX_ACTIVE_RUNS", raising=False)
    spec = JobSpec(nproc=1, steps=3, global_batch=16)
    first = launcher.launch(spec, runs_dir, client_token="browser-1")
    assert launcher.launch(spec, runs_dir, client_token="browser-1") == first  # the second click
    second = launcher.launch(spec.replace(seed=1), runs_dir, client_token="browser-1")
    states = {r["run_id"]: r for r in runstore.list_runs(runs_dir)}
    assert len(states) == 2 and states[second]["state"] == "queued"
    assert states[second]["detail"] == f"queued (position {states[second]['queue_position']})"
    order = [first, second]
    for run_id in order:
        assert launcher.wait(run_id, runs_dir, timeout_s=300)["state"] == "succeeded"
    spans = [(runstore.read_status(runs_dir / r)["started_at"], runstore.read_status(runs_dir / r)["ended_at"])
             for r in order]
    for (start_a, end_a), (start_b, _) in zip(spans, spans[1:]):
        assert start_a < start_b and end_a <= start_b, spans  # in order, never two at once


def test_twenty_cancels_in_a_row_leave_no_process(runs_dir, monkeypatch):
    monkeypatch.delenv("SHARDLAB_MAX_ACTIVE_RUNS", raising=False)
    spec = JobSpec(nproc=2, steps=10_000, global_batch=16)
    ids = [launcher.launch(spec.replace(seed=i), runs_dir) for i in range(20)]
    finals = [launcher.cancel(run_id, runs_dir, timeout_s=10) for run_id in reversed(ids)]
    assert [f["state"] for f in finals] == ["cancelled"] * 20, [f.get("detail") for f in finals]
    time.sleep(0.5)
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if any(str(runs_dir) in part for part in (p.info["cmdline"] or []))]
    assert left == [], left
    for run_id in ids:
        assert runstore.read_status(runs_dir / run_id)["state"] == "cancelled"


def test_a_stopped_rank_is_reported_as_stalled_and_cancel_still_ends_it(runs_dir):
    run_id = launcher.launch(JobSpec(nproc=2, steps=10_000, global_batch=16, stall_after_s=3), runs_dir)
    path = runs_dir / run_id
    wait_for_train_records(path, count=4)
    rank1 = worker_identity(path, 1)
    assert runstore.signal_process(rank1, signal.SIGSTOP)
    try:
        deadline = time.time() + 30
        while "stalled" not in runstore.read_status(path) and time.time() < deadline:
            time.sleep(0.2)
        status = runstore.read_status(path)
        assert status["state"] == "running" and status["detail"].startswith("stalled: rank 1 silent for "), status
        assert runstore.summary(path)["status_text"].startswith("stalled: rank 1 silent for ")
    finally:
        final = launcher.cancel(run_id, runs_dir, timeout_s=15)
    deadline = time.time() + 5  # SIGKILL reaches a stopped process too; it is reaped asynchronously
    while runstore.is_alive(rank1) and time.time() < deadline:
        time.sleep(0.1)
    assert final["state"] == "cancelled" and not runstore.is_alive(rank1)


def test_a_rank_killed_by_sigkill_is_named_not_the_peer_it_disconnected(runs_dir):
    run_id = launcher.launch(JobSpec(nproc=2, steps=10_000, global_batch=16), runs_dir)
    path = runs_dir / run_id
    wait_for_train_records(path, count=4)
    assert runstore.signal_process(worker_identity(path, 1), signal.SIGKILL)
    status = launcher.wait(run_id, runs_dir, timeout_s=120)
    assert status["state"] == "failed"
    assert status["error"].startswith("rank 1 was killed by SIGKILL (likely the out-of-memory killer) at step "), status


def test_torchrun_killed_mid_run_is_named_with_the_step(runs_dir):
    run_id = launcher.launch(JobSpec(nproc=2, steps=10_000, global_batch=16), runs_dir)
    path = runs_dir / run_id
    wait_for_train_records(path, count=6)
    assert runstore.signal_process(runstore.read_status(path)["torchrun"], signal.SIGKILL)
    status = launcher.wait(run_id, runs_dir, timeout_s=120)
    assert status["state"] == "failed"
    assert re.match(r"torchrun was killed by SIGKILL \(likely the out-of-memory killer\) at step [1-9]", status["error"])
    time.sleep(1)
    assert not any(runstore.is_alive(w) for w in status["workers"])  # its ranks died with it


def test_a_two_node_run_started_by_hand_reads_like_any_other(tmp_path):
    """The line `engine torchrun-command` prints, run once per node (two "nodes" on 127.0.0.1), with the run
    folder on the shared filesystem: no supervisor, yet `runs` and `summary` read it."""
    import socket

    runs = tmp_path / "runs"
    spec_file = runs / "cluster-run" / "spec.json"
    spec_file.parent.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    lines = []
    for node in (0, 1):
        out = subprocess.run(
            [sys.executable, "-m", "engine", "torchrun-command", "--nnodes", "2", "--nproc", "1", "--steps", "5",
             "--batch", "16", "--node-rank", str(node), "--rdzv-endpoint", f"127.0.0.1:{port}",
             "--spec-out", str(spec_file)], env=env, capture_output=True, text=True, check=True)
        lines.append(shlex.split(out.stdout.strip()))
    assert runstore.read_status(spec_file.parent)["state"] == "queued"
    nodes = [subprocess.Popen([sys.executable, *line[1:]], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for line in lines]
    try:
        assert [n.wait(timeout=240) for n in nodes] == [0, 0]
    finally:
        for n in nodes:
            n.kill()
    summary = runstore.summary(spec_file.parent)
    assert summary["status"] == "succeeded", summary["status_detail"]
    assert [r["rank"] for r in summary["per_rank"]] == [0, 1] and summary["steps_done"] == 5
    assert [n["state"] for n in summary["status_detail"]["nodes"]] == ["succeeded", "succeeded"]
    listed = {r["run_id"]: r["state"] for r in runstore.list_runs(runs)}
    assert listed == {"cluster-run": "succeeded"}
