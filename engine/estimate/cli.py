"""`python -m engine estimate`: flags, the report as plain data (bytes), and its table. Every odd input is
one line on stderr and exit status 2 (numbers are read here, not by argparse, to keep that promise)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from engine.architectures import ARCHITECTURES, MAX_CONFIG_BYTES, NOMINAL_MODELS, SUPPORTED_TYPES, ArchitectureError
from engine.estimate.activations import activation_bytes_for, estimate_activations
from engine.estimate.answers import DEFAULT_CONTEXT_BYTES, DEFAULT_RESERVE_PCT, Overheads
from engine.estimate.inputs import (
    ATTENTION,
    GIB,
    MAX_BATCH,
    MAX_NODES,
    MAX_RANKS,
    MAX_SEQ,
    MIB,
    OPTIMIZER_STATES,
    PAPER_PRECISIONS,
    RECOMPUTE,
    STAGE_LABELS,
    STAGES,
    EstimateError,
    capacity_from_gib,
    choice,
    format_count,
    parse_stage,
)
from engine.estimate.scenario import MEMORY_MODELS, SHARDLAB_MODELS, Scenario, memory_model_note, resolve_source
from engine.estimate.answers import comm_volume
from engine.units import display_unit, unit_note


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m engine estimate` (the engine's CLI adds the subparser and calls run_estimate_command)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--params", help="parameter count: 124M, 7.5B, 1T or 1e12 (at most 1e15)")
    source.add_argument(
        "--model",
        help=f"a ShardLab model ({', '.join(SHARDLAB_MODELS)}: exact shapes), an architecture "
        f"({', '.join(ARCHITECTURES)}) or a ZeRO-paper size ({', '.join(NOMINAL_MODELS)})",
    )
    source.add_argument("--config", type=Path, help=f"a Hugging Face config.json ({', '.join(SUPPORTED_TYPES)})")
    parser.add_argument("--size", default="tiny", help="size preset of a ShardLab model (default tiny)")
    parser.add_argument("--dataset", default="", help="dataset a ShardLab model is sized by (default: digits or text)")
    parser.add_argument("--memory-model", default=None,
                        help="paper, deepspeed, pytorch or all (default: pytorch for ShardLab models, paper otherwise)")
    parser.add_argument("--ranks", default=None, help=f"GPUs in all, N (default 1; at most {MAX_RANKS:,})")
    parser.add_argument("--nodes", default="1", help="nodes; GPUs per node = ranks / nodes (default 1)")
    parser.add_argument("--gpus-per-node", default=None, help="GPUs per node (then N = nodes x GPUs per node)")
    parser.add_argument("--stage", default="all", help="0-3, ddp, zero1, zero2, zero3 or all (default all)")
    parser.add_argument(
        "--precision", default=None,
        help=f"paper/deepspeed: {', '.join(PAPER_PRECISIONS)} (default bf16); pytorch: fp32, bf16, fp64 (default fp32)",
    )
    parser.add_argument("--optimizer", default="adam", help=f"{', '.join(OPTIMIZER_STATES)} (default adam)")
    parser.add_argument("--offload", action="store_true", help="optimizer state, master weights (and fp32 grads) on the CPU")
    parser.add_argument("--offload-params", action="store_true", help="ZeRO-3 parameters on the CPU too (deepspeed model)")
    parser.add_argument("--largest-layer-params", default=None,
                        help="DeepSpeed's largest layer for a bare --params (derived from an architecture otherwise)")
    parser.add_argument("--prefetch-depth", default="1", help="ZeRO-3 layers gathered ahead of the one computing (default 1)")
    parser.add_argument("--gpu-mem", default=None, help="GPU capacity in GiB (2^30 bytes) for fit answers")
    parser.add_argument("--host-mem", default=None, help="host memory per node in GiB, for 'fits on the host'")
    parser.add_argument("--batch", default="0", help="micro-batch per rank for transformer activations (0 = leave out)")
    parser.add_argument("--seq", default="0", help="sequence length for activations (default: the model's context)")
    parser.add_argument("--recompute", default="none", help=f"{', '.join(RECOMPUTE)} (default none)")
    parser.add_argument("--attention", default="flash", help="flash (SDPA: scores not stored, default) or eager")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None,
                        help="count dropout masks (default: as the architecture was trained)")
    parser.add_argument("--context-gib", default=str(DEFAULT_CONTEXT_BYTES / GIB),
                        help=f"CUDA context and workspaces per GPU, GiB (default {DEFAULT_CONTEXT_BYTES / GIB:g})")
    parser.add_argument("--reserve-pct", default=str(DEFAULT_RESERVE_PCT),
                        help=f"allocator reserve, %% of allocated bytes (default {DEFAULT_RESERVE_PCT})")
    parser.add_argument("--comm-buffers-mib", default=None,
                        help="communication buffers per GPU, MiB (default: the memory model's runtime default)")
    parser.add_argument("--no-overheads", action="store_true", help="model states and activations only")
    parser.add_argument("--decimal", action="store_true", help="show GB = 1e9 bytes (the ZeRO paper's unit)")
    parser.add_argument("--json", action="store_true", help="print JSON (bytes) instead of a table")


def _int(flag: str, text, lowest: int, highest: int) -> int:
    """A whole number from a flag ('64', '1e6'), within limits, or one line saying what is wrong."""
    try:
        value = float(text) if any(c in str(text) for c in ".eE") else int(str(text))
    except ValueError:
        raise EstimateError(f"{flag} must be a whole number (got {text!r})") from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise EstimateError(f"{flag} must be a whole number (got {text!r})")
        if abs(value) > 1e18:
            raise EstimateError(f"{flag} must be at most {highest:,} (got {text})")
        value = int(value)
    if not lowest <= value <= highest:
        raise EstimateError(f"{flag} must be from {lowest:,} to {highest:,} (got {value:,})")
    return value


def _gib(flag: str, text) -> float:
    try:
        return float(text)
    except ValueError:
        raise EstimateError(f"{flag} must be a number of GiB (got {text!r})") from None


def _cluster(args) -> tuple[int, int]:
    """(ranks, nodes) from --ranks, --nodes and --gpus-per-node."""
    nodes = _int("--nodes", args.nodes, 1, MAX_NODES)
    if args.gpus_per_node is not None:
        per_node = _int("--gpus-per-node", args.gpus_per_node, 1, MAX_RANKS)
        if nodes * per_node > MAX_RANKS:
            raise EstimateError(f"{nodes:,} nodes x {per_node:,} GPUs is beyond {MAX_RANKS:,} GPUs")
        if args.ranks is not None and _int("--ranks", args.ranks, 1, MAX_RANKS) != nodes * per_node:
            raise EstimateError(f"--ranks {args.ranks} differs from --nodes x --gpus-per-node = {nodes * per_node:,}")
        return nodes * per_node, nodes
    ranks = _int("--ranks", args.ranks if args.ranks is not None else nodes, 1, MAX_RANKS)
    return ranks, nodes


def _overheads(args) -> tuple[Overheads, bool]:
    """(overheads, whether the communication buffers come from the memory model's defaults)."""
    if args.no_overheads:
        return Overheads(), False
    context = _gib("--context-gib", args.context_gib)
    if not math.isfinite(context) or not 0 <= context <= 1024:
        raise EstimateError(f"--context-gib must be from 0 to 1024 (got {args.context_gib})")
    comm = None
    if args.comm_buffers_mib is not None:
        comm = _gib("--comm-buffers-mib", args.comm_buffers_mib)
        if not math.isfinite(comm) or not 0 <= comm <= 2**30:
            raise EstimateError(f"--comm-buffers-mib must be from 0 to 2^30 (got {args.comm_buffers_mib})")
    overheads = Overheads(int(context * GIB), int((comm or 0) * MIB), _int("--reserve-pct", args.reserve_pct, 0, 100))
    return overheads, comm is None


def build_reports(args) -> list[dict]:
    """One report per memory model asked for (`--memory-model all`: three)."""
    if args.memory_model == "all":
        return [build_report(args, model) for model in MEMORY_MODELS]
    return [build_report(args, args.memory_model)]


def build_report(args, memory_model: str | None = None) -> dict:
    """Everything `estimate` prints for one memory model, as plain data (bytes throughout)."""
    config = None
    if args.config is not None:
        path = Path(args.config)
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise EstimateError(f"{path.name} is {path.stat().st_size:,} bytes; at most {MAX_CONFIG_BYTES:,} are accepted")
        config = path.read_bytes()
    largest = None if args.largest_layer_params is None else _int("--largest-layer-params", args.largest_layer_params, 1, 10**15)
    source = resolve_source(args.params, args.model, config, Path(args.config).name if args.config else "",
                            args.size, args.dataset, largest)
    memory_model = choice("memory model", memory_model or ("pytorch" if source.kind == "shardlab" else "paper"),
                          MEMORY_MODELS)
    stages = list(STAGES) if args.stage == "all" else [parse_stage(args.stage)]
    if args.offload and stages == [0]:
        raise EstimateError("--offload needs ZeRO (stage 1 to 3): DDP has no optimizer partition to offload")
    if args.offload_params and stages != [3] and args.stage != "all":
        raise EstimateError("--offload-params is ZeRO-3's (use --stage 3 or all)")
    capacity = None if args.gpu_mem is None else capacity_from_gib(_gib("--gpu-mem", args.gpu_mem))
    host = None if args.host_mem is None else capacity_from_gib(_gib("--host-mem", args.host_mem), "--host-mem")
    ranks, nodes = _cluster(args)
    precision = args.precision or ("fp32" if memory_model == "pytorch" else "bf16")
    batch = _int("--batch", args.batch, 0, MAX_BATCH)
    activation_bytes = 0
    if batch:
        if source.arch is None:
            raise EstimateError("activations need a transformer (--model gpt or an architecture, or --config FILE)")
        seq = _int("--seq", args.seq, 0, MAX_SEQ) or source.arch.context
        activation_bytes = estimate_activations(
            source.arch, batch, seq, choice("recomputation", args.recompute, RECOMPUTE),
            activation_bytes_for(precision), args.dropout, choice("attention", args.attention, ATTENTION),
        ).total_bytes
    overheads, auto_comm = _overheads(args)
    scenario = Scenario(
        source.num_params, ranks, precision, args.optimizer, bool(args.offload), activation_bytes, overheads,
        source.shapes, memory_model, nodes, bool(args.offload_params), source.largest_layer_params,
        source.largest_unit_params, _int("--prefetch-depth", args.prefetch_depth, 0, 64), auto_comm, host,
    )
    report = {
        "model": source.label,
        "num_params": scenario.num_params,
        "active_params": source.active_params,
        "memory_model": memory_model,
        "memory_model_note": memory_model_note(memory_model),
        "mode": "engine" if memory_model == "pytorch" and source.kind == "shardlab" else memory_model,
        "ranks": scenario.ranks,
        "nodes": scenario.nodes,
        "gpus_per_node": scenario.gpus_per_node,
        "precision": scenario.precision,
        "optimizer": scenario.optimizer,
        "offload_optimizer": scenario.offload_optimizer,
        "offload_params": scenario.offload_params,
        "largest_layer_params": scenario.largest_layer_params,
        "activation_bytes": activation_bytes,
        "overheads": {"context_bytes": overheads.context_bytes, "reserve_pct": overheads.reserve_pct,
                      "comm_buffers": "memory model default" if auto_comm else overheads.comm_buffer_bytes},
        "gpu_capacity_bytes": capacity,
        "host_capacity_bytes_per_node": host,
        "unknown_config_keys": list(source.unknown_keys),
        "stages": [],
    }
    for stage in stages:
        groups = scenario.groups(stage)
        entry = {
            "stage": stage,
            "strategy": STAGES[stage],
            "offloaded": scenario.offloads(stage),
            # Identical ranks collapse into one entry: `rank_range` [first, last] and `count`.
            "per_rank": [{"rank": first, "rank_range": [first, last], "count": last - first + 1, **e.as_dict()}
                         for first, last, e in groups],
            "max_rank_total_bytes": max(e.total_bytes for _, _, e in groups),
            "host_bytes_per_node": scenario.host_bytes_per_node(stage),
            "comm": comm_volume(scenario.num_params, stage, scenario.formula_precision),
        }
        if capacity is not None:
            entry.update(scenario.answers(stage, capacity))
        report["stages"].append(entry)
    return report


def format_report(report: dict, decimal: bool = False) -> str:
    rows = [max(e["per_rank"], key=lambda r: r["total_bytes"]) | {"entry": e} for e in report["stages"]]
    divisor, unit = display_unit(max(r["total_bytes"] for r in rows), decimal)
    size = lambda b: f"{b / divisor:,.3f}" if divisor > 1 else f"{b:,}"
    columns = {"params": "params_bytes", "grads": "grads_bytes", "optimizer": "optimizer_bytes", "master": "master_bytes",
               "gathered": "gathered_bytes", "activations": "activation_bytes", "overheads": None, "total": "total_bytes"}
    value = lambda row, key: (row["context_bytes"] + row["comm_buffer_bytes"] + row["reserve_bytes"]) if key is None else row[key]
    psi = report["num_params"]
    active = f" ({format_count(report['active_params'])} active per token)" if report.get("active_params") else ""
    lines = [
        f"{report['model']}: {format_count(psi)} parameters ({psi:,}){active}",
        f"{report['nodes']:,} node(s) x {report['gpus_per_node']:,} GPUs = N {report['ranks']:,}, {report['precision']}, "
        f"{report['optimizer']}" + (", optimizer offload" if report["offload_optimizer"] else "")
        + (", parameter offload" if report["offload_params"] else ""),
        report["memory_model_note"],
        f"per GPU, the busiest rank, in {unit_note(unit)}",
        f"{'stage':<14}" + "".join(f"{name:>13}" for name in columns)
        + ("  fits  fewest GPUs (nodes)  largest model" if report["gpu_capacity_bytes"] else ""),
    ]
    for row in rows:
        entry = row["entry"]
        line = f"{STAGE_LABELS[entry['stage']]:<14}" + "".join(f"{size(value(row, key)):>13}" for key in columns.values())
        if "fits" in entry:
            need = entry["min_ranks_to_fit"]
            fewest = "never" if need is None else f"{need:,} ({entry['min_nodes_to_fit']:,})"
            line += f"  {'yes' if entry['fits'] else 'no':<4}  {fewest:>19}  {format_count(entry['max_params_to_fit'])}"
        lines.append(line)
    overheads = report["overheads"]
    comm = overheads["comm_buffers"]
    lines.append(
        f"overheads: CUDA context {overheads['context_bytes'] / GIB:g} GiB, allocator reserve {overheads['reserve_pct']}% "
        f"of allocated, communication buffers " + (comm if isinstance(comm, str) else f"{comm / MIB:g} MiB")
        + " (set with --context-gib, --reserve-pct, --comm-buffers-mib; --no-overheads for none)"
    )
    if any(len(e["per_rank"]) > 1 for e in report["stages"]):
        lines.append("(ranks differ: the busiest is shown; --json lists every distinct rank)")
    offloaded = [r for r in rows if r["entry"]["offloaded"]]
    if offloaded:
        lines.append("offloaded to host memory per rank (" + unit + "): "
                     + ", ".join(f"{STAGE_LABELS[r['entry']['stage']]} {size(r['cpu_bytes'])}" for r in offloaded)
                     + ("; DDP offloads nothing" if any(r["entry"]["stage"] == 0 for r in rows) else ""))
    fits_host = lambda e: "" if e.get("fits_host") is None else (" fits" if e["fits_host"] else " does not fit")
    host = ", ".join(f"{STAGE_LABELS[r['entry']['stage']]} {size(r['entry']['host_bytes_per_node'])}{fits_host(r['entry'])}"
                     for r in rows)
    lines.append(f"host memory per node ({unit}): {host}"
                 + (f" (available {size(report['host_capacity_bytes_per_node'])})" if report["host_capacity_bytes_per_node"] else ""))
    if report["unknown_config_keys"]:
        lines.append(f"config.json keys not used (check they do not change the model): {', '.join(report['unknown_config_keys'])}")
    return "\n".join(lines)


def run_estimate_command(args) -> int:
    """`python -m engine estimate ...`: prints the estimate; 0 on success, 2 on bad input (one line)."""
    try:
        reports = build_reports(args)
    except (EstimateError, ArchitectureError) as err:
        print(f"estimate: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"estimate: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        print("\n\n".join(format_report(r, decimal=args.decimal) for r in reports))
    return 0
