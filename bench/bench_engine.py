"""Engine benchmarks, measured side by side in one run (not a test: timings on a shared machine are noisy).

    python bench/bench_engine.py [--steps 60] [--repeats 3] [--size small]

1. Step time with metrics on (collective counting + memory walks) vs off, per strategy, 2 CPU ranks.
   Target: under 5% overhead.
2. Time from `python -m engine train` to the first metric line on disk, beside a bare torchrun script that
   only imports torch, inits the process group and prints. Target: within 0.5 s of the bare script.
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

from engine import launcher, runstore  # noqa: E402
from engine.spec import JobSpec  # noqa: E402

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


def median_step_time(spec: JobSpec, runs_dir: Path) -> float:
    run_id = launcher.launch(spec, runs_dir)
    status = launcher.wait(run_id, runs_dir, timeout_s=900)
    assert status["state"] == "succeeded", status
    frame = runstore.metrics_frame(runs_dir / run_id)
    steady = frame[frame["step"] > 5]  # skip warm-up (first all-gathers, allocator growth)
    return statistics.median(steady.groupby("step")["step_time_s"].max())  # a step ends when its slowest rank does


def bench_overhead(args, runs_dir: Path) -> None:
    print(f"\n1) step time, metrics on vs off: mlp/{args.size}, digits, 2 CPU ranks, median of steps 6..{args.steps}")
    print(f"{'strategy':<8} {'off (ms)':>9} {'on (ms)':>9} {'on/off':>7}")
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        on, off = [], []
        for _ in range(args.repeats):  # alternate so drifting machine load hits both sides alike
            base = JobSpec(model="mlp", size=args.size, strategy=strategy, nproc=2, steps=args.steps,
                           global_batch=64, eval_interval=0)
            off.append(median_step_time(base.replace(instrument=False), runs_dir))
            on.append(median_step_time(base.replace(instrument=True), runs_dir))
        t_off, t_on = statistics.median(off), statistics.median(on)
        print(f"{strategy:<8} {t_off * 1e3:9.2f} {t_on * 1e3:9.2f} {t_on / t_off:7.3f}")


def wait_for(path: Path, needle: bytes, started: float, timeout_s: float = 120) -> float:
    while time.perf_counter() - started < timeout_s:
        try:
            if needle in path.read_bytes():
                return time.perf_counter() - started
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(path)


def bench_first_metric(args, runs_dir: Path) -> None:
    print("\n2) time to first output, 2 CPU ranks (seconds)")
    bare_times, ddp_times, start_times, train_times = [], [], [], []
    for _ in range(args.repeats):  # alternate the three so drifting load hits each alike
        bare_times.append(time_bare_script(BARE_SCRIPT, runs_dir))
        ddp_times.append(time_bare_script(BARE_DDP_SCRIPT, runs_dir))

        before = set(runs_dir.iterdir())
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "engine", "train", "--steps", "3", "--runs-dir", str(runs_dir)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        run_id = proc.stdout.readline().strip()
        metrics = runs_dir / run_id / "metrics" / "rank0.jsonl"
        start_times.append(wait_for(metrics, b'"kind": "start"', started))
        train_times.append(wait_for(metrics, b'"kind": "train"', started))
        proc.wait()
        launcher.wait(run_id, runs_dir)
        assert set(runs_dir.iterdir()) - before
    bare, first_train = statistics.median(bare_times), statistics.median(train_times)
    bare_ddp = statistics.median(ddp_times)
    print(f"bare torchrun script: import torch + init gloo + print       {bare:6.2f}  (runs: {fmt(bare_times)})")
    print(f"bare script + DDP(Linear) + one backward + print              {bare_ddp:6.2f}  (runs: {fmt(ddp_times)})")
    print(f"engine train -> first 'start' record on disk                  {statistics.median(start_times):6.2f}  "
          f"(runs: {fmt(start_times)})")
    print(f"engine train -> first 'train' metric line on disk             {first_train:6.2f}  (runs: {fmt(train_times)})")
    print(f"difference (first train metric - bare script)                  {first_train - bare:+6.2f}  (target <= +0.50)")
    print(f"difference (first train metric - bare DDP script)              {first_train - bare_ddp:+6.2f}")


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
    parser.add_argument("--only", choices=("overhead", "first-metric"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shardlab-bench-") as tmp:
        runs_dir = Path(tmp)
        if args.only in (None, "first-metric"):
            bench_first_metric(args, runs_dir)
        if args.only in (None, "overhead"):
            bench_overhead(args, runs_dir)


if __name__ == "__main__":
    main()
