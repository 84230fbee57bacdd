"""A warm standby: one torchrun job already up (torch imported, process group initialised, the strategies'
modules imported) for the rank count and device the Train form shows, so that Launch skips the cold start.

    python -m engine.standby <standby folder>      (started by `ensure`, never by hand)

It is the same torchrun job a cold run is, under the same supervisor: on hand-off this process becomes the
run's supervisor (engine.supervisor.main on the run folder, with the torchrun it already started), and every
rank continues as engine.worker.main on the run's spec.json. The run folder, status.json, metrics and log.txt
(hard-linked from the standby's, so it begins with the torchrun line) look exactly like a cold run's.

Folders live beside the runs folder (`runs` -> `runs.standby/<id>/`), on the same file system (hard links)
and outside the runs listing:
  standby.json   shape (nproc, device, memory_accurate), owner, supervisor and torchrun pids
  keepalive      touched by `ensure` on each render of the Train page; idle past IDLE_S retires the standby
  ready/rank<r>  written by each rank once warm: its pid and RSS (the memory a standby costs)
  claim          created exclusively by whoever takes the standby: a launch or its own retirement
  handoff.json   {"spec": ".../spec.json"} for a launch, {"retire": true} to leave
  log.txt, supervisor.log

At most one standby lives per runs folder. It is dropped when the form's shape changes, after IDLE_S without a
keepalive, when the app that asked for it exits, or when its supervisor dies (the ranks die with torchrun).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from engine import runstore
from engine.jsonfile import JSONFileError, read_json_file
from engine.spec import JobSpec
from engine.supervisor import die_with_parent, kill_processes, torchrun_command

IDLE_S = 300.0  # a standby no page asked for in 5 minutes gives its memory back
MAX_STANDBY_FILE_BYTES = 64 * 1024
POLL_S = 0.02  # hand-off latency: the supervisor and every rank look for handoff.json this often
ADOPT_TIMEOUT_S = 5.0  # a standby that does not take its run in this time is killed and the run starts cold
REPO_ROOT = Path(__file__).resolve().parent.parent
SWITCH = "SHARDLAB_STANDBY"  # "0": the app keeps no standby (the test suite sets it; the browser test turns it on)


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def standby_root(runs_dir: Path | None = None) -> Path:
    runs = Path(runs_dir or runstore.runs_dir_default()).resolve()
    return runs.parent / (runs.name + ".standby")


def shape_of(spec: JobSpec) -> dict:
    """What a standby must share with a run to take it: the torchrun shape and the workers' environment."""
    # collective_timeout_s too: the process group is created, with its timeout, before any run exists.
    return {"nproc": spec.nproc, "device": spec.device, "memory_accurate": bool(spec.memory_accurate),
            "collective_timeout_s": spec.collective_timeout_s}


def _process_alive(pid: int | None, create_time: float | None) -> bool:
    """The process with this pid and start time still runs (pids are reused: the start time proves identity)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (
            create_time is None or abs(process.create_time() - create_time) < 0.01
        )
    except psutil.Error:
        return False


def _read_json(path: Path) -> dict:
    """A standby's own small file, or {} when it is missing or not an object (the standby is then unusable)."""
    try:
        value = read_json_file(path, MAX_STANDBY_FILE_BYTES)
    except JSONFileError:
        return {}
    return value if isinstance(value, dict) else {}


def _standbys(root: Path) -> list[tuple[Path, dict]]:
    if not root.is_dir():
        return []
    return [(folder, _read_json(folder / "standby.json")) for folder in sorted(root.iterdir()) if folder.is_dir()]


def _usable(folder: Path, info: dict) -> bool:
    return (not (folder / "claim").exists()) and _process_alive(info.get("supervisor_pid"),
                                                                 info.get("supervisor_create_time"))


def _claim(folder: Path, by: str) -> bool:
    """Exactly one taker: O_EXCL creation either succeeds for us or tells us someone was first."""
    try:
        fd = os.open(folder / "claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, by.encode())
    os.close(fd)
    return True


def _retire(folder: Path, info: dict) -> None:
    """Asks a standby to leave (its supervisor then stops torchrun), or clears its folder if nothing runs."""
    if _process_alive(info.get("supervisor_pid"), info.get("supervisor_create_time")):
        if _claim(folder, "retire"):
            runstore.write_json_atomic(folder / "handoff.json", {"retire": True})
    elif not _process_alive(info.get("torchrun_pid"), info.get("torchrun_create_time")):
        shutil.rmtree(folder, ignore_errors=True)  # the runs that came from it keep their hard-linked logs


class _Lock:
    """One `ensure` at a time per runs folder (two browser sessions render the form at once)."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / ".lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


SHARED_HOLD_S = 30  # another session's standby, asked for this recently, is not replaced by a different shape


def ensure(spec: JobSpec, runs_dir: Path | None = None, owner_pid: int | None = None, idle_s: float = IDLE_S,
           requester: str = "") -> Path | None:
    """Keeps exactly one standby of this spec's shape for this runs folder: refreshes a matching one, retires any
    other, starts one if none. Returns its folder. `owner_pid` (the app): the standby leaves when it exits.

    `requester` (a browser session): a classroom has many forms and room for one standby, so a standby another
    requester asked for in the last SHARED_HOLD_S seconds stays, and this call returns None (Launch starts cold)
    instead of thrashing the cores by replacing it on every redraw. The same requester changing its form's shape
    replaces it at once."""
    root = standby_root(runs_dir)
    shape = shape_of(spec)
    with _Lock(root):
        keep, held_by_another = None, False
        for folder, info in _standbys(root):
            if keep is None and _usable(folder, info) and info.get("shape") == shape:
                keep = folder
                (folder / "keepalive").write_text(requester)
            elif _usable(folder, info) and _held_by_another(folder, requester):
                held_by_another = True
            else:
                _retire(folder, info)
        if keep is not None or held_by_another:
            return keep
        folder = _start(root, shape, owner_pid or os.getpid(), idle_s)
        (folder / "keepalive").write_text(requester)
        return folder


def _held_by_another(folder: Path, requester: str) -> bool:
    try:
        keepalive = folder / "keepalive"
        return keepalive.read_text() != requester and time.time() - keepalive.stat().st_mtime < SHARED_HOLD_S
    except OSError:
        return False


def _start(root: Path, shape: dict, owner_pid: int, idle_s: float) -> Path:
    folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{shape['nproc']}x{shape['device']}-{os.getpid()}-{time.time_ns() % 10**6}"
    (folder / "ready").mkdir(parents=True)
    (folder / "keepalive").touch()
    owner = psutil.Process(owner_pid)
    info = {"shape": shape, "created_at": time.time(), "idle_s": idle_s, "owner_pid": owner_pid,
            "owner_create_time": owner.create_time()}
    runstore.write_json_atomic(folder / "standby.json", info)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(folder / "supervisor.log", "ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "engine.standby", str(folder)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # like a run's supervisor: a run handed to it must outlive the app
        )
    info.update(supervisor_pid=supervisor.pid, supervisor_create_time=psutil.Process(supervisor.pid).create_time())
    runstore.write_json_atomic(folder / "standby.json", info)
    return folder


def drop(runs_dir: Path | None = None) -> None:
    """Retires every standby of this runs folder (the app's exit, a test's cleanup)."""
    root = standby_root(runs_dir)
    if root.is_dir():
        with _Lock(root):
            for folder, info in _standbys(root):
                _retire(folder, info)


def status(runs_dir: Path | None = None) -> list[dict]:
    """Each standby: its shape, whether it is usable and how much memory its ranks hold (RSS, measured now)."""
    out = []
    for folder, info in _standbys(standby_root(runs_dir)):
        ranks = [_read_json(f) for f in sorted((folder / "ready").glob("rank*"))]
        rss = []
        for rank in ranks:
            try:
                rss.append(psutil.Process(rank["pid"]).memory_info().rss)
            except (psutil.Error, KeyError):
                pass
        out.append({"folder": str(folder), "shape": info.get("shape"), "usable": _usable(folder, info),
                    "ready_ranks": len(ranks), "rank_rss_bytes": rss, "rss_bytes": sum(rss),
                    "ready_after_s": max((r.get("t", 0) for r in ranks), default=None) and
                    max(r.get("t", 0) for r in ranks) - info.get("created_at", 0)})
    return out


def hand_off(spec: JobSpec, run_path: Path, runs_dir: Path | None = None) -> bool:
    """Gives a freshly written run folder (spec.json, status.json "queued") to a matching standby. True when its
    supervisor took it (status "running"); False, with nothing changed, when there is none or it failed to."""
    if spec.nnodes != 1:
        return False
    root = standby_root(runs_dir)
    for folder, info in _standbys(root):
        if info.get("shape") != shape_of(spec) or not _usable(folder, info) or not _claim(folder, run_path.name):
            continue
        linked = []
        for name in ("log.txt", "supervisor.log"):  # the run's log begins with its torchrun line and warm-up
            try:
                os.link(folder / name, run_path / name)
                linked.append(run_path / name)
            except OSError:
                pass
        runstore.write_json_atomic(folder / "handoff.json", {"spec": str((run_path / "spec.json").resolve())})
        deadline = time.time() + ADOPT_TIMEOUT_S
        while time.time() < deadline:
            if runstore.read_status(run_path).get("supervisor_pid"):
                return True
            time.sleep(0.005)
        # It never answered: nothing of it may linger, and the run starts cold from a clean folder.
        kill_processes([info.get("supervisor_pid"), info.get("torchrun_pid")])
        for path in linked:
            path.unlink(missing_ok=True)
        return False
    return False


# ---------------------------------------------------------------------------------- the standby's supervisor
def serve(folder: Path) -> int:
    """Starts torchrun on engine.standby_worker, waits for a hand-off, then supervises the run it is given."""
    from engine import supervisor

    info = _read_json(folder / "standby.json")
    shape = info["shape"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if shape["memory_accurate"]:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # as engine.supervisor sets it for a memory-accurate run
    command = [part if part != "engine.worker" else "engine.standby_worker"
               for part in torchrun_command(folder, shape["nproc"])]
    leaving: list[str] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: leaving.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda signum, frame: leaving.append("SIGINT"))
    with open(folder / "log.txt", "ab") as log:
        log.write(f"[standby] {time.strftime('%Y-%m-%d %H:%M:%S')} warm standby for {shape}: "
                  f"{' '.join(command)}\n".encode())
        log.flush()
        torchrun = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, preexec_fn=die_with_parent)
    info.update(torchrun_pid=torchrun.pid, torchrun_create_time=psutil.Process(torchrun.pid).create_time())
    runstore.write_json_atomic(folder / "standby.json", info)

    reason = None
    polls = 0
    while reason is None:
        polls += 1
        handoff = _read_json(folder / "handoff.json") if (folder / "handoff.json").exists() else {}
        if handoff.get("spec"):
            run_path = Path(handoff["spec"]).parent
            status = runstore.read_status(run_path)
            status.update(warm_start=True, standby_started_at=info["created_at"])
            runstore.write_json_atomic(run_path / "status.json", status)
            with open(run_path / "log.txt", "ab") as log:
                log.write(f"[supervisor] {time.strftime('%Y-%m-%d %H:%M:%S')} warm start: the standby above "
                          f"(up {time.time() - info['created_at']:.1f} s) takes run {run_path.name}\n".encode())
            code = supervisor.main(run_path, torchrun_started=torchrun)
            shutil.rmtree(folder, ignore_errors=True)  # the run keeps its hard-linked log.txt
            return code
        if handoff.get("retire"):
            reason = "retired"
        elif leaving:
            reason = leaving[0]
        elif torchrun.poll() is not None:
            reason = f"torchrun exited ({torchrun.returncode})"
        elif polls % 50:
            pass  # the slower checks (processes, keepalive) once a second: an idle standby costs ~nothing
        elif not _process_alive(info["owner_pid"], info["owner_create_time"]):
            reason = "the app that asked for it exited"
        else:
            try:
                idle = time.time() - (folder / "keepalive").stat().st_mtime
            except OSError:
                idle = float("inf")
            if idle > info["idle_s"]:
                reason = f"idle for {idle:.0f} s"
        if reason and not reason.startswith("retired") and not _claim(folder, "retire"):
            reason = None  # a launch claimed it a moment ago: its handoff.json is on the way
        time.sleep(POLL_S)
    runstore.write_json_atomic(folder / "handoff.json", {"retire": True})  # the ranks leave by themselves
    deadline = time.time() + 5
    while torchrun.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if torchrun.poll() is None:
        torchrun.send_signal(signal.SIGTERM)
        try:
            torchrun.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    workers = [rank.get("pid") for rank in map(_read_json, (folder / "ready").glob("rank*"))]
    kill_processes([*workers, torchrun.pid])
    print(f"standby {folder.name} left: {reason}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
