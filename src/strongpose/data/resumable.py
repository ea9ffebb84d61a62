"""A training DataLoader that resumes mid-epoch: checkpoints record how far into its epoch training got, and
the resumed run's first epoch goes on from there (the sampler skips the trained keys: they are not read).

Lightning saves ``state_dict()`` of every train loader that has one (the checkpoint's ``loops`` entry) and
calls ``load_state_dict()`` when it resumes, just before it creates the loader's first iterator; without
them it replays the epoch's first batches and warns that the loader is not resumable. (torchdata's
StatefulDataLoader would do this too, but it is another dependency and snapshots worker state we do not
need: the data order and each sample's augmentation depend on (seed, epoch, index) only.)
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from strongpose.config_check import ConfigError
from strongpose.models.losses import COUNT_SCALE

log = logging.getLogger(__name__)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`~strongpose.data.sampling.SeededSampler`, resumable mid-epoch.

    Args:
        *args, **kwargs: DataLoader's.
        position: returns ``(epoch, batches)``: the epoch the next batch belongs to and how many of its
            batches training has done (None: unknown, nothing is saved and a resume restarts the epoch).
            It comes from the trainer's loop progress, not from this loader: Lightning prefetches a batch
            when a loader has no length, and it replays a batch that was fetched but not trained on (a
            checkpoint written from an exception mid-step), so only the loop knows what was consumed.
        accumulate_grad_batches: the trainer's. Above 1, every batch of an accumulation window (the batches
            Lightning sums the gradients of before an optimiser step) gets ``window_counts``: the window's
            ``loss_counts`` (see :class:`~strongpose.data.collate.SkipBadCollate`) summed and divided by this
            number, what each micro-batch's loss terms then divide by (``strongpose_losses``' ``counts``), so that
            the step's gradient is that of one batch of the window's images. The iterator reads a window ahead.
        epoch_length: returns the batches Lightning trains of each epoch (``trainer.num_training_batches``: fewer
            than the loader's with ``limit_train_batches`` or ``overfit_batches``), where the last window ends.
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int] | None] | None = None,
                 accumulate_grad_batches: int = 1, epoch_length: Callable[[], float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.epoch_length = epoch_length
        self._first_batch = 0  # of the epoch the next iteration starts at (a mid-epoch resume)

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        first, self._first_batch = self._first_batch, 0
        if self.accumulate_grad_batches <= 1:
            return batches
        return with_window_counts(batches, self.accumulate_grad_batches, first, self.pin_memory,
                                  self.epoch_length or math.inf)

    def state_dict(self) -> dict[str, int]:
        return position_state(self.position() if self.position is not None else None, self.batch_size,
                              getattr(self.sampler, "num_replicas", 1))

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        check_same_split(state, self.batch_size, getattr(self.sampler, "num_replicas", 1))
        resume = getattr(self.sampler, "resume", None)
        if not callable(resume):  # Lightning replaces the sampler for trainer.overfit_batches
            if state["batches"]:
                log.warning("the training loader's sampler (%s, not a SeededSampler) cannot skip the %d batches "
                            "already trained in epoch %d: that epoch starts over", type(self.sampler).__name__,
                            state["batches"], state["epoch"])
            return
        # every consumed batch was full (only an epoch's last one can be short); under DDP each rank skips
        # as many keys of its own shard, since all ranks step together
        resume(state["epoch"], state["batches"] * self.batch_size)
        self._first_batch = int(state["batches"])


def with_window_counts(batches: Iterator[Any], accumulate: int, first: int = 0, pin_memory: bool = False,
                       length: float | Callable[[], float] = math.inf) -> Iterator[Any]:
    """``batches`` with ``window_counts`` added to each (see :class:`ResumableDataLoader`), read a window ahead.

    Windows are the epoch's batches ``[m * accumulate, (m + 1) * accumulate)``, where Lightning steps the
    optimiser, the last one ending at the epoch's ``length`` (Lightning steps at its last batch too); ``first``:
    the epoch's batch the iteration starts at, so that a resumed epoch's first window ends where the run's did.
    A window of batches without ``loss_counts`` (``data.encode_on=device``: the targets do not exist yet) gets
    nothing: each micro-batch then divides by its own counts. ``window_counts`` are fixed-point integers
    (:data:`~strongpose.models.losses.COUNT_SCALE`): Lightning casts a batch's floats under a ``*-true``
    precision, and float16 ends at 65504. ``length`` may be a callable, called at the first batch: Lightning
    creates the iterator before it knows ``num_training_batches``."""
    length = length() if callable(length) else length
    position, window = first, deque()
    while True:
        end = (position // accumulate + 1) * accumulate
        end = int(min(end, length)) if position < length else end  # (batches past the end are not trained)
        window.extend(itertools.islice(batches, end - position))
        if not window:
            return
        position = end
        if all(isinstance(batch, dict) and "loss_counts" in batch for batch in window):
            names = list(window[0]["loss_counts"])
            # one small tensor for the window, pinned as the loader pins its batches (then copied to the GPU
            # with them, without a wait)
            shares = torch.tensor([round(sum(batch["loss_counts"][name] for batch in window) / accumulate
                                         * COUNT_SCALE) for name in names], dtype=torch.int64)
            shares = shares.pin_memory() if pin_memory and torch.cuda.is_available() else shares
            for batch in window:
                batch["window_counts"] = dict(zip(names, shares.unbind()))
        while window:  # handed on one by one: the window holds none that Lightning is done with
            yield window.popleft()


def position_state(position: tuple[int, int] | None, batch_size: int, world_size: int) -> dict[str, int]:
    """The saved form of an ``(epoch, batches)`` position (what :meth:`ResumableDataLoader.load_state_dict`
    takes), with the per-device batch and the number of ranks it counts in; empty when it is unknown."""
    if position is None:
        return {}
    epoch, batches = position
    return {"epoch": int(epoch), "batches": int(batches), "batch_size": int(batch_size),
            "world_size": int(world_size)}


def epoch_inside(trainer: Any) -> int | None:
    """The epoch training is inside of (some of its batches done, not all), or None: where a checkpoint written
    now goes on (:meth:`StrongPoseModule.on_save_checkpoint` saves its loops so, the data module its position).

    The epoch comes from the module (``epoch_in_progress``, set before each batch), not from Lightning's
    epoch counts, which say "completed" for an epoch that ``max_steps`` / ``max_time`` / an early stop cut short
    (a resumed longer run would start the next epoch one batch in), and, resumed from a checkpoint written after
    an epoch's last batch but before its end, run one short for every later epoch (Lightning 2.6). A module
    without it: the epoch those counts give, ``completed - 1`` for a stopped one."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    if not 0 < done < trainer.num_training_batches:
        return None
    epoch = getattr(trainer.lightning_module, "epoch_in_progress", None)
    if epoch is not None:
        return int(epoch)
    epochs = trainer.fit_loop.epoch_progress.current
    stopping = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
    return epochs.completed - 1 if stopping and epochs.completed >= epochs.started else trainer.current_epoch


def check_same_split(state: dict[str, int], batch_size: int, world_size: int) -> None:
    """Raise :class:`ConfigError` when ``state`` is a position inside an epoch counted with another
    per-device batch or number of ranks: each rank would skip its own shard's first ``batches`` x
    ``batch_size`` keys of another shard (images trained twice or never), and Lightning, which counts the
    epoch's batches done, would end the epoch early or late. At an epoch's end (``batches`` 0) nothing is
    skipped; a position saved before the layout was recorded is taken as it is."""
    saved = (state.get("batch_size"), state.get("world_size"))
    if not state.get("batches") or None in saved or saved == (int(batch_size), int(world_size)):
        return
    raise ConfigError(
        f"the checkpoint stopped inside epoch {state['epoch']}, after {state['batches']} batches of {saved[0]} images "
        f"per device on {saved[1]} devices; going on from there needs the same data.batch_size and devices x "
        f"nodes, this run has {batch_size} on {world_size}. Resume with those, or from a checkpoint written at an "
        f"epoch's end")
