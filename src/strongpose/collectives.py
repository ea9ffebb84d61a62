"""The few collectives of a DDP training step, as plain all-reduces: Lightning's ``strategy.reduce`` and
``reduce_boolean_decision`` put a barrier before each, on NCCL a second collective and a host wait, every step."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch


def mean_over_ranks(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """The processes' mean of ``tensor`` (a new tensor; no host wait: it queues with the step's kernels)."""
    total = tensor.clone()
    torch.distributed.all_reduce(total)
    return total / world_size


def flags_of_any_rank(flags: Sequence[bool | torch.Tensor], trainer: L.Trainer | None) -> list[bool]:
    """Each flag of any process (the flags themselves without a trainer or with one process): one all-reduce
    and one read of the device for all of them. Flags may be tensors on the device (read only after the
    all-reduce) or bools (written on the device by a fill kernel: no copy from the host, which would wait)."""
    if trainer is None or trainer.world_size <= 1:
        return [bool(flag) for flag in flags]
    device = trainer.strategy.root_device
    values = torch.stack([flag.detach().to(device, torch.float32).reshape(()) if isinstance(flag, torch.Tensor)
                          else torch.full((), float(flag), device=device) for flag in flags])
    return [value > 0 for value in mean_over_ranks(values, trainer.world_size).tolist()]


def any_rank(flag: bool | torch.Tensor, trainer: L.Trainer | None) -> bool:
    """``flag`` of any process (itself without a trainer or with one process)."""
    return flags_of_any_rank([flag], trainer)[0]
