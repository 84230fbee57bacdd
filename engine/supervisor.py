"""Runs one run's torchrun, records its status on disk, and turns a SIGTERM into a clean cancel.

    python -m engine.supervisor runs/<run_id>

Imports no torch: it starts in a fraction of a second and its only job is bookkeeping.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from engine import runstore

CANCEL_GRACE_S = 2.5  # after SIGTERM, ranks finish their step; stragglers stuck in a collective are then killed


def torchrun_command(
    spec_path: Path | str, nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None
) -> list[str]:
    """The exact torchrun line for a spec file: --standalone on one node, c10d rendezvous across several."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1 and not rdzv_endpoint:
        command.append("--standalone")  # picks a free rendezvous port: several runs can share a machine
    else:
        command += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=shardlab"]
    return command + ["-m", "engine.worker", str(spec_path)]


def die_with_parent() -> None:
    """If our parent is SIGKILLed we would run on as an orphan; ask Linux to kill us with it (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def kill_processes(pids) -> None:
    """SIGKILL each pid still alive. By pid, never by process group: torchrun's workers sit in their own sessions."""
    for pid in pids:
        if not pid:
            continue
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def error_summary(path: Path) -> str:
    """The root cause in plain words: the earliest error a rank recorded, else the end of the log."""
    errors = [r for r in runstore.read_metrics(path) if r.get("kind") == "error"]
    if errors:
        first = min(errors, key=lambda r: r.get("t", 0))
        return f"rank {first['rank']}: {first['message']}"
    lines = [line for line in runstore.log_tail(path, 40).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "torchrun exited before any rank started"


def main(path: Path, torchrun_started: subprocess.Popen | None = None) -> int:
    """`torchrun_started`: a warm standby's torchrun (engine/standby.py), already up; this run is handed to it."""
    spec = json.loads((path / "spec.json").read_text())

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if spec.get("memory_accurate"):
        # Big blocks come from mmap and go back to the OS when freed, so RSS tracks what is really held.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cancelled_at: list[float] = []
    torchrun: subprocess.Popen | None = torchrun_started

    def on_cancel(signum, frame):
        if not cancelled_at:
            cancelled_at.append(time.time())
        if torchrun is not None and torchrun.poll() is None:
            torchrun.send_signal(signal.SIGTERM)  # torchrun forwards it to every rank

    signal.signal(signal.SIGTERM, on_cancel)
    signal.signal(signal.SIGINT, on_cancel)
    # Written only now, with the handler in place: a cancel that reads this pid is always heard.
    status = runstore.read_status(path)
    status.update(state="running", started_at=time.time(), supervisor_pid=os.getpid())
    runstore.write_json_atomic(path / "status.json", status)
    with open(path / "log.txt", "ab") as log:
        if torchrun is None:
            log.write(f"[supervisor] {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"{' '.join(torchrun_command(path / 'spec.json', spec['nproc']))}\n".encode())
            log.flush()
            torchrun = subprocess.Popen(
                torchrun_command(path / "spec.json", spec["nproc"]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent,
            )
    if cancelled_at:  # cancelled while torchrun was starting
        torchrun.send_signal(signal.SIGTERM)
    status["torchrun_pid"] = torchrun.pid
    runstore.write_json_atomic(path / "status.json", status)

    workers: set[int] = set()
    while torchrun.poll() is None:
        try:
            found = {p.pid for p in psutil.Process(torchrun.pid).children(recursive=True)}
        except psutil.Error:
            found = set()
        if found - workers:
            workers |= found
            status["worker_pids"] = sorted(workers)
            runstore.write_json_atomic(path / "status.json", status)
        if cancelled_at and time.time() - cancelled_at[0] > CANCEL_GRACE_S:
            kill_processes([*workers, torchrun.pid])
        time.sleep(0.1)

    kill_processes(workers)  # nothing of the run may outlive it (a worker can linger after torchrun has gone)
    exit_code = torchrun.returncode
    ends = {r["rank"] for r in runstore.read_metrics(path) if r.get("kind") == "end"}
    status.update(exit_code=exit_code, ended_at=time.time())
    if cancelled_at:
        status.update(state="cancelled", error=None)
    elif exit_code == 0:
        status.update(state="succeeded", error=None)
    elif len(ends) == spec["nproc"]:
        # Every rank finished and wrote its last record; torchrun failed in teardown (a rare gloo abort).
        status.update(state="succeeded", error=None,
                      warning=f"torchrun exited with code {exit_code} after every rank had finished")
    else:
        status.update(state="failed", error=error_summary(path))
    runstore.write_json_atomic(path / "status.json", status)
    with open(path / "log.txt", "ab") as log:
        log.write(f"[supervisor] {time.strftime('%Y-%m-%d %H:%M:%S')} {status['state']} (torchrun exit code "
                  f"{exit_code}) {status['ended_at'] - status['started_at']:.2f} s after it started\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
