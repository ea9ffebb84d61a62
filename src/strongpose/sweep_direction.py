"""Which way an optimising Hydra sweeper (Optuna) should go for ``optimized_metric``.

``hparams_search=optuna`` asks for ``direction: ${sweep_direction:${optimized_metric}}``: ``maximize`` for a COCO
statistic (``val/AP``), ``minimize`` for a loss, the same rule as the checkpoint callback's ``mode: auto``.
A direction set by hand against the metric (``optimized_metric=val/AP hydra.sweeper.direction=minimize``) would
search for the worst models without a word: :func:`check_sweep_direction` refuses it, and loss weights searched by
the weighted total loss, before the first trial (:class:`SweepCheck`, a Hydra callback of train.yaml) and in each;
:func:`check_new_study_folder` refuses a new study into an earlier sweep's folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from strongpose.callbacks import monitor_mode
from strongpose.config_check import ConfigError, InputErrorExit, in_multirun

DIRECTIONS = {"max": "maximize", "min": "minimize"}


def sweep_direction(metric: str | None) -> str:
    """``maximize`` / ``minimize`` for ``metric`` (as :func:`strongpose.callbacks.monitor_mode`)."""
    return DIRECTIONS[monitor_mode(metric)]


# registered when strongpose.train (the command that sweeps and the jobs it starts) is imported
OmegaConf.register_new_resolver("sweep_direction", sweep_direction, replace=True)


# the weighted totals: their scale moves with the loss weights, so runs of other weights cannot be ranked by them
WEIGHTED_TOTALS = ("train/loss", "val/loss")


def optimising_sweeper() -> Any | None:
    """The running multirun's sweeper config when it optimises (it has a ``direction``: Optuna), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return None
    sweeper = HydraConfig.get().get("sweeper")
    return sweeper if sweeper is not None and sweeper.get("direction") is not None else None


def check_sweep_direction(metric: str | None, sweeper: Any) -> None:
    """Refuse an optimising sweeper's single ``direction`` that goes against ``metric`` (Optuna's names or
    enum; a list of directions, a multi-objective study, is the user's own), and one that searches the loss
    weights by a weighted total loss (it would find the smallest weights, not the best model)."""
    get = getattr(sweeper, "get", None)
    if get is None:
        return
    searched = [str(key) for key in (get("params") or {}) if str(key).startswith("model.loss.weights.")]
    if searched and get("direction") is not None and metric in WEIGHTED_TOTALS:
        raise ConfigError(f"the sweep searches {', '.join(searched)} by optimized_metric={metric}, the weighted "
                          f"total: smaller weights make it smaller whatever the model; optimise val/AP (or an "
                          f"unweighted term, {metric}_skhm, ...) or leave the weights out of the search")
    direction = get("direction")
    name = getattr(direction, "name", direction)  # optuna's StudyDirection / the plugin's Direction enum
    if not isinstance(name, str) or name.lower() not in DIRECTIONS.values():
        return
    wanted = sweep_direction(metric)
    if name.lower() != wanted:
        raise ConfigError(f"hydra.sweeper.direction={name.lower()} but optimized_metric={metric} is best "
                          f"{'high' if wanted == 'maximize' else 'low'}: the sweep would look for the worst runs; "
                          f"leave direction to hparams_search=optuna (${{sweep_direction:${{optimized_metric}}}}) "
                          f"or set {wanted}")


# the command line's sweep syntax: Optuna's distributions and the basic sweeper's lists / ranges
SWEEP_SYNTAX = ("interval(", "choice(", "range(", "tag(", "glob(")


def check_new_study_folder(config: DictConfig) -> None:
    """An optimising sweep's study lives in memory, so a new sweep draws new trials: into a folder of an earlier
    sweep's jobs, with ``resume=auto``, its trial N would meet trial N's checkpoint of another configuration (each
    job refuses it; Hydra would already have written over that job's ``.hydra`` files). Refused before the
    first trial."""
    folder = Path(str(config.hydra.sweep.dir))
    if config.get("resume") != "auto" or not folder.is_dir():
        return
    earlier = sorted({p.parent.parent.name for p in folder.glob("*/checkpoints/*.ckpt")}, key=lambda n: (len(n), n))
    if earlier:
        raise ConfigError(f"hydra.sweep.dir={folder} holds an earlier sweep's jobs with checkpoints "
                          f"({', '.join(earlier[:5])}{', ...' if len(earlier) > 5 else ''}): a "
                          f"new optimising sweep draws new trials, which would meet their folders; sweep into a new "
                          f"folder (or resume=null to train every trial afresh over them)")


class SweepCheck(HydraCallback):
    """:func:`check_sweep_direction` once, before an optimising sweep's first trial (none is trained or queued for
    nothing), over its whole search space: ``hydra.sweeper.params`` and the command line's distributions
    (``'model.loss.weights.mid=interval(0.1,1)'``); and :func:`check_new_study_folder`. Each trial checks the
    direction again (:func:`strongpose.train.train`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper")
        if sweeper is None or sweeper.get("direction") is None:
            return
        searched = dict(sweeper.get("params") or {})
        for override in config.hydra.overrides.get("task", []):
            key, _, value = str(override).partition("=")
            if any(syntax in value for syntax in SWEEP_SYNTAX) or "," in value and "[" not in value:
                searched[key.lstrip("+~")] = value
        try:
            check_sweep_direction(config.get("optimized_metric"), {"direction": sweeper.direction, "params": searched})
            check_new_study_folder(config)
        except ConfigError as err:  # Hydra turns a callback's Exception into a warning and sweeps on: exit instead
            print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
            raise InputErrorExit(2) from err
