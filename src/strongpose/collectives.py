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


def any_rank(flag: bool | torch.Tensor, trainer: L.Trainer | None) -> bool:
    """``flag`` of any process (itself without a trainer or with one process). A tensor ``flag`` (on the
    device) is all-reduced where it is and read once; a bool is copied to the device first (a second wait on
    a GPU)."""
    if trainer is None or trainer.world_size <= 1:
        return bool(flag)
    if isinstance(flag, torch.Tensor):
        value = flag.detach().float().reshape(())
    else:
        value = torch.tensor(float(flag), device=trainer.strategy.root_device)
    return bool(mean_over_ranks(value, trainer.world_size).item() > 0)


class AnyRankOneCallLate:
    """``any_rank`` answered one call late, for a flag checked every step: each call queues the all-reduce
    of its flag (with a copy of the result to pinned host memory, on a GPU) and returns the previous call's
    result, which the device finished long before. ``any_rank`` every step would make the host wait for the
    whole step queued so far (``strongpose.host_syncs``). Every rank gets the same answer at the same call,
    as long as all make the same calls (the first call answers False)."""

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def __call__(self, flag: bool, trainer: L.Trainer | None) -> bool:
        if trainer is None or trainer.world_size <= 1:
            return bool(flag)
        answer = self._read()
        device = trainer.strategy.root_device
        cuda = device.type == "cuda"
        value = torch.tensor([float(flag)], pin_memory=cuda).to(device, non_blocking=cuda)
        torch.distributed.all_reduce(value)
        if cuda:
            host = torch.empty(1, pin_memory=True)
            host.copy_(value, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pending = (host, done)
        else:
            self._pending = (value, None)
        return answer

    def _read(self) -> bool:
        if self._pending is None:
            return False
        host, done = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()  # the previous call's copy, queued a step ago: no wait for this step's work
        return bool(host.item() > 0)

    def reset(self) -> None:
        """Forget a queued flag (a new run)."""
        self._pending = None
