"""The memory wall: what one rank needs on its device, measured, and a per-rank budget it must fit in.

On a GPU the budget is the CUDA allocator's own cap (torch.cuda.set_per_process_memory_fraction): going
over raises CUDA's out-of-memory error. A CPU has no such device, so the CPU budget is a *simulated
device of N MiB*, enforced on the exact tensor bytes the rank holds, measured in the first step:

  after forward   model state + activations saved for backward + the largest unit gathered while it computed
  after backward  model state (now with gradients) + the largest unit gathered again for backward
  after the step  model state (now with optimizer state)

Model state is the tensor walk of engine/memory.py; activations are the storages autograd saved
(saved_tensors_hooks), counted once each at their size when the forward ends and never counted
twice with model state; a gathered unit is its full parameters seen right after FSDP's pre-forward
all-gather, where they are not part of the rank's resting model state (ZeRO-3). Not counted: the
unsharded gradients of one unit before its reduce-scatter and the allocator's slack.
"""

from __future__ import annotations

import torch

from engine.memory import SavedActivations, model_state_bytes

MIB = 2**20
PHASE_WORDS = {"forward": "after the forward pass", "backward": "after the backward pass", "step": "after the optimizer step"}


class OverBudget(RuntimeError):
    """A rank needs more than its budget; the message names the rank, the need and the budget in MiB."""


def _storage(tensor: torch.Tensor) -> tuple[int, torch.UntypedStorage]:
    local = getattr(tensor, "_local_tensor", tensor)
    storage = local.untyped_storage()
    return storage.data_ptr(), storage


def _state_pointers(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> set[int]:
    """Storages of parameters, gradients and optimizer state (what model_state_bytes counts)."""
    tensors = list(model.parameters())
    tensors += [p for group in optimizer.param_groups for p in group["params"]]
    tensors += [p.grad for p in tensors if p.grad is not None]
    local = getattr(optimizer, "optim", optimizer)
    tensors += [v for state in local.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {_storage(t)[0] for t in tensors}


class MemoryNeed:
    """Measures the need per phase of the steps it is begun in (`begin()` before forward, `after(phase)` after
    each phase, which also enforces the budget), keeping the largest need seen for each phase."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, shard_units: list[torch.nn.Module],
                 rank: int, budget_mb: int, saved: SavedActivations, on_over_budget=lambda record: None):
        self.model, self.optimizer, self.rank, self.budget_mb = model, optimizer, rank, budget_mb
        self.on_over_budget = on_over_budget  # called with record() before OverBudget is raised
        self.saved = saved  # the one saved-tensor counter; the worker starts it before each measured forward
        self._measuring = False
        self.gathered: list[dict[int, int]] = []  # per unit entered: storage -> bytes of its parameters
        self.need_bytes: dict[str, int] = {}
        self.parts: dict[str, dict[str, int]] = {}
        self._hooks = [unit.register_forward_pre_hook(self._entered) for unit in shard_units]

    def begin(self) -> None:
        """Call right before the forward pass (with `saved` started): its saved tensors are read after it."""
        self.gathered.clear()
        self._measuring = True

    def _entered(self, unit, args) -> None:
        # Runs after FSDP's own pre-forward hook (which FSDP prepends): the unit's parameters are gathered now.
        self.gathered.append({_storage(p)[0]: p.numel() * p.element_size() for p in unit.parameters()})

    def after(self, phase: str) -> None:
        if not self._measuring:
            return  # not a measured step
        state = sum(model_state_bytes(self.model, self.optimizer).values())
        resting = _state_pointers(self.model, self.optimizer)
        gathered = max((sum(b for p, b in unit.items() if p not in resting) for unit in self.gathered), default=0)
        activations = 0
        if phase == "forward":
            # Size now, not when saved: FSDP frees a gathered unit's storage after its forward (resized to 0).
            activations = sum(s.nbytes() for p, s in self.saved.storages.items() if p not in resting)
            self.saved.forget()
        elif phase == "step":
            gathered = 0
        need = state + activations + gathered
        if need >= self.need_bytes.get(phase, 0):
            self.need_bytes[phase] = need
            self.parts[phase] = {"model_state_bytes": state, "activation_bytes": activations, "gathered_bytes": gathered}
        if phase == "step":
            self._measuring = False
        if self.budget_mb and need > self.budget_mb * MIB:
            self.on_over_budget(self.record())
        check_budget(self.rank, phase, need, self.budget_mb)

    def close(self) -> None:
        """Stops measuring (the hooks cost a little on every forward)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.gathered.clear()

    def record(self) -> dict:
        """need_bytes: phase -> bytes; parts: phase -> its model state, activations and gathered unit."""
        return {"need_bytes": dict(self.need_bytes), "parts": dict(self.parts),
                "need_max_bytes": max(self.need_bytes.values(), default=0)}


def check_budget(rank: int, phase: str, need_bytes: int, budget_mb: int) -> None:
    """Raises OverBudget when a rank's measured need passes its simulated device."""
    if budget_mb and need_bytes > budget_mb * MIB:
        raise OverBudget(
            f"rank {rank} needs {need_bytes / MIB:.2f} MiB {PHASE_WORDS[phase]}, budget {budget_mb} MiB "
            f"(simulated device of {budget_mb} MiB)"
        )


def cap_cuda_memory(device: torch.device, budget_mb: int) -> None:
    """On a GPU the allocator enforces the budget itself: past it, allocations raise CUDA out of memory."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_mb * MIB / total), device)
