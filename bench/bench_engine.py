"""Engine benchmarks, measured side by side in one run (not a test: timings on a shared machine are noisy).

    python bench/bench_engine.py [--steps 60] [--repeats 3] [--size small] [--only first-metric|overhead|default]

1. Time to the first metric line, 2 CPU ranks, the form's default run (app/state.py FIRST_RUN, 3 steps):
   a bare torchrun script (import torch, init gloo, print), a cold `python -m engine train`, and a warm
   launch handed to a standby (engine/standby.py). Target: warm within 0.5 s of the bare script. Also the
   standby's memory cost (RSS of its ranks, its torchrun and its supervisor).
2. Step time with metrics on (collective counting + memory walks) vs off, per strategy, mlp small,
   log_interval 1, each on/off pair launched at once. Target: at most 3% overhead. On a busy machine
   run-against-run ratios swing by 10-20%; bench/step_overhead.py alternates steps of an instrumented and a
   plain copy inside one process, which is the sharper measurement of the same cost.
3. The default run, DDP vs ZeRO-3, memory-accurate on vs off: model-state bytes and RSS per rank, median step
   time, run time, final held-out accuracy; and memory-accurate's step-time cost.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine import launcher, runstore, standby  # noqa: E402
from engine.spec import JobSpec  # noqa: E402

FIRST_RUN = JobSpec(model="mlp", size="medium", nproc=2, device="cpu", steps=120, eval_interval=20,
                    memory_accurate=True)  # app/state.py's FIRST_RUN (app/ imports streamlit, so restated here)

BARE_SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
print("ready", flush=True)
dist.destroy_process_group()
"""
# The same, plus what any DDP script pays before its first step: DDP's constructor imports torch._dynamo
# (torch 2.13, about 2.4 s on this machine), which the bare script never touches.
BARE_DDP_SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 10))
model(torch.zeros(1, 64)).sum().backward()
print("ready", flush=True)
dist.destroy_process_group()
"""


def median_step_time(spec: JobSpec, runs_dir: Path, run_ids: list | None = None) -> float:
    run_id = launcher.launch(spec, runs_dir)
    status = launcher.wait(run_id, runs_dir, timeout_s=900)
    assert status["state"] == "succeeded", status
    if run_ids is not None:
        run_ids.append(run_id)
    frame = runstore.metrics_frame(runs_dir / run_id)
    steady = frame[frame["step"] > 5]  # skip warm-up (first all-gathers, allocator growth)
    return statistics.median(steady.groupby("step")["step_time_s"].max())  # a step ends when its slowest rank does


def steady_step_time(run_id: str, runs_dir: Path) -> float:
    frame = runstore.metrics_frame(runs_dir / run_id)
    steady = frame[frame["step"] > 5]  # skip warm-up (first all-gathers, allocator growth)
    return statistics.median(steady.groupby("step")["step_time_s"].max())  # a step ends when its slowest rank does


def bench_overhead(args, runs_dir: Path) -> None:
    how = ("each pair launched at once, so the machine's drifting load hits both alike"
           if args.pairs == "concurrent" else "pairs one after the other, order swapped each repeat")
    print(f"\n2) step time, metrics on vs off: mlp/{args.size}, digits, 2 CPU ranks, log_interval 1, "
          f"median of steps 6..{args.steps}, median of {args.repeats} repeats ({how})")
    print(f"{'strategy':<8} {'off (ms)':>9} {'on (ms)':>9} {'on/off':>7}   per-repeat on/off")
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        on, off = [], []
        for repeat in range(args.repeats):
            base = JobSpec(model="mlp", size=args.size, strategy=strategy, nproc=2, steps=args.steps,
                           global_batch=64, eval_interval=0, log_interval=1)
            order = (False, True) if repeat % 2 == 0 else (True, False)
            if args.pairs == "concurrent":
                ids = {instrument: launcher.launch(base.replace(instrument=instrument), runs_dir) for instrument in order}
                for run_id in ids.values():
                    assert launcher.wait(run_id, runs_dir, timeout_s=900)["state"] == "succeeded", run_id
                times = {instrument: steady_step_time(run_id, runs_dir) for instrument, run_id in ids.items()}
            else:
                times = {instrument: median_step_time(base.replace(instrument=instrument), runs_dir)
                         for instrument in order}
            off.append(times[False])
            on.append(times[True])
        t_off, t_on = statistics.median(off), statistics.median(on)
        print(f"{strategy:<8} {t_off * 1e3:9.2f} {t_on * 1e3:9.2f} {t_on / t_off:7.3f}   "
              f"{fmt(b / a for a, b in zip(off, on))}")


def wait_for(path: Path, needle: bytes, started: float, timeout_s: float = 120) -> float:
    while time.perf_counter() - started < timeout_s:
        try:
            if needle in path.read_bytes():
                return time.perf_counter() - started
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(path)


def first_train_line(run_id: str, runs_dir: Path, started: float) -> float:
    return wait_for(runs_dir / run_id / "metrics" / "rank0.jsonl", b'"kind": "train"', started)


def standby_memory(runs_dir: Path) -> tuple[int, list[int], int, int]:
    """A ready standby's memory: its ranks' RSS, each rank's, its supervisor's and torchrun's RSS, and the PSS of
    all of them (proportional set size: shared library pages split between the processes that share them)."""
    import json

    import psutil

    (info,) = standby.status(runs_dir)
    meta = json.loads((Path(info["folder"]) / "standby.json").read_text())
    pids = [meta["supervisor_pid"], meta["torchrun_pid"],
            *(json.loads(f.read_text())["pid"] for f in (Path(info["folder"]) / "ready").glob("rank*"))]
    others = sum(psutil.Process(pid).memory_info().rss for pid in pids[:2])
    pss = sum(psutil.Process(pid).memory_full_info().pss for pid in pids)
    return info["rss_bytes"], info["rank_rss_bytes"], others, pss


def bench_first_metric(args, runs_dir: Path) -> None:
    spec = FIRST_RUN.replace(steps=3, eval_interval=0)
    print(f"\n1) time to first output, 2 CPU ranks, {spec.model}/{spec.size} memory_accurate={spec.memory_accurate}"
          f" (seconds, medians of {args.repeats} interleaved repeats)")
    bare_times, ddp_times, start_times, cold_times, warm_times, ready_times, memory = [], [], [], [], [], [], []
    cli = [sys.executable, "-m", "engine", "train", "--steps", "3", "--model", spec.model, "--size", spec.size,
           "--eval-interval", "0", "--memory-accurate" if spec.memory_accurate else "--no-memory-accurate",
           "--runs-dir", str(runs_dir)]
    for _ in range(args.repeats):  # alternate so drifting load hits each alike
        bare_times.append(time_bare_script(BARE_SCRIPT, runs_dir))
        ddp_times.append(time_bare_script(BARE_DDP_SCRIPT, runs_dir))

        started = time.perf_counter()
        proc = subprocess.Popen(cli, cwd=REPO, stdout=subprocess.PIPE, text=True)
        run_id = proc.stdout.readline().strip()
        start_times.append(wait_for(runs_dir / run_id / "metrics" / "rank0.jsonl", b'"kind": "start"', started))
        cold_times.append(first_train_line(run_id, runs_dir, started))
        proc.wait()
        launcher.wait(run_id, runs_dir)

        # Warm: the standby is started and waited for first (what the Train page does while a user reads it);
        # the clock runs from launch(), as from the Launch click.
        asked = time.perf_counter()
        standby.ensure(spec, runs_dir)
        while not any(s["ready_ranks"] == spec.nproc for s in standby.status(runs_dir)):
            time.sleep(0.05)
        ready_times.append(time.perf_counter() - asked)
        memory.append(standby_memory(runs_dir))
        started = time.perf_counter()
        run_id = launcher.launch(spec, runs_dir)
        warm_times.append(first_train_line(run_id, runs_dir, started))
        status = launcher.wait(run_id, runs_dir)
        assert status.get("warm_start") and status["state"] == "succeeded", status
    bare, cold, warm = (statistics.median(v) for v in (bare_times, cold_times, warm_times))
    bare_ddp = statistics.median(ddp_times)
    print(f"bare torchrun script: import torch + init gloo + print       {bare:6.2f}  (runs: {fmt(bare_times)})")
    print(f"bare script + DDP(Linear) + one backward + print              {bare_ddp:6.2f}  (runs: {fmt(ddp_times)})")
    print(f"cold: engine train -> first 'start' record on disk            {statistics.median(start_times):6.2f}  "
          f"(runs: {fmt(start_times)})")
    print(f"cold: engine train -> first 'train' metric line on disk       {cold:6.2f}  (runs: {fmt(cold_times)})")
    print(f"warm: launch() to a ready standby -> first 'train' line        {warm:6.2f}  (runs: {fmt(warm_times)})")
    print(f"      (the standby itself took {statistics.median(ready_times):.2f} s to get ready, before the click)")
    print(f"cold - bare {cold - bare:+6.2f}    warm - bare {warm - bare:+6.2f}  (target <= +0.50)    "
          f"cold/warm {cold / warm:5.1f}x")
    ranks = statistics.median(m[0] for m in memory)
    others = statistics.median(m[2] for m in memory)
    print(f"standby memory cost: ranks {ranks / 2**20:.0f} MiB (per rank: "
          f"{', '.join(f'{b / 2**20:.0f}' for b in memory[-1][1])} MiB) + supervisor and torchrun "
          f"{others / 2**20:.0f} MiB = {(ranks + others) / 2**20:.0f} MiB RSS (shared pages counted per process); "
          f"PSS of all {statistics.median(m[3] for m in memory) / 2**20:.0f} MiB")
    standby.drop(runs_dir)


def bench_default(args, runs_dir: Path) -> None:
    spec = FIRST_RUN.replace(steps=args.default_steps)
    print(f"\n3) the default run ({spec.model}/{spec.size}, {spec.nproc} CPU ranks, {spec.steps} steps, eval every "
          f"{spec.eval_interval}): DDP vs ZeRO-3, memory-accurate on vs off, each on/off pair at once "
          f"(MiB = 2^20 bytes; RSS at the last step, the larger rank)")
    print(f"{'strategy':<7} {'accurate':>8} {'state/rank':>10} {'RSS/rank':>9} {'peak RSS':>9} {'state/RSS':>9} "
          f"{'step ms':>8} {'run s':>6} {'accuracy':>8}")
    steps: dict[tuple[str, bool], float] = {}
    for strategy in ("ddp", "zero3"):
        # Both allocator modes at once: a busy machine's drifting load then hits the two alike.
        ids = {accurate: launcher.launch(spec.replace(strategy=strategy, memory_accurate=accurate), runs_dir)
               for accurate in (True, False)}
        for run_id in ids.values():
            assert launcher.wait(run_id, runs_dir, timeout_s=1800)["state"] == "succeeded", run_id
        for accurate, run_id in ids.items():
            steps[strategy, accurate] = steady_step_time(run_id, runs_dir)
            summary = runstore.summary(runs_dir / run_id)
            ranks = summary["per_rank"]
            state = max(r["model_state_bytes"]["total"] for r in ranks)
            rss = max(r["rss_bytes"] for r in ranks)
            peak = max(r["peak_rss_bytes"] for r in ranks)
            detail = summary["status_detail"]
            print(f"{strategy:<7} {str(accurate):>8} {state / 2**20:10.0f} {rss / 2**20:9.0f} {peak / 2**20:9.0f} "
                  f"{state / rss:9.2f} {steps[strategy, accurate] * 1e3:8.0f} "
                  f"{detail['ended_at'] - detail['started_at']:6.1f} {summary['eval_accuracy']:8.3f}")
    for strategy in ("ddp", "zero3"):
        print(f"memory-accurate step-time cost, {strategy}: x{steps[strategy, True] / steps[strategy, False]:.2f}")


def time_bare_script(source: str, runs_dir: Path) -> float:
    script = runs_dir / f"bare-{time.time_ns()}.py"
    script.write_text(source)
    log = script.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc-per-node=2", str(script)], stdout=out, stderr=subprocess.STDOUT)
        elapsed = wait_for(log, b"ready", started)
        proc.wait()
    return elapsed


def fmt(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="small", help="mlp size preset for the overhead benchmark")
    parser.add_argument("--default-steps", type=int, default=FIRST_RUN.steps, help="steps of the default-run section")
    parser.add_argument("--pairs", choices=("concurrent", "sequential"), default="concurrent",
                        help="overhead: run each on/off pair at the same time (default) or one after the other")
    parser.add_argument("--only", choices=("overhead", "first-metric", "default"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shardlab-bench-") as tmp:
        runs_dir = Path(tmp) / "runs"  # standbys live beside it (runs.standby/), inside the temporary folder
        runs_dir.mkdir()
        if args.only in (None, "first-metric"):
            bench_first_metric(args, runs_dir)
        if args.only in (None, "overhead"):
            bench_overhead(args, runs_dir)
        if args.only in (None, "default"):
            bench_default(args, runs_dir)


if __name__ == "__main__":
    main()
