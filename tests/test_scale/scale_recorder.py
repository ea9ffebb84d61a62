"""Callbacks that write down what each rank of a training run saw, for the DDP tests of this folder.

Added to a run from the command line (the folder must be on PYTHONPATH for Lightning's DDP children):
``+callbacks.record._target_=scale_recorder.Recorder +callbacks.record.out=DIR``
``callbacks.coco_eval._target_=scale_recorder.RecordingCOCOEval +callbacks.coco_eval.record_to=DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from strongpose.evaluation import COCOEvalCallback


def _ids(batch: dict) -> list[int]:
    return [int(i) for i in batch["meta"]["image_id"]]


class Recorder(Callback):
    """Writes ``rank<R>.json``: per training step the image ids and the loss, per validation batch the
    image ids and the loss, the LR the optimiser started with, the world size and the final metrics; and
    on rank 0 ``initial.pt``, the weights training started from.

    ``eval_batchnorm``: keep every BatchNorm in eval mode (statistics fixed at their initial values), so
    that an image's output does not depend on which other images share its batch (test_ddp_cpu.py).
    """

    def __init__(self, out: str, eval_batchnorm: bool = False) -> None:
        self.out = Path(out)
        self.eval_batchnorm = bool(eval_batchnorm)
        self.record: dict = {"train": [], "val": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        group = trainer.optimizers[0].param_groups[0]
        self.record.update(lr=group.get("initial_lr", group["lr"]), world_size=trainer.world_size)
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}, self.out / "initial.pt")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.eval_batchnorm:  # Lightning puts the module in train mode before each epoch and after validation
            for module in pl_module.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self.record["train"].append({"step": trainer.global_step, "ids": _ids(batch), "loss": float(outputs["loss"])})

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.record["val"].append({"ids": _ids(batch), "loss": float(outputs["loss"])})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


class BatchNormAtValidation(Callback):
    """Writes ``bn_rank<R>.pt``: the model's floating-point buffers (BatchNorm statistics) as validation starts,
    after the EMA callback (listed before this one) swapped its averaged weights in."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        buffers = {k: v.detach().cpu().clone() for k, v in pl_module.named_buffers() if v.is_floating_point()}
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(buffers, self.out / f"bn_rank{trainer.global_rank}.pt")


class RecordingCOCOEval(COCOEvalCallback):
    """COCOEvalCallback that also writes ``evaluated_rank<R>.json``: for each validation epoch, the ids of
    the images that went to COCOeval (after the metric gathered all ranks and dropped the sampler's repeats)."""

    def __init__(self, record_to: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_to = Path(record_to)
        self.evaluated: list[list[int]] = []

    def _make_metric(self, trainer: L.Trainer, pl_module: L.LightningModule):
        metric = super()._make_metric(trainer, pl_module)
        results = metric.results

        def recording_results():  # compute() calls it on the synced (all-rank) states
            coco_results, image_ids = results()
            self.evaluated.append([int(i) for i in image_ids])
            return coco_results, image_ids

        metric.results = recording_results
        return metric

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self.record_to.mkdir(parents=True, exist_ok=True)
        (self.record_to / f"evaluated_rank{trainer.global_rank}.json").write_text(json.dumps(self.evaluated))
