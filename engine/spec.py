"""The job spec: one frozen, self-validating description of a training run.

It travels from the form (or CLI) to every torchrun worker as one JSON file,
so nothing about a run lives in a growing list of command-line flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from engine.jsonfile import JSONFileError, read_json_file
from engine.registry import DATASETS, MODELS

# Each strategy, the PyTorch-native recipe that implements it, and one line a student reads.
STRATEGIES: dict[str, dict[str, str]] = {
    "ddp": {
        "label": "DDP",
        "pytorch": "torch.nn.parallel.DistributedDataParallel(gradient_as_bucket_view=True)",
        "explain": "Every rank holds the full model, gradients and optimizer state; gradients are all-reduced.",
    },
    "zero1": {
        "label": "ZeRO-1",
        "pytorch": "DistributedDataParallel + torch.distributed.optim.ZeroRedundancyOptimizer",
        "explain": "Optimizer state is split across ranks (by whole parameter); updated weights are broadcast.",
    },
    "zero2": {
        "label": "ZeRO-2",
        "pytorch": "torch.distributed.fsdp.fully_shard(reshard_after_forward=False) "
        "+ set_reshard_after_backward(False) + re-gather after optimizer.step()",
        "explain": "Gradients and optimizer state are split; full parameters stay on every rank.",
    },
    "zero3": {
        "label": "ZeRO-3",
        "pytorch": "torch.distributed.fsdp.fully_shard(reshard_after_forward=True)",
        "explain": "Parameters, gradients and optimizer state are all split; layers are gathered just in time.",
    },
}
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd_momentum")
PRECISIONS = ("fp32", "bf16", "fp64")
DEVICES = ("cpu", "cuda")
MAX_CPU_RANKS = 64


def param_element_bytes(precision: str | None) -> int:
    """Bytes of one stored parameter (gradient, optimizer-state) element: 8 in fp64, else 4 (bf16 is mixed
    precision: bf16 compute, fp32 storage). Ψ in bytes is the parameter count times this."""
    return 8 if precision == "fp64" else 4
MAX_STEPS = 1_000_000
MAX_SPEC_FILE_BYTES = 64 * 1024  # a spec is ~600 bytes; larger files are refused before they are read
INT64_MAX = 2**63 - 1


class SpecError(ValueError):
    """A spec that cannot run; the message is written for a student, `field` names the JobSpec field at fault."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class JobSpec:
    model: str = "mlp"  # registry name: mlp | cnn | gpt
    size: str = "tiny"  # size preset of that model
    dataset: str = "digits"  # digits | synthetic | text | cifar10
    strategy: str = "ddp"  # ddp | zero1 | zero2 | zero3
    nproc: int = 2  # ranks per node (one process each)
    nnodes: int = 1  # machines; >1 only through `torchrun-command`
    device: str = "cpu"  # cpu (gloo) | cuda (nccl, one rank per GPU)
    steps: int = 50
    global_batch: int = 64  # split evenly: each rank sees global_batch / world_size
    lr: float = 1e-3
    optimizer: str = "adam"
    precision: str = "fp32"  # fp32 | bf16 (mixed: bf16 compute, fp32 state) | fp64
    seed: int = 0
    log_interval: int = 1  # steps between metric lines
    eval_interval: int = 0  # steps between held-out evaluations; 0 = only after the last step
    instrument: bool = True  # count collectives and walk model-state bytes (off only to benchmark the cost)
    memory_accurate: bool = False  # MALLOC_MMAP_THRESHOLD_ in workers: honest RSS, 20-40% slower on CPU
    save_final_params: bool = False  # rank 0 writes the full final parameters (for equivalence checks)
    data_dir: str = ""  # where cifar10 lives; empty means ./data/cifar-10-batches-py
    fail_at_step: int = 0  # test hook: rank nproc-1 raises at this step (0 = never)
    memory_budget_mb: int = 0  # per-rank device budget, MiB (0 = none); on CPU a simulated device (engine/budget.py)
    stall_after_s: float = 60.0  # a rank whose heartbeat is older than this shows as stalled
    collective_timeout_s: float = 300.0  # process-group timeout: a collective hung this long fails the run

    def __post_init__(self) -> None:
        self.validate()

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    def validate(self) -> None:
        self.check_types()

        def choose(field: str, value: str, options, what: str = "") -> None:
            if value not in options:
                raise SpecError(f"unknown {what or field} '{value}' (choose {', '.join(options)})", field)

        choose("strategy", self.strategy, list(STRATEGIES))
        choose("model", self.model, list(MODELS))
        choose("dataset", self.dataset, list(DATASETS))
        choose("optimizer", self.optimizer, OPTIMIZERS)
        choose("precision", self.precision, PRECISIONS)
        choose("device", self.device, DEVICES)
        choose("size", self.size, list(MODELS[self.model].presets), what=f"size for model {self.model}")
        for field in ("nproc", "nnodes", "steps", "global_batch", "log_interval"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{field} must be a whole number of at least 1 (got {value!r})", field)
        for field in ("eval_interval", "fail_at_step", "seed"):
            if getattr(self, field) < 0:
                raise SpecError(f"{field} must be 0 or more (got {getattr(self, field)!r})", field)
        if not 1 <= self.stall_after_s <= 86_400:
            raise SpecError(f"stall_after_s must be between 1 and 86400 seconds (got {self.stall_after_s!r})",
                            "stall_after_s")
        if not 10 <= self.collective_timeout_s <= 86_400:
            # Below ~10 s a rank still importing torch on a busy machine would time out the others' first barrier.
            raise SpecError("collective_timeout_s must be between 10 and 86400 seconds "
                            f"(got {self.collective_timeout_s!r})", "collective_timeout_s")
        if not 0 <= self.memory_budget_mb <= 16 * 2**20:
            raise SpecError(f"memory budget must be a whole number of MiB, 0 (none) to 16 TiB (got {self.memory_budget_mb!r})",
                            "memory_budget_mb")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 10:
            raise SpecError(f"learning rate must be between 0 and 10 (got {self.lr!r})", "lr")
        if self.device == "cpu" and self.nproc > MAX_CPU_RANKS:
            raise SpecError(f"{self.nproc} CPU ranks is too many for one machine (at most {MAX_CPU_RANKS})", "nproc")
        if self.global_batch % self.world_size:
            raise SpecError(
                f"global batch {self.global_batch} is not divisible by {self.world_size} ranks "
                f"(try {max(self.world_size, self.global_batch // self.world_size * self.world_size)})",
                "global_batch",
            )
        if self.global_batch > DATASETS[self.dataset].train_items:
            raise SpecError(
                f"global batch {self.global_batch} is larger than the {DATASETS[self.dataset].train_items:,} "
                f"training samples of {self.dataset}",
                "global_batch",
            )
        if self.steps > MAX_STEPS:
            raise SpecError(f"steps must be at most {MAX_STEPS:,}", "steps")
        needs = MODELS[self.model].input_kind
        offers = DATASETS[self.dataset].kind
        if needs != offers:
            raise SpecError(
                f"model {self.model} needs {needs} data but dataset {self.dataset} is {offers} "
                f"(pick one of: {', '.join(n for n, d in DATASETS.items() if d.kind == needs)})",
                "dataset",
            )

    def check_types(self) -> None:
        """Each field holds its declared type: a bool only where a bool belongs, whole numbers within int64,
        finite floats, text for names. JSON and forms hand over anything; nothing is coerced."""
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), str(field.type)
            if kind == "bool":
                ok, want = isinstance(value, bool), "true or false"
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool) and -INT64_MAX - 1 <= value <= INT64_MAX
                want = "a whole number"
            elif kind == "float":
                ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                      and math.isfinite(value) and abs(value) <= 1e300)
                want = "a finite number"
            else:
                ok, want = isinstance(value, str) and len(value) <= 4096, "text"
            if not ok:
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
                raise SpecError(f"{field.name} must be {want} (got {shown})", field.name)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> "JobSpec":
        if not isinstance(values, dict):
            raise SpecError(f"a spec is a JSON object of fields, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            shown = ", ".join(str(name)[:40] for name in unknown[:5])
            raise SpecError(f"unknown spec field(s): {shown}", str(unknown[0])[:40])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> "JobSpec":
        """A spec file, size-capped and depth-limited before it is parsed."""
        return cls.from_dict(read_spec_file(path))

    def replace(self, **changes) -> "JobSpec":
        return dataclasses.replace(self, **changes)


def read_spec_file(path: Path) -> dict:
    """The fields in a spec file (not yet validated): a JSON object in a regular file of at most 64 KiB."""
    try:
        values = read_json_file(path, MAX_SPEC_FILE_BYTES)
    except JSONFileError as error:
        raise SpecError(str(error)) from None
    if not isinstance(values, dict):
        raise SpecError(f"{path} holds {type(values).__name__ if values is not None else 'null'}, "
                        "not a JSON object of spec fields")
    return values


def check_resources(spec: JobSpec, gpus_found: int) -> None:
    """Checks what the spec asks of this machine (kept apart so specs stay pure data)."""
    if spec.device == "cuda":
        if gpus_found == 0:
            raise SpecError("device cuda requested but no GPU found (use device cpu)", "device")
        if spec.nproc > gpus_found:
            raise SpecError(
                f"{spec.nproc} ranks requested but {gpus_found} GPU{'s' if gpus_found != 1 else ''} found "
                "(one rank per GPU)",
                "nproc",
            )
