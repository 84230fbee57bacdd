"""DDP and ZeRO-1/2/3, each as PyTorch's own recipe (see STRATEGIES in engine/spec.py for the names users see).

  ddp    DistributedDataParallel(gradient_as_bucket_view=True): grads live in DDP's buckets, no second copy
  zero1  DDP + ZeroRedundancyOptimizer: optimizer state partitioned by whole parameter
  zero2  FSDP2 fully_shard(reshard_after_forward=False) per block and root, set_reshard_after_backward(False),
         and a re-gather after each optimizer step: full parameters at rest, grads and optimizer state sharded
  zero3  FSDP2 fully_shard(reshard_after_forward=True) per block and root: everything sharded
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

# FSDP2 and ZeroRedundancyOptimizer are imported where used: importing FSDP pulls in DTensor's operator
# tables (1-2 s on a small CPU), which DDP runs should not pay before their first step.

OPTIMIZER_CLASSES = {
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "sgd": (torch.optim.SGD, {}),
    "sgd_momentum": (torch.optim.SGD, {"momentum": 0.9}),
}


def uses_fsdp(strategy: str) -> bool:
    return strategy in ("zero2", "zero3")


def apply_strategy(
    model: nn.Module, strategy: str, device: torch.device, precision: str, count_comm: bool
) -> nn.Module:
    """Wraps (or shards in place) a model whose parameters are identical on every rank."""
    if not uses_fsdp(strategy):
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )
        if count_comm:
            from engine.comm import register_counting_ddp_hook

            register_counting_ddp_hook(ddp)
        return ddp
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    reshard = strategy == "zero3"
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for unit in model.shard_units:  # one unit gathered at a time: that is where ZeRO-3's savings come from
        fully_shard(unit, reshard_after_forward=reshard, mp_policy=policy)
    fully_shard(model, reshard_after_forward=reshard, mp_policy=policy)
    if strategy == "zero2":
        model.set_reshard_after_backward(False)  # keep full parameters after backward too
    return model


def build_optimizer(model: nn.Module, strategy: str, name: str, lr: float) -> torch.optim.Optimizer:
    """Build before the first forward: for zero2 the optimizer must capture the sharded parameters."""
    cls, extra = OPTIMIZER_CLASSES[name]
    if strategy == "zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, lr=lr, **extra)
    return cls(model.parameters(), lr=lr, **extra)


def fsdp_modules(model: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def after_optimizer_step(model: nn.Module, strategy: str) -> None:
    """zero2: the step updated the sharded master copy; drop the stale full parameters and all-gather fresh ones."""
    if strategy == "zero2":
        for module in fsdp_modules(model):
            module.reshard()
        for module in fsdp_modules(model):
            module.unshard()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter in full, on CPU. A collective for sharded models: every rank must call it."""
    result = {}
    for name, param in unwrap(model).named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        result[name] = full.detach().to("cpu", copy=True)
    return result
