"""GPU check: DDP, ZeRO-1, ZeRO-2 and ZeRO-3 as real torchrun jobs on CUDA with NCCL, one table.

    python bench/gpu_check.py                  # on a GPU machine: every visible GPU (1 or more), < 3 min on an H100
    python bench/gpu_check.py --device cpu     # dry mode: the same runs and comparisons on gloo (no CUDA columns)

Each run is the engine's own path (launcher -> supervisor -> torchrun -> worker), an MLP (small preset) on the
digits, ~20 steps. Per rank the table sets side by side, after the last optimizer step:
  states     exact model-state bytes, walked tensor by tensor on the rank (params, master, grads, optimizer)
  estimate   engine.estimate.estimate_for_spec's prediction for that rank (the What-if page's engine mode)
  cuda alloc torch.cuda.memory_allocated: every live tensor on the device (states + batch + leftovers)
  peak/resvd torch.cuda.max_memory_allocated during the step, and what the caching allocator holds
  nvml used  the whole device as NVML sees it (CUDA context and every other process included)
It exits 0 when every run succeeded, the estimate equals the walk on every rank and category, and CUDA's
allocated bytes cover the walked states; 1 otherwise. Without a GPU (and without --device cpu) it says so
in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python bench/gpu_check.py` from anywhere
    sys.path.insert(0, str(ROOT))

from engine import launcher, runstore  # noqa: E402
from engine.estimate import compare_with_measured, estimate_for_spec  # noqa: E402
from engine.gpus import find_gpus  # noqa: E402
from engine.spec import JobSpec, SpecError  # noqa: E402

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
MIB = 2**20
# Adam's per-parameter `step` counters stay on the CPU (capturable=False): walked as optimizer state, not
# in CUDA's count. A few bytes per parameter tensor; this slack covers them.
CPU_RESIDENT_SLACK_BYTES = 4096


def rank_rows(summary: dict, records: list[dict]) -> list[dict]:
    """One row per rank of one run: walked states, the estimate, CUDA and NVML readings, and the checks."""
    spec = summary["spec"]
    predicted = estimate_for_spec(spec)
    mismatches = {}
    for row in compare_with_measured(predicted, summary["per_rank"]):
        if row["category"] != "total" and row["difference_bytes"] != 0:  # total follows the categories
            mismatches.setdefault(row["rank"], []).append(f"{row['category']} {row['difference_bytes']:+,}")
    last = {}
    for record in records:
        if record.get("kind") == "train":
            last[record["rank"]] = record  # in step order within a rank's file
    rows = []
    for entry in summary["per_rank"]:
        rank = entry["rank"]
        record = last.get(rank, {})
        states = entry["model_state_bytes"]["total"]
        allocated = record.get("cuda_allocated_bytes")
        rows.append({
            "strategy": spec["strategy"], "device": spec["device"], "ranks": spec["nproc"] * spec.get("nnodes", 1),
            "rank": rank, "steps": record.get("step"), "loss": record.get("loss_global"),
            "step_time_s": record.get("step_time_s"),
            "states_bytes": states, "estimate_bytes": predicted[rank].total_bytes,
            "estimate_mismatch": "; ".join(mismatches.get(rank, [])),
            "cuda_allocated_bytes": allocated,
            "cuda_peak_allocated_bytes": record.get("cuda_peak_allocated_bytes"),
            "cuda_reserved_bytes": record.get("cuda_reserved_bytes"),
            "nvml_used_bytes": record.get("nvml_used_bytes"),
            "allocated_covers_states": None if allocated is None else allocated + CPU_RESIDENT_SLACK_BYTES >= states,
        })
    return rows


def failed_row(spec: JobSpec, state: str, detail: str) -> dict:
    return {"strategy": spec.strategy, "device": spec.device, "ranks": spec.world_size, "rank": None,
            "state": state, "detail": detail}


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / MIB:,.2f}"


def format_table(rows: list[dict]) -> str:
    header = ["strategy", "N", "rank", "steps", "loss", "step ms", "states B", "estimate B", "est-states",
              "cuda alloc MiB", "alloc-states MiB", "peak MiB", "reserved MiB", "nvml used MiB", "ok"]
    lines = [header]
    for row in rows:
        if row.get("rank") is None:
            lines.append([row["strategy"], str(row["ranks"]), "-", row["state"], row["detail"][:60]] + [""] * 9 + ["NO"])
            continue
        allocated = row["cuda_allocated_bytes"]
        ok = not row["estimate_mismatch"] and row["allocated_covers_states"] is not False
        lines.append([
            row["strategy"], str(row["ranks"]), str(row["rank"]), str(row["steps"]),
            "n/a" if row["loss"] is None else f"{row['loss']:.4f}",
            "n/a" if row["step_time_s"] is None else f"{row['step_time_s'] * 1000:.1f}",
            f"{row['states_bytes']:,}", f"{row['estimate_bytes']:,}",
            f"{row['estimate_bytes'] - row['states_bytes']:+,}",
            _mib(allocated), "n/a" if allocated is None else f"{(allocated - row['states_bytes']) / MIB:+,.2f}",
            _mib(row["cuda_peak_allocated_bytes"]), _mib(row["cuda_reserved_bytes"]), _mib(row["nvml_used_bytes"]),
            "yes" if ok else "NO",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    mismatched = [f"{r['strategy']} rank {r['rank']}: {r['estimate_mismatch']}" for r in rows if r.get("estimate_mismatch")]
    if mismatched:
        text.append("estimate != walked states (bytes, measured - predicted): " + " | ".join(mismatched))
    return "\n".join(text)


def all_ok(rows: list[dict]) -> bool:
    return bool(rows) and all(
        row.get("rank") is not None and not row["estimate_mismatch"] and row["allocated_covers_states"] is not False
        for row in rows
    )


def environment_line(device: str) -> str:
    import torch  # heavy, and only needed once the runs are decided

    parts = [f"torch {torch.__version__}"]
    if device == "cuda":
        parts.append(f"CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}, "
                     f"devices: {torch.cuda.device_count()}")
        if torch.cuda.is_available():
            version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
            parts.append("NCCL " + (".".join(map(str, version)) if isinstance(version, tuple) else str(version)))
    return "; ".join(parts)


def run_all(specs: list[JobSpec], runs_dir: Path, concurrent: bool, budget_s: float) -> list[dict]:
    """Launches the runs (one after another, or all at once) and returns the table's rows; never past budget_s."""
    deadline = time.time() + budget_s
    rows: list[dict] = []

    def finish(spec: JobSpec, run_id: str) -> None:
        status = launcher.wait(run_id, runs_dir, timeout_s=max(1.0, deadline - time.time()))
        if status.get("state") in runstore.ACTIVE_STATES:
            status = launcher.cancel(run_id, runs_dir)
            rows.append(failed_row(spec, "timeout", f"cancelled after the {budget_s:.0f} s budget"))
            return
        path = runstore.run_dir(run_id, runs_dir)
        if status.get("state") != "succeeded":
            rows.append(failed_row(spec, status.get("state", "?"), status.get("error") or ""))
            print(f"--- {run_id} {status.get('state')}: last lines of its log\n{runstore.log_tail(path, 25)}",
                  file=sys.stderr)
            return
        rows.extend(rank_rows(runstore.summary(path), runstore.read_metrics(path)))
        print(f"{spec.strategy}: {run_id} succeeded ({time.time() - started:.1f} s since the first launch)",
              file=sys.stderr, flush=True)

    started = time.time()
    if concurrent:
        launched = [(spec, launcher.launch(spec, runs_dir)) for spec in specs]
        for spec, run_id in launched:
            finish(spec, run_id)
    else:
        for spec in specs:
            if time.time() >= deadline:
                rows.append(failed_row(spec, "skipped", "time budget spent"))
                continue
            finish(spec, launcher.launch(spec, runs_dir))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the dry mode, same runs and comparisons on gloo")
    parser.add_argument("--nproc", type=int, default=0, help="ranks (default: every GPU NVML finds; 2 on cpu)")
    parser.add_argument("--size", default="small", help="MLP size preset (default small)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--budget-s", type=float, default=170.0, help="stop launching, and cancel, after this")
    parser.add_argument("--concurrent", action="store_true", help="launch every run at once (CPU dry mode)")
    args = parser.parse_args(argv)

    gpus = find_gpus()
    if args.device == "cuda":
        if not gpus.count:
            print(f"gpu_check: {gpus.describe()} Nothing was checked: run it on a GPU machine "
                  "(or with --device cpu for the dry mode on gloo).")
            return 0
        print(f"gpu_check: {gpus.describe()}")
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: NVML sees a GPU but torch {torch.__version__} cannot use it (a CPU build, or a "
                  "driver too old for its CUDA): install a CUDA build of torch==2.13.0 and run again.")
            return 1
    else:
        print("gpu_check: DRY MODE on CPU/gloo -- the same runs and comparisons, no CUDA or NVML numbers.")
    print(environment_line(args.device), flush=True)
    nproc = args.nproc or (gpus.count if args.device == "cuda" else 2)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="shardlab-gpu-check-"))
    try:
        specs = [
            JobSpec(model="mlp", size=args.size, dataset="digits", strategy=strategy, nproc=nproc,
                    device=args.device, steps=args.steps, global_batch=16 * nproc, optimizer="adam", precision="fp32")
            for strategy in args.strategies.split(",")
        ]
        for spec in specs:
            launcher.check_launchable(spec)  # e.g. more ranks than GPUs: said now, before any run starts
    except SpecError as error:
        print(f"gpu_check: error: {error}")
        return 2
    print(f"runs in {runs_dir}: {', '.join(s.strategy for s in specs)}, {nproc} rank{'s' * (nproc > 1)}, "
          f"mlp/{args.size}, {args.steps} steps", flush=True)
    rows = run_all(specs, runs_dir, args.concurrent, args.budget_s)
    print(format_table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    ok = all_ok(rows)
    print("gpu_check: " + ("every run succeeded; estimate == walked states on every rank"
                           + ("; CUDA allocated covers them" if args.device == "cuda" else "")
                           if ok else "SOME CHECK FAILED (see the table)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
