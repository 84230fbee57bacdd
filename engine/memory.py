"""What a rank really holds: exact model-state bytes by category, process RSS and its peak, CUDA and NVML.

Model-state bytes come from walking the tensors (local shards for DTensors),
each storage counted once. That is exact and free, and it is what the ZeRO
paper's memory table is about. RSS is what the operating system sees; under
glibc malloc it keeps freed buffers, so it is shown beside, never instead.
"""

from __future__ import annotations

import os
import sys

import psutil
import torch

from engine.runstore import STATE_CATEGORIES as CATEGORIES  # the one list of model-state categories


def _local(tensor: torch.Tensor) -> torch.Tensor:
    # A DTensor's shard. `to_local()` is an autograd function call (tens of microseconds, per tensor, per
    # phase, per step); the attribute it returns a view of is read directly, falling back to the public call.
    local = getattr(tensor, "_local_tensor", None)
    if local is not None:
        return local
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _add(seen: set[int], tensor: torch.Tensor | None) -> int:
    """Bytes of a tensor not counted yet (keyed by its address: a gradient bucket view counts once)."""
    if tensor is None:
        return 0
    tensor = _local(tensor)
    if tensor.numel() == 0 or tensor.data_ptr() in seen:
        return 0
    seen.add(tensor.data_ptr())
    return tensor.numel() * tensor.element_size()


def model_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """params: what forward computes with; master: optimizer-owned parameter storage apart from those
    (ZeRO-2's sharded fp32 copy); grads; optimizer: state tensors (Adam's moments and step counters)."""
    seen: set[int] = set()
    params = sum(_add(seen, p) for p in model.parameters())
    optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
    master = sum(_add(seen, p) for p in optimizer_params)
    grads = sum(_add(seen, p.grad) for p in [*model.parameters(), *optimizer_params])
    # ZeroRedundancyOptimizer keeps its rank's state in the wrapped local optimizer.
    local_optimizer = getattr(optimizer, "optim", optimizer)
    state = sum(
        _add(seen, value)
        for per_param in local_optimizer.state.values()
        for value in per_param.values()
        if isinstance(value, torch.Tensor)
    )
    return {"params": params, "master": master, "grads": grads, "optimizer": state}


class SteadyFigure:
    """When to measure a figure that stops changing once training reaches its steady state (the model state a
    phase leaves behind, the bytes a forward saves for backward): at every chance until it has repeated
    STABLE_WALKS times, then every RECHECK_STEPS steps; a recheck that differs re-arms measuring every time.
    `latest` is the newest figure with the step it was measured at, which every record carries beside it."""

    STABLE_WALKS = 3
    RECHECK_STEPS = 10

    def __init__(self):
        self.latest: tuple[object, int] | None = None  # (figure, measured at step)
        self._repeats = 0

    def due(self, step: int) -> bool:
        return (self.latest is None or self._repeats < self.STABLE_WALKS
                or step - self.latest[1] >= self.RECHECK_STEPS)

    def measured(self, figure, step: int) -> tuple[object, int]:
        self._repeats = self._repeats + 1 if self.latest is not None and self.latest[0] == figure else 0
        self.latest = (figure, step)
        return self.latest


class ModelStateMeter:
    """model_state_bytes per phase, walked only while it can change (SteadyFigure): the tensors a phase leaves
    behind are the same every step once gradients and optimizer state exist (storage is kept, never freed).
    Each figure comes with the step it was walked at."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.phases: dict[str, SteadyFigure] = {}

    def measure(self, phase: str, step: int) -> tuple[dict[str, int], int]:
        figure = self.phases.setdefault(phase, SteadyFigure())
        if not figure.due(step):
            return figure.latest
        return figure.measured(model_state_bytes(self.model, self.optimizer), step)


class ProcessMemory:
    """RSS now, and the peak since the last reset (Linux: VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self):
        self.process = psutil.Process()
        self.linux = sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")
        self._sampled_peak = 0
        # Linux: the resident page count from an open /proc/self/statm, re-read in place (a few microseconds;
        # psutil opens, reads and parses the file on every call, read several times per step).
        self._statm = os.open("/proc/self/statm", os.O_RDONLY) if self.linux else None
        self._page_bytes = os.sysconf("SC_PAGE_SIZE") if self.linux else 0

    def rss_bytes(self) -> int:
        if self._statm is not None:
            rss = int(os.pread(self._statm, 128, 0).split()[1]) * self._page_bytes
        else:
            rss = self.process.memory_info().rss
        self._sampled_peak = max(self._sampled_peak, rss)
        return rss

    def reset_peak(self) -> None:
        self._sampled_peak = 0
        if self.linux:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.linux = False

    def peak_rss_bytes(self) -> int:
        if self.linux:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return self._sampled_peak  # elsewhere: the largest RSS we sampled


class DeviceMemory:
    """CUDA allocator statistics and NVML's view of the device; empty on CPU or when NVML is absent."""

    def __init__(self, device: torch.device):
        self.device = device
        self.nvml_handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            except Exception:  # no driver library, or NVML refuses: CUDA stats still work
                self.nvml_handle = None

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def metrics(self) -> dict[str, int]:
        if self.device.type != "cuda":
            return {}
        record = {
            "cuda_allocated_bytes": torch.cuda.memory_allocated(self.device),
            "cuda_reserved_bytes": torch.cuda.memory_reserved(self.device),
            "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
        }
        if self.nvml_handle is not None:
            record["nvml_used_bytes"] = int(self.nvml.nvmlDeviceGetMemoryInfo(self.nvml_handle).used)
        return record



class SavedActivations:
    """Bytes autograd keeps for backward (the activations) during one forward and loss, on this rank.

    A `saved_tensors_hooks` pack hook sees every tensor saved for backward; each storage counts once (views such
    as Q, K and V of one QKV output share it), and parameters (and views of them, like a linear's weight.t())
    are model state, not activations. Installed only between start(enabled=True) and stop(): other steps
    pay nothing. Only the innermost saved_tensors_hooks see anything, so this is the one counter of saved
    tensors: the memory wall (engine/budget.py) reads its `storages` too.
    """

    def __init__(self):
        self.enabled = False
        self.bytes = 0
        self._counted: set[int] = set()
        self.storages: dict[int, torch.UntypedStorage] = {}  # every saved storage, parameters included
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages.setdefault(storage.data_ptr(), storage)
        base = tensor._base if tensor._base is not None else tensor
        if not (base.is_leaf and base.requires_grad):  # a parameter is model state
            if storage.data_ptr() not in self._counted:
                self._counted.add(storage.data_ptr())
                self.bytes += storage.nbytes()
        return tensor  # saved as autograd would save it: counting copies nothing

    def start(self, enabled: bool = True) -> None:
        self.enabled, self.bytes = enabled, 0
        self._counted.clear()
        self.storages.clear()
        if enabled:
            self._hooks.__enter__()

    def stop(self) -> int | None:
        """Bytes saved since start(), or None when counting was off. `storages` stays readable until forget()."""
        if not self.enabled:
            return None
        self._hooks.__exit__(None, None, None)
        self.enabled = False
        self._counted.clear()  # the addresses only mattered while the forward ran
        return self.bytes

    def forget(self) -> None:
        """Drops the references to saved storages, so they die with the backward pass as they would unwatched."""
        self.storages.clear()
