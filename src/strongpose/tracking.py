"""What a training run tells the researcher as it goes: one-line console messages and its W&B run (online or
offline, named in a sweep, finished when the run ends, continued when the run resumes)."""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from strongpose.config_check import in_multirun
from strongpose.slurm import job_id as slurm_job_id

WANDB_RUN = "strongpose_wandb_run"  # checkpoint key: the online W&B run that trained it (id, project)


@rank_zero_only
def say(message: str) -> None:
    """One line for the user: printed as it is, and written to the log files of the root logger (the run's
    ``train.log``, Hydra's job log), which otherwise missed the lines that matter most ("Done: ...", "Resuming
    from ...", "Interrupted: checkpoint saved to ...")."""
    print(message, flush=True)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if handlers:
        record = logging.LogRecord("strongpose", logging.INFO, __file__, 0, message, None, None)
        for handler in handlers:
            handler.handle(record)


def wandb_key_configured() -> bool:
    """True when W&B can log online: an API key in the environment or a netrc entry for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str = "strongpose", offline: bool | None = None,
                 run_resume: str | None = "auto", resumed_run: dict[str, str] | None = None,
                 **kwargs: Any) -> WandbLogger:
    """WandbLogger that logs online when a key is configured (or ``offline=false``), offline otherwise.

    Online, it logs on to an earlier W&B run rather than starting one: ``resumed_run`` (what
    :func:`recorded_wandb_run` read from the checkpoint the run resumes; ``train`` passes it) when it is of
    this project, else, with ``run_resume="auto"`` (the run's ``resume``), a SLURM job's own run. An ``id``
    (``logger.wandb.id``) or ``WANDB_RUN_ID`` wins over both."""
    env_mode = os.environ.get("WANDB_MODE", "")
    if env_mode == "disabled":
        # W&B's own off switch wins (W&B reads it whatever the logger asks): offline=True would make Lightning set
        # WANDB_MODE=dryrun and write run files, offline=False would say "online" and log nothing
        say("W&B: disabled (WANDB_MODE=disabled); nothing is logged to W&B")
        return _without_anonymous(WandbLogger(save_dir=save_dir, project=project, offline=False, mode="disabled",
                                              **kwargs))
    if offline is not None:
        why = f"logger.wandb.offline={str(offline).lower()}"
    elif env_mode in ("offline", "dryrun"):
        offline, why = True, f"WANDB_MODE={env_mode}"
    else:
        offline, why = not wandb_key_configured(), "no API key in WANDB_API_KEY or ~/.netrc (`wandb login`)"
    if offline:
        say(f"W&B: offline ({why}); run files go to {save_dir}/wandb, upload them later with `wandb sync`")
    else:
        say(f"W&B: logging online to project {project!r}")
        job = slurm_job_id()
        chosen = kwargs.get("id") or kwargs.get("version") or os.environ.get("WANDB_RUN_ID")
        if not chosen and resumed_run and resumed_run.get("project") == project:
            # the resumed checkpoint's run goes on: one W&B run per training, however often it stopped
            kwargs["id"] = resumed_run["id"]  # (WandbLogger passes resume="allow")
            say(f"W&B: logging on to run {resumed_run['id']}, which trained the resumed checkpoint "
                f"(logger.wandb.id chooses another)")
        elif job and run_resume == "auto" and not chosen:
            # a requeued SLURM job keeps its id and folder and resumes from its checkpoint: it logs on to the same
            # W&B run (charts go by trainer/global_step) rather than starting a new one per requeue, also when it
            # stopped before its first checkpoint. After the time-limit signal it resumes at the step it stopped
            # at; requeued by SLURM itself (pre-emption without the signal) it resumes from last.ckpt and logs the
            # steps after that one a second time. With resume=null it starts over: a new W&B run then
            folder = hashlib.sha1(str(Path(save_dir).resolve()).encode()).hexdigest()[:8]
            kwargs["id"] = f"slurm-{job}-{folder}"
    for key, value in sweep_run_names().items():
        if kwargs.get(key) is None:  # logger.wandb.name / group given: theirs
            kwargs[key] = value
    return _without_anonymous(WandbLogger(save_dir=save_dir, project=project, offline=offline, **kwargs))


def _without_anonymous(logger: WandbLogger) -> WandbLogger:
    """The logger without the ``anonymous=None`` that Lightning's WandbLogger always gives ``wandb.init``: W&B
    (0.31 here) has dropped the setting, and any value, None too, printed "The anonymous setting has no effect and
    will be removed" at every start. Left out, wandb.init takes its default, as None did; one asked for
    (``logger.wandb.anonymous=true``) is passed on."""
    init = getattr(logger, "_wandb_init", None)  # (Lightning's; a version without it: nothing to drop)
    if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
        del init["anonymous"]
    return logger


def sweep_run_names() -> dict[str, str]:
    """In a multirun: W&B ``name`` = the job's overrides (``model.lr=0.0003,backbone=resnet34``), ``group`` = the
    sweep folder's name, so that a sweep's runs are told apart and kept together (W&B would give them random
    names). Empty outside a multirun; ``logger.wandb.name`` / ``group`` win."""
    if not in_multirun():
        return {}
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"
    sweep = Path(hydra_cfg.sweep.dir)  # Hydra's default multirun/<date>/<time>: the time alone is no name
    return {"name": name, "group": f"{sweep.parent.name}/{sweep.name}"}


class RecordWandbRun(Callback):
    """Writes the online W&B run into every checkpoint (:data:`WANDB_RUN`), so that a run resumed from it, in its
    own folder or another, logs on to that W&B run (:func:`recorded_wandb_run`). Offline runs are not recorded:
    W&B does not resume them, and ``wandb sync`` uploads each start as its own run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            run = logger.experiment if isinstance(logger, WandbLogger) and trainer.is_global_zero else None
            if run is not None and not getattr(run, "offline", True) and not getattr(run, "disabled", False):
                checkpoint[WANDB_RUN] = {"id": str(run.id), "project": str(run.project)}


def recorded_wandb_run(ckpt_path: str | None) -> dict[str, str] | None:
    """The W&B run :class:`RecordWandbRun` wrote into the checkpoint at ``ckpt_path``; None when there is none, or
    the file cannot be read (trainer.fit then says why, naming it). Memory-mapped: the tensors are not read."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: fit reports it with the reason
        return None
    record = checkpoint.get(WANDB_RUN) if isinstance(checkpoint, dict) else None
    return dict(record) if isinstance(record, dict) and record.get("id") else None


def finish_wandb(loggers: list[Logger], exit_code: int) -> None:
    """End this process's W&B run: WandbLogger leaves it open, and the next job of a multirun (the same
    process) would log into it (one W&B run holding every job, its config the last job's)."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
