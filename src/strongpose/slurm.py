"""SLURM: the tasks a job starts must be the trainer's ranks, and one requeue mechanism runs.

A SLURM job runs one task per DDP rank (``hydra/launcher=slurm``); Lightning reads rank and world size from
SLURM's variables but does not check them against ``trainer.devices x trainer.num_nodes`` for processes SLURM
started: with 8 tasks and a one-device trainer, 8 copies of the same run would train side by side and write the
same files. :func:`check_world_size` refuses that at the start, with the fix.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

# GPUs a job asks for per node when the trainer takes "all visible" devices (trainer=ddp: devices=-1), which
# the launcher cannot know at submission: an 8-GPU node, the usual DGX / HGX size
ALL_GPUS_PER_NODE = 8


def gpus_per_node(devices: Any) -> int:
    """``hydra.launcher.gpus_per_node`` for ``trainer.devices``: that many GPUs (and tasks) per node, or
    :data:`ALL_GPUS_PER_NODE` for -1 / "auto" (all of a node). A list of device ids counts its entries."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return ALL_GPUS_PER_NODE


# the launcher config asks for ``${slurm_gpus_per_node:${trainer.devices}}``: registered when strongpose.train
# (the command that submits and the jobs it starts) is imported
OmegaConf.register_new_resolver("slurm_gpus_per_node", gpus_per_node, replace=True)


def job_id() -> str | None:
    """This SLURM job's id as ``scontrol`` names it (``<array job>_<task>`` for an array task), None outside SLURM.
    A requeued job keeps it."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def with_slurm_environment(plugins: list) -> list:
    """``plugins`` plus ``SLURMEnvironment(auto_requeue=False)`` when running as a SLURM job and no cluster
    environment is given. Lightning would otherwise pick ``SLURMEnvironment(auto_requeue=True)`` by itself,
    whose requeue saves inside the signal handler (mid-step, or mid-validation with the EMA weights in), as
    soon as ``callbacks.interrupt`` leaves SIGUSR1 alone: the requeue is callbacks.interrupt's, or none."""
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        plugins = [*plugins, SLURMEnvironment(auto_requeue=False)]
    return plugins


def check_world_size(trainer: L.Trainer) -> None:
    """Under SLURM (not an interactive allocation), SLURM's task count must be the trainer's world size."""
    if not SLURMEnvironment.detect():
        return
    tasks = int(os.environ["SLURM_NTASKS"])
    if tasks != trainer.world_size:
        raise ValueError(
            f"this SLURM job runs {tasks} tasks (SLURM_NTASKS), but the trainer has {trainer.world_size} "
            f"process(es) (trainer.devices={trainer.num_devices} x trainer.num_nodes={trainer.num_nodes}): every "
            f"task would train its own copy of the run. One task per GPU: with hydra/launcher=slurm use "
            f"trainer=ddp (one node) or trainer=ddp_multinode, and let hydra.launcher.gpus_per_node follow "
            f"trainer.devices (its default); for srun by hand, --ntasks-per-node=trainer.devices")
