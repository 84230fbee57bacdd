"""What NVML sees on this machine: each NVIDIA GPU's name and memory. Imports no torch, so the form can ask
on every redraw; on a machine without an NVIDIA driver it answers "none" and says why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from engine.units import format_bytes


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuInventory:
    gpus: tuple[GpuInfo, ...]
    note: str = ""  # why there are none (no NVML library, no driver), empty when NVML answered

    @property
    def count(self) -> int:
        return len(self.gpus)

    def describe(self) -> str:
        """One line for a person: '2 × NVIDIA H100 80GB HBM3, 79.6 GiB each (NVML)'."""
        if not self.gpus:
            return f"No GPU found through NVML ({self.note})."
        parts = []
        for (name, memory), count in Counter((g.name, g.memory_total_bytes) for g in self.gpus).items():
            parts.append(f"{count} × {name}, {format_bytes(memory)}" + (" each" if count > 1 else ""))
        return "; ".join(parts) + " (NVML)"


def find_gpus() -> GpuInventory:
    """Every GPU NVML reports, in NVML's index order (CUDA's order unless CUDA_DEVICE_ORDER says otherwise)."""
    try:
        import pynvml  # nvidia-ml-py: a thin ctypes binding; the driver's libnvidia-ml is loaded at nvmlInit
    except ImportError:
        return GpuInventory((), "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return GpuInventory((), f"no NVIDIA driver here: {error}")
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name  # older bindings return bytes
            gpus.append(GpuInfo(index, name, int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return GpuInventory(tuple(gpus))
    except pynvml.NVMLError as error:
        return GpuInventory((), f"NVML failed: {error}")
    finally:
        pynvml.nvmlShutdown()
