"""Lightning callback: COCO keypoint AP of every validation epoch, logged as val/AP, val/AP50, ..."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from strongpose.evaluation.coco_eval import CROWD_STAT_NAMES, STAT_NAMES, check_backend
from strongpose.evaluation.metric import COCOKeypointAP
from strongpose.viz import draw_batch

log = logging.getLogger(__name__)


def send_images(logger: Any, key: str, images: list[np.ndarray], step: int) -> bool:
    """(H, W, 3) uint8 images to a logger that takes them: W&B's ``log_image``, TensorBoard's ``add_image`` (one
    tag per image: sizes may differ); CSV and others take none (False)."""
    if hasattr(logger, "log_image"):
        logger.log_image(key=key, images=images, step=step)
        return True
    writer = getattr(logger, "experiment", None) if isinstance(logger, TensorBoardLogger) else None
    if writer is None or not hasattr(writer, "add_image"):
        return False
    for i, image in enumerate(images):
        writer.add_image(f"{key}/{i}", image, global_step=step, dataformats="HWC")
    return True


class COCOEvalCallback(Callback):
    """Decodes each validation batch's outputs, and at the end of the epoch logs COCOeval's keypoint statistics.

    Needs a module whose ``validation_step`` returns ``{"loss": ..., "outputs": raw outputs}`` and that has
    ``decode(outputs) -> list[Poses]`` and ``codec.skeleton.sigmas`` (:class:`strongpose.lit_module.StrongPoseModule`),
    and batches with ``meta["image_id"]`` and ``meta["affine"]`` (the data module's). The statistics
    (``{prefix}AP``, ``AP50``, ``AP75``, ``APM``, ``APL``, ``AR``; with CrowdPose's ground truth also ``AP_easy``,
    ``AP_medium``, ``AP_hard``) cover all ranks' images, each once, and are
    logged as they are (no further averaging), so ``ModelCheckpoint(monitor="val/AP", mode="max")`` works.
    Images dropped as bad samples are not evaluated. Nothing is logged during the sanity check.

    Args:
        annotations: COCO JSON of the validation set (default: the data module's ``val_dataset.coco``).
        sigmas: OKS sigmas (default: the module's ``codec.skeleton.sigmas``).
        backend: ``"pycocotools"`` or ``"faster_coco_eval"`` (see :class:`COCOKeypointAP`).
        prefix: of the logged names.
        verbose: also log COCOeval's summary table of each epoch.
        log_images: draw the predicted skeletons on this many images of the first validation batch and
            send them to every logger that takes images (W&B, TensorBoard; :func:`send_images`); 0 turns it off.
    """

    def __init__(self, annotations: str | Path | None = None, sigmas: Sequence[float] | None = None,
                 backend: str = "pycocotools", prefix: str = "val/", verbose: bool = False,
                 log_images: int = 4) -> None:
        self.annotations = annotations
        self.sigmas = sigmas
        self.backend = check_backend(backend)  # a typo fails at start-up, not at the first validation epoch
        self.prefix = prefix
        # the statistics are the whole validation set's on every rank already (COCOKeypointAP gathers the
        # predictions): Lightning's advice to log them with sync_dist under DDP does not apply, silence it
        names = "|".join(re.escape(f"{prefix}{name}") for name in STAT_NAMES + CROWD_STAT_NAMES)
        warnings.filterwarnings("ignore", message=rf"It is recommended to use `self\.log\('({names})'",
                                category=PossibleUserWarning)
        self.verbose = verbose
        self.log_images = int(log_images)
        self.metric: COCOKeypointAP | None = None
        self._drawn: list = []

    def _make_metric(self, trainer: L.Trainer, pl_module: L.LightningModule) -> COCOKeypointAP:
        annotations, category_id = self.annotations, None
        if annotations is None:
            dataset = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
            annotations = getattr(dataset, "coco", None)
            if annotations is None:
                raise RuntimeError("COCOEvalCallback needs `annotations`, or a data module with `val_dataset.coco`")
            category_id = getattr(dataset, "category_id", None)  # the people it validates on
        sigmas = self.sigmas
        if sigmas is None:
            sigmas = pl_module.codec.skeleton.sigmas
        return COCOKeypointAP(annotations, sigmas=sigmas, backend=self.backend, category_id=category_id,
                              keypoints=pl_module.codec.skeleton.keypoints)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metric is None:
            self.metric = self._make_metric(trainer, pl_module)
        self.metric = self.metric.to(pl_module.device)
        self.metric.reset()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or len(batch["image"]) == 0:
            return
        if not isinstance(outputs, Mapping) or "outputs" not in outputs:
            raise TypeError("COCOEvalCallback needs validation_step to return {'loss': ..., 'outputs': raw outputs}")
        poses = pl_module.decode(outputs["outputs"])
        self.metric.update(poses, batch["meta"])
        if batch_idx == 0 and self.log_images > 0 and trainer.is_global_zero:
            n = self.log_images
            self._drawn = draw_batch(batch["image"][:n], poses[:n], pl_module.codec.skeleton)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stats = self.metric.compute()  # gathers all ranks' predictions; the same numbers on every rank
        self.metric.reset()
        if self.verbose and trainer.is_global_zero:
            log.info("COCO keypoints: %s", ", ".join(f"{name} {float(value):.4f}" for name, value in stats.items()))
        if self._drawn:
            # at the step Lightning logs this validation's metrics at (the optimiser steps before it, counted by
            # the epoch loop; global_step is one more after an epoch-end validation), so they line up in W&B
            step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
            for logger in trainer.loggers:
                send_images(logger, f"{self.prefix}predictions", self._drawn, step)
            self._drawn = []
        for name, value in stats.items():
            # already global: no sync_dist (which would average identical values over the ranks anyway)
            pl_module.log(f"{self.prefix}{name}", float(value), prog_bar=name == "AP", sync_dist=False)
