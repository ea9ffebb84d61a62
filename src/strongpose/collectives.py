"""The few collectives of a DDP training step, as plain all-reduces: Lightning's ``strategy.reduce`` and
``reduce_boolean_decision`` put a barrier before each, on NCCL a second collective and a host wait, every step."""

from __future__ import annotations

import lightning as L
import torch


def mean_over_ranks(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """The processes' mean of ``tensor`` (a new tensor; no host wait: it queues with the step's kernels)."""
    total = tensor.clone()
    torch.distributed.all_reduce(total)
    return total / world_size


def any_rank(flag: bool, trainer: L.Trainer | None) -> bool:
    """``flag`` of any process (itself without a trainer or with one process)."""
    if trainer is None or trainer.world_size <= 1:
        return bool(flag)
    value = torch.tensor(float(flag), device=trainer.strategy.root_device)
    return bool(mean_over_ranks(value, trainer.world_size).item() > 0)
