"""Where a training step makes the host wait for the GPU, found on any device (a CPU included).

On a GPU, kernels queue and the Python loop runs ahead; reading a value back (``.item()``, ``bool(t)``,
``int(t)``, ``float(t)``, ``.tolist()``, ``.cpu()``, ``.numpy()``), an operation whose output size or
result depends on the data (``nonzero``, indexing with a boolean mask, ``unique``, ``torch.equal``...) or
``self.log`` of a Python number (Lightning turns it into a tensor on the GPU: a blocking copy, for which
PyTorch waits for the stream) makes the host wait until the GPU has run everything queued so far. Once per
step at its end, that leaves the GPU idle while the host fetches the next batch and runs the loop's and
callbacks' Python. ``torch.cuda.set_sync_debug_mode`` finds such waits only on a GPU; the same operations
pass through PyTorch's dispatcher (or the few Tensor methods wrapped here) on a CPU too, where
:class:`HostSyncCounter` counts them, with the code that asked for each, so that a test on a CPU can hold
the count of a training step down. ``torch.cuda.set_sync_debug_mode`` on a GPU has the last word.

Known blind spots on a CPU run: a tensor made from Python data (``torch.tensor(x)``) is taken to stay on the
host (in a GPU run it does, unless made with ``device=``), and so is what is computed from such tensors
alone, but not a ``.to(device)`` of one or a ``copy_`` into one; ``t[mask] = v`` with a one-element ``v``
is taken for the masked fill torch makes of it (no wait), which waits on a GPU when ``v`` is on the GPU.
"""

from __future__ import annotations

import collections
import os
import statistics
import threading
import traceback
import weakref
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# a tensor's value read on the host, and operations whose output size or result the host must see
READS = frozenset({
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
    aten.unique_consecutive.default, aten.unique_dim.default, aten.unique_dim_consecutive.default,
    aten._unique.default, aten._unique2.default, aten.bincount.default, aten.equal.default, aten.allclose.default,
})
# indexing with a boolean mask: the selected count sizes the output (a nonzero inside the kernel)
MASK_INDEXING = frozenset({aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                           aten._index_put_impl_.default})
# Tensor methods that read the values without a dispatched read on a CPU (on a GPU: a blocking copy)
READ_METHODS = ("tolist", "numpy", "cpu")
# LightningModule.log of a Python number: torch.tensor(value, device=self.device) in LightningModule.__to_tensor
LOG_OF_A_NUMBER = ("__to_tensor", os.path.join("core", "module.py"))


@dataclass
class HostSync:
    op: str  # the aten operation or Tensor method
    where: str  # file:line of the code outside torch that asked for it, and of the calls behind it
    step: int | None  # the training step it happened in (HostSyncCounter.step when it happened)


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as syncs: ...`` records every host wait (see the module's docstring) made
    while ``syncs.counting`` is true, tagged with ``syncs.step``. :class:`CountHostSyncs` (a callback)
    counts during training steps only, one step number each.

    Left out, as they do not wait for a GPU there: code that runs in the data loader (dataset, collate,
    sampler: in worker processes on a GPU machine), and reads of tensors made from Python data
    (``torch.tensor(x)``, but for LightningModule.log's) or computed from such tensors alone, which stay on
    the host in a GPU run too (what ``.cpu()`` returns as well); with ``device`` set to a GPU, every CPU
    tensor. In a GPU run, copies between the host and the GPU that are not ``non_blocking`` are counted
    too. While active, ``Tensor.tolist`` / ``numpy`` / ``cpu`` are wrapped (process-wide; only the entering
    thread's calls count, as only its operations reach the mode). Not re-entrant: nested counters must
    leave in the reverse order of entering."""

    def __init__(self, counting: bool = True) -> None:
        super().__init__()
        self.counting = counting
        self.step: int | None = None
        self.events: list[HostSync] = []
        self._host: set[int] = set()  # ids of live tensors that stay on the host in a GPU run
        self._methods: dict[str, object] = {}
        self._thread: int | None = None
        self._in_method = False  # inside a wrapped Tensor method (its own read is counted once)
        self._just_copied: int | None = None  # a tensor .cpu() returned as itself (a CPU run), until its next read
        # the run's device when known (CountHostSyncs sets it): in a GPU run CPU tensors are read without a wait
        self.device: torch.device | None = None

    def __enter__(self):
        mode = super().__enter__()
        self._thread = threading.get_ident()  # the mode sees this thread's operations only: so do the methods
        for name in READ_METHODS:
            self._methods[name] = torch.Tensor.__dict__.get(name)
            method = getattr(torch.Tensor, name)

            def read(tensor, *args, _method=method, _name=name, **kwargs):
                if threading.get_ident() != self._thread or self._in_method:
                    return _method(tensor, *args, **kwargs)
                just_copied, self._just_copied = self._just_copied, None
                if self.counting and id(tensor) != just_copied and self._waits_for(tensor):
                    self._record(f"Tensor.{_name}")
                self._in_method = True  # the copy to the host inside is this same wait
                try:
                    out = _method(tensor, *args, **kwargs)
                finally:
                    self._in_method = False
                if out is tensor:  # .cpu() on a CPU run returns the tensor itself: its next read is this copy's
                    self._just_copied = id(tensor)
                else:
                    self._mark_host(out)  # what .cpu() returns is on the host
                return out

            setattr(torch.Tensor, name, read)
        return mode

    def __exit__(self, *exc):
        # not re-entrant: counters nest in order (the last entered leaves first)
        for name, method in self._methods.items():
            if method is None:
                delattr(torch.Tensor, name)  # it came from torch._C.TensorBase
            else:
                setattr(torch.Tensor, name, method)
        self._methods = {}
        return super().__exit__(*exc)

    def _waits_for(self, tensor: torch.Tensor) -> bool:
        """Reading ``tensor`` waits for the GPU: not a host tensor (in a GPU run, any CPU tensor)."""
        if self.device is not None and self.device.type != "cpu":
            return tensor.device.type != "cpu"
        return id(tensor) not in self._host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_host = bool(inputs) and not any(self._waits_for(t) for t in inputs)
        just_copied, self._just_copied = self._just_copied, None  # x.cpu().item() on a CPU run: one wait
        if (self.counting and not on_host and not self._in_method and _waits(func, args, kwargs)
                and not (len(inputs) == 1 and id(inputs[0]) == just_copied)):
            self._record(str(func))
        out = func(*args, **kwargs)
        if func is aten.lift_fresh.default:
            stack = traceback.extract_stack()[:-1]
            if any(f.name == LOG_OF_A_NUMBER[0] and f.filename.endswith(LOG_OF_A_NUMBER[1]) for f in stack):
                if self.counting:
                    self._record("LightningModule.log(<Python number>)", stack)
            elif not _in_data_loader(stack):  # the data loader's tensors go to the device
                self._mark_host(out)
        elif on_host:
            self._mark_host(out)
        return out

    def _record(self, op: str, stack: list[traceback.FrameSummary] | None = None) -> None:
        stack = stack if stack is not None else traceback.extract_stack()[:-2]
        if not _in_data_loader(stack):
            self.events.append(HostSync(op, _caller(stack), self.step))

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
    own work), not during validation; with ``report``, prints :meth:`summary` when training ends or stops.
    For a look at a run's waits (every tensor operation of the steps then goes through Python: slow)::

        python -m strongpose.train +callbacks.host_syncs._target_=strongpose.host_syncs.CountHostSyncs
    """

    def __init__(self, report: bool = True) -> None:
        self.report = bool(report)
        self.counter = HostSyncCounter(counting=False)
        self.batches = 0
        self.logged: list[bool] = []  # per counted batch: Lightning logged after it
        self._entered = False
        self._log_every = 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_every = int(trainer.log_every_n_steps)  # 0: Lightning never logs
        self.counter.device = pl_module.device

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self._entered:
            self.counter.__enter__()
            self._entered = True
        self.counter.step, self.counter.counting = self.batches, True
        self.batches += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # Lightning logs after the batches whose optimiser-step count is a multiple of log_every_n_steps
        self.logged.append(self._log_every > 0 and (trainer.global_step % self._log_every == 0 or trainer.should_stop))

    def _pause(self, *args) -> None:
        self.counter.step, self.counter.counting = None, False
        if self._entered:
            self.counter.__exit__(None, None, None)
            self._entered = False

    on_train_epoch_end = on_validation_start = _pause

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()
        if self.report and trainer.is_global_zero:
            print("\n".join(self.summary()), flush=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def logging_steps(self) -> set[int]:
        return {step for step, logged in enumerate(self.logged) if logged}

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


def _waits(func, args: tuple, kwargs: dict) -> bool:
    """The operation makes the host wait for a GPU (see the module's docstring)."""
    if func in READS:
        return True
    if func in MASK_INDEXING:
        return _masked(args, kwargs)
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None  # the output's length is the repeats' sum
    return _blocking_copy(func, args, kwargs)


def _masked(args: tuple, kwargs: dict) -> bool:
    """Indexing with a boolean mask; not ``t[mask] = <one value>`` without accumulation (torch runs that as a
    masked_fill_)."""
    indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
    value = args[2] if len(args) > 2 else kwargs.get("values")
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not accumulate:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _blocking_copy(func, args: tuple, kwargs: dict) -> bool:
    """A copy between the host and a GPU that the host waits for (not ``non_blocking``): GPU runs only."""
    if func is aten._to_copy.default:
        source, target, non_blocking = args[0], kwargs.get("device"), kwargs.get("non_blocking", False)
    elif func is aten.copy_.default:
        target, source = args[0].device, args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    else:
        return False
    if target is None or not isinstance(source, torch.Tensor) or non_blocking:
        return False
    devices = {torch.device(target).type, source.device.type}
    return "cpu" in devices and len(devices) == 2


def _in_data_loader(stack: list[traceback.FrameSummary]) -> bool:
    return any(f"{os.sep}utils{os.sep}data{os.sep}" in frame.filename for frame in stack)


def _caller(stack: list[traceback.FrameSummary]) -> str:
    """Up to three frames outside torch (Lightning's apply_func skipped), innermost first, one per file, and
    the innermost outside Lightning when not one of them: the code that asked, and the project's behind it."""
    torch_dir, lightning_dir = os.path.dirname(torch.__file__), os.path.dirname(L.__file__)
    outside_torch = [f for f in stack if not f.filename.startswith(torch_dir) and "apply_func" not in f.filename]
    frames: list[traceback.FrameSummary] = []
    for frame in reversed(outside_torch):
        if len(frames) == 3:
            break
        if not frames or frame.filename != frames[-1].filename:
            frames.append(frame)
    ours = [f for f in outside_torch if not f.filename.startswith(lightning_dir)]
    if ours and all(f.filename != ours[-1].filename for f in frames):
        frames.append(ours[-1])
    return " <- ".join(f"{_short(f.filename)}:{f.lineno} ({f.name})" for f in frames or stack[-1:])


def _short(path: str) -> str:
    parts = path.split(os.sep)
    for anchor in ("strongpose", "lightning", "torch", "tests", "experiments"):
        if anchor in parts:
            return os.sep.join(parts[parts.index(anchor):])
    return os.path.basename(path)
