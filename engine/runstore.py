"""Run store: the one owner of a run directory. It writes every file there and reads every file back.

runs/<run_id>/
  spec.json              the JobSpec, exactly as the workers read it
  status.json            state and its history, process identities; written by the supervisor (created by launch)
  log.txt                torchrun's combined stdout/stderr
  metrics/rank<r>.jsonl  one JSON record per line, per rank (kinds and keys below)
  heartbeat/rank<r>      touched every HEARTBEAT_INTERVAL_S by each rank: a rank silent for long is stalled
  cancel-requested       written by a cancel; the supervisor polls it (no signal needed for a clean cancel)
  final_params.pt        full final parameters (only with save_final_params)

Readers never raise on what they find on disk: a run that cannot be read is a status with state "unreadable"
and an "error" saying why (summary() of it raises RunUnreadable, one clear ValueError). A run whose processes
are gone reads as "lost", never "running". A run started by hand on a cluster (no supervisor, no status.json)
reads from its records and heartbeats like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import threading
import time
from pathlib import Path

import psutil

from engine.jsonfile import JSONFileError, read_json_file
from engine.spec import MAX_SPEC_FILE_BYTES, JobSpec, SpecError

# ---------------------------------------------------------------------------------------------- layout
SPEC_FILE, STATUS_FILE, LOG_FILE = "spec.json", "status.json", "log.txt"
METRICS_DIR, HEARTBEAT_DIR, CANCEL_FILE = "metrics", "heartbeat", "cancel-requested"
RANK_FILE = re.compile(r"rank(\d{1,6})\.jsonl")  # rank0-copy.jsonl and friends are not a rank's records
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain folder name: no '/', no '..', bounded
MAX_STATUS_BYTES = 256 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # a longer "line" is garbage (a file of zeros), skipped without being held whole

# ---------------------------------------------------------------------------------------------- states
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST, UNREADABLE = (
    "queued", "running", "succeeded", "failed", "cancelled", "lost", "unreadable")
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, LOST)
STATES = (*ACTIVE_STATES, *FINAL_STATES)
TRANSITIONS = {QUEUED: {RUNNING, CANCELLED, FAILED}, RUNNING: {SUCCEEDED, FAILED, CANCELLED}}
SUPERVISOR_START_GRACE_S = 60  # a queued run whose supervisor never wrote its identity by then is lost

# ---------------------------------------------------------------------------------------------- records
# One JSON object per line in metrics/rank<r>.jsonl; "kind" says which.
START, TRAIN, EVAL, END, ERROR = "start", "train", "eval", "end", "error"
COLLECTIVES = "collectives"  # one record per rank: the ordered collectives of one steady-state step
MEMORY_NEED = "memory_need"  # one record per rank: measured bytes needed after each phase (engine/budget.py)
RECORD_KINDS = (START, TRAIN, EVAL, END, ERROR, COLLECTIVES, MEMORY_NEED)
NUMERIC_KINDS = (TRAIN, EVAL)  # every value but "kind" is a number in these

# Model state as the ZeRO paper splits it; the one list every writer, reader and chart uses.
STATE_CATEGORIES = ("params", "master", "grads", "optimizer")
CATEGORY_LABELS = {
    "params": "parameters",
    "master": "master params (ZeRO-2 shards)",
    "grads": "gradients",
    "optimizer": "optimizer state",
}
PHASES = ("forward", "backward", "step")  # model state is read after each
COMM_PAYLOAD_KEY = "comm/payload_bytes"
COMM_WIRE_EST_KEY = "comm/wire_bytes_est"
COMM_CUM_PAYLOAD_KEY = "comm/cum_payload_bytes"


def mem_key(phase: str, category: str) -> str:
    """Model-state bytes of one category after one phase: mem/<phase>/<category>_bytes."""
    return f"mem/{phase}/{category}_bytes"


def mem_rss_key(phase: str) -> str:
    return f"mem/{phase}/rss_bytes"


def mem_measured_step_key(phase: str) -> str:
    """The step at which that phase's model state was last walked (the walk is skipped while it cannot change)."""
    return f"mem/{phase}/measured_step"


ACTIVATION_KEY = "activation_bytes"  # bytes autograd saved for backward in the forward of a train record's step
ACTIVATION_MEASURED_STEP_KEY = "activation_measured_step"  # the step they were counted at (skipped while steady)


def comm_calls_key(op: str) -> str:
    return f"comm/{op}/calls"


def comm_bytes_key(op: str) -> str:
    """Payload bytes of one collective type in one step: comm/<op>/bytes."""
    return f"comm/{op}/bytes"


def comm_ops(keys) -> list[str]:
    """The collective types named by comm/<op>/bytes keys."""
    return sorted({k[5:-6] for k in keys if isinstance(k, str) and k.startswith("comm/") and k.endswith("/bytes")
                   and k.count("/") == 2})


# ---------------------------------------------------------------------------------------------- errors
class RunError(ValueError):
    """A run that cannot be found or read; the message is one line for a person."""


class RunNotFound(RunError, FileNotFoundError):
    pass


class RunUnreadable(RunError):
    pass


# ---------------------------------------------------------------------------------------------- folders
def runs_dir_default() -> Path:
    """The runs folder, read at call time so tests and the app can point it elsewhere."""
    return Path(os.environ.get("SHARDLAB_RUNS_DIR", "runs"))


def check_run_id(run_id) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or ".." in run_id:
        shown = repr(run_id) if len(repr(run_id)) <= 60 else repr(run_id)[:60] + "..."
        raise RunNotFound(f"{shown} is not a run id (letters, digits, '.', '_', '-'; at most 128 characters)")
    return run_id


def run_dir(run_id: str, runs_dir: Path | None = None) -> Path:
    """The folder of a run inside the runs folder; only a plain run id is accepted (no path, no '..')."""
    check_run_id(run_id)
    root = Path(runs_dir or runs_dir_default())
    path = root / run_id
    try:
        inside = path.is_dir() and path.resolve().parent == root.resolve()
        exists = inside and ((path / SPEC_FILE).exists() or (path / STATUS_FILE).exists())
    except OSError:
        exists = False
    if not exists:
        raise RunNotFound(f"no run '{run_id}' in {root.absolute()}")
    return path


def write_json_atomic(path: Path, value: dict) -> None:
    """Readers never see half a file: write aside, then rename."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(spec.to_json().encode()).hexdigest()[:16]


def new_run_id(strategy: str, runs_dir: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        run_id = f"{stamp}-{strategy}" + (f"-{n}" if n > 1 else "")
        if not (Path(runs_dir) / run_id).exists():
            return run_id
    raise RuntimeError("could not find a free run id")


def create_run(runs_dir: Path, spec: JobSpec, **status_fields) -> Path:
    """A new run folder with its spec and a queued status; the folder is made exclusively (no two launches share)."""
    while True:
        path = Path(runs_dir) / new_run_id(spec.strategy, runs_dir)
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    spec.save(path / SPEC_FILE)
    write_json_atomic(path / STATUS_FILE, {"state": QUEUED, "created_at": time.time(), **status_fields})
    return path


# ---------------------------------------------------------------------------------------------- metrics volume
MAX_POINTS_PER_RANK = 10_000  # train records per rank; beyond that the log interval grows
MAX_EVALS = 1_000


def cap_metrics_volume(spec: JobSpec) -> tuple[JobSpec, list[str]]:
    """The spec with log/eval intervals raised so a run writes at most ~10k train and 1k eval records per rank,
    and notes saying so (shown in status and summary)."""
    notes, changes = [], {}
    if spec.steps / spec.log_interval > MAX_POINTS_PER_RANK:
        changes["log_interval"] = math.ceil(spec.steps / MAX_POINTS_PER_RANK)
        notes.append(f"log interval raised from {spec.log_interval} to {changes['log_interval']} steps to keep "
                     f"{spec.steps:,} steps within {MAX_POINTS_PER_RANK:,} metric lines per rank")
    if spec.eval_interval and spec.steps / spec.eval_interval > MAX_EVALS:
        changes["eval_interval"] = math.ceil(spec.steps / MAX_EVALS)
        notes.append(f"eval interval raised from {spec.eval_interval} to {changes['eval_interval']} steps "
                     f"(at most {MAX_EVALS:,} evaluations)")
    return (spec.replace(**changes) if changes else spec), notes


# ---------------------------------------------------------------------------------------------- status
def transition(path: Path, status: dict, state: str, **fields) -> dict:
    """Moves a run to its next state (queued -> running -> succeeded | failed | cancelled) and writes it."""
    if state not in TRANSITIONS.get(status.get("state"), ()):
        raise ValueError(f"a run cannot go from {status.get('state')} to {state}")
    status.update(fields, state=state)
    status.setdefault("history", []).append([state, time.time()])
    write_json_atomic(Path(path) / STATUS_FILE, status)
    return status


def request_cancel(path: Path) -> None:
    (Path(path) / CANCEL_FILE).write_text(f"{time.time()}\n")


def cancel_requested(path: Path) -> bool:
    return (Path(path) / CANCEL_FILE).exists()


def read_status_file(path: Path) -> dict:
    """status.json as written, checked; raises RunUnreadable (or RunNotFound when there is none)."""
    try:
        status = read_json_file(Path(path) / STATUS_FILE, MAX_STATUS_BYTES)
    except JSONFileError as error:
        if not (Path(path) / STATUS_FILE).exists():
            raise RunNotFound("no status.json") from None
        raise RunUnreadable(f"status.json: {_short(str(error))}") from None
    if not isinstance(status, dict):
        raise RunUnreadable(f"status.json holds {type(status).__name__ if status is not None else 'null'}, "
                            "not an object")
    if status.get("state") not in STATES:
        raise RunUnreadable(f"status.json: unknown state {_short(repr(status.get('state')))}")
    for key in ("supervisor_pid", "torchrun_pid"):
        if key in status and status[key] is not None and not _is_pid(status[key]):
            raise RunUnreadable(f"status.json: {key} {_short(repr(status[key]))} is not a process id")
    if "worker_pids" in status and not (isinstance(status["worker_pids"], list)
                                        and all(_is_pid(p) for p in status["worker_pids"])):
        raise RunUnreadable("status.json: worker_pids is not a list of process ids")
    for key in ("supervisor", "torchrun"):
        if status.get(key) is not None and not is_identity(status[key]):
            raise RunUnreadable(f"status.json: {key} is not a process identity")
    if "workers" in status and not (isinstance(status["workers"], list) and all(map(is_identity, status["workers"]))):
        raise RunUnreadable("status.json: workers is not a list of process identities")
    for key in ("created_at", "started_at", "ended_at"):
        if status.get(key) is not None and not _is_number(status[key]):
            raise RunUnreadable(f"status.json: {key} is not a time")
    for key in ("error", "detail", "warning"):
        if status.get(key) is not None and not isinstance(status[key], str):
            status[key] = _short(repr(status[key]))
    return status


def read_status(path: Path) -> dict:
    """The run's status as it is now. Never raises: a broken run is {"state": "unreadable", "error": why}.
    Adds "detail" (one line for a person: "queued (position 2)", "stalled: rank 1 silent for 75 s", ...)."""
    path = Path(path)
    try:
        status = read_status_file(path)
    except RunNotFound:
        status = _status_from_records(path)  # started by hand (a cluster run): no supervisor wrote status
    except RunUnreadable as error:
        return {"state": UNREADABLE, "error": str(error), "detail": f"unreadable: {error}"}
    except OSError as error:
        return {"state": UNREADABLE, "error": f"status.json: {error.strerror or error}",
                "detail": f"unreadable: {error}"}
    if status["state"] in ACTIVE_STATES and "nodes" not in status:
        status = _check_alive(path, status)
    if status["state"] == RUNNING:
        stalled = stalled_ranks(path, _stall_after_s(path))
        if stalled:
            rank, age = stalled[0]
            status["stalled"] = [{"rank": r, "silent_s": round(a, 1)} for r, a in stalled]
            status["detail"] = f"stalled: rank {rank} silent for {age:.0f} s"
    if status["state"] == QUEUED:
        from engine import runqueue  # runqueue reads statuses too

        position = runqueue.position(path.parent, path.name)
        if position:
            status["queue_position"] = position
            status["detail"] = f"queued (position {position})"
    status.setdefault("detail", status["state"] + (f": {status['error']}" if status.get("error") else ""))
    return status


def _check_alive(path: Path, status: dict) -> dict:
    """An active run whose supervisor is gone (machine restart, kill -9) is lost, with the reason."""
    supervisor = status.get("supervisor")
    if supervisor is not None:
        gone = not is_alive(supervisor)
        who = f"its supervisor (pid {supervisor['pid']})"
    elif status.get("supervisor_pid") is not None:  # written before identities were recorded
        gone = not _legacy_alive(status["supervisor_pid"], status.get("started_at") or status.get("created_at"))
        who = f"its supervisor (pid {status['supervisor_pid']})"
    else:
        created = status.get("created_at") or 0
        gone = time.time() - created > SUPERVISOR_START_GRACE_S
        who = "its supervisor, which never started"
    if not gone:
        return status
    try:  # the supervisor may have written its final status just before it exited
        status = read_status_file(path)
    except (RunError, OSError):
        pass
    if status["state"] in ACTIVE_STATES and cancel_requested(path):
        status = {**status, "state": CANCELLED, "error": None, "detail": "cancelled (its supervisor was stopped)"}
    elif status["state"] in ACTIVE_STATES:
        reason = (f"{who} is gone (the machine restarted or it was killed) while the run was {status['state']}; "
                  "nothing of it is running")
        status = {**status, "state": LOST, "error": reason, "detail": f"lost: {reason}"}
    return status


def _stall_after_s(path: Path) -> float:
    try:
        return read_spec(path).stall_after_s
    except RunError:
        return JobSpec.stall_after_s


def _status_from_records(path: Path) -> dict:
    """The state of a run nobody supervises (the torchrun line run by hand on each node of a cluster), from its
    records and heartbeats: failed on an error record, succeeded when every rank ended, running while heartbeats
    are fresh, lost when they stopped, queued while nothing started."""
    try:
        spec = read_spec(path)
    except RunError as error:
        raise RunUnreadable(str(error)) from None
    records = read_metrics(path)
    starts = {r["rank"]: r for r in records if r["kind"] == START}
    ends = {r["rank"]: r for r in records if r["kind"] == END}
    errors = [r for r in records if r["kind"] == ERROR]
    nodes: dict[int, dict] = {}
    for rank, start in sorted(starts.items()):
        node = nodes.setdefault(int(start.get("node_rank", 0) or 0), {
            "node_rank": int(start.get("node_rank", 0) or 0), "hostname": str(start.get("hostname", "?")),
            "ranks": [], "started_at": start.get("t")})
        node["ranks"].append(rank)
    for node in nodes.values():
        done = [ends[r] for r in node["ranks"] if r in ends]
        node["state"] = SUCCEEDED if len(done) == len(node["ranks"]) else (
            FAILED if any(e["rank"] in node["ranks"] for e in errors) else RUNNING)
        node["ended_at"] = max((e.get("t", 0) for e in done), default=None) if node["state"] == SUCCEEDED else None
    created = _mtime(path / SPEC_FILE)
    status = {"state": QUEUED, "created_at": created, "supervised": False, "nodes": sorted(
        nodes.values(), key=lambda n: n["node_rank"])}
    if starts:
        status["started_at"] = min(s.get("t", created) for s in starts.values())
    ages = heartbeat_ages(path)
    if errors:
        first = min(errors, key=lambda r: r.get("t", 0))
        status.update(state=FAILED, error=f"rank {first['rank']}: {_short(str(first.get('message', '')))}")
    elif len(ends) >= spec.world_size and all(ends[r].get("step") == spec.steps for r in range(spec.world_size)
                                               if r in ends):
        status.update(state=SUCCEEDED, ended_at=max(e.get("t", 0) for e in ends.values()))
    elif ages and min(ages.values()) < max(spec.stall_after_s, 3 * HEARTBEAT_INTERVAL_S):
        status["state"] = RUNNING
    elif starts or ages:
        silent = min(ages.values()) if ages else time.time() - max(s.get("t", 0) for s in starts.values())
        reason = f"no rank has reported for {silent:.0f} s (the nodes' torchrun stopped or the machines went away)"
        status.update(state=LOST, error=reason)
    else:
        status["detail"] = "queued: waiting for the nodes to start (torchrun line run by hand)"
    return status


# ---------------------------------------------------------------------------------------------- processes
def process_identity(pid: int) -> dict | None:
    """pid plus the process's start time: a pid alone may belong to someone else after a restart or wrap-around."""
    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def is_identity(value) -> bool:
    return isinstance(value, dict) and _is_pid(value.get("pid")) and _is_number(value.get("create_time"))


def _process(identity) -> psutil.Process | None:
    """The live process with exactly this identity, else None."""
    if not is_identity(identity):
        return None
    try:
        process = psutil.Process(identity["pid"])
        if abs(process.create_time() - identity["create_time"]) > 0.05 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def is_alive(identity) -> bool:
    return _process(identity) is not None


def signal_process(identity, signum: int) -> bool:
    """Sends signum only to the very process recorded (same pid and start time); True if it was sent."""
    process = _process(identity)
    if process is None:
        return False
    try:
        process.send_signal(signum)
        return True
    except psutil.Error:
        return False


def run_processes(status: dict) -> list[dict]:
    """The identities a status records: supervisor, torchrun, workers."""
    return [i for i in [status.get("supervisor"), status.get("torchrun"), *(status.get("workers") or [])]
            if is_identity(i)]


def _legacy_alive(pid, started_at) -> bool:
    """A bare pid (old status files): alive only if that process already existed when the run started."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            not _is_number(started_at) or process.create_time() <= started_at + 5)
    except (psutil.Error, ValueError, TypeError, OverflowError):
        return False


# ---------------------------------------------------------------------------------------------- heartbeats
HEARTBEAT_INTERVAL_S = 2.0


class Heartbeat:
    """A daemon thread that touches heartbeat/rank<r> every HEARTBEAT_INTERVAL_S. It keeps beating while the
    main thread waits inside a collective (that hang is the process-group timeout's job); it stops when the
    process is stopped, frozen or gone, which is what a reader sees as a stalled rank."""

    def __init__(self, run_dir: Path, rank: int):
        self.path = Path(run_dir) / HEARTBEAT_DIR / f"rank{rank}"
        self._stop = threading.Event()

    def start(self) -> "Heartbeat":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # beat() keeps trying; a rank never dies of its heartbeat
        self.beat()
        threading.Thread(target=self._run, name="shardlab-heartbeat", daemon=True).start()
        return self

    def beat(self) -> None:
        try:
            self.path.touch()
            os.utime(self.path)
        except OSError:
            pass  # a full disk must not kill the rank; the reader will call it stalled

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            self.beat()

    def stop(self) -> None:
        self._stop.set()


def heartbeat_ages(path: Path, now: float | None = None) -> dict[int, float]:
    """Seconds since each rank's last heartbeat."""
    now = time.time() if now is None else now
    ages = {}
    try:
        entries = list(os.scandir(Path(path) / HEARTBEAT_DIR))
    except OSError:
        return ages
    for entry in entries:
        match = re.fullmatch(r"rank(\d{1,6})", entry.name)
        if match:
            try:
                ages[int(match.group(1))] = max(0.0, now - entry.stat().st_mtime)
            except OSError:
                continue
    return ages


def stalled_ranks(path: Path, threshold_s: float) -> list[tuple[int, float]]:
    """(rank, seconds silent) of each rank whose heartbeat is older than threshold_s, most silent first."""
    return sorted(((r, a) for r, a in heartbeat_ages(path).items() if a > threshold_s), key=lambda x: -x[1])


# ---------------------------------------------------------------------------------------------- writing records
class MetricsWriter:
    """Appends one JSON record per line; each line goes out in a single write(), so a kill never leaves half a
    record mid-file (at worst a torn last line, which readers skip)."""

    def __init__(self, run_dir: Path, rank: int):
        path = Path(run_dir) / METRICS_DIR / f"rank{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **record) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())


# ---------------------------------------------------------------------------------------------- reading records
def parse_record(line: bytes, rank: int) -> dict | None:
    """One line of rank's file as a record, or None for anything that is not one (garbage, a bare number, a
    list, a record with non-numbers where numbers belong). The rank is the file's."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return None
    record["rank"] = rank
    for key in ("step", "t"):
        if key in record and not (_is_number(record[key]) and (key != "step" or isinstance(record[key], int))):
            return None
    if record["kind"] in NUMERIC_KINDS and not all(
        type(v) in _NUMERIC_TYPES for k, v in record.items() if _numeric_key(k)
    ):
        return None  # (type() rather than isinstance: a bool is not a measurement)
    return record


_NUMERIC_TYPES = frozenset((int, float, type(None)))
NUMERIC_KEYS = frozenset(("step", "world_size", "t", "loss", "loss_global", "samples_per_s", "eval_loss",
                          "eval_accuracy"))
NUMERIC_SUFFIXES = ("_bytes", "/bytes", "_s", "/calls", "_est")  # unit-bearing keys: bytes, seconds, counts


def _numeric_key(key: str, _known: dict = {}) -> bool:
    """Keys whose values readers compute with. Other keys (a helper's new nested value) pass through as they are."""
    try:
        return _known[key]
    except KeyError:
        _known[key] = found = key in NUMERIC_KEYS or key.endswith(NUMERIC_SUFFIXES)
        return found


def read_records(path: Path, rank: int | None = None) -> list[dict]:
    """Records of one JSON-lines file; a torn, garbled or oversized line is skipped, never fatal."""
    path = Path(path)
    if rank is None:
        match = RANK_FILE.fullmatch(path.name)
        rank = int(match.group(1)) if match else -1
    records = []
    try:
        with open(path, "rb") as f:
            while True:
                line = f.readline(MAX_RECORD_BYTES)
                if not line:
                    break
                if not line.endswith(b"\n"):
                    if len(line) < MAX_RECORD_BYTES:
                        break  # a last line still being written (or torn by a kill)
                    while line and not line.endswith(b"\n"):  # skip the rest of an oversized line
                        line = f.readline(MAX_RECORD_BYTES)
                    continue
                record = parse_record(line, rank)
                if record is not None:
                    records.append(record)
    except OSError:
        pass
    return records


def rank_files(path: Path) -> list[Path]:
    """metrics/rank<r>.jsonl files, by rank; other files there are not records."""
    try:
        entries = list(os.scandir(Path(path) / METRICS_DIR))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = RANK_FILE.fullmatch(entry.name)
        try:
            if match and entry.is_file():
                found.append((int(match.group(1)), Path(entry.path)))
        except OSError:
            continue
    return [p for _, p in sorted(found)]


def rank_of(file: Path) -> int:
    return int(RANK_FILE.fullmatch(Path(file).name).group(1))


def read_metrics(path: Path) -> list[dict]:
    """Every record of every rank, rank by rank."""
    return [record for f in rank_files(path) for record in read_records(f, rank_of(f))]


def metrics_frame(path: Path, kind: str = TRAIN):
    """One row per record of that kind (train: one per rank per logged step)."""
    import pandas as pd  # heavy; the supervisor and the workers never need it

    rows = [r for r in read_metrics(path) if r.get("kind") == kind]
    frame = pd.DataFrame(rows)
    if not frame.empty and "step" in frame:
        frame = frame.sort_values(["step", "rank"], kind="stable").reset_index(drop=True)
    return frame


def log_tail(path: Path, lines: int = 50) -> str:
    try:
        with open(Path(path) / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""


def append_log(path: Path, line: str) -> None:
    with open(Path(path) / LOG_FILE, "a") as f:
        f.write(f"[shardlab] {line}\n")


# ---------------------------------------------------------------------------------------------- typed readers
REQUIRED_SPEC_FIELDS = ("model", "size", "dataset", "strategy", "nproc", "steps", "global_batch")


def read_spec(path: Path) -> JobSpec:
    """The run's JobSpec; RunUnreadable says what is wrong with spec.json."""
    try:
        values = read_json_file(Path(path) / SPEC_FILE, MAX_SPEC_FILE_BYTES)
    except JSONFileError as error:
        raise RunUnreadable(f"spec.json: {_short(str(error))}") from None
    if not isinstance(values, dict):
        raise RunUnreadable(f"spec.json holds {type(values).__name__ if values is not None else 'null'}, "
                            "not a spec object")
    missing = [f for f in REQUIRED_SPEC_FIELDS if f not in values]
    if missing:
        raise RunUnreadable(f"spec.json lacks {', '.join(missing)}")
    try:
        return JobSpec.from_dict(values)
    except SpecError as error:
        raise RunUnreadable(f"spec.json: {_short(str(error))}") from None
    except TypeError as error:
        raise RunUnreadable(f"spec.json: {_short(str(error))}") from None


def list_runs(runs_dir: Path | None = None) -> list[dict]:
    """Every run on disk, newest first: run_id, state, detail, spec (a dict), created_at, and error when the run
    is unreadable. Hidden folders (the launch queue) and folders without a spec or status are not runs."""
    root = Path(runs_dir or runs_dir_default())
    if not root.exists():
        return []
    if not root.is_dir():
        raise RunError(f"the runs folder {root} is not a folder")
    try:
        entries = list(os.scandir(root))
    except OSError as error:
        raise RunError(f"cannot read the runs folder {root}: {error.strerror or error}") from None
    runs = []
    for entry in entries:
        try:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if not RUN_ID.fullmatch(entry.name) or not ((path / SPEC_FILE).exists() or (path / STATUS_FILE).exists()):
                continue
        except OSError:
            continue
        runs.append(_list_entry(path))
    return sorted(runs, key=lambda r: (r["created_at"], r["run_id"]), reverse=True)


def _list_entry(path: Path) -> dict:
    created = _mtime(path)
    try:
        spec = dataclasses.asdict(read_spec(path))
    except RunUnreadable as error:
        return {"run_id": path.name, "state": UNREADABLE, "detail": f"unreadable: {error}", "error": str(error),
                "spec": {}, "created_at": created}
    status = read_status(path)
    entry = {"run_id": path.name, "state": status["state"], "detail": status.get("detail", status["state"]),
             "spec": spec, "created_at": status.get("created_at") or created}
    for key in ("error", "queue_position"):
        if status.get(key) is not None:
            entry[key] = status[key]
    return entry


def summary(path: Path) -> dict:
    """One JSON-able object: what the CLI's `summary` prints and what the estimator compares against.
    Raises RunUnreadable for a run whose spec or status cannot be read."""
    path = Path(path)
    spec = read_spec(path)
    status = read_status(path)
    if status["state"] == UNREADABLE:
        raise RunUnreadable(status["error"])
    records = read_metrics(path)
    starts = sorted((r for r in records if r["kind"] == START), key=lambda r: r["rank"])
    last_train: dict[int, dict] = {}
    peak_rss: dict[int, int] = {}
    for r in records:
        if r["kind"] == TRAIN:
            last_train[r["rank"]] = r  # records are in step order within a rank's file
            peak_rss[r["rank"]] = max(peak_rss.get(r["rank"], 0), r.get("peak_rss_bytes") or 0)
    evals = [r for r in records if r["kind"] == EVAL]
    per_rank = []
    for rank, rec in sorted(last_train.items()):
        state = {c: rec.get(mem_key("step", c)) or 0 for c in STATE_CATEGORIES}
        state["total"] = sum(state.values())
        per_rank.append(
            {
                "rank": rank,
                "model_state_bytes": state,
                "peak_rss_bytes": peak_rss.get(rank, 0),
                "rss_bytes": rec.get("rss_bytes"),
                "comm_bytes_per_step": {op: rec[comm_bytes_key(op)] for op in comm_ops(rec)},
                "comm_wire_bytes_est_per_step": rec.get(COMM_WIRE_EST_KEY),
                "activation_bytes": rec.get(ACTIVATION_KEY),  # saved for backward, counted at the step recorded beside it
                **({"cuda_peak_allocated_bytes": rec["cuda_peak_allocated_bytes"]}
                   if "cuda_peak_allocated_bytes" in rec else {}),
            }
        )
    rank0 = last_train.get(0, {})
    return {
        "run_id": path.name,
        "status": status["state"],
        "status_text": status.get("detail", status["state"]),
        "status_detail": status,
        "notes": status.get("notes") or [],
        "spec": dataclasses.asdict(spec),
        "param_count": starts[0].get("param_count") if starts else None,
        "strategy_pytorch": starts[0].get("strategy_pytorch") if starts else None,
        "ranks_started": len(starts),
        "steps_done": rank0.get("step", 0),
        "final_loss": rank0.get("loss_global"),
        "eval_loss": evals[-1].get("eval_loss") if evals else None,
        "eval_accuracy": evals[-1].get("eval_accuracy") if evals else None,
        "per_rank": per_rank,
        "collectives": collectives(records),
        "memory_need": memory_need(records),
    }


# ---------------------------------------------------------------------------------------------- small helpers
def _is_pid(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _mtime(path: Path) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------- lessons: collective log, memory need, groups

def collectives(records: list[dict], rank: int = 0) -> list[dict]:
    """The ordered collective log of `rank` ({op, bytes, phase, module, issued_s} each); [] when not recorded."""
    for r in records:
        if r.get("kind") == COLLECTIVES and r.get("rank") == rank and isinstance(r.get("ops"), list):
            return [{**op, "step": r.get("step")} for op in r["ops"] if isinstance(op, dict)]
    return []


def memory_need(records: list[dict]) -> list[dict]:
    """Per rank: {rank, need_bytes: {phase: bytes}, need_max_bytes, parts, budget_bytes, simulated}."""
    found = {r["rank"]: r for r in records if r.get("kind") == MEMORY_NEED}
    return [{k: v for k, v in found[rank].items() if k not in ("kind", "t")} for rank in sorted(found)]


GROUP_SUFFIX = ".group.json"  # a file beside the run folders, never a folder: run listings skip it


def write_group(members: dict[str, str], runs_dir: Path | None = None, kind: str = "compare") -> str:
    """Records runs that belong together (strategy -> run id) so a view of all of them survives a reload."""
    root = Path(runs_dir or runs_dir_default())
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        group_id = f"{stamp}-{kind}" + (f"-{n}" if n > 1 else "")
        try:
            with open(root / f"{group_id}{GROUP_SUFFIX}", "x") as f:  # exclusive: two clicks get two groups
                f.write(json.dumps({"group_id": group_id, "kind": kind, "runs": members, "created_at": time.time()},
                                   indent=2) + "\n")
            return group_id
        except FileExistsError:
            continue
    raise RuntimeError("could not find a free group id")


MAX_GROUP_BYTES = 64 * 1024


def _read_group_file(path: Path) -> dict | None:
    """A group file's object with its runs (strategy -> run id), or None for anything else on disk."""
    try:
        group = read_json_file(path, MAX_GROUP_BYTES)
    except JSONFileError:
        return None
    runs = group.get("runs") if isinstance(group, dict) else None
    if not isinstance(runs, dict) or not all(isinstance(v, str) and RUN_ID.fullmatch(v) for v in runs.values()):
        return None
    return group


def read_group(group_id: str, runs_dir: Path | None = None) -> dict:
    root = Path(runs_dir or runs_dir_default())
    if not isinstance(group_id, str) or not RUN_ID.fullmatch(group_id):
        raise RunNotFound(f"no group '{str(group_id)[:80]}': a group id is a plain name")
    group = _read_group_file(root / f"{group_id}{GROUP_SUFFIX}")
    if group is None:
        raise RunNotFound(f"no readable group '{group_id}' in {root.resolve()}")
    return group


def list_groups(runs_dir: Path | None = None, kind: str | None = None) -> list[dict]:
    """Every readable group, newest first."""
    root = Path(runs_dir or runs_dir_default())
    groups = []
    for path in root.glob(f"*{GROUP_SUFFIX}"):
        group = _read_group_file(path)
        if group is None:
            continue
        if kind is None or group.get("kind") == kind:
            groups.append(group)
    def newest_first(group: dict) -> tuple:
        created = group.get("created_at")
        return (created if _is_number(created) else 0, str(group.get("group_id", "")))

    return sorted(groups, key=newest_first, reverse=True)
