"""A sweep's job resumes only its own training.

``resume=auto`` continues from the newest checkpoint in the run folder: a requeued SLURM job, a sweep run again
to finish its jobs. A sweep run again into the same folder with other values (an Optuna study drawing new
parameters, a grid changed) would instead continue another configuration's checkpoint: an Optuna trial then trains
nothing and reports the other trial's score under its own parameters. So in a multirun a job resumes only a
checkpoint trained with its own configuration; what a resumed run may change (how long, on what, what it logs,
where the data are) is not compared.
"""

from __future__ import annotations

from typing import Any

import torch

from strongpose.checkpoint import CONFIG_KEY
from strongpose.config_check import ConfigError, in_multirun

# what a resumed run may change without training another configuration (a longer run, other hardware, other
# logging or checking, moved data); the rest (model, backbone, codec, data, seed, ...) defines what is trained
MAY_CHANGE_ON_RESUME = ("trainer", "logger", "callbacks", "hydra", "paths", "resume", "ckpt_path", "init_from",
                        "optimized_metric", "final_test", "final_test_options",
                        "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.prefetch_factor",
                        "data.encode_on", "data.val_batch_size", "data.max_val_images", "data.train_images",
                        "data.train_annotations", "data.val_images", "data.val_annotations", "model.optimizer.fused")


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` of a nested dict (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_settings(current: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """``key: saved -> now`` for each setting that defines what is trained (not :data:`MAY_CHANGE_ON_RESUME`) and
    differs between the checkpoint's resolved config ``saved`` and this run's ``current`` (keys in both)."""
    now, before = _leaves(current), _leaves(saved)
    return [f"{key}: {before[key]!r} -> {now[key]!r}" for key in now
            if key in before and before[key] != now[key]
            and not any(key == prefix or key.startswith(prefix + ".") for prefix in MAY_CHANGE_ON_RESUME)]


def check_job_resumes_itself(current: dict[str, Any], ckpt_path: str) -> None:
    """In a multirun, refuse to resume ``ckpt_path`` (found by ``resume=auto`` in the job's folder) when it was
    trained with another configuration than ``current`` (this run's resolved config; see the module's docstring)."""
    if not in_multirun():
        return
    try:  # memory-mapped: the tensors are not read
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(CONFIG_KEY)
    except Exception:  # noqa: BLE001 - an unreadable file: fit names it with the reason
        return
    if not isinstance(saved, dict):
        return
    changed = changed_settings(current, saved)
    if changed:
        raise ConfigError(f"resume=auto found {ckpt_path}, trained with another configuration "
                          f"({'; '.join(changed[:6])}{'; ...' if len(changed) > 6 else ''}): this folder holds "
                          f"another job's training (a sweep run again into the same folder with other values?); "
                          f"sweep into a new folder (hydra.sweep.dir) or start the jobs afresh with resume=null")
