"""SLURM: the tasks a job starts must be the trainer's ranks, and one requeue mechanism runs.

A SLURM job runs one task per DDP rank (``hydra/launcher=slurm``); Lightning reads rank and world size from
SLURM's variables and checks the tasks per node against a DDP trainer's devices when it starts the run, but not
for a one-device trainer: with 8 tasks and the default trainer, 8 copies of the same run train side by side and
write the same files. :func:`check_world_size` refuses every mismatch before anything starts, with the fix.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import OmegaConf

from strongpose.config_check import ConfigError

# GPUs a job asks for per node when the trainer takes "all visible" devices (trainer=ddp: devices=-1), which
# the launcher cannot know at submission: an 8-GPU node, the usual DGX / HGX size
ALL_GPUS_PER_NODE = 8


def gpus_per_node(devices: Any) -> int:
    """``hydra.launcher.gpus_per_node`` for ``trainer.devices``, read as Lightning reads it: a count (``4``,
    ``"4"``), device ids (``[0, 1]``, ``"0,1"``, ``"1,"``: one per id), or -1 / "auto" (all of a node:
    :data:`ALL_GPUS_PER_NODE`)."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([part for part in devices.split(",") if part.strip()])
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        count = int(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        count = devices
    else:
        return ALL_GPUS_PER_NODE  # "auto"
    if count == -1:
        return ALL_GPUS_PER_NODE
    if count < 1:
        raise ConfigError(f"trainer.devices={devices!r}: a SLURM job needs at least one GPU per node")
    return count


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
    """``plugins`` plus ``SLURMEnvironment(auto_requeue=False)`` when SLURM started the ranks
    (:func:`slurm_starts_the_ranks`) and no cluster environment is given. In a SLURM job Lightning would
    otherwise pick ``SLURMEnvironment(auto_requeue=True)`` by itself, whose requeue saves inside the signal
    handler (mid-step, or mid-validation with the EMA weights in), as soon as ``callbacks.interrupt`` leaves
    SIGUSR1 alone: the requeue is callbacks.interrupt's, or none. In an interactive allocation it would pick
    none, and every srun task would start its own DDP processes."""
    if slurm_starts_the_ranks() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        interactive = interactive_srun_tasks() > 1
        with warnings.catch_warnings():
            if interactive:  # Lightning's "srun is available but not used": it is, Lightning cannot tell here
                warnings.filterwarnings("ignore", message="The `srun` command is available")
            environment = SLURMEnvironment(auto_requeue=False)
        if interactive and "MASTER_ADDR" not in os.environ and os.environ.get("SLURM_STEP_NODELIST"):
            # Lightning takes the first node of SLURM_NODELIST, the whole allocation's; rank 0 runs on the
            # step's first node, which is another one when the step has a part of the allocation
            os.environ["MASTER_ADDR"] = environment.resolve_root_node_address(os.environ["SLURM_STEP_NODELIST"])
        plugins = [*plugins, environment]
    return plugins


def slurm_starts_the_ranks() -> bool:
    """SLURM started this run's processes, and not torchrun (whose environment wins over SLURM's, as in
    Lightning's own order of choice): a SLURM job, or an ``srun`` of several tasks inside an interactive
    allocation (:func:`interactive_srun_tasks`)."""
    if TorchElasticEnvironment.detect():
        return False
    return SLURMEnvironment.detect() or interactive_srun_tasks() > 1


def interactive_srun_tasks() -> int:
    """Tasks of the ``srun`` step this process is one of, inside an interactive allocation (``salloc``, or
    ``srun --pty bash``: Lightning takes a job named ``bash`` or ``interactive`` as one where the user starts
    the processes, and ignores SLURM there); 0 elsewhere. With several tasks, e.g. ``srun --ntasks-per-node=4
    python -m strongpose.train trainer=ddp trainer.devices=4`` typed in such a shell, each task would otherwise
    start its own DDP processes (16 where 4 were meant); :func:`with_slurm_environment` makes them the ranks.
    Only a process that srun started itself counts (``SLURM_TASK_PID`` is its pid: a wrapper script must
    ``exec python ...``): a ``python -m strongpose.train trainer=ddp`` typed in the shell, even in a shell that is
    task 0 of a several-task step (``srun --ntasks-per-node=4 --pty bash``), leaves Lightning to start the
    ranks."""
    if SLURMEnvironment.job_name() not in ("bash", "interactive") or "SLURM_PROCID" not in os.environ:
        return 0
    if os.environ.get("SLURM_TASK_PID") != str(os.getpid()):
        return 0
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    return int(tasks) if tasks.isdigit() else 0


def check_world_size(trainer: L.Trainer) -> None:
    """Under SLURM, SLURM's task count must be the trainer's processes: devices x nodes. (Not
    ``trainer.world_size``: under DDP Lightning takes that from SLURM_NTASKS itself.)"""
    if not slurm_starts_the_ranks():
        return
    tasks = int(os.environ["SLURM_NTASKS"])
    processes = trainer.num_devices * trainer.num_nodes
    if tasks != processes:
        raise ConfigError(
            f"this SLURM job runs {tasks} task(s) (SLURM_NTASKS), but the trainer has {processes} process(es) "
            f"(trainer.devices={trainer.num_devices} x trainer.num_nodes={trainer.num_nodes}): the tasks would "
            f"not make one run (each its own copy, or fewer ranks than GPUs). One task per GPU: with "
            f"hydra/launcher=slurm use trainer=ddp (one node) or trainer=ddp_multinode, and let "
            f"hydra.launcher.gpus_per_node follow trainer.devices (its default); with srun by hand, "
            f"--ntasks-per-node=trainer.devices and --nodes=trainer.num_nodes")
