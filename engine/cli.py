"""Command line for headless and cluster use: python -m engine {train,compare,summary,runs,cancel,torchrun-command,estimate}."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from engine import launcher, runstore
from engine.cluster import slurm_script
from engine.estimate import add_estimate_arguments, run_estimate_command
from engine.jsonfile import JSONFileError
from engine.spec import JobSpec, SpecError, read_spec_file

ALIASES = {"global_batch": ["--batch"]}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())[:300]}\n")


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per JobSpec field, generated from the dataclass, so the CLI can never drift from the spec."""
    parser.add_argument("--spec", type=Path, help="start from this spec.json; flags below override its fields")
    for field in dataclasses.fields(JobSpec):
        flag = "--" + field.name.replace("_", "-")
        names = [flag, *ALIASES.get(field.name, [])]
        if field.type in ("bool", bool):
            parser.add_argument(*names, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(*names, dest=field.name, type=kind, default=None, help=f"default {field.default!r}")


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    values = read_spec_file(args.spec) if args.spec else {}  # size-capped and depth-limited before parsing
    for field in dataclasses.fields(JobSpec):
        if getattr(args, field.name) is not None:
            values[field.name] = getattr(args, field.name)
    return JobSpec.from_dict(values)


def cmd_train(args) -> int:
    spec = spec_from_args(args)
    run_id = launcher.launch(spec, args.runs_dir)
    print(run_id, flush=True)
    if not args.wait:
        return 0
    status = launcher.wait(run_id, args.runs_dir, timeout_s=float("inf"))
    print(status.get("detail", status["state"]), file=sys.stderr)
    return 0 if status["state"] == "succeeded" else 1


def cmd_compare(args) -> int:
    from engine import compare

    spec = spec_from_args(args)
    group_id, runs = compare.launch_all(spec, args.runs_dir)
    if not args.wait:
        print(json.dumps({"group": group_id, "runs": runs}, indent=2), flush=True)
        return 0
    for run_id in runs.values():
        launcher.wait(run_id, args.runs_dir, timeout_s=float("inf"))
    report = compare.compare_report(group_id, args.runs_dir)
    print(json.dumps(report, indent=2))
    return 0 if all(state == "succeeded" for state in report["states"].values()) else 1


def cmd_summary(args) -> int:
    print(json.dumps(runstore.summary(runstore.run_dir(args.run_id, args.runs_dir)), indent=2))
    return 0


def cmd_runs(args) -> int:
    runs = runstore.list_runs(args.runs_dir)
    if args.json:
        keys = ("run_id", "state", "detail", "queue_position", "error", "created_at")
        print(json.dumps([{k: run[k] for k in keys if k in run} for run in runs], indent=2))
        return 0
    for run in runs:
        spec = run["spec"]
        what = (f"{spec['strategy']:<6} {spec['nproc'] * spec['nnodes']} ranks  {spec['model']}/{spec['size']} on "
                f"{spec['dataset']}, {spec['steps']} steps" if spec else "")
        print(f"{run['run_id']:<32} {run['state']:<10} {what}"
              + (f"  [{run['detail']}]" if run["detail"] != run["state"] else ""))
    return 0


def cmd_cancel(args) -> int:
    status = launcher.cancel(args.run_id, args.runs_dir)
    print(status.get("detail", status["state"]))
    return 0


def cmd_torchrun_command(args) -> int:
    from engine.supervisor import torchrun_command

    spec = spec_from_args(args)
    if spec.nnodes > 1 and not args.rdzv_endpoint:
        raise SpecError("a multi-node job needs --rdzv-endpoint HOST:PORT (the address of node 0)")
    spec, notes = runstore.cap_metrics_volume(spec)
    for note in notes:
        print(f"# note: {note}", file=sys.stderr)
    spec_path = args.spec_out or Path("spec.json")
    if args.spec_out:
        if args.spec_out.is_dir():
            raise SpecError(f"--spec-out {args.spec_out} is a folder; give a file path such as "
                            f"{args.spec_out / 'spec.json'}")
        spec.save(args.spec_out)
    command = torchrun_command(spec_path, spec.nproc, spec.nnodes, args.node_rank, args.rdzv_endpoint)
    command[0] = "python"  # the line is for another machine: its own interpreter
    print(f"# copy {spec_path} to every node (same path), then on node k run with --node-rank=k:", file=sys.stderr)
    if not args.spec_out:
        print(f"# write the spec with --spec-out {spec_path}; it is:\n# " + spec.to_json().replace("\n", " "),
              file=sys.stderr)
    print(shlex.join(command))
    return 0


def cmd_slurm_script(args) -> int:
    spec = spec_from_args(args)
    runs_dir = (args.runs_dir or runstore.runs_dir_default()).resolve()
    script = slurm_script(spec, runs_dir, args.repo_dir.resolve(), args.cpus_per_rank, args.time, args.partition)
    if args.out:
        args.out.write_text(script)
        print(f"# wrote {args.out}; submit it with: sbatch {args.out}", file=sys.stderr)
    else:
        print(script, end="")
    print(f"# runs go to {runs_dir}/slurm-<job id>-{spec.strategy}: it must be on a filesystem every node sees",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m engine", description="ShardLab engine")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_runs_dir(p):
        p.add_argument("--runs-dir", type=Path, default=None, help="default: $SHARDLAB_RUNS_DIR or ./runs")
        return p

    train = with_runs_dir(commands.add_parser("train", help="start a run; prints its id"))
    add_spec_arguments(train)
    train.add_argument("--wait", action="store_true", help="block until the run ends; exit 1 unless it succeeded")
    train.set_defaults(handler=cmd_train)

    compare = with_runs_dir(commands.add_parser(
        "compare", help="launch ddp, zero1, zero2 and zero3 on one spec; prints their run ids as JSON"))
    add_spec_arguments(compare)
    compare.add_argument("--wait", action="store_true",
                         help="block until all four end; print states, largest loss difference, traffic in Ψ")
    compare.set_defaults(handler=cmd_compare)

    summary = with_runs_dir(commands.add_parser("summary", help="one JSON object describing a run"))
    summary.add_argument("run_id")
    summary.set_defaults(handler=cmd_summary)

    runs = with_runs_dir(commands.add_parser("runs", help="list runs"))
    runs.add_argument("--json", action="store_true", help="a JSON list of {run_id, state, detail, ...}")
    runs.set_defaults(handler=cmd_runs)

    cancel = with_runs_dir(commands.add_parser("cancel", help="stop a running run"))
    cancel.add_argument("run_id")
    cancel.set_defaults(handler=cmd_cancel)

    multinode = commands.add_parser("torchrun-command", help="print the torchrun line for this spec on a cluster")
    add_spec_arguments(multinode)
    multinode.add_argument("--node-rank", type=int, default=0)
    multinode.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of node 0's rendezvous")
    multinode.add_argument("--spec-out", type=Path, default=None, help="also write the spec file here")
    multinode.set_defaults(handler=cmd_torchrun_command)

    slurm = commands.add_parser("slurm-script", help="print an sbatch script for this spec (one torchrun per node)")
    add_spec_arguments(slurm)
    slurm.add_argument("--runs-dir", type=Path, default=None,
                       help="runs folder on a filesystem every node sees; default: $SHARDLAB_RUNS_DIR or ./runs")
    slurm.add_argument("--repo-dir", type=Path, default=launcher.REPO_ROOT,
                       help="this checkout's path on the nodes (default: where it is here)")
    slurm.add_argument("--cpus-per-rank", type=int, default=None, help="default 1 on cpu, 4 on cuda")
    slurm.add_argument("--time", default="01:00:00", help="#SBATCH --time (default 01:00:00)")
    slurm.add_argument("--partition", default=None, help="#SBATCH --partition (default: the cluster's)")
    slurm.add_argument("--out", type=Path, default=None, help="write the script here instead of printing it")
    slurm.set_defaults(handler=cmd_slurm_script)

    estimate = commands.add_parser("estimate", help="per-rank memory for any model, strategy and rank count")
    add_estimate_arguments(estimate)
    estimate.set_defaults(handler=run_estimate_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every user error is one line on stderr and exit status 2; a closed pipe (`| head`) is quiet."""
    try:
        args = build_parser().parse_args(argv)
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below, not at interpreter exit
        return code
    except (SpecError, runstore.RunError, JSONFileError, OSError, ValueError, OverflowError) as error:
        if isinstance(error, BrokenPipeError):
            return _quiet_broken_pipe()
        message = " ".join(str(error).split())
        print(f"error: {message[:500]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_broken_pipe() -> int:
    """The reader went away: point stdout at /dev/null so the interpreter's final flush does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
