"""All four at once: DDP, ZeRO-1, ZeRO-2 and ZeRO-3 on one spec and seed, and what a class reads off them.

`launch_all` starts the four runs through engine.launcher (which may queue them) and records them as a
group in the runs folder; `compare_report` reads the group back: states, the largest per-step loss
difference (the four compute the same update, so in fp32 it stays below 1e-4), traffic per step in the
ZeRO paper's units of Ψ (an all-reduce counts twice its payload) and the median step time.
"""

from __future__ import annotations

from pathlib import Path

from engine import launcher, runstore
from engine.spec import JobSpec, param_element_bytes

ORDER = ("ddp", "zero1", "zero2", "zero3")
PAPER_WEIGHT = {"all_reduce": 2}  # a ring all-reduce is a reduce-scatter plus an all-gather: 2x its payload


def traffic_bytes(op: str, payload_bytes: float) -> float:
    """Traffic of one collective in the ZeRO paper's convention: an all-reduce counts twice its payload."""
    return PAPER_WEIGHT.get(op, 1) * payload_bytes


# The Compare page's lesson: small enough that all four, one after another through the launch queue, finish in
# about a minute on two CPU cores (the Train page's own "Compare all four" uses whatever its form holds).
LESSON_SPEC = JobSpec(model="mlp", size="tiny", dataset="digits", nproc=2, steps=50)

# The memory wall demo: one model, one budget, 2 ranks. Measured on this engine (fp32 Adam, batch 64): DDP needs
# 8.6-8.8 MiB per rank, ZeRO-1 and ZeRO-2 about 6.5-6.7, ZeRO-3 5.5 (state 4.3 + one gathered layer 1.0 + activations).
WALL_SPEC = JobSpec(model="mlp", size="small", dataset="digits", nproc=2, steps=20, memory_budget_mb=6)
WALL_STRATEGIES = ("ddp", "zero3")


def launch_all(spec: JobSpec, runs_dir: Path | None = None, strategies=ORDER, kind: str = "compare",
               ) -> tuple[str, dict[str, str]]:
    """Validates once, launches each strategy on the same spec and seed, records the group on disk;
    returns (group id, strategy -> run id)."""
    specs = {strategy: spec.replace(strategy=strategy) for strategy in strategies}
    for one in specs.values():
        launcher.check_launchable(one)  # refuse before anything starts
    runs = {strategy: launcher.launch(one, runs_dir) for strategy, one in specs.items()}
    return runstore.write_group(runs, runs_dir, kind=kind), runs


def launch_memory_wall(runs_dir: Path | None = None) -> tuple[str, dict[str, str]]:
    """The same model under the same per-rank budget: DDP fails naming the budget, ZeRO-3 trains."""
    return launch_all(WALL_SPEC, runs_dir, WALL_STRATEGIES, kind="memory_wall")


# What each strategy's PyTorch recipe issues per step, payload in units of Ψ elements (FACTS.md; checked against
# real runs in tests/test_lessons.py). ZeRO-1 differs from the paper: torch's ZeroRedundancyOptimizer keeps DDP's
# full all-reduce and then broadcasts every parameter from the rank that owns it.
ENGINE_PAYLOAD_PSI = {
    "ddp": {"all_reduce": 1},
    "zero1": {"all_reduce": 1, "broadcast": 1},
    "zero2": {"reduce_scatter": 1, "all_gather": 1},
    "zero3": {"all_gather": 2, "reduce_scatter": 1},
}


def engine_traffic_psi(strategy: str) -> float:
    """Traffic per step per rank of ShardLab's recipe, in the paper's units (an all-reduce counts twice)."""
    return float(sum(PAPER_WEIGHT.get(op, 1) * n for op, n in ENGINE_PAYLOAD_PSI[strategy].items()))


def traffic_psi(per_rank_comm: dict[str, int], param_count: int, bytes_per_element: int) -> float:
    """One rank's payload per step in units of Ψ (paper convention)."""
    return sum(traffic_bytes(op, size) for op, size in per_rank_comm.items()) / (param_count * bytes_per_element)


def loss_differences(losses: dict[str, dict[int, float]]) -> dict[int, float]:
    """Per step that every run has logged: the largest minus the smallest loss (mean over ranks)."""
    if not losses:
        return {}
    common = set.intersection(*(set(by_step) for by_step in losses.values()))
    return {step: max(v[step] for v in losses.values()) - min(v[step] for v in losses.values()) for step in sorted(common)}


def compare_report(group_id: str, runs_dir: Path | None = None) -> dict:
    """What `python -m engine compare --wait` prints, read from disk (works while the runs are still going)."""
    group = runstore.read_group(group_id, runs_dir)
    report = {"group": group_id, "runs": group["runs"], "states": {}, "traffic_psi": {}, "step_time_s": {},
              "final_loss": {}}
    losses = {}
    for strategy, run_id in group["runs"].items():
        path = runstore.run_dir(run_id, runs_dir)
        records = runstore.read_metrics(path)
        summary = runstore.summary(path)
        report["states"][strategy] = summary["status"]
        report["final_loss"][strategy] = summary["final_loss"]
        rank0 = [r for r in records if r.get("kind") == "train" and r.get("rank") == 0]
        losses[strategy] = {r["step"]: r["loss_global"] for r in rank0}
        times = sorted(r["step_time_s"] for r in rank0[1:]) or [r["step_time_s"] for r in rank0]  # step 1 warms up
        report["step_time_s"][strategy] = times[len(times) // 2] if times else None
        if summary["per_rank"] and summary["param_count"]:
            bpe = param_element_bytes(summary["spec"].get("precision"))
            report["traffic_psi"][strategy] = round(
                traffic_psi(summary["per_rank"][0]["comm_bytes_per_step"], summary["param_count"], bpe), 4)
    differences = loss_differences(losses)
    worst = max(differences, key=differences.get) if differences else None
    report["steps_compared"] = len(differences)
    report["max_loss_diff"] = differences[worst] if worst is not None else None
    report["max_loss_diff_step"] = worst
    return report
