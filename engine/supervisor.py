"""Runs one run's torchrun: waits for its turn in the launch queue, records every process's identity, turns a
cancel (the run's cancel-requested file, or SIGTERM) into a clean stop, and names the root cause of a failure.

    python -m engine.supervisor runs/<run_id>

Imports no torch: it starts in a fraction of a second and its only job is bookkeeping.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from engine import runqueue, runstore
from engine.gpus import find_gpus

CANCEL_GRACE_S = 2.5  # after SIGTERM, ranks finish their step; stragglers stuck in a collective are then killed
QUEUE_POLL_S = 0.3
QUEUE_PRUNE_EVERY_S = 3.0
# Errors a rank raises because a peer died first: never the root cause when another rank has a better one.
PEER_ERRORS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
               "Socket Timeout", "recvBytes", "sendBytes", "NCCL communicator was aborted")


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


def kill_processes(identities) -> None:
    """SIGKILL each recorded process that is still exactly that process (pid and start time match). By identity,
    never by process group: torchrun's workers sit in their own sessions, and a reused pid is someone else's."""
    for identity in identities:
        runstore.signal_process(identity, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- root cause
def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def killed_by(number: int) -> str:
    name = signal_name(number)
    return name + (" (likely the out-of-memory killer)" if number == signal.SIGKILL else "")


def torchrun_failures(log: str) -> tuple[dict | None, list[dict]]:
    """torchrun's own failure report, parsed: (root cause, every failure), each {"rank", "exitcode", "traceback"}.
    torchrun prints it when a rank fails: "Root Cause (first observed failure):" then rank, exitcode, traceback."""
    start = log.rfind("Failures:")
    if start < 0:
        start = log.rfind("Root Cause (first observed failure)")
    if start < 0:
        return None, []
    root_at = log.find("Root Cause (first observed failure)", start)
    failures, root = [], None
    for match in re.finditer(r"\[\d+\]:\s*\n(.*?)(?=\n\[\d+\]:|\n-{10,}|\n={10,}|\Z)", log[start:], re.S):
        block = match.group(1)
        rank = re.search(r"rank\s*:\s*(\d+)", block)
        code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
        trace = re.search(r"traceback\s*:\s*(.*)", block, re.S)
        if not rank or not code:
            continue
        pid = re.search(r"exitcode\s*:\s*-?\d+\s*\(pid:\s*(\d+)\)", block)
        failure = {"rank": int(rank.group(1)), "exitcode": int(code.group(1)),
                   "pid": int(pid.group(1)) if pid else None, "traceback": trace.group(1).strip() if trace else ""}
        failures.append(failure)
        if root_at >= 0 and start + match.start() > root_at and root is None:
            root = failure
    return root, failures


def root_cause(path: Path, world_size: int, torchrun_code: int | None, steps_done: int,
               collective_timeout_s: float | None = None) -> str:
    """The failure in plain words, most specific first: a rank killed by a signal (a peer's "connection reset"
    follows from it); torchrun killed; torchrun's own root cause with the rank's recorded error; the earliest
    error a rank recorded that is not a consequence of a dead peer; the log."""
    at_step = f" at step {steps_done}" if steps_done else " before its first step"
    if torchrun_code is not None and torchrun_code < 0:
        return f"torchrun was killed by {killed_by(-torchrun_code)}{at_step}; its ranks were stopped with it"
    log = runstore.log_tail(path, 400)
    root, failures = torchrun_failures(log)
    records = runstore.read_metrics(path)
    errors = {r["rank"]: r for r in sorted((r for r in records if r["kind"] == runstore.ERROR),
                                           key=lambda r: -r.get("t", 0))}  # earliest per rank wins
    # A signal is where it started, whatever torchrun called first; but not the signals torchrun itself sent
    # while closing the others (SIGTERM, then SIGKILL to a rank that did not stop in time).
    closed_by_torchrun = {int(pid) for pid in re.findall(r"Sending process (\d+) closing signal", log)}
    signalled = [f for f in failures if f["exitcode"] < 0 and -f["exitcode"] != signal.SIGTERM
                 and f["pid"] not in closed_by_torchrun]
    if signalled:
        first = min(signalled, key=lambda f: f["rank"]) if not root or root not in signalled else root
        return f"rank {first['rank']} was killed by {killed_by(-first['exitcode'])}{at_step}"
    if root is not None:
        if root["rank"] in errors and not _is_peer_error(errors[root["rank"]]):
            return f"rank {root['rank']}: {_message(errors[root['rank']], collective_timeout_s)}"
        if root["exitcode"] < 0:
            return f"rank {root['rank']} was killed by {killed_by(-root['exitcode'])}{at_step}"
    own = [r for r in errors.values() if not _is_peer_error(r)] or list(errors.values())
    if own:
        first = min(own, key=lambda r: r.get("t", 0))
        return f"rank {first['rank']}: {_message(first, collective_timeout_s)}"
    if root is not None:
        lines = [line for line in root["traceback"].splitlines() if line.strip()]
        return f"rank {root['rank']} exited with code {root['exitcode']}" + (f": {lines[-1].strip()}" if lines else "")
    started = any(r["kind"] == runstore.START for r in records)
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("[shardlab]")]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:300]
    if not started:
        return f"torchrun exited with code {torchrun_code} before any rank started" + (
            f": {lines[-1].strip()[:300]}" if lines else "")
    return f"torchrun exited with code {torchrun_code}{at_step}"


def _message(record: dict, collective_timeout_s: float | None = None) -> str:
    message = " ".join(str(record.get("message", "no message")).split())[:300]
    if "Timed out" in message or "timed out" in message:
        after = f"{collective_timeout_s:g} s (collective_timeout_s)" if collective_timeout_s else "collective_timeout_s"
        return f"gave up waiting in a collective after {after}; a peer stalled or died: {message}"
    return message


def stalled_prefix(path: Path, threshold_s: float) -> str:
    """"rank 1 stalled (silent for 12 s); " when a rank's heartbeat had stopped before the end."""
    ages = runstore.heartbeat_ages(path)
    if not ages:
        return ""
    newest = min(ages.values())  # silent while another rank was still beating, not merely ended
    stalled = sorted((age - newest, rank) for rank, age in ages.items() if age - newest > threshold_s)[::-1]
    return "".join(f"rank {rank} stalled (silent for {silent:.0f} s); " for silent, rank in stalled[:2])


def _is_peer_error(record: dict) -> bool:
    return any(text in str(record.get("message", "")) for text in PEER_ERRORS)


# ---------------------------------------------------------------------------------------------- the run
def wait_for_turn(path: Path, gpus_found: int, cancelled) -> dict | None:
    """Blocks until the launch queue lets this run start; its queue entry, or None if it was cancelled first."""
    root, run_id = path.parent, path.name
    locked_at = 0.0
    while not cancelled():
        # Only the head of the queue needs the lock often; the others look now and then (to drop dead runs).
        if runqueue.position(root, run_id) in (1, None) or time.time() - locked_at > QUEUE_PRUNE_EVERY_S:
            locked_at = time.time()
            with runqueue.locked(root) as queue:
                mine = next((e for e in queue.entries if e["run_id"] == run_id), None)
                if mine is None:  # the queue file was lost
                    queue.add({"run_id": run_id, "device": "cpu", "nproc": 1})
                elif mine["state"] == runstore.RUNNING:
                    return mine  # the launcher started it already (a run it offered to a warm standby)
                entry = queue.try_start(run_id, gpus_found)
                if entry is None:
                    queue.prune(every_s=QUEUE_PRUNE_EVERY_S)  # a dead run ahead must not block the queue
                    entry = queue.try_start(run_id, gpus_found)
                if entry is not None:
                    return entry
        time.sleep(QUEUE_POLL_S)
    return None


def main(path: Path, torchrun_started: subprocess.Popen | None = None) -> int:
    """`torchrun_started`: a warm standby's torchrun (engine/standby.py), already up; this run is handed to it."""
    path = Path(path).absolute()
    spec = runstore.read_spec(path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if spec.memory_accurate:
        # Big blocks come from mmap and go back to the OS when freed, so RSS tracks what is really held.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    signalled_at: list[float] = []

    def on_signal(signum, frame):  # SIGTERM/SIGINT (a shutdown, a Ctrl-C) is a cancel too
        if not signalled_at:
            signalled_at.append(time.time())

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def cancelled() -> bool:
        return bool(signalled_at) or runstore.cancel_requested(path)

    status = runstore.read_status_file(path)
    status.update(supervisor=runstore.process_identity(os.getpid()), supervisor_pid=os.getpid())
    runstore.write_json_atomic(path / runstore.STATUS_FILE, status)
    try:
        gpus = count_gpus() if spec.device == "cuda" else 0
        entry = wait_for_turn(path, gpus, cancelled)
        if entry is None:
            runstore.append_log(path, "cancelled while queued; it never started")
            runstore.transition(path, status, runstore.CANCELLED, ended_at=time.time(), error=None,
                                detail="cancelled while queued")
            return 0
        if entry.get("gpus"):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, entry["gpus"]))
        runstore.transition(path, status, runstore.RUNNING, started_at=time.time())
        exit_code, cancel_at = supervise_torchrun(path, spec, env, status, cancelled, torchrun_started)
        finish(path, spec, status, exit_code, cancel_at)
    finally:
        with runqueue.locked(path.parent) as queue:
            queue.remove(path.name)
    return 0


def supervise_torchrun(path: Path, spec, env: dict, status: dict, cancelled,
                       torchrun: subprocess.Popen | None = None) -> tuple[int, float | None]:
    """Runs torchrun (or watches a warm standby's, already up) to its end; records identities; on cancel
    SIGTERMs it, then kills what outlives the grace."""
    if torchrun is None:
        command = torchrun_command(path / runstore.SPEC_FILE, spec.nproc)
        runstore.append_log(path, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}")
        with open(path / runstore.LOG_FILE, "ab") as log:
            torchrun = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=die_with_parent,
            )
    status.update(torchrun=runstore.process_identity(torchrun.pid), torchrun_pid=torchrun.pid)
    runstore.write_json_atomic(path / runstore.STATUS_FILE, status)
    workers: dict[int, dict] = {}
    cancel_at = None
    while torchrun.poll() is None:
        try:
            found = {p.pid: {"pid": p.pid, "create_time": p.create_time()}
                     for p in psutil.Process(torchrun.pid).children(recursive=True)}
        except psutil.Error:
            found = {}
        if set(found) - set(workers):
            workers |= found
            status.update(workers=list(workers.values()), worker_pids=sorted(workers))
            runstore.write_json_atomic(path / runstore.STATUS_FILE, status)
        if cancel_at is None and cancelled():
            cancel_at = time.time()
            torchrun.send_signal(signal.SIGTERM)  # our own child; torchrun forwards it to every rank
        if cancel_at is not None and time.time() - cancel_at > CANCEL_GRACE_S:
            kill_processes([*workers.values(), status["torchrun"]])
        time.sleep(0.1)
    kill_processes(workers.values())  # nothing of the run may outlive it (a worker can linger after torchrun)
    if cancel_at is None and cancelled():
        cancel_at = time.time()
    return torchrun.returncode, cancel_at


def finish(path: Path, spec, status: dict, exit_code: int, cancel_at: float | None) -> None:
    """The final state. Every rank ending at the last step is a success whatever came after (a cancel that
    arrived late, torchrun's rare teardown abort); a cancel is a cancel, not an error."""
    records = runstore.read_metrics(path)
    ends = {r["rank"]: r for r in records if r["kind"] == runstore.END}
    completed = len(ends) == spec.world_size and all(e.get("step") == spec.steps for e in ends.values())
    steps_done = max((r.get("step", 0) for r in records if r["kind"] == runstore.TRAIN and r["rank"] == 0), default=0)
    done = dict(exit_code=exit_code, ended_at=time.time())
    if completed:
        warning = None
        if exit_code != 0:
            warning = f"torchrun exited with code {exit_code} after every rank had finished"
        elif cancel_at is not None:
            warning = "a cancel arrived after every rank had finished"
        runstore.transition(path, status, runstore.SUCCEEDED, error=None, warning=warning, **done)
    elif cancel_at is not None:
        detail = f"cancelled at step {steps_done}" if steps_done else "cancelled before its first step"
        runstore.append_log(path, f"{detail} by request; errors above from ranks being stopped are expected")
        runstore.transition(path, status, runstore.CANCELLED, error=None, detail=detail, **done)
    elif exit_code == 0:
        runstore.transition(path, status, runstore.SUCCEEDED, error=None, **done)
    else:
        error = stalled_prefix(path, spec.stall_after_s) + root_cause(path, spec.world_size, exit_code, steps_done,
                                                                        spec.collective_timeout_s)
        runstore.transition(path, status, runstore.FAILED, error=error, **done)
    if status["state"] != runstore.CANCELLED:  # a cancel's own line above says what happened
        elapsed_s = done["ended_at"] - status.get("started_at", done["ended_at"])
        runstore.append_log(path, f"{status['state']} (torchrun exit code {exit_code}), {elapsed_s:.1f} s after it started")


def count_gpus() -> int:
    """GPUs NVML finds (engine/gpus.py, no torch import); 0 where there is no driver."""
    return find_gpus().count


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
