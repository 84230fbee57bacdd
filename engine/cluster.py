"""The lines that start a JobSpec on a cluster: the torchrun line for each node, and an sbatch script that
runs that line once per node under Slurm, with c10d rendezvous on the job's first node.

    python -m engine slurm-script --nnodes 2 --nproc 8 --device cuda --strategy zero3 > job.sbatch
    sbatch job.sbatch

The spec travels inside the script (a heredoc), so the script is the only file to copy; it writes the spec
into a fresh run folder under the runs folder, which must sit on a filesystem every node sees: the ranks of
every node append their metrics there, and the dashboard reads that folder like any other.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from engine.spec import JobSpec
from engine.supervisor import torchrun_command

CPUS_PER_RANK = {"cpu": 1, "cuda": 4}  # a CPU rank is one single-threaded process; a GPU rank feeds its device
RDZV_PORT_BASE = 29500  # plus the job id modulo 1000: two jobs sharing a first node do not collide
SPEC_END = "SHARDLAB_SPEC"

# Expanded by bash inside each srun task, not when the script is generated or submitted: every node
# reads its own SLURM_NODEID. The script exports the other three before srun.
NODE_RANK = "$SLURM_NODEID"
RDZV_ENDPOINT = "$HEAD_NODE:$RDZV_PORT"
SPEC_PATH = "$RUN_DIR/spec.json"


def torchrun_line(spec: JobSpec, spec_path: Path | str, node_rank: int = 0, rdzv_endpoint: str | None = None) -> str:
    """The line `python -m engine torchrun-command` prints: run it on node k with --node-rank=k."""
    command = torchrun_command(spec_path, spec.nproc, spec.nnodes, node_rank, rdzv_endpoint)
    command[0] = "python"  # the line is for another machine: its own interpreter
    return shlex.join(command)


def slurm_script(
    spec: JobSpec,
    runs_dir: Path | str,
    repo_dir: Path | str,
    cpus_per_rank: int | None = None,
    time_limit: str = "01:00:00",
    partition: str | None = None,
) -> str:
    """The whole sbatch script as text. runs_dir and repo_dir must be the same paths on every node."""
    cpus_per_rank = CPUS_PER_RANK[spec.device] if cpus_per_rank is None else cpus_per_rank
    if cpus_per_rank < 1:
        raise ValueError(f"cpus per rank must be at least 1 (got {cpus_per_rank})")
    # Both land on #SBATCH lines: anything beyond Slurm's own syntax could smuggle in lines of shell.
    if not re.fullmatch(r"[0-9][0-9:-]*", time_limit):
        raise ValueError(f"time limit '{time_limit}' is not a Slurm time (e.g. 01:00:00 or 1-00:00:00)")
    if partition is not None and not re.fullmatch(r"[\w.,-]+", partition):
        raise ValueError(f"partition '{partition}' is not a Slurm partition name")
    # The same line `torchrun-command` prints, with the node rank, the endpoint and the spec left to bash.
    line = torchrun_command(SPEC_PATH, spec.nproc, spec.nnodes, NODE_RANK, RDZV_ENDPOINT)
    line[0] = "$PYTHON"
    line = ["--rdzv-id=$SLURM_JOB_ID" if word.startswith("--rdzv-id=") else word for word in line]
    node_command = " ".join(_shell_word(word) for word in line)
    assert "'" not in node_command  # it goes between single quotes below
    spec_json = spec.to_json()
    assert SPEC_END not in spec_json

    sbatch = [
        f"--job-name=shardlab-{spec.strategy}",
        f"--nodes={spec.nnodes}",
        "--ntasks-per-node=1",  # one torchrun per node; torchrun starts the node's ranks
        f"--cpus-per-task={spec.nproc * cpus_per_rank}",
        f"--time={time_limit}",
    ]
    if spec.device == "cuda":
        sbatch.append(f"--gpus-per-node={spec.nproc}")  # one rank per GPU
    if partition:
        sbatch.append(f"--partition={partition}")
    world = f"{spec.nnodes} node{'s' * (spec.nnodes > 1)} x {spec.nproc} {spec.device} rank{'s' * (spec.nproc > 1)}"
    return "\n".join([
        "#!/bin/bash",
        f"# ShardLab on Slurm: {spec.strategy}, {spec.model}/{spec.size} on {spec.dataset}, {world}, "
        f"{spec.steps} steps.",
        "# Submit with: sbatch THIS_FILE   (printed by `python -m engine slurm-script`)",
        *[f"#SBATCH {option}" for option in sbatch],
        "set -euo pipefail",
        "",
        "# The checkout and the runs folder: the same paths on every node (a shared filesystem).",
        f'SHARDLAB_DIR="${{SHARDLAB_DIR:-{_double_quoted(repo_dir)}}}"',
        f'RUNS_DIR="${{SHARDLAB_RUNS_DIR:-{_double_quoted(runs_dir)}}}"',
        'export PYTHON="${PYTHON:-python3}"',
        f'export RUN_DIR="$RUNS_DIR/slurm-$SLURM_JOB_ID-{spec.strategy}"',
        'mkdir -p "$RUN_DIR"',
        f"cat > \"$RUN_DIR/spec.json\" <<'{SPEC_END}'",
        spec_json,
        SPEC_END,
        "",
        "# c10d rendezvous on the first node of the allocation; every node's torchrun meets there.",
        'export HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
        f'export RDZV_PORT="${{SHARDLAB_RDZV_PORT:-$(( {RDZV_PORT_BASE} + SLURM_JOB_ID % 1000 ))}}"',
        f"export OMP_NUM_THREADS={cpus_per_rank}",
        'cd "$SHARDLAB_DIR"',
        'echo "run folder: $RUN_DIR  rendezvous: $HEAD_NODE:$RDZV_PORT"',
        "",
        "# One task per node; single quotes: each task expands its own SLURM_NODEID.",
        # (--cpus-per-task again: srun no longer inherits it from sbatch since Slurm 22.05.)
        f"srun --nodes={spec.nnodes} --ntasks-per-node=1 --cpus-per-task={spec.nproc * cpus_per_rank} "
        f"--kill-on-bad-exit=1 bash -c '{node_command}'",
        "",
    ])


def _shell_word(word: str) -> str:
    # A word naming a variable is double-quoted so bash expands it; everything else is quoted literally.
    return f'"{word}"' if "$" in word else shlex.quote(word)


def _double_quoted(path: Path | str) -> str:
    text = str(path)
    for char in '\\"$`':
        text = text.replace(char, "\\" + char)
    return text
