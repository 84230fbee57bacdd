"""The launch queue every launcher shares (CLI, app, every browser session): state on disk, one file lock.

runs/.queue/queue.json holds the runs waiting or running, in launch order; runs/.queue/lock is taken with
fcntl.flock around every read-modify-write, so launches from many processes are safe. There is no daemon:
each run's supervisor waits for its own turn (`try_start`), and anyone holding the lock drops entries whose
run is no longer active (a supervisor that died leaves a "lost" run, which no longer holds its place).

Settings: SHARDLAB_MAX_ACTIVE_RUNS (or an integer in runs/.queue/max_active_runs) runs on CPU at once,
default 1; CUDA runs take GPUs instead, one set of free GPUs per run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from engine import runstore

QUEUE_DIR = ".queue"
MAX_ACTIVE_ENV = "SHARDLAB_MAX_ACTIVE_RUNS"
DEFAULT_MAX_ACTIVE_CPU_RUNS = 1  # a CPU machine trains one run at a time: two runs halve each other's speed
DEDUP_WINDOW_S = 2.0  # the same client launching the same spec again this soon is a double-click


def max_active_runs(root: Path) -> int:
    value = os.environ.get(MAX_ACTIVE_ENV)
    if value is None:
        try:
            value = (Path(root) / QUEUE_DIR / "max_active_runs").read_text(encoding="utf-8", errors="replace")
        except OSError:
            value = None
    try:
        return max(1, min(64, int(str(value).strip()))) if value is not None else DEFAULT_MAX_ACTIVE_CPU_RUNS
    except ValueError:
        return DEFAULT_MAX_ACTIVE_CPU_RUNS


class Queue:
    """The queue's entries while the lock is held: {"run_id", "state": queued|running, "device", "nproc",
    "need_bytes", "gpus", "client_token", "spec_hash", "created_at"}."""

    def __init__(self, root: Path, entries: list[dict], recent: list[dict], pruned_at: float = 0.0):
        self.root, self.entries, self.recent, self.pruned_at = root, entries, recent, pruned_at

    def prune(self, every_s: float = 0.0) -> None:
        """Drops entries whose run ended or was lost (their supervisor is gone); at most once per every_s."""
        if time.time() - self.pruned_at < every_s:
            return
        self.pruned_at = time.time()
        keep = []
        for entry in self.entries:
            path = self.root / entry["run_id"]
            if path.is_dir() and runstore.read_status(path)["state"] in runstore.ACTIVE_STATES:
                keep.append(entry)
        self.entries = keep
        self.recent = [r for r in self.recent if time.time() - r.get("t", 0) < 10 * DEDUP_WINDOW_S]

    def add(self, entry: dict) -> None:
        self.entries.append({**entry, "state": runstore.QUEUED})
        if entry.get("client_token"):
            self.recent.append({"client_token": entry["client_token"], "spec_hash": entry["spec_hash"],
                                "run_id": entry["run_id"], "t": time.time()})

    def duplicate_of(self, client_token: str | None, spec_hash: str) -> str | None:
        """The run this client launched with the identical spec within DEDUP_WINDOW_S, if any."""
        if not client_token:
            return None
        for r in reversed(self.recent):
            if (r.get("client_token") == client_token and r.get("spec_hash") == spec_hash
                    and time.time() - r.get("t", 0) <= DEDUP_WINDOW_S):
                return r["run_id"]
        return None

    def active_need_bytes(self, count: int) -> int:
        """Memory of the `count` largest queued or running runs: those that may run beside a new one."""
        needs = sorted((e.get("need_bytes", 0) for e in self.entries), reverse=True)
        return sum(needs[:count]) if count > 0 else 0

    def running_need_bytes(self) -> int:
        """Predicted memory of the running runs (already taken out of what the machine reports free)."""
        return sum(e.get("need_bytes", 0) for e in self.entries if e["state"] == runstore.RUNNING)

    def try_start(self, run_id: str, gpus_found: int = 0) -> dict | None:
        """Marks run_id running if it is the first queued run and there is room; returns its entry (with the
        GPU indices it may use for a CUDA run), else None. Strict launch order: nobody overtakes."""
        queued = [e for e in self.entries if e["state"] == runstore.QUEUED]
        if not queued or queued[0]["run_id"] != run_id:
            return None
        entry = queued[0]
        running = [e for e in self.entries if e["state"] == runstore.RUNNING]
        if entry.get("device") == "cuda":
            used = {g for e in running for g in e.get("gpus", [])}
            free = [g for g in range(gpus_found) if g not in used]
            if len(free) < entry.get("nproc", 1):
                return None
            entry["gpus"] = free[: entry.get("nproc", 1)]
        elif len([e for e in running if e.get("device") != "cuda"]) >= max_active_runs(self.root):
            return None
        entry["state"] = runstore.RUNNING
        entry["started_at"] = time.time()
        return entry

    def remove(self, run_id: str) -> None:
        self.entries = [e for e in self.entries if e["run_id"] != run_id]


@contextlib.contextmanager
def locked(root: Path):
    """The queue, read under an exclusive lock and written back when the block ends without error."""
    folder = Path(root) / QUEUE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = _read(Path(root))
            before = json.dumps(data, sort_keys=True)
            queue = Queue(Path(root), data["entries"], data["recent"], data["pruned_at"])
            yield queue
            after = {"entries": queue.entries, "recent": queue.recent, "pruned_at": queue.pruned_at}
            if json.dumps(after, sort_keys=True) != before:
                runstore.write_json_atomic(folder / "queue.json", after)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(root: Path) -> dict:
    """queue.json, or an empty queue if it is missing or damaged (the runs' own statuses are the truth)."""
    try:
        data = json.loads((root / QUEUE_DIR / "queue.json").read_text())
        entries = [e for e in data["entries"] if isinstance(e, dict) and isinstance(e.get("run_id"), str)
                   and e.get("state") in runstore.ACTIVE_STATES]
        recent = [r for r in data.get("recent", []) if isinstance(r, dict)]
        pruned_at = data.get("pruned_at", 0.0)
        return {"entries": entries, "recent": recent,
                "pruned_at": pruned_at if isinstance(pruned_at, (int, float)) else 0.0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {"entries": [], "recent": [], "pruned_at": 0.0}


def position(root: Path, run_id: str) -> int | None:
    """1 for the next run to start, 2 after it, ...; None if run_id is not waiting. Read without the lock."""
    queued = [e["run_id"] for e in _read(Path(root))["entries"] if e["state"] == runstore.QUEUED]
    return queued.index(run_id) + 1 if run_id in queued else None


def entries(root: Path) -> list[dict]:
    return _read(Path(root))["entries"]
