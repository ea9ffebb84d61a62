"""Where a training step makes the host wait for the GPU, found on any device (a CPU included).

On a GPU, kernels queue and the Python loop runs ahead; reading a value back (``.item()``, ``bool(t)``,
``int(t)``, ``float(t)``), an operation whose output size depends on the data (``nonzero``, indexing with a
boolean mask) or ``self.log`` of a Python number (Lightning turns it into a tensor on the GPU: a blocking copy,
for which PyTorch waits for the stream) makes the host wait until the GPU has run everything queued so far.
Once per step at its end, that leaves the GPU idle while the host fetches the next batch and runs the
loop's and callbacks' Python. ``torch.cuda.set_sync_debug_mode`` finds such waits only on a GPU; the same
operations pass through PyTorch's dispatcher on a CPU too, where :class:`HostSyncCounter` counts them,
with the code that asked for each, so that a test on a CPU can hold the count of a training step down.

Not seen on a CPU: ``.cpu()`` / ``.numpy()`` / ``.tolist()`` of a GPU tensor (no-ops or not dispatched
there); those show only under ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import collections
import os
import statistics
import traceback
import weakref
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

# a tensor's value read on the host, and operations whose output size depends on the data
READS = frozenset({
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.unique_consecutive.default,
    torch.ops.aten._unique2.default,
})
# indexing with a boolean mask: the selected count sizes the output (a nonzero inside the kernel)
MASK_INDEXING = frozenset({
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
})
# LightningModule.log of a Python number: torch.tensor(value, device=self.device) in LightningModule.__to_tensor
LOG_OF_A_NUMBER = ("__to_tensor", os.path.join("core", "module.py"))


@dataclass
class HostSync:
    op: str  # the aten operation
    where: str  # file:line of the code outside torch that asked for it
    step: int | None  # the training step it happened in (HostSyncCounter.step when it happened)


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as syncs: ...`` records every host wait (see the module's docstring) made
    while ``syncs.counting`` is true, tagged with ``syncs.step``. :class:`CountHostSyncs` (a callback)
    counts during training steps only, one step number each.

    Left out, as they do not wait for a GPU there: code that runs in the data loader (dataset, collate,
    sampler: in worker processes on a GPU machine), and reads of tensors made from Python data
    (``torch.tensor(x)``, but for LightningModule.log's) or computed from such tensors alone, which stay on
    the host in a GPU run too; one made with ``torch.tensor(x, device=...)`` for a GPU is taken for a host
    tensor here too (the device is the CPU on a CPU run)."""

    def __init__(self, counting: bool = True) -> None:
        super().__init__()
        self.counting = counting
        self.step: int | None = None
        self.events: list[HostSync] = []
        self._host: set[int] = set()  # ids of live tensors that stay on the host in a GPU run

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_host = bool(inputs) and all(id(t) in self._host for t in inputs)
        if self.counting and (func in READS or func in MASK_INDEXING and _masked(args)) and not on_host:
            stack = traceback.extract_stack()[:-1]
            if not _in_data_loader(stack):
                self.events.append(HostSync(str(func), _caller(stack), self.step))
        out = func(*args, **kwargs)
        if func is torch.ops.aten.lift_fresh.default:
            stack = traceback.extract_stack()[:-1]
            if any(f.name == LOG_OF_A_NUMBER[0] and f.filename.endswith(LOG_OF_A_NUMBER[1]) for f in stack):
                if self.counting:
                    self.events.append(HostSync("LightningModule.log(<Python number>)", _caller(stack), self.step))
            elif not _in_data_loader(stack):  # the data loader's tensors go to the device
                self._mark_host(out)
        elif on_host:
            self._mark_host(out)
        return out

    def _mark_host(self, out) -> None:
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in self._host:
                self._host.add(id(t))
                weakref.finalize(t, self._host.discard, id(t))

    def per_step(self) -> dict[int | None, int]:
        return dict(collections.Counter(event.step for event in self.events))

    def sources(self, steps: set[int] | None = None) -> collections.Counter:
        """(op, where) -> count, over ``steps`` (all when None)."""
        return collections.Counter((e.op, e.where) for e in self.events if steps is None or e.step in steps)


class CountHostSyncs(Callback):
    """A callback that counts the host waits (:class:`HostSyncCounter`) of every training step: from the
    start of a training batch to the start of the next (its optimiser step, callbacks, logging, the loop's
    own work), not during validation; with ``report``, prints :meth:`summary` when training ends. For a
    look at a run's waits (every tensor operation then goes through Python: slow)::

        python -m strongpose.train +callbacks.host_syncs._target_=strongpose.host_syncs.CountHostSyncs
    """

    def __init__(self, report: bool = True) -> None:
        self.report = bool(report)
        self.counter = HostSyncCounter(counting=False)
        self.batches = 0
        self.log_every_n_steps = 1
        self._entered = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_every_n_steps = int(trainer.log_every_n_steps)
        if not self._entered:
            self.counter.__enter__()
            self._entered = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.counter.step, self.counter.counting = self.batches, True
        self.batches += 1

    def _pause(self, *args) -> None:
        self.counter.step, self.counter.counting = None, False

    on_train_epoch_end = on_validation_start = _pause

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._exit()
        if self.report and trainer.is_global_zero:
            print("\n".join(self.summary()), flush=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._exit()

    def _exit(self) -> None:
        self._pause()
        if self._entered:
            self.counter.__exit__(None, None, None)
            self._entered = False

    def logging_steps(self) -> set[int]:
        """The training steps after which Lightning logs (step + 1 a multiple of log_every_n_steps)."""
        return {s for s in range(self.batches) if (s + 1) % self.log_every_n_steps == 0}

    def quiet_steps(self) -> list[int]:
        """Steps without logging, the first left out (it registers the logged names)."""
        logging = self.logging_steps()
        return [s for s in range(1, self.batches) if s not in logging]

    def summary(self) -> list[str]:
        """Each step's count, where the waits of the steps without logging come from; the last line
        ``steps=N logging_steps=L host_syncs_per_step=X max=Y`` (median and max over those steps)."""
        per_step, logging, quiet = self.counter.per_step(), self.logging_steps(), self.quiet_steps()
        lines = [f"step {s}: {per_step.get(s, 0)} host waits{' (a logging step)' if s in logging else ''}"
                 for s in range(self.batches)]
        lines.append(f"where the {len(quiet)} steps without logging wait (count, op, code):")
        lines += [f"  {n:4d}  {op}  {where}" for (op, where), n in self.counter.sources(set(quiet)).most_common()]
        values = [per_step.get(s, 0) for s in quiet] or [0]
        lines.append(f"steps={self.batches} logging_steps={len(logging)} "
                     f"host_syncs_per_step={statistics.median(values):g} max={max(values)}")
        return lines


def _masked(args: tuple) -> bool:
    """Indexing with a boolean mask; not ``t[mask] = scalar`` (torch runs that as a masked_fill_)."""
    indices = args[1] if len(args) > 1 else ()
    if len(args) > 2 and isinstance(args[2], torch.Tensor) and args[2].numel() == 1:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _in_data_loader(stack: list[traceback.FrameSummary]) -> bool:
    return any(f"{os.sep}utils{os.sep}data{os.sep}" in frame.filename for frame in stack)


def _caller(stack: list[traceback.FrameSummary]) -> str:
    """The two innermost frames outside torch (Lightning's apply_func skipped), and the innermost outside
    torch and Lightning too when not one of them: the code that made the call, and the project's behind it."""
    torch_dir, lightning_dir = os.path.dirname(torch.__file__), os.path.dirname(L.__file__)
    outside_torch = [f for f in stack if not f.filename.startswith(torch_dir) and "apply_func" not in f.filename]
    frames = outside_torch[-2:][::-1] or stack[-1:]
    ours = [f for f in outside_torch if not f.filename.startswith(lightning_dir)]
    if ours and ours[-1] not in frames:
        frames.append(ours[-1])
    return " <- ".join(f"{_short(f.filename)}:{f.lineno} ({f.name})" for f in frames)


def _short(path: str) -> str:
    parts = path.split(os.sep)
    for anchor in ("strongpose", "lightning", "torch", "tests", "experiments"):
        if anchor in parts:
            return os.sep.join(parts[parts.index(anchor):])
    return os.path.basename(path)
