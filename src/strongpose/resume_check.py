"""A sweep's job resumes only its own training.

``resume=auto`` continues from the newest checkpoint in the run folder: a requeued SLURM job, a sweep run again
to finish its jobs. A sweep run again into the same folder with other values (an Optuna study drawing new
parameters, a grid changed) would instead continue another configuration's checkpoint: an Optuna trial then trains
nothing and reports the other trial's score under its own parameters. So in a multirun each of the job's own
overrides must have the value its checkpoint was trained with; keys that a resumed run may change (how long, on
what, what it logs) are not compared.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from strongpose.checkpoint import CONFIG_KEY
from strongpose.config_check import ConfigError, in_multirun

# what a resumed run may change without training another configuration (a longer run, other hardware, other
# logging or checking); the rest (model, backbone, codec, data, seed, ...) defines what is trained
MAY_CHANGE_ON_RESUME = ("trainer", "logger", "callbacks", "hydra", "paths", "resume", "ckpt_path", "debug",
                        "experiment", "hparams_search", "optimized_metric", "final_test", "final_test_options",
                        "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.prefetch_factor",
                        "data.encode_on", "data.val_batch_size")
_MISSING = object()


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def changed_overrides(cfg: DictConfig, overrides: list[str], saved: dict[str, Any]) -> list[str]:
    """``key: saved -> now`` for each override (``key=value``, ``group=option``, ``group/sub=option``) whose key
    defines what is trained and whose value differs from the checkpoint's config ``saved``."""
    changed = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if any(key == prefix or key.startswith(prefix + ".") for prefix in MAY_CHANGE_ON_RESUME):
            continue
        node = OmegaConf.select(cfg, key, default=_MISSING)
        now = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        before = _lookup(saved, key)
        if before is not _MISSING and now is not _MISSING and before != now:
            changed.append(f"{key}: {before!r} -> {now!r}")
    return changed


def check_job_resumes_itself(cfg: DictConfig, ckpt_path: str) -> None:
    """In a multirun, refuse to resume ``ckpt_path`` (found by ``resume=auto`` in the job's folder) when it was
    trained with other values of the job's overrides (see the module's docstring)."""
    if not in_multirun():
        return
    from hydra.core.hydra_config import HydraConfig

    try:  # memory-mapped: the tensors are not read
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(CONFIG_KEY)
    except Exception:  # noqa: BLE001 - an unreadable file: fit names it with the reason
        return
    if not isinstance(saved, dict):
        return
    changed = changed_overrides(cfg, list(HydraConfig.get().overrides.task), saved)
    if changed:
        raise ConfigError(f"resume=auto found {ckpt_path}, trained with other values of this job's overrides "
                          f"({'; '.join(changed)}): this folder holds another configuration's training (a sweep "
                          f"run again into the same folder with other values?); sweep into a new folder "
                          f"(hydra.sweep.dir) or start the jobs afresh with resume=null")
