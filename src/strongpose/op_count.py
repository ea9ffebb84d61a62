"""Counting the operations code dispatches: on a fast GPU each is a kernel launch the host must queue, and at
small batches that queueing, not the GPU, limits a training step (experiments/count_step_ops.py)."""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode


class CountOps(TorchDispatchMode):
    """Counts every operation dispatched inside the ``with`` block, by name (``ops``), in all (``total``) and the
    views among them (``views``). Views count in ``total``: the number is a proxy for launches, not a launch count."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0  # of them, views (an alias of a tensor: no kernel, a cheaper host step)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        if getattr(func, "is_view", False):
            self.views += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())
