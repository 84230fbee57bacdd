"""Starts, cancels and waits for runs. A run is `torchrun` under a small supervisor (engine/supervisor.py)
in its own session, so it outlives whoever launched it and its status is always on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import runstore, standby
from engine.spec import JobSpec, SpecError, check_resources
from engine.supervisor import kill_processes

REPO_ROOT = Path(__file__).resolve().parent.parent


def count_gpus() -> int:
    """GPUs visible through NVML, without importing torch; 0 when there is no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVIDIA driver library on this machine: CPU ranks only
        return 0


def check_launchable(spec: JobSpec) -> None:
    """Everything that would make the run fail before its first step, as a SpecError, before anything starts."""
    check_resources(spec, count_gpus() if spec.device == "cuda" else 0)
    if spec.nnodes > 1:
        raise SpecError(
            f"a {spec.nnodes}-node job is started on each node with the line `python -m engine torchrun-command` "
            "prints; the launcher runs single-node jobs",
            "nnodes",
        )
    if spec.dataset == "cifar10":
        from engine.data import DEFAULT_CIFAR_DIR

        folder = Path(spec.data_dir) if spec.data_dir else DEFAULT_CIFAR_DIR
        if not (folder / "data_batch_1").is_file() or not (folder / "test_batch").is_file():
            raise SpecError(
                f"CIFAR-10 not found in '{folder.resolve()}': unpack the official cifar-10-python.tar.gz "
                "there (data_batch_1..5, test_batch) or set data_dir",
                "dataset",
            )


def launch(spec: JobSpec, runs_dir: Path | None = None) -> str:
    """Validates, writes the run directory and starts the job in the background; returns the run id."""
    check_launchable(spec)
    runs_dir = Path(runs_dir or runstore.runs_dir_default())
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:
        run_id = runstore.new_run_id(spec.strategy, runs_dir)
        try:
            (runs_dir / run_id).mkdir()  # exclusive: two launches in one second get two folders
            break
        except FileExistsError:
            continue
    path = runs_dir / run_id
    spec.save(path / "spec.json")
    runstore.write_json_atomic(path / "status.json", {"state": "queued", "created_at": time.time()})
    if standby.hand_off(spec, path, runs_dir):  # a warm standby of this shape takes the run (engine/standby.py)
        return run_id
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(path / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "engine.supervisor", str(path)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # not in the app's process group: a Ctrl-C there does not kill the run
        )
    return run_id


def cancel(run_id: str, runs_dir: Path | None = None, timeout_s: float = 5.0) -> dict:
    """Asks the supervisor to stop the run (SIGTERM to torchrun, then SIGKILL to stragglers); returns the status."""
    path = runstore.run_dir(run_id, runs_dir)
    status = runstore.read_status(path)
    if status.get("state") not in runstore.ACTIVE_STATES:
        return status
    pid = status.get("supervisor_pid")
    deadline = time.time() + timeout_s
    if status.get("state") == "queued" and not pid:
        # The supervisor has not written its pid yet; give it a moment to start.
        while time.time() < deadline and not pid:
            time.sleep(0.05)
            pid = runstore.read_status(path).get("supervisor_pid")
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    while time.time() < deadline:
        status = runstore.read_status(path)
        if status.get("state") not in runstore.ACTIVE_STATES:
            break
        time.sleep(0.05)
    kill_run_processes(status)
    return runstore.read_status(path)


def kill_run_processes(status: dict) -> None:
    """Last resort: SIGKILL whatever the status names that still lives (supervisor, torchrun, workers)."""
    kill_processes([status.get("supervisor_pid"), status.get("torchrun_pid"), *status.get("worker_pids", [])])


def wait(run_id: str, runs_dir: Path | None = None, timeout_s: float = 600) -> dict:
    """Blocks until the run ends (or timeout_s passes) and returns its status."""
    path = runstore.run_dir(run_id, runs_dir)
    deadline = time.time() + timeout_s
    while True:
        status = runstore.read_status(path)
        if status.get("state") not in runstore.ACTIVE_STATES or time.time() > deadline:
            return status
        time.sleep(0.1)
