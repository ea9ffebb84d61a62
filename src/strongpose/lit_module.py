"""StrongPoseModule: the LightningModule that ties network, codec, losses and optimiser together."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from strongpose.checkpoint import CONFIG_KEY, CheckpointError, spec_mismatch
from strongpose.config_check import ConfigError, require_positive
from strongpose.codec import StrongPoseCodec
from strongpose.collectives import mean_over_ranks
from strongpose.data.resumable import epoch_inside
from strongpose.faults import BufferSnapshot, NonFiniteLossGuard
from strongpose.log_steps import logs_read
from strongpose.models.frozen_norm import frozen_buffer_names
from strongpose.models.heads import Heads, has_separate_heads
from strongpose.models.losses import HEATMAP_LOSSES, strongpose_losses
from strongpose.models.network import StrongPoseNet, to_probabilities
from strongpose.structures import Poses

log = logging.getLogger(__name__)

OPTIMIZER_KIND = ("fused", "foreach")  # param-group keys that choose how a step runs, not what it computes

# logged names: f"{stage}/{LOSS}" (total, what checkpoints monitor) and f"{stage}/{LOSS}_{term}"
LOSS = "loss"
NONFINITE = "train/nonfinite_steps"  # logged: training steps skipped for a NaN / infinite loss so far
BATCH_LAYOUT = "strongpose_batch_layout"  # checkpoint key: per-device batch, ranks, accumulation of the run
CATEGORY = "strongpose_category_id"  # checkpoint key: the training annotations' category id (predict's results)
DEFAULT_LOSS_WEIGHTS = {"skhm": 4.0, "bhm": 2.0, "short": 1.0, "mid": 0.4, "long": 0.1}  # the authors' code


def global_batch_size(batch_size: int, world_size: int = 1, accumulate_grad_batches: int = 1) -> int:
    """Images per optimiser step over all devices and nodes."""
    return int(batch_size) * int(world_size) * int(accumulate_grad_batches)


# how the LR follows the global batch: linear (Goyal et al. 2017, SGD), sqrt (the rule derived for Adam-type
# optimisers, Malladi et al. 2022; gentler on 8-64 GPUs), none (model.lr as given, at any batch); auto: sqrt for
# an Adam-type optimiser, linear otherwise (linear would give AdamW 8x its LR on 8 GPUs x the reference batch)
LR_SCALING = ("auto", "linear", "sqrt", "none")


LOSS_OPTIONS = ("weights", "heatmap", "focal_gamma", "focal_alpha")


def check_loss(loss: dict | None, terms: dict[str, float] = DEFAULT_LOSS_WEIGHTS) -> dict:
    """A copy of ``model.loss`` once its names and values are known to be right: a misspelt term or option
    would otherwise be ignored (``+model.loss.weights.skmh=8`` trained with SKHM's default), a weight that is
    no number fail at the first step. ``terms``: the loss terms with their default weights (a module's
    ``loss_terms``)."""
    loss = dict(loss or {})
    unknown = sorted(set(loss) - set(LOSS_OPTIONS))
    if unknown:
        raise ConfigError(f"model.loss has no option {unknown}; its options: {', '.join(LOSS_OPTIONS)}")
    weights = dict(loss.get("weights") or {})
    for name, value in weights.items():
        if name not in terms:
            raise ConfigError(f"model.loss.weights.{name}: no such loss term; terms: {', '.join(terms)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"model.loss.weights.{name}={value!r}: expected a number >= 0")
    if loss.get("heatmap", "bce") not in HEATMAP_LOSSES:
        raise ConfigError(f"model.loss.heatmap={loss['heatmap']!r}: expected one of {', '.join(HEATMAP_LOSSES)}")
    for name, low, high in (("focal_gamma", 0.0, math.inf), ("focal_alpha", 0.0, 1.0)):
        value = loss.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high or not math.isfinite(value)):
            raise ConfigError(f"model.loss.{name}={value!r}: expected a number in [{low:g}, {high:g}"
                              f"{')' if math.isinf(high) else ']'}" + (" or null" if name == "focal_alpha" else ""))
    loss["weights"] = weights
    return loss


def check_lr_scaling(rule: str) -> str:
    if rule not in LR_SCALING:
        raise ConfigError(f"model.lr_scaling must be one of {LR_SCALING}, got {rule!r}")
    return rule


def lr_scaling_rule(rule: str, optimizer: Callable[..., torch.optim.Optimizer]) -> str:
    """The rule ``auto`` stands for with ``optimizer`` (a class or a partial of one): ``sqrt`` for the Adam
    family (Adam, AdamW, NAdam, RAdam, ...), ``linear`` otherwise; any other rule as it is."""
    if check_lr_scaling(rule) != "auto":
        return rule
    cls = getattr(optimizer, "func", optimizer)
    return "sqrt" if "adam" in getattr(cls, "__name__", "").lower() else "linear"


def scaled_lr(base_lr: float, global_batch: int, ref_batch: int, rule: str = "linear") -> float:
    """``base_lr`` is the LR at ``ref_batch`` images per step, whatever the hardware; ``rule`` (one of
    :data:`LR_SCALING`) carries it to ``global_batch``."""
    if check_lr_scaling(rule) == "auto":
        raise ValueError("lr_scaling=auto depends on the optimiser: lr_scaling_rule() names the rule")
    ratio = global_batch / ref_batch
    return float(base_lr) * (ratio if rule == "linear" else math.sqrt(ratio) if rule == "sqrt" else 1.0)


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int | float,
                    decay: Literal["cosine", "step"] = "cosine",
                    warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0,
                    milestones: Sequence[float] = (0.67, 0.89), gamma: float = 0.1) -> LambdaLR:
    """Linear warm-up then cosine or step decay, stepped every optimiser step.

    Warm-up length and step milestones are fractions of ``total_steps``, so a schedule keeps its shape
    when the number of devices (hence of steps) changes.
    """
    if decay not in ("cosine", "step"):
        raise ValueError(f"decay must be 'cosine' or 'step', got {decay!r}")
    if not math.isfinite(total_steps) or total_steps < 1:
        raise ValueError(f"the LR schedule needs a finite number of steps (trainer.max_epochs or max_steps), "
                         f"got {total_steps}")
    total = int(total_steps)
    warmup = int(warmup_fraction * total)
    bounds = [int(m * total) for m in milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "step":
            return gamma ** sum(step >= b for b in bounds)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class StrongPoseModule(L.LightningModule):
    """Network + codec + losses + optimiser.

    Args:
        codec: the codec the data were encoded with; sizes the heads and decodes the outputs.
        backbone: feature extractor (e.g. :class:`strongpose.models.ResNetBackbone`).
        optimizer: partial optimiser taking ``params`` and ``lr`` (Hydra ``_partial_: true``).
        scheduler: partial ``(optimizer, total_steps) -> LR scheduler`` stepped every step, or None.
        heads: keyword arguments of :class:`strongpose.models.heads.Heads`.
        loss: ``weights`` per term (defaults: the authors' 4 / 2 / 1 / 0.4 / 0.1), ``heatmap`` (``bce`` or
            ``focal``), ``focal_gamma``, ``focal_alpha``.
        lr: learning rate at ``lr_ref_batch`` images per optimiser step; scaled to the real global batch
            (``batch_size`` x devices x nodes x gradient accumulation) by ``lr_scaling``.
        lr_scaling: ``auto`` (default: ``sqrt`` for Adam-type optimisers, ``linear`` otherwise), ``linear``,
            ``sqrt`` or ``none`` (see :func:`scaled_lr`).
        batch_size: per-device batch size (the data module's).
        max_nonfinite_steps: training steps with a NaN / infinite loss are skipped (no weight update) and
            counted; this many in a row are tolerated, one more stops the run naming the images.
    """

    # the loss terms and their default weights (model.loss.weights overrides them): a subclass whose ``losses``
    # adds a term lists it here, e.g. ``loss_terms = {**StrongPoseModule.loss_terms, "skhm_l2": 0.5}``, and reads
    # its weight from ``self.loss_weights``
    loss_terms: dict[str, float] = DEFAULT_LOSS_WEIGHTS

    def __init__(
        self,
        codec: StrongPoseCodec,
        backbone: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        heads: dict | None = None,
        loss: dict | None = None,
        lr: float = 1e-3,
        lr_ref_batch: int = 16,
        lr_scaling: str = "auto",
        batch_size: int = 8,
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        check_lr_scaling(lr_scaling)  # here, not at fit
        require_positive("model", lr=lr, lr_ref_batch=lr_ref_batch, batch_size=batch_size)
        # codec and backbone are objects; the run's Hydra config (saved beside the checkpoints) has them
        self.save_hyperparameters(ignore=["codec", "backbone", "optimizer", "scheduler"], logger=False)
        self.hparams["codec"] = codec_spec(codec)  # checked when a checkpoint is loaded
        self.hparams["backbone"] = backbone_spec(backbone)
        # the run's resolved config, stored in every checkpoint (train() sets it): a checkpoint alone
        # is then enough to rebuild the model (strongpose.load)
        self.run_config: dict | None = None
        self.category_id: int | None = None  # of the people in the training annotations (the data module's)
        self.epoch_in_progress: int | None = None  # of the last training batch (see data.resumable.epoch_inside)
        self.codec = codec
        self.net = StrongPoseNet(backbone, codec, heads)
        # DDP's attribute: buffers it leaves out of the sync before each forward pass (constants here)
        self._ddp_params_and_buffers_to_ignore = frozen_buffer_names(self)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        loss = check_loss(loss, self.loss_terms)
        self.loss_weights = {**self.loss_terms, **loss.pop("weights", {})}
        self.loss_options = loss
        self.nonfinite = NonFiniteLossGuard(max_nonfinite_steps)
        self._buffers_before = BufferSnapshot()
        self._restore_buffers = False  # this micro-batch's loss was not finite (on some rank)
        # some micro-batch since the last optimiser step was not finite: its NaN gradients are summed into
        # .grad with the others' (trainer.accumulate_grad_batches > 1), so the whole step is dropped
        self._drop_gradients = False
        self._train_terms: tuple[dict[str, torch.Tensor], int] = ({}, 0)  # this step's losses, batch size

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs (heat-map logits, offsets in input pixels), in training and evaluation alike."""
        return self.net(images)

    def losses(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               global_batch: bool = False, counts: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Loss terms. ``global_batch`` (training): normalise by the counts of all processes' batches, so that
        DDP's gradient average is the global batch's gradient; ``counts``: those of the micro-batch's
        accumulation window, so that the accumulated gradient is the window's (see :func:`strongpose_losses`)."""
        trainer = self._trainer
        mean = None
        if global_batch and trainer is not None and trainer.world_size > 1:
            mean = functools.partial(mean_over_ranks, world_size=trainer.world_size)
        return strongpose_losses(outputs, targets, self.loss_weights, self.codec.disk_radius,
                                 mean_over_processes=mean, counts=counts, **self.loss_options)

    def decode(self, outputs: dict[str, torch.Tensor]) -> list[Poses]:
        """Raw outputs -> people per image (keypoints in input pixels)."""
        return self.codec.decode(to_probabilities(outputs))

    def _step(self, batch: dict, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The loss terms and the raw outputs of ``batch``."""
        # a batch whose samples were all bad has size 0: it goes through with zero loss and zero gradients
        # rather than being skipped, so that every DDP rank still takes part in each step
        outputs = self(batch["image"])
        train = stage == "train"
        # validation keeps per-process counts: its batches need not line up across ranks (no all-reduce)
        # with gradient accumulation, the training loader's window_counts (see ResumableDataLoader)
        losses = self.losses(outputs, batch["targets"], global_batch=train,
                             counts=batch.get("window_counts") if train else None)
        return losses, outputs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._buffers_before.take(self)
        losses = self._step(batch, "train")[0]
        size = len(batch["image"])
        # logged before the guard's read of the device below, so that this Python runs while the GPU still
        # computes the forward pass; not in the progress bar: Lightning would read it on the host after every
        # batch, a wait for the GPU (callbacks.ProgressBar shows it, read once a second)
        self.log(f"train/{LOSS}", losses["total"], on_step=True, on_epoch=False, batch_size=size)
        self._train_terms = (losses, size)  # (self.log detaches them: no copy here, on every step)
        # a non-finite loss: the step is skipped. Backward still runs (not `return None`, which Lightning
        # refuses under DDP, where every rank must take part in the gradient all-reduce); then the BatchNorm
        # statistics, which a NaN batch makes NaN for good, are put back and the gradients dropped
        self._restore_buffers = self.nonfinite.skip(losses["total"], batch, self._trainer)
        self._drop_gradients |= self._restore_buffers
        return losses["total"]

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        # the terms and the skipped steps' count only at the steps whose values are read: written to the loggers,
        # or before a validation or the end (strongpose.log_steps): at the GPU preset's log_every_n_steps=50, six
        # self.log calls per step for nothing otherwise. Here rather than in training_step: after the optimiser
        # step is queued (the GPU is busy meanwhile), and after the callbacks' on_train_batch_end, which may stop
        # the run (max_time's Timer), a step Lightning then writes too. Those callbacks see the terms of the last
        # step read (trainer.callback_metrics).
        if logs_read(self._trainer, batch_idx):
            values, size = self._train_terms
            self.log_dict({f"train/{LOSS}_{name}": value for name, value in values.items() if name != "total"},
                          on_step=True, on_epoch=False, batch_size=size)
            # a CPU tensor: Lightning would copy a Python number to the GPU, and wait for it
            self.log(NONFINITE, torch.tensor(float(self.nonfinite.total)), on_step=True, on_epoch=False,
                     batch_size=size)

    def on_after_backward(self) -> None:
        if self._restore_buffers:  # not before backward: autograd checks that BatchNorm's inputs are unchanged
            self._buffers_before.restore()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_gradients:  # no gradient: the optimiser leaves every weight and its momentum alone
            optimizer.zero_grad(set_to_none=True)
            self._drop_gradients = False

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """``{"loss": total loss, "outputs": raw outputs}``; Lightning hands it to callbacks'
        ``on_validation_batch_end`` as ``outputs``, so that :class:`strongpose.evaluation.COCOEvalCallback`
        decodes the network's outputs without running the network again."""
        losses, outputs = self._step(batch, "val")
        # per epoch, averaged over the ranks
        self.log_dict({f"val/{LOSS}_{name}": value for name, value in losses.items() if name != "total"},
                      on_step=False, on_epoch=True, sync_dist=True, batch_size=len(batch["image"]))
        self.log(f"val/{LOSS}", losses["total"], prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(batch["image"]))
        return {"loss": losses["total"], "outputs": outputs}

    def predict_step(self, batch: dict, batch_idx: int) -> list[Poses]:
        return self.decode(self(batch["image"]))

    def batch_layout(self) -> dict[str, int]:
        """Per-device batch, ranks (devices x nodes) and gradient accumulation of this run."""
        trainer = self.trainer
        return {"batch_size": int(self.hparams.batch_size), "world_size": int(trainer.world_size),
                "accumulate_grad_batches": int(trainer.accumulate_grad_batches)}

    def configure_optimizers(self):
        trainer = self.trainer
        batch = global_batch_size(**self.batch_layout())
        rule = lr_scaling_rule(self.hparams.lr_scaling, self.optimizer_factory)
        lr = scaled_lr(self.hparams.lr, batch, self.hparams.lr_ref_batch, rule)
        if trainer.is_global_zero:
            how = f"{rule}, model.lr_scaling=auto" if self.hparams.lr_scaling == "auto" else rule
            log.info("learning rate %.3g = %.3g at reference batch %d, scaled (%s) to the global batch %d",
                     lr, self.hparams.lr, self.hparams.lr_ref_batch, how, batch)
        kind = self._optimizer_kind()
        if trainer.is_global_zero and kind.get("fused") is False and self.optimizer_factory.keywords.get("fused"):
            log.info("16-mixed: the optimiser runs unfused (the gradient scaler unscales before its step)")
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad], lr=lr, **kind)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _optimizer_kind(self) -> dict[str, bool | None]:
        """The optimiser factory's ``fused`` / ``foreach`` keywords, with ``fused`` off under 16-mixed."""
        keywords = dict(getattr(self.optimizer_factory, "keywords", None) or {})
        kind = {key: keywords[key] for key in OPTIMIZER_KIND if key in keywords}
        if str(getattr(self._trainer, "precision", "")).startswith("16") and kind.get("fused"):
            # float16's gradient scaler: a fused step unscales inside the kernel, so Lightning can neither clip
            # nor let a skipped (non-finite) step drop the gradients first (scaler.update then finds no
            # inf checks and fails); the multi-tensor step unscales before, as those need
            kind["fused"] = False
        return kind

    def _resume_with_this_optimizer_kind(self, checkpoint: dict) -> None:
        """A resumed run steps as its own config says, not as the checkpoint's run did: the saved param groups
        carry ``fused`` / ``foreach``, which ``Optimizer.load_state_dict`` would restore (and by which it places
        the step counters: on the device for a fused step). Keys the config leaves out get torch's default."""
        kind = self._optimizer_kind()
        changed = set()
        groups = [(state, group) for state in checkpoint.get("optimizer_states", ())
                  for group in state.get("param_groups", ())]
        for state, group in groups:
            changed |= {f"{key}: {group[key]} -> {kind.get(key)}" for key in OPTIMIZER_KIND
                        if key in group and group[key] != kind.get(key)}
            group.update({key: kind.get(key) for key in OPTIMIZER_KIND if key in group})
            if not (group.get("fused") or group.get("capturable")):
                _step_counters_to_host(state.get("state", {}), group.get("params", ()))
        if changed and self._trainer is not None and self._trainer.is_global_zero:
            log.info("resuming with this run's optimiser kind (%s)", ", ".join(sorted(changed)))

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # right before each batch, whatever Lightning counts after it (on_train_epoch_start: not called for an epoch
        # resumed inside, nor for the next one after the resume that counts one short)
        self.epoch_in_progress = self.trainer.current_epoch

    def on_fit_start(self) -> None:
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        self.category_id = getattr(dataset, "category_id", self.category_id)

    def on_train_start(self) -> None:
        # the LR of the step to come, from this run's schedule: a resume with a longer one (more epochs) restores
        # the optimiser's LR of the old schedule (its end: the floor), and the scheduler, rebuilt for this run,
        # sets its own only after the first step. The same value as restored when the schedule is the same.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, LambdaLR):
                for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                               scheduler.lr_lambdas):
                    group["lr"] = base * factor(scheduler.last_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        if self.category_id is not None:
            checkpoint[CATEGORY] = int(self.category_id)
        checkpoint[NONFINITE] = self.nonfinite.total
        if self._trainer is not None:
            checkpoint[BATCH_LAYOUT] = self.batch_layout()
            if "loops" in checkpoint and (epoch := epoch_inside(self._trainer)) is not None:
                _as_inside_the_epoch(checkpoint, epoch)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before load_state_dict, also when resuming (trainer.fit(ckpt_path=...)):
        # a checkpoint of another backbone / skeleton / stride gets the differences, not a wall of keys
        check_compatible(checkpoint, self)
        self.nonfinite.total = int(checkpoint.get(NONFINITE, 0))
        self.category_id = checkpoint.get(CATEGORY, self.category_id)
        if self._trainer is not None and getattr(self._trainer, "training", False):  # resuming a fit, not load()
            check_same_global_batch(checkpoint.get(BATCH_LAYOUT), self.batch_layout())
            check_fused_heads(checkpoint)
        self._resume_with_this_optimizer_kind(checkpoint)  # before Lightning loads the optimiser state


def _as_inside_the_epoch(checkpoint: dict, epoch: int) -> None:
    """Save the loops as inside ``epoch`` (see :func:`epoch_inside`): what an interrupt's checkpoint records in a
    plain run, which Lightning resumes at the epoch's next batch (the same counts then; rewritten after a stop
    that Lightning counted as the epoch's end, and after the resume that counts one short)."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for counts in (progress["total"], progress["current"]):
        counts["ready"] = counts["started"] = epoch + 1
        counts["processed"] = counts["completed"] = epoch
    checkpoint["epoch"] = epoch


def check_same_global_batch(saved: dict[str, int] | None, now: dict[str, int]) -> None:
    """Raise :class:`ConfigError` when a resumed run's global batch is not its checkpoint's: Lightning restores
    the optimiser's learning rate and the schedule's base rate (scaled to the old global batch), the schedule
    counts optimiser steps of the old size, and the epoch's position is in old batches. A checkpoint written
    before the layout was recorded (None) is resumed as it is."""
    if saved is None or global_batch_size(**saved) == global_batch_size(**now):
        return

    def say(layout: dict[str, int]) -> str:
        return (f"{global_batch_size(**layout)} ({layout['batch_size']} per device x {layout['world_size']} devices "
                f"x {layout['accumulate_grad_batches']} accumulated)")

    raise ConfigError(
        f"the checkpoint was trained with a global batch of {say(saved)}, this run's is {say(now)}: its learning "
        f"rate, schedule and position in the epoch are per optimiser step of the checkpoint's size. Resume with "
        f"the checkpoint's data.batch_size, trainer.devices x trainer.num_nodes and trainer.accumulate_grad_batches "
        f"(at an epoch's end, the same product is enough), or start a new run from its weights: init_from=CKPT in "
        f"another run folder (or with resume=null, when resume=auto found this checkpoint in the run folder)")


def check_fused_heads(checkpoint: dict) -> None:
    """Raise :class:`CheckpointError` when a run would resume a checkpoint written before the heads were fused:
    its weights load (:func:`strongpose.models.heads.adapt_heads`), its optimiser state, per separate
    head tensor, does not."""
    if has_separate_heads(checkpoint.get("state_dict", {}), "net.heads."):
        raise CheckpointError("the checkpoint was written before StrongPose fused its heads (net.heads.heads.<name>"
                              ".<i>.* tensors): its weights load, but its optimiser state cannot be resumed. Start a "
                              "new run from its weights: init_from=CKPT (in another run folder, or with resume=null)")


def _step_counters_to_host(state: dict, params) -> None:
    """``Optimizer.load_state_dict`` moves the step counters to the device only for a fused or capturable
    step; an unfused one reads each counter on the host, so a counter left on a GPU (a checkpoint loaded onto
    its device) would cost a synchronisation per parameter and step."""
    for param in params:
        step = state.get(param, {}).get("step")
        if isinstance(step, torch.Tensor) and step.device.type != "cpu":
            state[param]["step"] = step.to("cpu", torch.float32)


def check_compatible(checkpoint: dict, model: StrongPoseModule) -> None:
    """Raise :class:`CheckpointError` naming each codec / backbone difference (rather than a wall of
    missing keys or a silent shape mismatch) when ``checkpoint`` was trained with another setup."""
    saved = checkpoint.get("hyper_parameters", {})
    problems = []
    for what in ("codec", "backbone"):
        if saved.get(what) is not None:
            problems += spec_mismatch(saved[what], model.hparams[what], what)
    if "heads" in saved:  # the heads' layer shapes (model.heads), not their initial values
        problems += spec_mismatch(heads_spec(saved["heads"]), heads_spec(model.hparams.get("heads")), "model.heads")
    if problems:
        raise CheckpointError("checkpoint does not fit this model: " + "; ".join(problems))


def backbone_spec(backbone: nn.Module) -> dict:
    """What the backbone's weights depend on (architecture, output stride, neck width)."""
    return {"class": type(backbone).__name__, "arch": getattr(backbone, "arch", None),
            "output_stride": getattr(backbone, "output_stride", None),
            "out_channels": getattr(backbone, "out_channels", None)}


def heads_spec(heads: dict | None) -> dict:
    """What the heads' tensor shapes depend on (``model.heads`` with :class:`Heads`' defaults filled in)."""
    defaults = {name: p.default for name, p in inspect.signature(Heads).parameters.items()
                if name in ("num_convs", "width", "kernel_size")}
    spec = {**defaults, **{k: v for k, v in dict(heads or {}).items() if k in defaults}}
    # no layer before the output convolutions: their width and kernel size shape nothing
    return spec if spec["num_convs"] else {"num_convs": 0}


def codec_spec(codec: StrongPoseCodec) -> dict:
    """What a checkpoint's weights depend on: output channels, their meaning and scale."""
    # the keypoint names and edges too: a skeleton edited under the same name (reordered keypoints, another
    # edge: the mid-range head's channels are the directed edges in order) is another model
    names = codec.skeleton.keypoints
    return {"skeleton": codec.skeleton.name, "keypoints": list(names),
            "edges": [f"{names[a]}->{names[b]}" for a, b in codec.edges.tolist()],
            "stride": codec.stride, "disk_radius": codec.disk_radius,
            "long_range": codec.long_range, "redundant_edges": codec.redundant_edges}
