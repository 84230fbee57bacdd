"""Fixture run directories in the engine contract's format, for app tests and the dashboard benchmark.

The numbers follow the ZeRO staircase for fp32 Adam (params 4Ψ, grads 4Ψ, optimizer 8Ψ bytes,
split by N where the stage shards them) and the measured payload per step, so charts built
from a fixture look like a real run. They are fixtures, never shown as measurements.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

OPS_PER_STEP = {  # payload bytes per step in units of 4Ψ (fp32), as measured (see FACTS.md)
    "ddp": {"all_reduce": 1},
    "zero1": {"all_reduce": 1, "broadcast": 1},
    "zero2": {"all_gather": 1, "reduce_scatter": 1},
    "zero3": {"all_gather": 2, "reduce_scatter": 1},
}
BASE_RSS_BYTES = 300 * 2**20


def model_state_bytes(strategy: str, psi: int, n: int) -> dict[str, int]:
    """Bytes of each model-state category one rank holds after the optimizer step (fp32 Adam)."""
    full, shard = 4 * psi, 4 * math.ceil(psi / n)
    return {
        "params": shard if strategy == "zero3" else full,
        "master": shard if strategy == "zero2" else 0,
        "grads": shard if strategy in ("zero2", "zero3") else full,
        "optimizer": 2 * full if strategy == "ddp" else 2 * shard,
    }


def train_record(step: int, rank: int, nproc: int, strategy: str, psi: int, t: float) -> dict:
    state = model_state_bytes(strategy, psi, nproc)
    loss = 2.3 * math.exp(-step / 40) + 0.1 + 0.01 * rank
    record = {
        "kind": "train", "step": step, "rank": rank, "world_size": nproc, "t": t,
        "loss": loss, "loss_global": 2.3 * math.exp(-step / 40) + 0.1 + 0.005 * (nproc - 1),
        "step_time_s": 0.05, "samples_per_s": 1280.0,
    }
    for phase in ("forward", "backward", "step"):
        for category, value in state.items():
            if phase == "forward" and category == "grads" and step == 1:
                value = 0  # no gradient exists before the first backward; later steps keep zeroed storage
            if phase != "step" and category == "optimizer" and step == 1:
                value = 0  # Adam allocates its state in the first step
            record[f"mem/{phase}/{category}_bytes"] = value
        record[f"mem/{phase}/rss_bytes"] = BASE_RSS_BYTES + sum(state.values()) + 1000 * rank
    record["rss_bytes"] = record["mem/step/rss_bytes"]
    record["peak_rss_bytes"] = record["rss_bytes"] + 4096
    payload = 0
    for op, units in OPS_PER_STEP[strategy].items():
        record[f"comm/{op}/calls"] = units
        record[f"comm/{op}/bytes"] = units * 4 * psi
        payload += units * 4 * psi
    record["comm/payload_bytes"] = payload
    record["comm/wire_bytes_est"] = int(payload * 2 * (nproc - 1) / nproc)
    record["comm/cum_payload_bytes"] = payload * step
    return record


def write_fixture_run(
    runs_dir: Path,
    run_id: str = "fixture-ddp",
    *,
    strategy: str = "ddp",
    nproc: int = 2,
    steps: int = 20,
    steps_done: int | None = None,
    state: str = "succeeded",
    psi: int = 9_098,
    error: str | None = None,
    log: str | None = None,
) -> Path:
    """Writes runs_dir/run_id in the contract format and returns the run directory."""
    from engine.spec import JobSpec

    steps_done = steps if steps_done is None else steps_done
    run = Path(runs_dir) / run_id
    (run / "metrics").mkdir(parents=True, exist_ok=True)
    spec = JobSpec(strategy=strategy, nproc=nproc, steps=steps)
    spec.save(run / "spec.json")
    t0 = time.time() - 10
    ended = state in ("succeeded", "failed", "cancelled")
    status = {
        "state": state, "exit_code": (0 if state == "succeeded" else 1) if ended else None,
        "error": error, "created_at": t0, "started_at": t0 + 1, "ended_at": t0 + 10 if ended else None,
    }
    (run / "status.json").write_text(json.dumps(status))
    (run / "log.txt").write_text(log if log is not None else "".join(f"[rank0] step {s}\n" for s in range(1, steps_done + 1)))
    for rank in range(nproc):
        lines = [{"kind": "start", "rank": rank, "world_size": nproc, "pid": 1000 + rank, "hostname": "fixture",
                  "backend": "gloo", "device": "cpu", "param_count": psi,
                  "strategy_pytorch": "fixture", "t": t0 + 1}]
        for step in range(1, steps_done + 1):
            lines.append(train_record(step, rank, nproc, strategy, psi, t0 + 1 + 0.05 * step))
        if state == "succeeded":
            lines.append({"kind": "eval", "step": steps_done, "rank": rank, "t": t0 + 9,
                          "eval_loss": 0.3, "eval_accuracy": 0.91})
            lines.append({"kind": "end", "step": steps_done, "rank": rank, "t": t0 + 9.5})
        if error and rank == nproc - 1:
            lines.append({"kind": "error", "rank": rank, "t": t0 + 9, "message": error, "traceback": "Traceback..."})
        text = "".join(json.dumps(line) + "\n" for line in lines)
        (run / "metrics" / f"rank{rank}.jsonl").write_text(text)
    return run


def charts_by_title(at) -> dict[str, list]:
    """Every Altair chart an AppTest run drew: title -> the DataFrames it carries (read from the element's proto)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    found: dict[str, list] = {}
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        title = spec.get("title", "")
        title = title.get("text", "") if isinstance(title, dict) else title
        frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in element.proto.datasets]
        if element.proto.data.data:
            frames.append(convert_arrow_bytes_to_pandas_df(element.proto.data.data))
        found.setdefault(title, []).extend(frames)
    return found


# The tail of a real cancelled run's log.txt (zero3, 2 ranks, cancelled during training), shortened, after one
# line in the fixture's own log format (the lines a run writes before the cancel).
CANCELLED_LOG_TAIL = """\
[rank0] step 12
W1128 01:38:07.823000 14510 site-packages/torch/distributed/elastic/agent/server/api.py:753] Received 15 death signal, shutting down workers
W1128 01:38:07.824000 14510 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 14554 closing signal SIGTERM
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
    time.sleep(monitor_interval)
  File "/usr/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/api.py", line 86, in _terminate_process_handler
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 14510 got signal: 15
[rank1]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:12345
"""
