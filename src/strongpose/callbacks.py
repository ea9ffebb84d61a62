"""Training callbacks: Polyak (EMA) weight averaging, checkpoints and early stopping that know which way a metric
is better, a throughput meter, a progress bar with the run's ETA."""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Sequence

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, TQDMProgressBar, WeightAveraging
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from strongpose.config_check import ConfigError
from strongpose.evaluation.coco_eval import CROWD_STAT_NAMES, STAT_NAMES
from strongpose.log_steps import logs_read

log = logging.getLogger(__name__)


class EMA(WeightAveraging):
    """Polyak averaging of weights and BatchNorm statistics, built on Lightning's ``WeightAveraging``.

    Validation runs on the averaged weights, checkpoints' ``state_dict`` holds them (the raw weights go
    to ``current_model_state`` so that resuming continues both), and the model ends training with them:
    they are copied into it when ``fit`` ends (Lightning's ``WeightAveraging`` does it at ``on_train_end``,
    before the checkpoint written then, whose ``current_model_state`` would hold the averaged weights too).

    Under DDP each rank averages its own BatchNorm statistics (its batches' running stats; the weights are
    the same on every rank): they are averaged over the ranks before every validation and checkpoint, so
    that all ranks validate the one model that is saved (one all-reduce of the float buffers, then).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates (TensorFlow's
    ExponentialMovingAverage): a plain 0.999 would keep ~90 % of the random initial weights after a
    100-step run such as the sample training.

    Args:
        decay: final EMA decay per update.
        warmup: use the warm-up above.
        update_every_n_steps: update after every n-th optimiser step.
        start_step: first optimiser step (0-based) that updates the average; until then the "average" is
            a copy of the weights trained so far (so that validation, checkpoints and a run that ends earlier
            use those, not the initial weights).
        device: where the averaged copy lives (default: the model's device; "cpu" saves GPU memory, but
            copies every weight to the host after every step, and the host waits for those copies).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_every_n_steps: int = 1,
                 start_step: int = 0, device: str | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._update)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every_n_steps = int(update_every_n_steps)
        self.start_step = int(start_step)
        self._updates = 0  # the averaged model's n_averaged, kept on the host
        self._groups: tuple | None = None  # (averaged model, its tensors, float indices, other indices)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step and step_idx % self.update_every_n_steps == 0

    def current_decay(self, num_updates: int) -> float:
        return min(self.decay, (1 + num_updates) / (10 + num_updates)) if self.warmup else self.decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":  # WeightAveraging made a new averaged model
            self._updates = 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sync_buffers()
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.sync_buffers()  # every rank writes the dict (rank 0 saves it): one collective for all
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not WeightAveraging's copy into the model yet: a checkpoint written now (ModelCheckpoint's final
        # last.ckpt, the callbacks Lightning calls last) keeps the raw weights beside the averaged ones
        self.sync_buffers()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._copy_average_to_current(pl_module)

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Average the averaged model's floating-point buffers (BatchNorm statistics) over the DDP ranks."""
        if self._average_model is None or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_world_size() == 1:
            return
        buffers = [b for b in self._average_model.module.buffers() if torch.is_floating_point(b)]
        if buffers:
            flat = torch.cat([b.reshape(-1).float() for b in buffers])
            if dist.get_backend() == "nccl" and flat.device.type != "cuda":  # the average kept on the host
                flat = flat.to(torch.device("cuda", torch.cuda.current_device()))  # NCCL reduces CUDA tensors
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            parts = flat.split([b.numel() for b in buffers])
            torch._foreach_copy_(buffers, [part.view_as(b) for part, b in zip(parts, buffers)])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None:  # a resumed run continues the checkpoint's count (read before training)
            self._updates = int(self._average_model.n_averaged)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # WeightAveraging's own update (AveragedModel.update_parameters) reads the update count from the device
        # twice, and the decay's warm-up needs it once more: on a GPU three waits for the whole step, every
        # step (strongpose.host_syncs). The same update, with the count kept on the host.
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self.update_average(pl_module)
            self._latest_update_step = trainer.global_step
        elif self._updates == 0 and trainer.global_step > 0:  # before start_step: follow the trained weights
            _, averaged, _, _ = self._averaged_tensors()
            with torch.no_grad():
                torch._foreach_copy_(averaged, self._current_tensors(pl_module, averaged))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # WeightAveraging's per-epoch update, through the same update (never with this callback's should_update)
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self.update_average(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    @torch.no_grad()
    def update_average(self, pl_module: torch.nn.Module) -> None:
        """One update of the averaged copy from ``pl_module``: ``AveragedModel.update_parameters`` with
        this callback's averaging, without reading the device."""
        model, averaged, floats, others = self._averaged_tensors()
        current = self._current_tensors(pl_module, averaged)
        if self._updates == 0:
            torch._foreach_copy_(averaged, current)  # the first update copies
        else:
            for group in (floats, others):
                if group:
                    self._average([averaged[i] for i in group], [current[i] for i in group], self._updates)
        model.n_averaged += 1  # on the device, no wait
        self._updates += 1

    @staticmethod
    def _current_tensors(pl_module: torch.nn.Module, averaged: list[torch.Tensor]) -> list[torch.Tensor]:
        """The module's parameters and buffers, in the order of ``averaged`` and on its device."""
        current = [*pl_module.parameters(), *pl_module.buffers()]
        if len(current) != len(averaged):
            raise ValueError(f"the module has {len(current)} parameters and buffers, its average {len(averaged)}")
        if current and current[0].device != averaged[0].device:  # the average kept elsewhere (device="cpu")
            current = [t.to(a.device) for a, t in zip(averaged, current)]
        return current

    def _averaged_tensors(self) -> tuple:
        """The averaged model, its parameters and buffers, and which of them are floating point: the same
        tensors for the whole run (updated in place), listed once rather than every step."""
        model = self._average_model
        if self._groups is None or self._groups[0] is not model:
            tensors = [*model.module.parameters(), *model.module.buffers()]
            floats = [i for i, t in enumerate(tensors) if torch.is_floating_point(t)]
            others = [i for i, t in enumerate(tensors) if not torch.is_floating_point(t)]
            self._groups = (model, tensors, floats, others)
        return self._groups

    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        """``multi_avg_fn`` of the AveragedModel, for its own ``update_parameters`` (which reads the device);
        this callback updates through :meth:`update_average` only, which keeps the count it uses."""
        self._average(averaged, current, int(num_averaged))

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], updates: int) -> None:
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - self.current_decay(updates))
        else:  # integer buffers (BatchNorm's num_batches_tracked) just follow the model
            torch._foreach_copy_(averaged, current)


def monitor_mode(name: str | None) -> str:
    """"max" for a monitored COCO statistic (higher is better), "min" for anything else (losses)."""
    return "max" if name and name.rsplit("/", 1)[-1] in STAT_NAMES + CROWD_STAT_NAMES else "min"


class EarlyStopping(LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` with ``mode="auto"`` (as :class:`ModelCheckpoint`: "max" for a COCO statistic,
    "min" for a loss). ``patience`` counts validations (every ``trainer.check_val_every_n_epoch`` epochs).

    A run that stopped early and is started again in its folder (``resume=auto``, a requeued job) stays stopped:
    Lightning restores the patience used up but would train until the next validation before looking at it. The
    configured ``patience`` holds on a resume (Lightning would restore the checkpoint's): a larger one lets a stopped
    run go on."""

    def __init__(self, *args, mode: str = "min", **kwargs) -> None:
        if mode == "auto":
            mode = monitor_mode(kwargs.get("monitor"))
        super().__init__(*args, mode=mode, **kwargs)
        self._restored = False

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience, self._restored = patience, True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (a run that stopped in its first epoch has stopped_epoch 0: the used-up patience says it)
        if self._restored and self.wait_count > 0 and self.wait_count >= self.patience:
            log.warning("%s had not improved for %s validations when this run stopped early: nothing more to train "
                        "(callbacks.early_stopping.patience above %s lets it go on)", self.monitor, self.wait_count,
                        self.wait_count)
            trainer.should_stop = True


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that also writes ``last.ckpt``

    - when training ends after steps no checkpoint holds: Lightning's own writes it then only when no last
      checkpoint was written during the run, so the epochs after the last validation (``max_epochs`` not a
      multiple of ``check_val_every_n_epoch``, ``max_steps``, an early stop) would be lost, and a resume
      would train them again;
    - with ``save_last``, every ``last_every_n_train_steps`` optimiser steps (None: only at validations
      and the end), so that a job that dies without warning (a node failure; SLURM requeues it and
      ``resume=auto`` finds ``last.ckpt``) loses at most that many steps, not the epochs since the last
      validation. Lightning's ``every_n_train_steps`` would do it too, but it also moves the top-k saves
      from the validations to those steps, where the monitored metric is the last validation's.

    ``mode="auto"`` (the config's): "max" for a COCO statistic (``val/AP``, ``val/AR``, ...: the names of
    :data:`strongpose.evaluation.STAT_NAMES` or CrowdPose's ``AP_easy`` ... after the last ``/``), "min" for
    anything else (the losses), so that
    ``optimized_metric=val/AP`` keeps the best AP, not the worst.
    """

    def __init__(self, *args, last_every_n_train_steps: int | None = None, mode: str = "min", **kwargs) -> None:
        if mode == "auto":
            mode = monitor_mode(kwargs.get("monitor"))
        super().__init__(*args, mode=mode, **kwargs)
        if last_every_n_train_steps is not None and (isinstance(last_every_n_train_steps, bool)
                                                     or not isinstance(last_every_n_train_steps, int)
                                                     or last_every_n_train_steps < 1):
            raise ConfigError(f"callbacks.model_checkpoint.last_every_n_train_steps must be a positive integer or "
                              f"null, got {last_every_n_train_steps!r}")
        self.last_every_n_train_steps = last_every_n_train_steps
        self._step_before_batch = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self.last_every_n_train_steps
        # after the batch that completes an optimiser step only (gradient accumulation: the micro-batches
        # in between hold gradients a checkpoint would lose); the same decision on every DDP rank
        if (every and trainer.global_step != self._step_before_batch and trainer.global_step % every == 0
                and self.save_last and not self._should_skip_saving_checkpoint(trainer)):
            # Lightning skips its own saves (the best checkpoints, last.ckpt) at a step marked saved: a
            # validation right after this step must still save
            saved = self._last_global_step_saved
            self._write_last(trainer)
            self._last_global_step_saved = saved

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # skipped as Lightning skips its saves: fast_dev_run, sanity check, this step already saved
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._write_last(trainer)

    def _write_last(self, trainer: L.Trainer) -> None:
        link, self.save_last = self.save_last, True  # save_last="link" would point at an older top-k file
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self.save_last = link


class ImagesPerSecond(Callback):
    """Logs ``train/images_per_sec`` (all devices, data loading included) over the last ``window`` batches, at
    the steps whose logged values are read (:func:`strongpose.log_steps.logs_read`; the progress bar shows it
    from those). It runs after the other callbacks (it moves itself to the end of the trainer's list at setup, as
    :class:`strongpose.faults.InterruptCheckpoint` does), so that it sees a stop that one of them requests in this
    step (Lightning's Timer for ``max_time``, appended after the configured callbacks): Lightning writes that step,
    and a value not logged then would be written as it was at the last step logged."""

    def __init__(self, window: int = 20) -> None:
        self.window = int(window)
        self._marks: deque[tuple[float, int]] = deque(maxlen=self.window + 1)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._marks.clear()
        self._marks.append((time.perf_counter(), 0))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        images = len(batch["image"]) * trainer.world_size
        self._marks.append((time.perf_counter(), images))
        elapsed = self._marks[-1][0] - self._marks[0][0]
        if elapsed > 0 and logs_read(trainer, batch_idx):
            rate = sum(n for _, n in list(self._marks)[1:]) / elapsed
            # a CPU tensor: Lightning would copy a Python number to the GPU, and wait for it, every step
            pl_module.log("train/images_per_sec", torch.tensor(rate), on_step=True, prog_bar=True,
                          batch_size=len(batch["image"]))


class ProgressBar(TQDMProgressBar):
    """TQDM bar (readable in log files too) that adds ``eta``, the time left for the whole run (the bar's
    own elapsed<remaining covers one epoch only, a few seconds on the sample), and the training step's
    ``step_metrics`` (the loss), read at most every ``metrics_every_s`` seconds.

    Why not ``self.log(..., prog_bar=True)`` for the training loss: Lightning reads every progress-bar
    value on the host after every batch (``item()``), and on a GPU each read waits for the whole step
    queued so far (``strongpose.host_syncs``). The loss is logged without ``prog_bar`` and read here from
    ``trainer.callback_metrics``, once a second; values the module logs for the bar on the host (images/s)
    and validation's come through Lightning as before.

    ``file_every_s``: when the bar goes to a file rather than a terminal (a SLURM job's log), it is redrawn at most
    this often, and at each bar's end: redrawn every batch it wrote ~300 bytes per step (~150 MB for a COCO
    run), all of them joined by carriage returns."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 step_metrics: Sequence[str] = ("train/loss",), metrics_every_s: float = 1.0,
                 file_every_s: float = 30.0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.step_metrics = tuple(step_metrics)
        self.metrics_every_s = float(metrics_every_s)
        self.file_every_s = float(file_every_s)
        self._drawn_at = -math.inf
        self._step_values: dict[str, float] = {}
        self._read_at = -math.inf
        self._in_train_batch = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._in_train_batch = True  # get_metrics may show the values it read last
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._in_train_batch = False

    def _should_update(self, current: int, total: int) -> bool:
        due = super()._should_update(current, total)  # every refresh_rate batches, and the last
        # (Lightning's bars write to stdout; a notebook's is no TTY, and redraws in place)
        if not due or current == total or sys.stdout.isatty() or "ipykernel" in sys.modules:
            return due
        now = time.perf_counter()
        if now - self._drawn_at < self.file_every_s:
            return False
        self._drawn_at = now
        return True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = (time.perf_counter(), trainer.global_step)  # a resumed run starts mid-way
        self._total_steps = trainer.estimated_stepping_batches

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        now = time.perf_counter()
        if not self._in_train_batch or now - self._read_at >= self.metrics_every_s:
            logged = trainer.callback_metrics
            self._step_values = {name: float(logged[name]) for name in self.step_metrics if name in logged}
            self._read_at = now
        items = {**self._step_values, **items}
        start_time, start_step = getattr(self, "_start", (0.0, 0))
        done = trainer.global_step - start_step
        if done > 0 and math.isfinite(self._total_steps):
            left = (time.perf_counter() - start_time) / done * (self._total_steps - trainer.global_step)
            items["eta"] = str(datetime.timedelta(seconds=round(left)))
        return items


def _to_channels_last(batch: dict) -> None:
    # the batch dict is the object training_step / validation_step receive next: replacing its image is enough
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor) and batch["image"].dim() == 4:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)


class ChannelsLast(Callback):
    """NHWC ("channels last") weights and input images: tensor-core convolutions (bf16 / fp16 on recent
    GPUs) run without layout transposes, often 10-30 % faster; on a CPU it rarely helps.

    The module is converted at ``setup``, before the strategy moves and wraps it (DDP keeps the layout),
    each batch's images on their way into the step. ``enabled=False`` makes it a no-op, so a config can
    list it switched off (``callbacks.channels_last.enabled=true``).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled:
            pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.enabled:
            _to_channels_last(batch)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self.enabled:
            _to_channels_last(batch)

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if self.enabled:
            _to_channels_last(batch)


class Compile(Callback):
    """``torch.compile`` of the module's network (``pl_module.net``, or the module itself without one) at
    ``setup``, in place (``nn.Module.compile``): parameter names, hence checkpoints' ``state_dict`` keys,
    stay as they are, and DDP wraps the module as usual. The first steps (and each new input shape, such
    as a smaller last batch or the validation batch size) pay the compilation; ``enabled=False`` (the
    config's default) makes it a no-op (``callbacks.compile.enabled=true``).

    Args:
        enabled: compile or not.
        mode: ``torch.compile`` mode (None = "default", "reduce-overhead", "max-autotune", ...).
        dynamic: ``torch.compile``'s ``dynamic`` (None = decide after the first shape change).
        fullgraph: fail on graph breaks instead of splitting the graph.
        backend: ``torch.compile`` backend ("inductor"; "aot_eager" captures the same graphs without
            generating kernels, quick to check that the network compiles).
    """

    def __init__(self, enabled: bool = True, mode: str | None = None, dynamic: bool | None = None,
                 fullgraph: bool = False, backend: str = "inductor") -> None:
        self.enabled = bool(enabled)
        self.options = {"mode": mode, "dynamic": dynamic, "fullgraph": bool(fullgraph), "backend": backend}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled:
            target = getattr(pl_module, "net", pl_module)
            if getattr(target, "_compiled_call_impl", None) is None:  # once, also when fit follows validate
                target.compile(**self.options)
