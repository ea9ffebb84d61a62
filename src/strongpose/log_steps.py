"""Which training steps' logged values reach the loggers: each ``LightningModule.log`` call costs ~0.4 ms of
host time (Lightning's result collection; experiments/loop_overhead.py), which a host-bound GPU step pays in
full, so values that only the loggers need are logged at those steps only."""

from __future__ import annotations

import math

import lightning as L


def logs_written(trainer: L.Trainer | None, last_step: float = math.inf) -> bool:
    """Asked after a training step's optimiser step (in ``on_train_batch_end``): whether Lightning hands the
    step's logged values to the loggers (every ``trainer.log_every_n_steps`` steps, the step of a run told to
    stop, every step of fast_dev_run), or the step was the run's last of ``last_step`` (its values are the final
    metrics, ``metrics.json``). A value not logged at such a step would be written as it was at the last one."""
    if trainer is None or trainer.fast_dev_run:
        return True
    # Lightning's own test (private; its LearningRateMonitor asks it too); without it, every step logs
    due = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    return due is None or bool(due) or trainer.global_step >= last_step
