"""Faults during training that must lose nothing and explain themselves: non-finite losses (skipped and
counted, then a stop naming the images), Ctrl-C / SIGTERM (a checkpoint, and where it is) and SLURM's
time-limit warning (a checkpoint, then a requeue)."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from strongpose import slurm
from strongpose.collectives import any_rank, flags_of_any_rank
from strongpose.config_check import ConfigError
from strongpose.tracking import say

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many training steps in a row had a NaN or infinite loss."""


def batch_image_ids(batch: dict) -> list:
    """The ``meta.image_id`` of each image of a collated batch (a tensor after default_collate)."""
    ids = (batch.get("meta") or {}).get("image_id", [])
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


class NonFiniteLossGuard:
    """Decides, per training step, whether a non-finite loss makes the step a no-op, and stops the run
    after ``max_in_a_row`` such steps in a row.

    A skipped step (see ``StrongPoseModule.training_step``) still runs backward, on every rank: under DDP
    a rank that skipped backward would leave the others waiting in the gradient all-reduce, and Lightning
    refuses ``training_step`` returning None there. The gradients are then dropped before the optimiser
    step (no weight or momentum change) and the BatchNorm statistics restored; the step still counts for
    ``global_step`` and the LR schedule, which stay in line with the trainer. Zeroing the loss would not
    do (0 x NaN is NaN). The decision is all-reduced (any rank non-finite: every rank skips): one small
    collective per step (with :class:`InterruptCheckpoint`'s flag), nothing next to the gradients'; every
    rank must call :meth:`skip` at every training step, as ``StrongPoseModule.training_step`` does.
    """

    def __init__(self, max_in_a_row: int = 10) -> None:
        if max_in_a_row < 0:
            raise ConfigError(f"max_nonfinite_steps must be >= 0, got {max_in_a_row}")
        self.max_in_a_row = int(max_in_a_row)
        self.total = 0  # skipped steps over the run (saved in checkpoints)
        self.in_a_row = 0

    def skip(self, loss: torch.Tensor, batch: dict, trainer: L.Trainer | None = None) -> bool:
        """True when this step must be skipped; raises :class:`NonFiniteLossError` past the limit.

        One read of the device per step (on a GPU a wait for the forward pass). Under DDP the flag is
        all-reduced on the device first, together with :class:`InterruptCheckpoint`'s (whose decision then
        costs no collective or wait of its own)."""
        bad_here = ~torch.isfinite(loss.detach()).all()
        interrupt = _interrupt_callback(trainer) if trainer is not None and trainer.world_size > 1 else None
        if interrupt is None:
            bad = any_rank(bad_here, trainer)
        else:
            bad, requested = flags_of_any_rank([bad_here, interrupt.requested], trainer)
            interrupt.requested_on_any_rank(requested)
        if not bad:
            self.in_a_row = 0
            return False
        local = bool(bad_here)
        self.total += 1
        self.in_a_row += 1
        step = trainer.global_step if trainer is not None else None
        where = (f"loss {float(loss.detach())} on images {batch_image_ids(batch)}" if local
                 else "loss finite here, non-finite on another rank")
        if self.in_a_row > self.max_in_a_row:
            last = getattr(getattr(trainer, "checkpoint_callback", None), "last_model_path", "") or ""
            raise NonFiniteLossError(
                f"{self.in_a_row} training steps in a row had a non-finite loss (limit "
                f"model.max_nonfinite_steps={self.max_in_a_row}); step {step}: {where}. Lower model.lr, set "
                f"trainer.gradient_clip_val, or check those images"
                + (f"; the last checkpoint, {last}, holds finite weights" if last else ""))
        log.warning("non-finite loss at step %s (%s): step skipped (%d in a row, %d in all)",
                    step, where, self.in_a_row, self.total)
        return True


class BufferSnapshot:
    """The module's buffers (BatchNorm statistics) as they were before a training step, to put back when the
    step is skipped. The forward pass updates them before the loss exists, and a NaN batch overwrites them
    for good (the running average cannot be undone), so a copy is taken every step: into tensors allocated
    once, with one fused ``torch._foreach_copy_`` rather than a clone of each of ResNet-50's 177 buffers (half
    the CPU time, 0.8 vs 1.6 ms per step on a 2-core VM; on a GPU no allocations and one launch, not 177)."""

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    @torch.no_grad()
    def take(self, module: torch.nn.Module) -> None:
        buffers = list(module.buffers())
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            # first step, or the module's buffers were replaced (moved to another device, SyncBatchNorm)
            self._buffers, self._saved = buffers, [b.clone() for b in buffers]
        else:
            torch._foreach_copy_(self._saved, buffers)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self._buffers, self._saved)


class InterruptCheckpoint(Callback):
    """Ctrl-C (SIGINT) or SIGTERM: save ``<dirpath>/<filename>.ckpt`` and say how to resume from it.

    The first Ctrl-C during training only sets a flag: the step in progress finishes (a KeyboardInterrupt
    in the middle of ``optimizer.step()`` would save half-updated weights; during validation the EMA
    callback has swapped the averaged weights in), the checkpoint is written at the end of that step (with
    ``trainer.accumulate_grad_batches`` > 1, of the batch that completes the optimiser step, unless Lightning
    validates before that one: then of the batch before the validation, which can outlast SLURM's warning),
    after every other callback's end-of-step work (EMA update, ModelCheckpoint), and the run stops
    (Lightning's graceful shutdown, exit status 1). A batch-based validation due right after the saved batch
    is skipped when the run resumes (Lightning restarts past it). A second Ctrl-C stops at once without
    saving, as does a Ctrl-C before training starts (nothing to save then). Under DDP every rank learns of the flag from
    an all-reduce, so that all save and stop at the same step: with a StrongPoseModule the non-finite
    guard's all-reduce of each step carries it (no collective or host wait of its own), so that a signal
    that comes after that point (the forward pass) is acted on at the end of the next step, but for the
    step before a validation or the end, which all-reduces and reads the flag once more (every step with a
    time-based ``val_check_interval``, whose timing only Lightning's clock on each rank knows); with another
    module, one all-reduce and read per step here.

    A SIGTERM (e.g. a cluster's preemption warning) makes Lightning raise ``SIGTERMException`` at the
    end of the step: that state is sound too, and is saved the same way (but at once: with gradient
    accumulation, the micro-batches since the last optimiser step are not trained on in that epoch).

    ``requeue_signal`` (default SIGUSR1, what ``hydra/launcher=slurm`` asks SLURM to send 90 s before the
    time limit): the same save at the end of the step in progress, then rank 0 requeues the SLURM job
    (``scontrol requeue``) and the run stops; the requeued job resumes from that checkpoint (``resume=auto``).
    This is the project's one requeue mechanism. Lightning's own (``SLURMEnvironment(auto_requeue=True)``)
    saves inside the signal handler, i.e. at any point of a step, during validation with the EMA weights
    swapped in, and with a barrier that can pair with another rank's per-step all-reduce; it stands aside
    because a handler is already installed when it would install its own. ``null`` leaves the signal alone.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "interrupted",
                 requeue_signal: str | None = "SIGUSR1") -> None:
        super().__init__()
        self.dirpath = dirpath
        self.filename = filename
        try:
            self.requeue_signal = signal.Signals[requeue_signal] if requeue_signal else None
        except KeyError:
            raise ConfigError(f"requeue_signal: unknown signal {requeue_signal!r} (e.g. SIGUSR1, SIGUSR2)") from None
        self._requested = False  # Ctrl-C or the requeue signal seen: save after this step
        self._requeue = False  # ... and then requeue the SLURM job
        self._previous_requeue_handler: Any = None
        self._saved = False
        self._step_before_batch = -1
        self._requested_on_any_rank: bool | None = None  # this step's all-reduced flag, from the guard
        self._training = False  # between on_train_start and on_train_end: a Ctrl-C can wait for the step
        self._global_zero = True
        self._previous_handler: Any = None

    def ckpt_path(self, trainer: L.Trainer) -> Path:
        folder = self.dirpath
        if folder is None:
            callback = trainer.checkpoint_callback
            folder = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / f"{self.filename}.ckpt"

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if not self._training or self._requested:
            raise KeyboardInterrupt
        self._requested = True
        if self._global_zero:
            print("\nCtrl-C: saving a checkpoint after this training step (Ctrl-C again to stop without saving)",
                  flush=True)

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        self._requested = self._requeue = True
        if self._global_zero:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this training step, then requeueing",
                  flush=True)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._global_zero = trainer.is_global_zero
        # signal handlers can only be set from the main thread (not, e.g., in a notebook's worker thread);
        # setup runs before Lightning installs its handlers, which then leave SIGUSR1 to this one
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            if self.requeue_signal is not None:
                self._previous_requeue_handler = signal.signal(self.requeue_signal, self._on_requeue_signal)
        # callbacks run in list order, Lightning's Checkpoint subclasses last: run after all of them, so that
        # the step's EMA update and ModelCheckpoint are done when this saves. (Subclassing Checkpoint would
        # make this the trainer's checkpoint_callback and clash with trainer.enable_checkpointing=false.)
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        if self._previous_requeue_handler is not None:
            signal.signal(self.requeue_signal, self._previous_requeue_handler)
            self._previous_requeue_handler = None

    @property
    def requested(self) -> bool:
        """A save was asked for on this rank (Ctrl-C, the requeue signal)."""
        return self._requested

    def requested_on_any_rank(self, requested: bool) -> None:
        """The all-reduced flag of this step (from :class:`NonFiniteLossGuard`, under DDP)."""
        self._requested_on_any_rank = bool(requested)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False
        if self._requested:
            _say(trainer, "Ctrl-C came after the last training step: the run finished normally")
        self._remove_resumed_checkpoint(trainer)

    def _remove_resumed_checkpoint(self, trainer: L.Trainer) -> None:
        """A run resumed from this callback's checkpoint has finished: a newer last checkpoint holds all that it
        held, so the file (a whole checkpoint in size) goes. Kept when the run did not start from it, or when no
        last checkpoint newer than it was written (``save_last`` off)."""
        path = self.ckpt_path(trainer)
        resumed = trainer.ckpt_path
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        if not (trainer.is_global_zero and resumed and last and path.is_file() and Path(last).is_file()):
            return
        if Path(resumed).resolve() != path.resolve() or Path(last).stat().st_mtime < path.stat().st_mtime:
            return
        path.unlink()
        _say(trainer, f"The run resumed from {path} has finished: removed it ({last} holds the end)")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step_before_batch = trainer.global_step
        self._requested_on_any_rank = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # with gradient accumulation, only after an optimiser step: a checkpoint between two would lose the
        # gradients accumulated so far while the resumed loader skips their images (the same batch_idx on
        # every rank: all ranks decide alike, and the collective below runs on all or none)
        if trainer.global_step == self._step_before_batch:
            # between two optimiser steps, wait for the one that completes the window, unless a validation
            # comes first (it can outlast SLURM's 90 s warning): then save now, and the micro-batches since the
            # last optimiser step are not trained on in this epoch (Lightning validates mid-window when
            # val_check_interval is not a multiple of accumulate_grad_batches, or is time-based)
            if _validation_next(trainer, batch_idx):  # the same on every rank: all or none run the collective
                requested, due = flags_of_any_rank([self._requested, _time_based_validation_due(trainer)], trainer)
                if requested and due:
                    self._stop(trainer, mid_window=True)
            return
        if trainer.world_size <= 1:
            stop = self._requested
        elif self._requested_on_any_rank is not None and not validation_or_end_next(trainer, batch_idx):
            stop = self._requested_on_any_rank  # every rank ran the guard's all-reduce this step
        else:  # a module without StrongPose's guard, or the last step before validation: a signal since the
            # guard's all-reduce would otherwise wait for the validation to end (longer than SLURM's warning)
            stop = any_rank(self._requested, trainer)
        if stop:
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer, mid_window: bool = False) -> None:
        requeue = any_rank(self._requeue, trainer)  # only on the step that stops: no extra collective per step
        why = f"{self.requeue_signal.name} (time limit)" if requeue else "Interrupted"
        if mid_window:
            why += (" before a validation, between two optimiser steps (the micro-batches since the last one are "
                    "not trained on in this epoch)")
        self._save(trainer, why)
        if requeue and trainer.is_global_zero:
            requeue_slurm_job()
        raise KeyboardInterrupt  # Lightning's graceful shutdown: on_exception hooks, teardown, exit 1

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):  # then Lightning ignores Ctrl-C until it has shut down
            self._restore_handler()
        sigterm = isinstance(exception, SIGTERMException)
        if self._saved or not (sigterm or isinstance(exception, KeyboardInterrupt)):
            return
        # Lightning raises SIGTERMException after a step (sound state) or between validation batches (the
        # EMA weights swapped in: not saved)
        if sigterm and self._training and not trainer.validating:
            self._save(trainer, "Stopped by SIGTERM")
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        _say(trainer, f"Stopped{' by SIGTERM' if sigterm else ''} without saving"
                      + (f"; the last checkpoint is {last}" if last else ""))

    def _save(self, trainer: L.Trainer, why: str) -> None:
        path = self.ckpt_path(trainer)
        trainer.save_checkpoint(path)  # every rank takes part (barrier); rank 0 writes
        self._saved, self._training = True, False
        _say(trainer, f"{why}: checkpoint saved to {path} (step {trainer.global_step}); "
                      f"resume with ckpt_path={path}")


def validation_or_end_next(trainer: L.Trainer, batch_idx: int) -> bool:
    """Validation may run, or training end, after this batch: :func:`_validation_next`, the epoch's last batch
    (a loader without a length: Lightning's own last-batch mark), ``max_steps`` reached, or a stop requested
    (``max_time``, early stopping). The same answer on every rank (with a time-based ``val_check_interval``,
    True every batch); True at times when neither follows (one read more)."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    last = epoch_loop is not None and epoch_loop.batch_progress.is_last_batch
    return (last or batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop
            or 0 < trainer.max_steps <= trainer.global_step or _validation_next(trainer, batch_idx))


def _validation_next(trainer: L.Trainer, batch_idx: int) -> bool:
    """Lightning may run a validation after this batch, judged as its training loop does
    (``_should_check_val_fx``): validation enabled, an epoch that validates (``check_val_every_n_epoch``), and
    every ``val_check_batch`` batches (counted over the run with ``check_val_every_n_epoch=None``), at a
    requested stop, or at any batch with a time-based ``val_check_interval`` (each rank's own clock)."""
    if not getattr(trainer, "enable_validation", True):
        return False
    per_epoch = trainer.check_val_every_n_epoch
    if per_epoch is not None and (trainer.current_epoch + 1) % per_epoch != 0:
        return False
    if trainer.should_stop and getattr(trainer.fit_loop, "_can_stop_early", True):
        return True  # Lightning validates before it stops (max_time, early stopping) once min_epochs/steps are met
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return True  # decided by each rank's clock: see _time_based_validation_due
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    counted = epoch_loop.total_batch_idx if epoch_loop is not None and per_epoch is None else batch_idx
    every = trainer.val_check_batch
    if isinstance(every, int) and every > 0:
        return (counted + 1) % every == 0
    return batch_idx + 1 >= trainer.num_training_batches or (epoch_loop is not None
                                                            and epoch_loop.batch_progress.is_last_batch)


def _time_based_validation_due(trainer: L.Trainer, margin_s: float = 1.0) -> bool:
    """With a time-based ``val_check_interval``: Lightning will validate after this batch by this rank's clock
    (it checks a moment after the batch's hooks: ``margin_s`` early, so as not to miss it; with an interval of
    at most ``margin_s``, every batch); True otherwise."""
    interval = getattr(trainer, "_val_check_time_interval", None)
    if interval is None:
        return True
    return time.monotonic() - trainer._last_val_time >= interval - margin_s


def _interrupt_callback(trainer: L.Trainer) -> InterruptCheckpoint | None:
    return next((c for c in getattr(trainer, "callbacks", ()) if isinstance(c, InterruptCheckpoint)), None)


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job (array tasks included); False, with a message, when not under SLURM
    or when scontrol fails."""
    job = slurm.job_id()
    if not job:
        print("not a SLURM job (no SLURM_JOB_ID): not requeued", flush=True)
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        print(f"requeueing SLURM job {job} failed: {err}", flush=True)
        return False
    if done.returncode != 0:
        print(f"requeueing SLURM job {job} failed (scontrol exit {done.returncode}): {done.stderr.strip()}", flush=True)
        return False
    print(f"requeued SLURM job {job}: it resumes from this checkpoint (resume=auto)", flush=True)
    return True


def _say(trainer: L.Trainer, message: str) -> None:
    if trainer.is_global_zero:
        say(message)
