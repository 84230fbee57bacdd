"""The run directory's owner against what users, crashes and hostile hands leave on disk (no torchrun here).

The corrupt-folder matrix: every corruption below x every engine reader and CLI command; a reader either
answers or (summary, run_dir) raises a RunError the CLI prints as one line. Plus process identity (pid reuse),
run-id traversal, the launch queue's bookkeeping, the final-state rules and torchrun's failure report.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from engine import cli, launcher, runqueue, runstore, supervisor
from engine.spec import JobSpec, SpecError
from tests.app_fixtures import write_fixture_run


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _append(path: Path, data: str) -> None:
    with open(path, "a") as f:
        f.write(data)


# name -> how to break a good run folder (a finished 2-rank fixture run)
CORRUPTIONS = {
    "status list": lambda r: _write(r / "status.json", "[1,2]"),
    "status null": lambda r: _write(r / "status.json", "null"),
    "status not utf-8": lambda r: _write(r / "status.json", b'{"state": "\xff\xfe"}'),
    "status pid text": lambda r: _write(r / "status.json", '{"state": "running", "supervisor_pid": "abc"}'),
    "status unknown state": lambda r: _write(r / "status.json", '{"state": "banana"}'),
    "status torn": lambda r: _write(r / "status.json", '{"state": "runn'),
    "status huge": lambda r: _write(r / "status.json", '{"state": "running", "x": "' + "a" * 400_000 + '"}'),
    "status deep": lambda r: _write(r / "status.json", "[" * 5000 + "]" * 5000),
    "status is a folder": lambda r: ((r / "status.json").unlink(), (r / "status.json").mkdir()),
    "status identity junk": lambda r: _write(r / "status.json", '{"state": "running", "supervisor": {"pid": "x"}}'),
    "status time text": lambda r: _write(r / "status.json", '{"state": "succeeded", "created_at": "yesterday"}'),
    "spec list": lambda r: _write(r / "spec.json", "[]"),
    "spec empty object": lambda r: _write(r / "spec.json", "{}"),
    "spec null": lambda r: _write(r / "spec.json", "null"),
    "spec not utf-8": lambda r: _write(r / "spec.json", b"\xff" * 50),
    "spec wrong types": lambda r: _write(r / "spec.json", json.dumps({**json.loads((r / "spec.json").read_text()),
                                                                      "nproc": "2", "seed": "x"})),
    "spec missing": lambda r: (r / "spec.json").unlink(),
    "spec huge": lambda r: _write(r / "spec.json", " " * 100_000 + "{}"),
    "metrics bare number": lambda r: _append(r / "metrics" / "rank0.jsonl", "42\n"),
    "metrics list": lambda r: _append(r / "metrics" / "rank0.jsonl", "[1,2,3]\n"),
    "metrics train without rank": lambda r: _append(r / "metrics" / "rank1.jsonl",
                                                    '{"kind": "train", "step": 21, "loss": 0.5}\n'),
    "metrics text where numbers go": lambda r: _append(r / "metrics" / "rank0.jsonl",
                                                       '{"kind": "train", "step": 3, "loss": "abc"}\n'),
    "metrics step text": lambda r: _append(r / "metrics" / "rank0.jsonl", '{"kind": "eval", "step": "x"}\n'),
    "metrics kind missing": lambda r: _append(r / "metrics" / "rank0.jsonl", '{"step": 3}\n'),
    "metrics stray copy": lambda r: _write(r / "metrics" / "rank0-copy.jsonl",
                                           (r / "metrics" / "rank0.jsonl").read_text() + "garbage\n"),
    "metrics huge line": lambda r: _append(r / "metrics" / "rank0.jsonl", "0" * (3 * 2**20) + "\n"),
    "metrics not utf-8": lambda r: _write(r / "metrics" / "rank0.jsonl", b"\xff\xfe\n" * 10),
    "metrics rank file is a folder": lambda r: (r / "metrics" / "rank3.jsonl").mkdir(),
    "metrics folder is a file": lambda r: (__import__("shutil").rmtree(r / "metrics"), _write(r / "metrics", "x")),
    "metrics deep line": lambda r: _append(r / "metrics" / "rank0.jsonl", "[" * 5000 + "]" * 5000 + "\n"),
    "log not utf-8": lambda r: _write(r / "log.txt", b"\xff\xfe\x00" * 1000),
    "log is a folder": lambda r: ((r / "log.txt").unlink(), (r / "log.txt").mkdir()),
    "heartbeat folder is a file": lambda r: _write(r / "heartbeat", "x"),
}


def engine_readers(root: Path, run_id: str) -> dict:
    """Each engine reader on one run: a callable that must not raise anything but RunError."""
    path = root / run_id
    return {
        "list_runs": lambda: runstore.list_runs(root),
        "read_status": lambda: runstore.read_status(path),
        "summary": lambda: runstore.summary(path),
        "read_metrics": lambda: runstore.read_metrics(path),
        "metrics_frame": lambda: runstore.metrics_frame(path),
        "metrics_frame eval": lambda: runstore.metrics_frame(path, "eval"),
        "log_tail": lambda: runstore.log_tail(path),
        "run_dir": lambda: runstore.run_dir(run_id, root),
    }


def run_cli(*argv: str) -> tuple[int, str, str]:
    """engine.cli.main in-process: (exit status, stdout, stderr); any exception escaping it fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def corrupt_runs(tmp_path_factory) -> Path:
    """One folder per corruption beside one good run."""
    root = tmp_path_factory.mktemp("corrupt") / "runs"
    write_fixture_run(root, "good-run")
    for n, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        run = write_fixture_run(root, f"bad-{n:02d}")
        corrupt(run)
    return root


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_folder_matrix_every_engine_reader_answers_or_raises_one_clear_error(corrupt_runs, name):
    run_id = f"bad-{list(CORRUPTIONS).index(name):02d}"
    results = {}
    for reader, call in engine_readers(corrupt_runs, run_id).items():
        try:
            call()
            results[reader] = "ok"
        except runstore.RunError as error:
            assert reader in ("summary", "run_dir") and str(error), (name, reader)
            results[reader] = "clear error"
    status = runstore.read_status(corrupt_runs / run_id)
    listed = {r["run_id"]: r for r in runstore.list_runs(corrupt_runs)}
    assert "good-run" in listed and listed["good-run"]["state"] == "succeeded"
    if status["state"] == "unreadable" or run_id not in listed or listed[run_id]["state"] == "unreadable":
        assert results["summary"] == "clear error"
        if run_id in listed:
            assert listed[run_id]["error"] and listed[run_id]["detail"].startswith("unreadable: ")
    else:
        frame = runstore.metrics_frame(corrupt_runs / run_id)
        assert frame.empty or pd.api.types.is_numeric_dtype(frame["step"])
    for argv in (("runs",), ("runs", "--json"), ("summary", run_id), ("cancel", run_id)):
        code, out, err = run_cli(*argv, "--runs-dir", str(corrupt_runs))
        assert code in (0, 2) and "Traceback" not in err, (name, argv, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, err
    assert {r["run_id"]: r["state"] for r in json.loads(run_cli("runs", "--json", "--runs-dir",
                                                                str(corrupt_runs))[1])}["good-run"] == "succeeded"


def test_corrupt_folders_do_not_break_the_runs_and_whatif_pages(corrupt_runs, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(corrupt_runs))
    views = Path(__file__).resolve().parent.parent / "app" / "views"
    for page in ("runs.py", "whatif.py"):
        st.cache_data.clear()
        st.cache_resource.clear()
        at = AppTest.from_file(str(views / page), default_timeout=60).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    table = AppTest.from_file(str(views / "runs.py"), default_timeout=60).run().dataframe[0].value
    broken = table[table["status"] == runstore.UNREADABLE]  # listed as rows with their reason, never opened
    assert len(broken) >= 10 and broken["note"].str.len().gt(10).all(), broken


def test_a_missing_or_unusable_runs_folder_is_one_line(tmp_path):
    assert runstore.list_runs(tmp_path / "none") == []
    code, _, err = run_cli("runs", "--runs-dir", "/dev/null")
    assert code == 2 and err.count("\n") == 1 and "not a folder" in err
    code, _, err = run_cli("train", "--steps", "2", "--runs-dir", "/dev/null")
    assert code == 2 and err.count("\n") == 1 and "/dev/null" in err


# ---------------------------------------------------------------------------------------------- run ids
@pytest.mark.parametrize("run_id", ["../other", "/etc", "a/b", "..", ".", "", "x" * 5000, "good-run/../good-run",
                                    "bad\x00id", ".queue"])
def test_only_a_plain_run_id_inside_the_runs_folder_is_opened(corrupt_runs, run_id):
    with pytest.raises(runstore.RunNotFound):
        runstore.run_dir(run_id, corrupt_runs)
    code, _, err = run_cli("summary", run_id, "--runs-dir", str(corrupt_runs))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_a_run_folder_that_links_outside_the_runs_folder_is_refused(tmp_path):
    outside = write_fixture_run(tmp_path / "elsewhere", "secret")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(outside)
    with pytest.raises(runstore.RunNotFound):
        runstore.run_dir("link", tmp_path / "runs")
    assert runstore.list_runs(tmp_path / "runs") == []


# ---------------------------------------------------------------------------------------------- identity
@pytest.fixture
def strangers():
    """Three unrelated processes of ours, standing in for whoever got a stale run's pids after a restart."""
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.parametrize("legacy", [False, True], ids=["identities", "bare pids"])
def test_cancel_never_signals_a_process_that_is_not_the_runs_own(tmp_path, strangers, legacy):
    run = write_fixture_run(tmp_path, "stale", state="running", steps_done=3)
    status = json.loads((run / "status.json").read_text())
    pids = [p.pid for p in strangers]
    if legacy:  # an old status: pids only, recorded an hour before these processes started
        status.update(started_at=time.time() - 3600, supervisor_pid=pids[0], torchrun_pid=pids[1],
                      worker_pids=[pids[2]])
    else:  # same pids, but the processes that held them started at another time
        identity = [{"pid": pid, "create_time": psutil.Process(pid).create_time() - 1000} for pid in pids]
        status.update(supervisor=identity[0], torchrun=identity[1], workers=[identity[2]])
    (run / "status.json").write_text(json.dumps(status))

    assert runstore.read_status(run)["state"] == "lost"
    assert "gone" in runstore.read_status(run)["error"]
    final = launcher.cancel("stale", tmp_path, timeout_s=0.5)
    assert final["state"] == "lost"
    time.sleep(0.2)
    assert all(p.poll() is None for p in strangers), "cancel killed a process that was not the run's"


def test_a_live_process_with_the_recorded_identity_is_alive():
    me = runstore.process_identity(os.getpid())
    assert runstore.is_alive(me)
    assert not runstore.is_alive({**me, "create_time": me["create_time"] + 5})
    assert not runstore.signal_process({**me, "create_time": me["create_time"] - 5}, signal.SIGKILL)


def test_a_queued_run_whose_supervisor_never_started_is_lost(tmp_path):
    run = write_fixture_run(tmp_path, "orphan", state="queued", steps_done=0)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "created_at": time.time() - 3600}))
    assert runstore.read_status(run)["state"] == "lost"
    (run / "status.json").write_text(json.dumps({**status, "created_at": time.time()}))
    assert runstore.read_status(run)["state"] == "queued"


# ---------------------------------------------------------------------------------------------- final state
def _ended_run(tmp_path, steps_done: int, steps: int = 20) -> tuple[Path, JobSpec, dict]:
    run = write_fixture_run(tmp_path, "r", steps=steps, steps_done=steps_done, state="running")
    if steps_done == steps:
        for rank in (0, 1):
            _append(run / "metrics" / f"rank{rank}.jsonl",
                    json.dumps({"kind": "end", "step": steps, "rank": rank, "t": time.time()}) + "\n")
    status = runstore.read_status_file(run)
    return run, runstore.read_spec(run), status


@pytest.mark.parametrize("exit_code", [0, 1, -15])
def test_a_cancel_after_every_rank_ended_leaves_the_run_succeeded(tmp_path, exit_code):
    run, spec, status = _ended_run(tmp_path, steps_done=20)
    supervisor.finish(run, spec, status, exit_code, cancel_at=time.time())
    assert runstore.read_status(run)["state"] == "succeeded"


def test_a_cancelled_run_reads_as_a_cancel_not_an_error(tmp_path):
    run, spec, status = _ended_run(tmp_path, steps_done=7)
    supervisor.finish(run, spec, status, -15, cancel_at=time.time())
    final = runstore.read_status(run)
    assert final["state"] == "cancelled" and final["error"] is None and final["detail"] == "cancelled at step 7"
    assert "cancelled at step 7 by request" in runstore.log_tail(run, 1)


TORCHRUN_REPORT = """\
W1128 01:34:42.604000 9770 api.py:1028] Sending process 9822 closing signal SIGTERM
E1128 01:34:42.622000 9770 api.py:1002] failed (exitcode: -9) local_rank: 1 (pid: 9823) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
engine.worker FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-28_01:34:42
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 9822)
  error_file: /tmp/torchelastic_x/attempt_0/0/error.json
  traceback : Traceback (most recent call last):
    RuntimeError: Connection reset by peer
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_01:34:42
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 9822)
  error_file: /tmp/torchelastic_x/attempt_0/0/error.json
  traceback : RuntimeError: Connection reset by peer
------------------------------------------------------
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 9823)
  traceback : Signal 9 (SIGKILL) received by PID 9823
======================================================
"""


def test_a_rank_killed_by_a_signal_is_the_root_cause_not_the_peer_it_disconnected(tmp_path):
    run, spec, status = _ended_run(tmp_path, steps_done=5)
    _append(run / "metrics" / "rank0.jsonl", json.dumps(
        {"kind": "error", "rank": 0, "t": time.time(), "message": "RuntimeError: Connection reset by peer"}) + "\n")
    _write(run / "log.txt", TORCHRUN_REPORT)
    root, failures = supervisor.torchrun_failures(TORCHRUN_REPORT)
    assert {f["rank"]: f["exitcode"] for f in failures} == {0: 1, 1: -9}
    error = supervisor.root_cause(run, 2, 1, 5)
    assert error == "rank 1 was killed by SIGKILL (likely the out-of-memory killer) at step 5"
    assert supervisor.root_cause(run, 2, -9, 48).startswith("torchrun was killed by SIGKILL")


# ---------------------------------------------------------------------------------------------- queue
def test_queue_starts_runs_in_launch_order_one_cpu_run_at_a_time(tmp_path, monkeypatch):
    monkeypatch.delenv(runqueue.MAX_ACTIVE_ENV, raising=False)
    me = runstore.process_identity(os.getpid())  # the "supervisors" are this live process
    for name in ("a", "b", "c"):
        run = write_fixture_run(tmp_path, name, state="queued", steps_done=0)
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "supervisor": me}))
        with runqueue.locked(tmp_path) as queue:
            queue.add({"run_id": name, "device": "cpu", "nproc": 2})
    assert [runqueue.position(tmp_path, n) for n in "abc"] == [1, 2, 3]
    assert runstore.read_status(tmp_path / "c")["detail"] == "queued (position 3)"
    with runqueue.locked(tmp_path) as queue:
        assert queue.try_start("b") is None  # nobody overtakes
        assert queue.try_start("a")["state"] == "running"
        assert queue.try_start("b") is None  # one CPU run at a time
    assert runqueue.position(tmp_path, "b") == 1
    monkeypatch.setenv(runqueue.MAX_ACTIVE_ENV, "2")
    with runqueue.locked(tmp_path) as queue:
        assert queue.try_start("b") is not None and queue.try_start("c") is None
        queue.remove("a")
        assert queue.try_start("c") is not None


def test_a_dead_run_at_the_head_of_the_queue_does_not_block_it(tmp_path):
    for name in ("dead", "next"):
        run = write_fixture_run(tmp_path, name, state="queued", steps_done=0)
        status = json.loads((run / "status.json").read_text())
        who = {"pid": os.getpid(), "create_time": 1.0} if name == "dead" else runstore.process_identity(os.getpid())
        (run / "status.json").write_text(json.dumps({**status, "supervisor": who}))
        with runqueue.locked(tmp_path) as queue:
            queue.add({"run_id": name, "device": "cpu", "nproc": 1})
    with runqueue.locked(tmp_path) as queue:
        queue.prune()
        assert queue.try_start("next") is not None


def test_gpu_runs_take_free_gpu_sets(tmp_path):
    queue = runqueue.Queue(tmp_path, [], [])
    for name in ("g1", "g2", "g3"):
        queue.add({"run_id": name, "device": "cuda", "nproc": 2})
    assert queue.try_start("g1", gpus_found=4)["gpus"] == [0, 1]
    assert queue.try_start("g2", gpus_found=4)["gpus"] == [2, 3]
    assert queue.try_start("g3", gpus_found=4) is None


def test_a_launch_that_does_not_fit_in_memory_is_refused_with_the_numbers(runs_dir, monkeypatch):
    class Tiny:
        available = 100 * 2**20

    monkeypatch.setattr(launcher.psutil, "virtual_memory", lambda: Tiny)
    with pytest.raises(SpecError, match=r"needs about .* GiB .* only 0.10 GiB of memory is available"):
        launcher.launch(JobSpec(nproc=2, steps=5), runs_dir)
    assert runstore.list_runs(runs_dir) == []


def test_too_many_cpu_ranks_are_refused_before_anything_starts(runs_dir):
    nproc = launcher.cpu_rank_cap() + 1
    with pytest.raises(SpecError, match="CPU ranks is too many"):
        launcher.launch(JobSpec(nproc=nproc, global_batch=nproc * 4, steps=5), runs_dir)


def test_metrics_volume_is_capped_and_the_status_says_so():
    spec, notes = runstore.cap_metrics_volume(JobSpec(steps=1_000_000, log_interval=1, eval_interval=10))
    assert spec.log_interval == 100 and spec.eval_interval == 1000
    assert "log interval raised from 1 to 100" in notes[0]
    assert runstore.cap_metrics_volume(JobSpec(steps=50)) == (JobSpec(steps=50), [])


def test_memory_held_by_a_running_run_counts_as_available_to_a_run_queued_after_it(tmp_path, monkeypatch):
    class Busy:
        available = 2 * 2**30  # the running run holds most of the machine now

    monkeypatch.setattr(launcher.psutil, "virtual_memory", lambda: Busy)
    monkeypatch.delenv(runqueue.MAX_ACTIVE_ENV, raising=False)
    queue = runqueue.Queue(tmp_path, [], [])
    queue.add({"run_id": "big", "device": "cpu", "nproc": 8, "need_bytes": 13 * 2**30})
    queue.try_start("big")
    need = {"model_state_bytes": 10 * 2**30, "baseline_bytes": 3 * 2**30, "total_bytes": 13 * 2**30}
    launcher.check_memory(JobSpec(nproc=8), need, queue)  # runs after it, one at a time: fits
    monkeypatch.setenv(runqueue.MAX_ACTIVE_ENV, "2")
    with pytest.raises(SpecError, match=r"plus 13.00 GiB for runs that may run beside it.*15.00 GiB"):
        launcher.check_memory(JobSpec(nproc=8), need, queue)  # two at once: 26 GiB > 15 GiB
