"""Which training steps' logged values are read: each ``LightningModule.log`` call costs ~0.4 ms of host time
(Lightning's result collection; experiments/loop_overhead.py), which a host-bound GPU step pays in full, so
values that only the loggers and the callbacks read are logged at the steps they are read after only."""

from __future__ import annotations

import lightning as L

from strongpose.faults import validation_or_end_next


def logs_read(trainer: L.Trainer | None, batch_idx: int) -> bool:
    """Asked after a training step's optimiser step (in ``on_train_batch_end``, after the callbacks that may stop
    the run): whether this step's logged values are read before the next step's. Lightning hands them to the
    loggers every ``trainer.log_every_n_steps`` steps, at a stopping run's step and every step of fast_dev_run;
    callbacks read ``trainer.callback_metrics`` when a validation or the end of training may follow (early
    stopping, checkpoints; ``metrics.json`` is the end's): :func:`strongpose.faults.validation_or_end_next`, true at
    every epoch's last batch. Lightning writes every value logged so far at a logging step, so a value not logged
    at such a step would be written as it was at the last one."""
    if trainer is None or trainer.fast_dev_run:
        return True
    # Lightning's own test (private; its LearningRateMonitor asks it too); without it, every step logs
    due = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    return due is None or bool(due) or validation_or_end_next(trainer, batch_idx)
