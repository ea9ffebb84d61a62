"""Test-only callbacks, importable by training subprocesses (PYTHONPATH=tests/test_faults): one poisons the
batch of chosen steps on one DDP rank with NaN, so that only that rank's loss is non-finite; one signals
one rank."""

import os
import signal

import lightning as L
import torch


class NaNBatchOnRank(L.Callback):
    def __init__(self, rank: int = 1, steps: tuple[int, ...] = (1,)) -> None:
        self.rank, self.steps = int(rank), {int(s) for s in steps}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step in self.steps:
            # the same dict training_step gets next; float pixels (the network takes them) that are NaN
            batch["image"] = torch.full(batch["image"].shape, float("nan"), device=batch["image"].device)


class SignalOnRank(L.Callback):
    """Sends ``signum`` to this process on one rank at the start of training step ``step`` (the signal a
    scheduler would send; the other ranks never see it)."""

    def __init__(self, rank: int = 1, step: int = 1, signum: str = "SIGUSR1") -> None:
        self.rank, self.step, self.signum = int(rank), int(step), signal.Signals[signum]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class FailAfterStep(L.Callback):
    """Raises (a process that dies: nothing more is saved) after optimiser step ``step``: at the start of the next
    batch, or with ``at_epoch_end`` in the epoch's end, after the batch's checkpoints and before the epoch's
    (Lightning runs checkpoint callbacks last)."""

    def __init__(self, step: int, at_epoch_end: bool = False) -> None:
        self.step, self.at_epoch_end = int(step), bool(at_epoch_end)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.at_epoch_end and trainer.global_step == self.step:
            raise RuntimeError(f"died after step {self.step}")

    def on_train_epoch_end(self, trainer, pl_module):
        if self.at_epoch_end and trainer.global_step == self.step:
            raise RuntimeError(f"died after step {self.step}")


class StopAfterStep(L.Callback):
    """Sets ``trainer.should_stop`` after optimiser step ``step``, as ``max_time``'s Timer does."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True
