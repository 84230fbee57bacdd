"""Starts, cancels and waits for runs. A run is `torchrun` under a small supervisor (engine/supervisor.py) in
its own session, so it outlives whoever launched it and its status is always on disk. Every launch goes
through the shared launch queue (engine/runqueue.py): one CPU run at a time by default, in launch order.

The app passes `client_token` (one per browser session): the same token launching the identical spec again
within 2 s (a double-click) gets the first run's id back instead of a second run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from engine import runqueue, runstore, standby
from engine.spec import MAX_CPU_RANKS, JobSpec, SpecError, check_resources
from engine.supervisor import count_gpus, kill_processes

REPO_ROOT = Path(__file__).resolve().parent.parent
# Resident memory of one idle rank after `import torch` and process-group init, before the model: measured
# with `python -m engine train --nproc 2 --steps 5 --size tiny` on this 2-core CPU box (rss_bytes minus
# model state, see the report); rounded up.
BASELINE_RSS_PER_RANK_BYTES = 400 * 2**20
CPU_RANKS_PER_CORE = 2
MIN_CPU_RANK_CAP = 8  # a classroom's 8-rank demo runs even on a 2-core machine (slowly); memory is checked apart


def cpu_rank_cap() -> int:
    """Most CPU ranks one run may start on this machine: 2 per core, at least 8, at most MAX_CPU_RANKS."""
    return min(MAX_CPU_RANKS, max(MIN_CPU_RANK_CAP, CPU_RANKS_PER_CORE * (os.cpu_count() or 1)))


def predicted_memory_bytes(spec: JobSpec) -> dict:
    """Host memory a CPU run needs: the estimator's exact model-state bytes per rank plus a measured baseline."""
    from engine.estimate import estimate_for_spec  # builds the model on the meta device: imports torch

    states = sum(rank.total_bytes for rank in estimate_for_spec(spec)[: spec.nproc])
    baseline = BASELINE_RSS_PER_RANK_BYTES * spec.nproc
    return {"model_state_bytes": states, "baseline_bytes": baseline, "total_bytes": states + baseline}


def check_launchable(spec: JobSpec) -> None:
    """Everything that would make the run fail before its first step, as a SpecError, before anything starts."""
    check_resources(spec, count_gpus() if spec.device == "cuda" else 0)
    if spec.nnodes > 1:
        raise SpecError(
            f"a {spec.nnodes}-node job is started on each node with the line `python -m engine torchrun-command` "
            "prints; the launcher runs single-node jobs",
            "nnodes",
        )
    if spec.device == "cpu" and spec.nproc > cpu_rank_cap():
        raise SpecError(f"{spec.nproc} CPU ranks is too many for this {os.cpu_count()}-core machine "
                        f"(at most {cpu_rank_cap()})", "nproc")
    if spec.dataset == "cifar10":
        from engine.data import DEFAULT_CIFAR_DIR

        folder = Path(spec.data_dir) if spec.data_dir else DEFAULT_CIFAR_DIR
        if not (folder / "data_batch_1").is_file() or not (folder / "test_batch").is_file():
            raise SpecError(
                f"CIFAR-10 not found in '{folder.resolve()}': unpack the official cifar-10-python.tar.gz "
                "there (data_batch_1..5, test_batch) or set data_dir",
                "dataset",
            )


def check_memory(spec: JobSpec, need: dict, queue: runqueue.Queue) -> None:
    """Refuses a CPU run that cannot fit: its need plus that of the runs that may run beside it (the largest
    max_active_runs - 1 other queued or running ones) against the memory free now plus what the running runs
    hold (predicted; they give it back when they end, before a queued run starts)."""
    others = queue.active_need_bytes(runqueue.max_active_runs(queue.root) - 1)
    free = psutil.virtual_memory().available
    held = queue.running_need_bytes()
    if need["total_bytes"] + others > free + held:
        gib = 2**30
        raise SpecError(
            f"this run needs about {need['total_bytes'] / gib:.2f} GiB (model states "
            f"{need['model_state_bytes'] / gib:.2f} GiB + {spec.nproc} ranks x "
            f"{BASELINE_RSS_PER_RANK_BYTES / gib:.2f} GiB per-rank baseline)"
            + (f" plus {others / gib:.2f} GiB for runs that may run beside it" if others else "")
            + f", but only {(free + held) / gib:.2f} GiB of memory is available"
            + (f" ({free / gib:.2f} GiB free now + {held / gib:.2f} GiB held by running runs)" if held else "")
            + " (GiB = 2^30 bytes)",
            "nproc",
        )


def resolve_runs_dir(runs_dir: Path | None) -> Path:
    """The runs folder as an absolute path, created if missing: a relative one would move with the cwd."""
    root = Path(runs_dir or runstore.runs_dir_default()).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise runstore.RunError(f"cannot use {root} as the runs folder: {error.strerror or error}") from None
    if not root.is_dir():
        raise runstore.RunError(f"cannot use {root} as the runs folder: it is not a folder")
    return root


def launch(spec: JobSpec, runs_dir: Path | None = None, client_token: str | None = None) -> str:
    """Validates, writes the run directory, queues the run and starts its supervisor; returns the run id.
    The run starts when the launch queue gives it its turn; until then it reads "queued (position k)"."""
    check_launchable(spec)
    root = resolve_runs_dir(runs_dir)
    spec, notes = runstore.cap_metrics_volume(spec)
    need = predicted_memory_bytes(spec) if spec.device == "cpu" else {"total_bytes": 0}
    digest = runstore.spec_hash(spec)
    with runqueue.locked(root) as queue:
        queue.prune(every_s=runqueue.DEDUP_WINDOW_S)
        duplicate = queue.duplicate_of(client_token, digest)
        if duplicate:
            return duplicate
        if spec.device == "cpu":
            check_memory(spec, need, queue)
        path = runstore.create_run(root, spec, notes=notes, client_token=client_token,
                                   predicted_memory_bytes=need["total_bytes"])
        queue.add({"run_id": path.name, "device": spec.device, "nproc": spec.nproc, "client_token": client_token,
                   "need_bytes": need["total_bytes"], "spec_hash": digest, "created_at": time.time()})
        # A run that may start now can go to a warm standby of its shape (engine/standby.py): the queue counts it
        # running from here, and whichever supervisor takes it (the standby's, or a cold one) finds it started.
        starts_now = spec.device == "cpu" and queue.try_start(path.name) is not None
    if starts_now and standby.hand_off(spec, path, root):
        return path.name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        with open(path / "supervisor.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "engine.supervisor", str(path)],
                cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # not in the app's process group: a Ctrl-C there does not kill the run
            )
    except OSError as error:  # out of processes or memory: the run fails now instead of waiting to be lost
        runstore.transition(path, runstore.read_status_file(path), runstore.FAILED, ended_at=time.time(),
                            error=f"its supervisor could not start: {error.strerror or error}")
    return path.name


def cancel(run_id: str, runs_dir: Path | None = None, timeout_s: float = 5.0) -> dict:
    """Stops a queued or running run and returns its status. The supervisor sees the cancel-requested file
    (queued: it leaves the queue; running: SIGTERM to torchrun, then SIGKILL to stragglers). Whatever still
    lives after timeout_s is killed, but only processes whose recorded identity (pid and start time) matches:
    a lost run's pids may belong to someone else now."""
    path = runstore.run_dir(run_id, runs_dir)
    status = runstore.read_status(path)
    if status["state"] not in runstore.ACTIVE_STATES:
        return status
    runstore.request_cancel(path)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = runstore.read_status(path)
        if status["state"] not in runstore.ACTIVE_STATES:
            break
        time.sleep(0.05)
    kill_processes(runstore.run_processes(status))
    return runstore.read_status(path)


def wait(run_id: str, runs_dir: Path | None = None, timeout_s: float = 600) -> dict:
    """Blocks until the run ends (or timeout_s passes) and returns its status."""
    path = runstore.run_dir(run_id, runs_dir)
    deadline = time.time() + timeout_s
    while True:
        status = runstore.read_status(path)
        if status["state"] not in runstore.ACTIVE_STATES or time.time() > deadline:
            return status
        time.sleep(0.1)
