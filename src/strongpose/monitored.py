"""The metric a run optimises, checked before training: a name nothing logs (a typo, ``val/AP`` without the COCO
callback) failed in Lightning's checkpoint callback after the first validation epoch, and a run too short to
validate ended without its ``val/*`` metrics, its best checkpoint or a value for a sweeper, saying nothing."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor

from strongpose.config_check import ConfigError
from strongpose.evaluation.callback import COCOEvalCallback
from strongpose.data.annotations import read_coco_json
from strongpose.evaluation.coco_eval import CROWD_STAT_NAMES, STAT_NAMES, has_crowd_index

log = logging.getLogger(__name__)


def logged_metric_names(model: L.LightningModule, callbacks: list[Callback]) -> set[str] | None:
    """The names a :class:`~strongpose.lit_module.StrongPoseModule` and StrongPose's callbacks log (the loss and
    its terms, train and val; the COCO statistics with the COCO callback; images/s), or None when a subclass or a
    callback from elsewhere may log others."""
    from strongpose.lit_module import LOSS, NONFINITE, StrongPoseModule

    if type(model) is not StrongPoseModule or not all(_ours(c) for c in callbacks):
        return None
    terms = list(model.codec.channels)
    names = {f"{split}/{LOSS}" for split in ("train", "val")}
    names |= {f"{split}/{LOSS}_{term}" for split in ("train", "val") for term in terms}
    names |= {NONFINITE, "train/images_per_sec"}
    for callback in callbacks:
        if isinstance(callback, COCOEvalCallback):
            names |= {f"{callback.prefix}{name}" for name in STAT_NAMES + CROWD_STAT_NAMES}
    return names


def _ours(callback: Callback) -> bool:
    module = type(callback).__module__
    return module.startswith(("strongpose.", "lightning.", "pytorch_lightning."))


def check_monitored_metric(name: str | None, model: L.LightningModule, callbacks: list[Callback],
                           val_annotations: str | Path | None = None) -> None:
    """Refuse an ``optimized_metric`` that nothing in this run logs, naming the closest that is; a metric of one's
    own module or callbacks is left to them. CrowdPose's crowd-index APs need ``val_annotations`` whose images
    all have a ``crowdIndex`` (read only for them)."""
    if not name or name in ("step", "epoch") or (  # Lightning's own: keep the newest checkpoints
            name.startswith("lr-") and any(isinstance(c, LearningRateMonitor) for c in callbacks)):
        return
    known = logged_metric_names(model, callbacks)
    if known is not None and val_annotations is not None and name.rsplit("/", 1)[-1] in CROWD_STAT_NAMES \
            and not has_crowd_index(read_coco_json(Path(val_annotations))):
        raise ConfigError(f"optimized_metric={name!r} is CrowdPose's AP by crowd index, logged only when every "
                          f"validation image has a crowdIndex; {val_annotations} has none (COCO's AP: val/AP)")
    if known is None or name in known:
        return
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    statistic = name.rsplit("/", 1)[-1] in STAT_NAMES + CROWD_STAT_NAMES
    coco = "" if not statistic or any(isinstance(c, COCOEvalCallback) for c in callbacks) else (
        "; the COCO statistics (val/AP, ...) need callbacks.coco_eval, which is off")
    raise ConfigError(f"optimized_metric={name!r} is not logged by this run{hint}{coco}; it logs: "
                      f"{', '.join(sorted(known))}")


def warn_if_no_validation(trainer: L.Trainer, optimized_metric: str | None, needed: bool = False) -> None:
    """Warn when ``max_epochs`` ends the run before the first epoch that validates (``check_val_every_n_epoch``),
    or when ``trainer.limit_val_batches=0`` leaves a ``val/*`` optimized_metric or checkpoint monitor without a
    value. ``needed``: an optimising sweeper waits for optimized_metric's value (a trial without one is refused
    before it trains: the sweeper would count it failed only after every trial had trained, then stop)."""
    if trainer.fast_dev_run:
        return
    unvalued = bool(optimized_metric) and str(optimized_metric).startswith("val/")
    if needed and unvalued and (trainer.limit_val_batches == 0 or _validates_never(trainer)):
        raise ConfigError(f"optimized_metric={optimized_metric} gets no value in this trial, and the sweeper needs "
                          f"it: " + ("trainer.limit_val_batches=0" if trainer.limit_val_batches == 0 else
                                     f"trainer.max_epochs={trainer.max_epochs} is below "
                                     f"trainer.check_val_every_n_epoch={trainer.check_val_every_n_epoch}")
                          + "; let each trial validate, or optimise a train/* metric")
    if trainer.limit_val_batches == 0:
        stopping = sorted({str(c.monitor) for c in trainer.early_stopping_callbacks
                           if str(c.monitor).startswith("val/")})
        if stopping:  # Lightning would fail at the first epoch's end: the metric it waits for never comes
            raise ConfigError(f"trainer.limit_val_batches=0: no validation will run, but early stopping watches "
                              f"{', '.join(stopping)}; drop callbacks.early_stopping or let the run validate")
        _warn_if_unvalued(trainer, optimized_metric)
        return
    if not _validates_never(trainer):
        return
    epochs, every = trainer.max_epochs, trainer.check_val_every_n_epoch
    log.warning("trainer.max_epochs=%d is below trainer.check_val_every_n_epoch=%d: no validation will run, so the "
                "run ends without val/* metrics or a best checkpoint%s; lower check_val_every_n_epoch to validate",
                epochs, every, f", and optimized_metric {optimized_metric} has no value for a sweeper"
                if optimized_metric and str(optimized_metric).startswith("val/") else "")


def _validates_never(trainer: L.Trainer) -> bool:
    """``max_epochs`` ends the run before the first epoch that validates (no ``max_steps`` that could say more)."""
    every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
    return bool(every) and epochs is not None and 0 <= epochs < every and trainer.max_steps in (-1, None)


def _warn_if_unvalued(trainer: L.Trainer, optimized_metric: str | None) -> None:
    """Training without validation is asked for, but a ``val/*`` metric is optimised or monitored: it is never
    logged, so train's metrics lack it (``main`` returns None to a sweeper) and no best checkpoint is kept."""
    def unvalued(name: str | None) -> bool:
        return bool(name) and str(name).startswith("val/")  # (train/*, step, epoch have their values)

    monitors = sorted({str(c.monitor) for c in trainer.checkpoint_callbacks
                       if unvalued(getattr(c, "monitor", None))})
    what = [f"optimized_metric {optimized_metric} has no value for a sweeper"] if unvalued(optimized_metric) else []
    what += [f"the checkpoint callback monitoring {name} keeps no best checkpoint" for name in monitors]
    if what:
        log.warning("trainer.limit_val_batches=0: no validation will run, so %s; set optimized_metric=null (or "
                    "train/loss) to train without validating", " and ".join(what))
