"""``hydra/launcher=slurm``: hydra-submitit's SLURM launcher, with each run's job shape read from that run's config.

hydra-submitit resolves ``hydra.launcher`` once, from the command line's config before the sweep's values are
applied, and submits every run of the sweep as one job array of that shape. StrongPose's launcher config takes
the shape from the trainer (``nodes: ${trainer.num_nodes}``, ``gpus_per_node`` from ``trainer.devices``), so a
scaling sweep such as ``trainer.devices=1,2,4,8`` would submit four 1-GPU jobs whose 2-, 4- and 8-device trainers
then stop at their start (:func:`strongpose.slurm.check_world_size`). This launcher resolves ``hydra.launcher``
for each run, as the run itself will see it, and submits one job array per run of consecutive jobs of the same
shape, all of them before waiting for any; the job numbers (and so the run folders ``<sweep dir>/<job number>``)
are those of the sweep. With one shape, the plugin's own ``launch`` runs; with several, its submission steps.

It lives in the ``hydra_plugins`` namespace because Hydra instantiates launchers only from there
(``hydra/launcher=slurm`` names it as ``_target_``); it needs the ``slurm`` extra (hydra-submitit-launcher).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
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
        if len(groups) == 1:  # one shape: the plugin's own launch, with the runs' resolved settings
            self.params = groups[0][0]
            return super().launch(job_overrides, initial_job_idx)
        shapes = ", ".join(f"jobs {first}-{first + len(runs) - 1}: {_shape(params)}" for params, first, runs in groups)
        log.info(f"{len(groups)} job arrays, one per job shape ({shapes})")
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        # the plugin's launch() submits one array, then waits for its jobs: submit every array first, then wait
        # (in this thread, so that Ctrl-C stops the waiting at once, as the plugin's does; the jobs keep running)
        jobs = [job for params, first, runs in groups for job in self._submit(params, runs, first)]
        return [job.results()[0] for job in jobs]

    def _submit(self, params: dict[str, Any], runs: list[Sequence[str]], first: int) -> list[Any]:
        """The submission half of hydra-submitit 1.2's ``launch()`` for one job array with ``params``, jobs
        numbered from ``first``: the same executor settings, folders and pickled launcher (its params those of
        the array). Mirrored rather than called because the plugin waits for the jobs before returning."""
        import submitit  # noqa: PLC0415 - lazily, as the plugin does (Hydra imports this module at every start)

        launcher = copy.copy(self)
        launcher.params = params
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_{k}": v for k, v in params.items()
                                            if k == "max_num_timeout"})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()
                                      if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        args = []
        for idx, overrides in enumerate(runs, start=first):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(launcher, *zip(*args))
        # if a later array's sbatch fails, these keep running: their ids, for scancel
        log.info(f"jobs {first}-{first + len(runs) - 1}: SLURM job(s) "
                 f"{', '.join(str(getattr(job, 'job_id', '?')) for job in jobs)}")
        return jobs


def _shape(params: dict[str, Any]) -> str:
    return (f"{params.get('nodes')} node(s) x {params.get('tasks_per_node')} task(s), "
            f"{params.get('gpus_per_node')} GPU(s) per node")
