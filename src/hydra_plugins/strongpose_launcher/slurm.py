"""``hydra/launcher=slurm``: hydra-submitit's SLURM launcher, with each run's job shape read from that run's config.

hydra-submitit resolves ``hydra.launcher`` once, from the command line's config before the sweep's values are
applied, and submits every run of the sweep as one job array of that shape. StrongPose's launcher config takes
the shape from the trainer (``nodes: ${trainer.num_nodes}``, ``gpus_per_node`` from ``trainer.devices``), so a
scaling sweep such as ``trainer.devices=1,2,4,8`` would submit four 1-GPU jobs whose 2-, 4- and 8-device trainers
then stop at their start (:func:`strongpose.slurm.check_world_size`). This launcher resolves ``hydra.launcher``
for each run, as the run itself will see it, and submits one job array per run of consecutive jobs of the same
shape, all at once; the job numbers (and so the run folders ``<sweep dir>/<job number>``) are those of the
sweep. Everything else, the submission included, is the plugin's.

It lives in the ``hydra_plugins`` namespace because Hydra instantiates launchers only from there
(``hydra/launcher=slurm`` names it as ``_target_``); it needs the ``slurm`` extra (hydra-submitit-launcher).
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # no `slurm` extra: Hydra imports every hydra_plugins module at start, so no warning here
    submitit_launcher = None

log = logging.getLogger(__name__)
_Base = submitit_launcher.SlurmLauncher if submitit_launcher is not None else object


class SlurmLauncher(_Base):
    """hydra-submitit's ``SlurmLauncher``; :meth:`launch` groups the runs by their resolved launcher settings."""

    def job_params(self, overrides: Sequence[str]) -> dict[str, Any]:
        """``hydra.launcher`` as the run with these sweep overrides resolves it (what ``__init__`` got from the
        sweep's own config, with the run's ``trainer.devices``, ``trainer.num_nodes``, ...)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        params = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        params.pop("_target_", None)
        return params

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        str(self.config.hydra.sweep.dir)  # resolved (and its ${now:...} cached) once, for every run's config
        groups: list[tuple[dict[str, Any], int, list[Sequence[str]]]] = []  # (params, first job, its runs)
        for offset, overrides in enumerate(job_overrides):
            params = self.job_params(overrides)
            if groups and groups[-1][0] == params:
                groups[-1][2].append(overrides)
            else:
                groups.append((params, initial_job_idx + offset, [overrides]))
        if len(groups) > 1:
            shapes = ", ".join(f"jobs {first}-{first + len(runs) - 1}: {_shape(params)}"
                               for params, first, runs in groups)
            log.info(f"{len(groups)} job arrays, one per job shape ({shapes})")

        def submit(group: tuple[dict[str, Any], int, list[Sequence[str]]]) -> Sequence[JobReturn]:
            params, first, runs = group
            launcher = copy.copy(self)  # the plugin reads self.params; each array gets its own
            launcher.params = params
            return submitit_launcher.SlurmLauncher.launch(launcher, runs, first)

        # the plugin's launch() submits, then waits for its jobs: one thread per array, so that all are queued at once
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            returns = list(pool.map(submit, groups))
        return [job for group in returns for job in group]


def _shape(params: dict[str, Any]) -> str:
    return (f"{params.get('nodes')} node(s) x {params.get('tasks_per_node')} task(s), "
            f"{params.get('gpus_per_node')} GPU(s) per node")
