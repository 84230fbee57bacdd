"""Counts the collectives a rank really issues: calls and payload bytes per collective type.

How: wrap the Python `torch.distributed` collectives (ZeroRedundancyOptimizer's
broadcasts and FSDP2's all-gathers / reduce-scatters look them up at call
time), and give DDP a comm hook: its bucket all-reduces are otherwise issued
from C++ where no Python wrapper sees them. `default_hooks.allreduce_hook`
calls `dist.all_reduce` from Python and is numerically identical to plain DDP.

Payload is what the collective carries logically (an all-gather's output, a
reduce-scatter's input, an all-reduce's tensor). Wire bytes (what a rank
sends) depend on the algorithm; `wire_bytes_estimate` assumes rings and is
labelled as an estimate everywhere it is shown.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import time
from collections import defaultdict

import torch
import torch.distributed as dist

from engine import runstore

# torch.distributed function -> (collective type, the argument that carries the payload)
WATCHED: dict[str, tuple[str, str]] = {
    "all_reduce": ("all_reduce", "tensor"),
    "broadcast": ("broadcast", "tensor"),
    "reduce": ("reduce", "tensor"),
    "all_gather": ("all_gather", "tensor_list"),
    "all_gather_single": ("all_gather", "output_tensor"),
    "all_gather_into_tensor": ("all_gather", "output_tensor"),
    "reduce_scatter": ("reduce_scatter", "input_list"),
    "reduce_scatter_single": ("reduce_scatter", "input"),
    "reduce_scatter_tensor": ("reduce_scatter", "input"),
    "all_to_all_single": ("all_to_all", "input"),
    "all_to_all": ("all_to_all", "input_tensor_list"),
}


def payload_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    return 0


def wire_bytes_estimate(op: str, payload: int, world_size: int) -> float:
    """Bytes one rank sends for one collective under the ring algorithm (an estimate, not a measurement)."""
    if world_size <= 1:
        return 0.0
    share = (world_size - 1) / world_size
    # A ring all-reduce is a reduce-scatter then an all-gather: twice the one-way traffic.
    return payload * share * (2 if op == "all_reduce" else 1)


class CommCounter:
    """Installs itself on torch.distributed; `step` holds this step's counts, `total` everything since install."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.step: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # op -> [calls, payload bytes]
        self.total_payload_bytes = 0
        self._local = threading.local()
        self._originals: dict[str, object] = {}
        # The ordered log of one step (see start_log): off (None) on every other step, so it costs nothing there.
        self.log: list[dict] | None = None
        self.phase = ""  # set by the worker: forward | backward | optimizer
        self._log_t0 = 0.0
        self._module_by_pointer: dict[int, str] = {}

    def install(self) -> "CommCounter":
        for name, (op, argument) in WATCHED.items():
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._originals[name] = original
            setattr(dist, name, self._wrap(original, op, argument))
        return self

    def uninstall(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals.clear()

    def _wrap(self, original, op: str, argument: str):
        # Where the payload sits among positional arguments (binding the signature per call costs ~10 us).
        position = list(inspect.signature(original).parameters).index(argument)

        @functools.wraps(original)
        def counted(*args, **kwargs):
            # Only the outermost call counts: one collective may be implemented by another.
            depth = getattr(self._local, "depth", 0)
            if depth == 0 and not getattr(self._local, "paused", False):
                size = payload_bytes(args[position] if len(args) > position else kwargs.get(argument))
                entry = self.step[op]
                entry[0] += 1
                entry[1] += size
                self.total_payload_bytes += size
                if self.log is not None:
                    payload = args[position] if len(args) > position else kwargs.get(argument)
                    self.log.append({
                        "op": op, "bytes": size, "phase": self.phase, "module": self._module_of(payload),
                        # When the call was issued (not how long it took: async collectives end later).
                        "issued_s": round(time.perf_counter() - self._log_t0, 6),
                    })
            self._local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                self._local.depth = depth

        return counted

    def reset_step(self) -> None:
        self.step.clear()

    # ------------------------------------------------------------------ the ordered log of one step

    def name_parameters(self, model) -> None:
        """Remembers which module owns each parameter's storage (ZeroRedundancyOptimizer broadcasts param.data)."""
        for name, param in model.named_parameters():
            local = getattr(param, "_local_tensor", param)
            module = name.rsplit(".", 1)[0] if "." in name else "root"
            self._module_by_pointer[local.data_ptr()] = module.removeprefix("module.")

    def start_log(self) -> None:
        self.log = []
        self._log_t0 = time.perf_counter()

    def take_log(self) -> list[dict]:
        log, self.log = self.log or [], None
        return log

    def _module_of(self, payload) -> str:
        """The module a collective serves, where it is known: a DDP bucket's modules, a parameter's owner, or the
        FSDP unit whose parameter group issued it (read from the caller's frames, on the logged step only)."""
        bucket = getattr(_ddp_bucket, "current", None)
        if bucket is not None:
            return _ddp_bucket_label(*bucket)
        if isinstance(payload, torch.Tensor) and payload.data_ptr() in self._module_by_pointer:
            return self._module_by_pointer[payload.data_ptr()]
        frame = sys._getframe(2)
        for _ in range(12):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if type(owner).__name__ == "FSDPParamGroup":
                return getattr(owner, "_module_fqn", None) or "root"
            frame = frame.f_back
        return ""

    @contextlib.contextmanager
    def paused(self):
        """Bookkeeping collectives (the logged global loss, eval) are not the strategy's traffic."""
        self._local.paused = True
        try:
            yield
        finally:
            self._local.paused = False

    def step_metrics(self) -> dict[str, float]:
        record: dict[str, float] = {}
        payload = wire = 0.0
        for op, (calls, size) in sorted(self.step.items()):
            record[runstore.comm_calls_key(op)] = calls
            record[runstore.comm_bytes_key(op)] = size
            payload += size
            wire += wire_bytes_estimate(op, size, self.world_size)
        record[runstore.COMM_PAYLOAD_KEY] = int(payload)
        record[runstore.COMM_WIRE_EST_KEY] = int(wire)
        record[runstore.COMM_CUM_PAYLOAD_KEY] = self.total_payload_bytes
        return record


class NoCommCounter:
    """What the worker holds when counting is off (spec.instrument false): the same calls, doing nothing."""

    def reset_step(self) -> None:
        pass

    def paused(self):
        return contextlib.nullcontext()

    def step_metrics(self) -> dict[str, float]:
        return {}

    phase = ""  # the worker sets it all the same

    def name_parameters(self, model) -> None:
        pass

    def start_log(self) -> None:
        pass

    def take_log(self) -> list[dict]:
        return []


_ddp_bucket = threading.local()  # the DDP bucket being all-reduced right now, named for the collective log


def _ddp_bucket_label(bucket, owners: dict[int, str]) -> str:
    modules = dict.fromkeys(owners.get(p.data_ptr(), "?") for p in bucket.parameters())
    return f"bucket {bucket.index()}: " + ", ".join(modules)


def register_counting_ddp_hook(ddp_model) -> None:
    """Route DDP's bucket all-reduces through Python's dist.all_reduce, where CommCounter sees them."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    owners = {}
    for name, param in ddp_model.module.named_parameters():
        owners[param.data_ptr()] = name.rsplit(".", 1)[0] if "." in name else "root"

    def allreduce_with_bucket_known(state, bucket):
        # default_hooks.allreduce_hook itself. The bucket is only remembered here: its modules are named when the
        # collective log asks (one step of the run), since naming them on every step cost DDP ~2.5% step time.
        _ddp_bucket.current = (bucket, owners)
        try:
            return default_hooks.allreduce_hook(state, bucket)
        finally:
            _ddp_bucket.current = None

    ddp_model.register_comm_hook(state=None, hook=allreduce_with_bucket_known)
