"""Which way an optimising Hydra sweeper (Optuna) should go for ``optimized_metric``.

``hparams_search=optuna`` asks for ``direction: ${sweep_direction:${optimized_metric}}``: ``maximize`` for a COCO
statistic (``val/AP``), ``minimize`` for a loss, the same rule as the checkpoint callback's ``mode: auto``.
A direction set by hand against the metric (``optimized_metric=val/AP hydra.sweeper.direction=minimize``) would
search for the worst models without a word: :func:`check_sweep_direction` refuses it before training.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from strongpose.callbacks import monitor_mode
from strongpose.config_check import ConfigError

DIRECTIONS = {"max": "maximize", "min": "minimize"}


def sweep_direction(metric: str | None) -> str:
    """``maximize`` / ``minimize`` for ``metric`` (as :func:`strongpose.callbacks.monitor_mode`)."""
    return DIRECTIONS[monitor_mode(metric)]


# registered when strongpose.train (the command that sweeps and the jobs it starts) is imported
OmegaConf.register_new_resolver("sweep_direction", sweep_direction, replace=True)


# the weighted totals: their scale moves with the loss weights, so runs of other weights cannot be ranked by them
WEIGHTED_TOTALS = ("train/loss", "val/loss")


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
                          f"unweighted term, {metric}_skhm, ...) or leave the weights out of hydra.sweeper.params")
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
