"""Run store: one directory per run, and everything that reads it back.

runs/<run_id>/
  spec.json              the JobSpec, exactly as the workers read it
  status.json            state, exit code, error; written by the supervisor
  log.txt                torchrun's combined stdout/stderr
  metrics/rank<r>.jsonl  one JSON record per line, per rank, flushed each line
  final_params.pt        full final parameters (only with save_final_params)

Status is derived from disk and processes, so it survives a restart of the app.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil

from engine.spec import JobSpec

ACTIVE_STATES = ("queued", "running")


def runs_dir_default() -> Path:
    """The runs folder, read at call time so tests and the app can point it elsewhere."""
    return Path(os.environ.get("SHARDLAB_RUNS_DIR", "runs"))


def run_dir(run_id: str, runs_dir: Path | None = None) -> Path:
    root = Path(runs_dir or runs_dir_default())
    if not (root / run_id / "spec.json").is_file():
        raise FileNotFoundError(f"no run '{run_id}' in {root.resolve()}")
    return root / run_id


def read_spec(path: Path) -> JobSpec:
    return JobSpec.load(Path(path) / "spec.json")


def write_json_atomic(path: Path, value: dict) -> None:
    """Readers never see half a file: write aside, then rename."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read_status(path: Path) -> dict:
    """The run's status; an active run whose supervisor vanished (machine restart, kill -9) reads as failed."""
    path = Path(path)
    try:
        status = json.loads((path / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        status = {"state": "queued", "created_at": (path / "spec.json").stat().st_mtime}
    if status.get("state") in ACTIVE_STATES and status.get("supervisor_pid") and not _pid_alive(
        status.get("supervisor_pid")
    ):
        # Re-read once: the supervisor may have written its final status just before it exited.
        try:
            status = json.loads((path / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass
        if status.get("state") in ACTIVE_STATES:
            status = {**status, "state": "failed", "error": "the supervisor process disappeared before the run ended"}
    return status


def read_records(path: Path) -> list[dict]:
    """Records of one JSON-lines file; a torn or garbled line (a killed writer) is skipped, never fatal."""
    records = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a last line still being written (or torn by a kill)
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return records


def rank_files(path: Path) -> list[Path]:
    return sorted((Path(path) / "metrics").glob("rank*.jsonl"), key=lambda p: int(p.stem[4:]))


def read_metrics(path: Path) -> list[dict]:
    """Every record of every rank, rank by rank."""
    return [record for f in rank_files(path) for record in read_records(f)]


def metrics_frame(path: Path, kind: str = "train"):
    """One row per record of that kind (train: one per rank per logged step)."""
    import pandas as pd

    rows = [r for r in read_metrics(path) if r.get("kind") == kind]
    frame = pd.DataFrame(rows)
    if not frame.empty and "step" in frame:
        frame = frame.sort_values(["step", "rank"], kind="stable").reset_index(drop=True)
    return frame


def log_tail(path: Path, lines: int = 50) -> str:
    try:
        with open(Path(path) / "log.txt", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def list_runs(runs_dir: Path | None = None) -> list[dict]:
    """Every run on disk, newest first."""
    root = Path(runs_dir or runs_dir_default())
    runs = []
    for path in root.glob("*/spec.json"):
        folder = path.parent
        status = read_status(folder)
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runs.append(
            {
                "run_id": folder.name,
                "state": status.get("state"),
                "spec": spec,
                "created_at": status.get("created_at", path.stat().st_mtime),
            }
        )
    return sorted(runs, key=lambda r: (r["created_at"], r["run_id"]), reverse=True)


COMM_PREFIX = "comm/"
STATE_CATEGORIES = ("params", "master", "grads", "optimizer")


def summary(path: Path) -> dict:
    """One JSON-able object: what the CLI's `summary` prints and what the estimator compares against."""
    path = Path(path)
    status = read_status(path)
    records = read_metrics(path)
    starts = [r for r in records if r.get("kind") == "start"]
    last_train: dict[int, dict] = {}
    for r in records:
        if r.get("kind") == "train":
            last_train[r["rank"]] = r  # records are in step order within a rank's file
    evals = [r for r in records if r.get("kind") == "eval"]
    peak_rss: dict[int, int] = {}
    for r in records:
        if r.get("kind") == "train":
            peak_rss[r["rank"]] = max(peak_rss.get(r["rank"], 0), r.get("peak_rss_bytes", 0))
    per_rank = []
    for rank, rec in sorted(last_train.items()):
        state = {c: rec.get(f"mem/step/{c}_bytes", 0) for c in STATE_CATEGORIES}
        state["total"] = sum(state.values())
        comm = {
            key[len(COMM_PREFIX) : -len("/bytes")]: value
            for key, value in rec.items()
            if key.startswith(COMM_PREFIX) and key.endswith("/bytes")
        }
        per_rank.append(
            {
                "rank": rank,
                "model_state_bytes": state,
                "peak_rss_bytes": peak_rss.get(rank, 0),
                "rss_bytes": rec.get("rss_bytes"),
                "comm_bytes_per_step": comm,
                "comm_wire_bytes_est_per_step": rec.get("comm/wire_bytes_est"),
                "activation_bytes": rec.get("activation_bytes"),  # saved for backward, last logged step
                **({"cuda_peak_allocated_bytes": rec["cuda_peak_allocated_bytes"]} if "cuda_peak_allocated_bytes" in rec else {}),
            }
        )
    rank0 = last_train.get(0, {})
    return {
        "run_id": path.name,
        "status": status.get("state"),
        "status_detail": status,
        "spec": json.loads((path / "spec.json").read_text()),
        "param_count": starts[0]["param_count"] if starts else None,
        "strategy_pytorch": starts[0].get("strategy_pytorch") if starts else None,
        "steps_done": rank0.get("step", 0),
        "final_loss": rank0.get("loss_global"),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "eval_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "per_rank": per_rank,
        "collectives": collectives(records),
        "memory_need": memory_need(records),
    }


def new_run_id(strategy: str, runs_dir: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        run_id = f"{stamp}-{strategy}" + (f"-{n}" if n > 1 else "")
        if not (Path(runs_dir) / run_id).exists():
            return run_id
    raise RuntimeError("could not find a free run id")


# ---------------------------------------------------------------- lessons: collective log, memory need, groups

COLLECTIVES_KIND = "collectives"  # one record per rank: the ordered collectives of one steady-state step
MEMORY_NEED_KIND = "memory_need"  # one record per rank: measured bytes needed after each phase (engine/budget.py)


def collectives(records: list[dict], rank: int = 0) -> list[dict]:
    """The ordered collective log of `rank` ({op, bytes, phase, module, issued_s} each); [] when not recorded."""
    for r in records:
        if r.get("kind") == COLLECTIVES_KIND and r.get("rank") == rank:
            return [{**op, "step": r.get("step")} for op in r.get("ops", [])]
    return []


def memory_need(records: list[dict]) -> list[dict]:
    """Per rank: {rank, need_bytes: {phase: bytes}, need_max_bytes, parts, budget_bytes, simulated}."""
    found = {r["rank"]: r for r in records if r.get("kind") == MEMORY_NEED_KIND}
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


def read_group(group_id: str, runs_dir: Path | None = None) -> dict:
    root = Path(runs_dir or runs_dir_default())
    path = root / f"{group_id}{GROUP_SUFFIX}"
    if "/" in group_id or not path.is_file():
        raise FileNotFoundError(f"no group '{group_id}' in {root.resolve()}")
    return json.loads(path.read_text())


def list_groups(runs_dir: Path | None = None, kind: str | None = None) -> list[dict]:
    """Every readable group, newest first."""
    root = Path(runs_dir or runs_dir_default())
    groups = []
    for path in root.glob(f"*{GROUP_SUFFIX}"):
        try:
            group = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if kind is None or group.get("kind") == kind:
            groups.append(group)
    return sorted(groups, key=lambda g: (g.get("created_at", 0), g.get("group_id", "")), reverse=True)
