"""Reads one run directory into display-ready frames: only new metric lines per refresh, ~1k points per series.

No streamlit here, so the benchmark and the tests call exactly what the live view calls.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine import compare, runstore
from engine.spec import param_element_bytes
from engine.units import display_unit, format_bytes

MAX_POINTS_PER_SERIES = 1000  # Altair stays smooth at ~1k points per line; 10k is too heavy for a 1 s refresh
ACTIVE_STATES = runstore.ACTIVE_STATES
FINAL_STATES = runstore.FINAL_STATES
UNREADABLE = runstore.UNREADABLE  # list_runs' state for a folder that cannot be read (its "error" says why)
# Lines torchrun and gloo print when a cancel stops the ranks: expected, not errors.
SHUTDOWN_NOISE = re.compile(
    r"death signal|closing signal SIG|SignalException|got signal: 15|Received SIG|Signals\.SIGTERM"
    r"|Connection closed by peer|Connection reset by peer|Traceback \(most recent call last\)"
)


RunUnreadable = runstore.RunUnreadable  # the run folder exists but its spec cannot be read (the message says why)


def runs_dir() -> Path:
    """The runs folder, read from SHARDLAB_RUNS_DIR at call time (tests point it at a temp dir)."""
    return runstore.runs_dir_default()


def find_run(run_id: object, root: Path | None = None) -> Path | None:
    """The folder of run `run_id` inside the runs folder, or None: only a plain run id names a run
    (runstore.run_dir refuses `../elsewhere`, an absolute path, a 5,000-character value, a link out)."""
    try:
        return runstore.run_dir(run_id, root or runs_dir())
    except runstore.RunError:
        return None


class MetricsTail:
    """Every record of one run, parsed once: each call reads only the complete lines appended since the last.

    runstore.read_metrics re-parses whole files; at 10,000 steps x 2 ranks that is ~0.5 s per refresh,
    so the live view keeps one of these per run (the files only grow while a run writes them).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()  # several browser sessions may refresh the same run at once
        self._reset()

    def _reset(self) -> None:
        self._offsets: dict[Path, int] = {}
        self._train = pd.DataFrame()
        self.events: list[dict] = []  # start, eval, end and error records, in file order

    def update(self) -> pd.DataFrame:
        """Reads new lines and returns every train record so far, sorted by (rank, step)."""
        with self._lock:
            files = runstore.rank_files(self.run_dir)
            if any(path.stat().st_size < self._offsets.get(path, 0) for path in files):
                self._reset()  # a file was rewritten from scratch: start over
            new_train: list[dict] = []
            for path in files:
                offset = self._offsets.get(path, 0)
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
                self._offsets[path] = offset + len(complete)
                for line in complete.splitlines():
                    record = runstore.parse_record(line, runstore.rank_of(path))
                    if record is None:
                        continue  # a garbled line (killed writer, stray data) is skipped, never fatal
                    (new_train if record.get("kind") == "train" else self.events).append(record)
            if new_train:
                frame = pd.concat([self._train, pd.DataFrame.from_records(new_train)], ignore_index=True)
                self._train = frame.sort_values(["rank", "step"], kind="stable").reset_index(drop=True)
            return self._train


def downsample(train: pd.DataFrame, max_points: int = MAX_POINTS_PER_SERIES) -> pd.DataFrame:
    """Keeps about max_points evenly spaced steps (the same steps on every rank), always the first and last."""
    if train.empty:
        return train
    steps = np.unique(train["step"].to_numpy())
    if len(steps) <= max_points:
        return train
    keep = steps[np.unique(np.linspace(0, len(steps) - 1, max_points).round().astype(int))]
    return train[train["step"].isin(keep)].reset_index(drop=True)


def latest_per_rank(train: pd.DataFrame) -> pd.DataFrame:
    """Each rank's record at the newest step every rank has reached (ranks drift by a step at most)."""
    if train.empty:
        return train
    common = train.groupby("rank")["step"].max().min()
    return train[train["step"] == common].sort_values("rank").reset_index(drop=True)


@dataclass
class RunSnapshot:
    """Everything the run view draws, read from disk at one moment."""

    run_id: str
    status: dict
    spec: dict
    train: pd.DataFrame  # downsampled, all ranks
    latest: pd.DataFrame  # one row per rank, newest common step
    evals: pd.DataFrame  # step, eval_loss, eval_accuracy (one rank's copy: the value is global)
    starts: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    steps_done: int = 0
    log: str = ""

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def total_steps(self) -> int:
        return int(self.spec.get("steps", 0))

    @property
    def param_count(self) -> int | None:
        return self.starts[0].get("param_count") if self.starts else None

    @property
    def bytes_per_element(self) -> int:
        """Bytes of one parameter element for Ψ: 8 in fp64, else 4 (bf16 keeps fp32 parameters)."""
        return param_element_bytes(self.spec.get("precision"))

    @property
    def device(self) -> str:
        return self.starts[0].get("device", "cpu") if self.starts else self.spec.get("device", "cpu")


def load_snapshot(run_dir: Path, tail: MetricsTail | None = None, log_lines: int = 30) -> RunSnapshot:
    """Reads status, spec, metrics (through `tail`, incrementally, when given) and the log tail."""
    run_dir = Path(run_dir)
    status = runstore.read_status(run_dir)  # never raises: what it cannot read it says so in its state
    try:
        spec = dataclasses.asdict(runstore.read_spec(run_dir))
    except runstore.RunError as error:
        raise RunUnreadable(str(error)) from error
    if status.get("state") == UNREADABLE:
        raise RunUnreadable(str(status.get("error", "no reason given")))
    tail = tail or MetricsTail(run_dir)
    train = tail.update()
    events = list(tail.events)
    evals = pd.DataFrame(
        [e for e in events if e.get("kind") == "eval" and e.get("rank") == 0],
        columns=["step", "eval_loss", "eval_accuracy"],
    )
    return RunSnapshot(
        run_id=run_dir.name,
        status=status,
        spec=spec,
        train=downsample(train),
        latest=latest_per_rank(train),
        evals=evals[["step", "eval_loss", "eval_accuracy"]] if not evals.empty else evals,
        starts=sorted((e for e in events if e.get("kind") == "start"), key=lambda e: e["rank"]),  # rank: checked
        errors=[e for e in events if e.get("kind") == "error"],
        steps_done=int(train["step"].max()) if not train.empty else 0,
        log=runstore.log_tail(run_dir, log_lines),
    )


def progress(snap: RunSnapshot, now: float | None = None) -> dict:
    """Step k of K, seconds since start, and an ETA from the wall-clock pace of the logged steps."""
    now = time.time() if now is None else now
    started = snap.status.get("started_at") or snap.status.get("created_at") or now
    ended = snap.status.get("ended_at")
    elapsed_s = max(0.0, (ended or now) - started)
    eta_s = None
    if snap.active and snap.steps_done and not snap.train.empty:
        rank0 = snap.train[snap.train["rank"] == snap.train["rank"].min()]
        first, last = rank0.iloc[0], rank0.iloc[-1]
        if last["step"] > first["step"]:
            pace_s = (last["t"] - first["t"]) / (last["step"] - first["step"])
            eta_s = max(0.0, pace_s * (snap.total_steps - snap.steps_done))
    fraction = min(1.0, snap.steps_done / snap.total_steps) if snap.total_steps else 0.0
    return {"step": snap.steps_done, "total": snap.total_steps, "fraction": fraction,
            "elapsed_s": elapsed_s, "eta_s": eta_s}


def failure_in_words(snap: RunSnapshot) -> str | None:
    """Why a run failed, in one or two sentences a student can act on (None unless it failed)."""
    if snap.state not in ("failed", "lost"):
        return None
    from engine.supervisor import PEER_ERRORS  # errors that follow from another rank's death

    if snap.errors:
        first = min(snap.errors, key=lambda e: e.get("t", 0))
        message = str(first.get("message", "")).strip().splitlines()
        if not any(text in str(first.get("message", "")) for text in PEER_ERRORS) or not snap.status.get("error"):
            return f"Rank {first.get('rank')} stopped with an error: {message[-1] if message else 'no message'}."
    if snap.status.get("error"):  # the supervisor's root cause: a signal, torchrun's first failure, a lost run
        return f"The run {'was lost' if snap.state == 'lost' else 'failed'}: {snap.status['error']}."
    code = snap.status.get("exit_code")
    return f"The run failed (torchrun exit code {code}); the log below says more."


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m" if hours else (f"{m}m {s:02d}s" if m else f"{s}s")


def run_stamp(run_dir: Path) -> tuple:
    """Changes whenever the run's status or metrics change: a cache key for anything read from the run."""
    run_dir = Path(run_dir)
    paths = [run_dir / "status.json", *runstore.rank_files(run_dir)]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths if p.exists())


def split_shutdown_noise(log: str, state: str) -> tuple[str, str]:
    """(log, shutdown messages): in a cancelled run, everything from the first line torchrun or gloo prints
    while stopping the ranks (a SignalException traceback, "Connection closed by peer") is expected noise."""
    if state != "cancelled":
        return log, ""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if SHUTDOWN_NOISE.search(line):
            return "\n".join(lines[:i]), "\n".join(lines[i:])
    return log, ""


def quiet_log(snap: RunSnapshot) -> str:
    """What the Log shows when torchrun printed nothing (a clean run is quiet): when the run started and ended,
    and when and where each rank started, all read from the run's status and its ranks' start records."""
    if snap.active:
        return "(nothing printed yet)"

    def clock(t) -> str:
        return time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "?"

    status = snap.status
    lines = ["torchrun printed nothing before the cancel (its shutdown messages are folded below)." if snap.log.strip()
             else "torchrun printed nothing: a clean run is quiet.\nEach rank writes its numbers to metrics/rank<r>.jsonl."]
    started, ended = status.get("started_at"), status.get("ended_at")
    if isinstance(started, (int, float)) and isinstance(ended, (int, float)):
        lines.append(f"started {clock(started)}, {snap.state} {clock(ended)} ({ended - started:.1f} s), "
                     f"exit code {status.get('exit_code')}")
    for start in sorted(snap.starts, key=lambda r: r.get("rank", 0)):
        after = f", {start['t'] - started:.1f} s after the run started" if isinstance(started, (int, float)) \
            and isinstance(start.get("t"), (int, float)) else ""
        lines.append(f"rank {start.get('rank')} started on {start.get('hostname', '?')} (pid {start.get('pid', '?')}, "
                     f"{start.get('backend', '?')}) at {clock(start.get('t'))}{after}")
    return "\n".join(lines)


NOT_EVALUATED = "skipped"  # short: a metric tile at a quarter of the page shows about ten characters


def accuracy_text(snap: RunSnapshot) -> str:
    """The held-out accuracy headline: the newest value; while the first is still to come, the step it comes
    at ('at step 20'); else 'skipped' (a cancelled or failed run will never evaluate)."""
    if not snap.evals.empty:
        return f"{snap.evals['eval_accuracy'].iloc[-1]:.1%}"
    if not snap.active:
        return NOT_EVALUATED
    total, every = snap.total_steps, snap.spec.get("eval_interval") or 0
    coming = min(total, (snap.steps_done // every + 1) * every) if isinstance(every, int) and every > 0 else total
    return f"at step {coming}" if coming else "–"


def _range(values: list) -> str:
    """'35.5 KiB' when every rank holds the same, else 'min–max' in one unit: fits a column at 8 ranks."""
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
        return "–"
    low, high = min(values), max(values)
    divisor, name = display_unit(high)
    low_text, high_text = f"{low / divisor:,.3g}", f"{high / divisor:,.3g}"
    if low_text == high_text:  # equal to three digits (RSS differs by a few kB between ranks)
        return format_bytes(high)
    return f"{low_text}–{high_text} {name}"


def traffic_psi(summary: dict) -> float | None:
    """Rank 0's traffic per step in units of Ψ (paper convention) from a runstore.summary."""
    per_rank, psi = summary.get("per_rank") or [], summary.get("param_count")
    if not per_rank or not psi:
        return None
    comm = {op: b for op, b in (per_rank[0].get("comm_bytes_per_step") or {}).items() if isinstance(b, (int, float))}
    units = compare.traffic_psi(comm, psi, param_element_bytes((summary.get("spec") or {}).get("precision")))
    return units or None


# Column widths that fit the 820 px main column of a 1,280 px window (the note, when any, takes what is left).
TABLE_WIDTHS_PX = {"run": 150, "status": 74, "strategy": 58, "ranks": 44, "model": 80, "steps": 62, "loss": 58,
                   "accuracy": 62, "traffic": 62, "model state": 90, "peak RSS": 78, "note": 240}


def runs_table(summaries: list[dict]) -> pd.DataFrame:
    """One row per run for the Runs page, narrow enough for a 1,280 px window at 8 ranks.

    Each entry is a runstore.summary, or a list_runs entry in state "unreadable" (shown with its reason).
    Memory is per rank: one value, or the range over ranks (ZeRO-1 splits by whole parameter, so ranks differ).
    """
    from engine.spec import STRATEGIES

    rows = []
    for s in summaries:
        status = s.get("status") or s.get("state")
        spec = s.get("spec") if isinstance(s.get("spec"), dict) else {}
        if status == UNREADABLE:
            rows.append({"run": s.get("run_id"), "status": status, "note": str(s.get("error") or "")})
            continue
        per_rank = s.get("per_rank") or []
        detail = s.get("status_detail") if isinstance(s.get("status_detail"), dict) else {}
        rows.append({
            "run": s["run_id"],
            # An active run says more than its state: "queued (position 2)", "stalled: rank 1 silent for 70 s".
            "status": (s.get("status_text") or status) if status in ACTIVE_STATES else status,
            "strategy": STRATEGIES.get(spec.get("strategy"), {}).get("label", spec.get("strategy")),
            "ranks": spec.get("nproc", 1) * spec.get("nnodes", 1),
            "model": f"{spec.get('model')} {spec.get('size')}",
            "steps": f"{s.get('steps_done', 0)}/{spec.get('steps')}",
            "loss": s.get("final_loss"),
            # In percent, so the column shows one decimal for every run (Streamlit's "percent" format varies).
            "accuracy": 100 * s["eval_accuracy"] if isinstance(s.get("eval_accuracy"), (int, float)) else None,
            "traffic": traffic_psi(s),
            "model state": _range([r["model_state_bytes"]["total"] for r in per_rank]),
            "peak RSS": _range([r.get("peak_rss_bytes") for r in per_rank]),
            "note": "; ".join(str(n) for n in [detail.get("error") or detail.get("warning"), *(s.get("notes") or [])] if n),
        })
    columns = list(TABLE_WIDTHS_PX)
    table = pd.DataFrame(rows, columns=columns)
    return table if table["note"].astype(bool).any() else table.drop(columns="note")


def escape_markdown(text: str) -> str:
    """Text from a run folder (an error, a note) shown literally inside Streamlit markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def metrics_csv(run_dir: Path) -> bytes:
    """Every train record of the run (all ranks, all logged steps, not downsampled) as CSV, with the held-out
    evaluation (eval_loss, eval_accuracy) on the rows of the steps it ran at; a run evaluated at a step it did
    not log (log_interval > 1) gets a row of its own for it."""
    train = runstore.metrics_frame(Path(run_dir))
    evals = runstore.metrics_frame(Path(run_dir), runstore.EVAL)
    if not evals.empty:
        evals = evals[["step", "rank", "eval_loss", "eval_accuracy"]]
        train = evals if train.empty else train.merge(evals, on=["step", "rank"], how="outer")
        train = train.sort_values(["step", "rank"], kind="stable")
    return train.to_csv(index=False).encode()
