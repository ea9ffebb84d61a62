"""``final_test=true``: after training, the best checkpoint (else the last) evaluated on the validation data with the
test-time options of ``final_test_options`` (flip, scales, thresholds, decoding), exactly as ``python -m
strongpose.evaluate`` does, its statistics added to the run's metrics as ``test/AP``, ... (papers report flip-test
AP; validation during training runs without it). The lightning-hydra-template's ``test: True`` after ``fit``.
The options are checked before training: a typo found after three days of it would be too late.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from strongpose.config_check import ConfigError, check_types
from strongpose.tracking import say

OPTIONS = ("flip", "scales", "keypoint_threshold", "person_threshold", "codec")  # evaluate's test group
PREFIX = "test/"  # of the statistics in the metrics (test/AP, ...): an optimized_metric may name one


def final_test_metrics(cfg: DictConfig) -> set[str]:
    """The ``test/*`` metrics a run with ``final_test=true`` reports (COCO's, and CrowdPose's by crowd index)."""
    from strongpose.evaluation.coco_eval import CROWD_STAT_NAMES, STAT_NAMES

    return {PREFIX + name for name in STAT_NAMES + CROWD_STAT_NAMES} if cfg.get("final_test") else set()


def evaluate_config(cfg: DictConfig, checkpoint: str, val_paths: tuple[Any, Any]) -> DictConfig:
    """The ``strongpose.evaluate`` config of the final test: the run's validation data, batch sizes and
    precision, ``final_test_options`` as its ``test`` group, results into ``<output_dir>/test``."""
    options = OmegaConf.to_container(cfg.get("final_test_options") or OmegaConf.create({}), resolve=True)
    if unknown := sorted(set(options) - set(OPTIONS)):
        raise ConfigError(f"final_test_options: unknown {', '.join(unknown)}; the options are {', '.join(OPTIONS)} "
                          f"(those of python -m strongpose.evaluate's test group)")
    data = cfg.get("data") or {}
    precision = str((cfg.get("trainer") or {}).get("precision") or "32")
    return OmegaConf.create({
        "ckpt_path": str(checkpoint), "results": None, "skeleton": None, "per_keypoint": True,
        "backend": "pycocotools", "warmup": False, "seed": cfg.get("seed"), "device": None,
        "precision": precision if precision in ("32", "32-true", "bf16-mixed", "16-mixed") else "32",
        "data": {"val_images": str(val_paths[0]), "val_annotations": str(val_paths[1]),
                 "max_val_images": data.get("max_val_images"), "input_size": None,
                 "batch_size": data.get("batch_size", 8), "val_batch_size": data.get("val_batch_size"),
                 "num_workers": data.get("num_workers", 0)},
        "test": {"flip": False, "scales": [1.0], "keypoint_threshold": None, "person_threshold": None,
                 "codec": None, **options},
        "paths": {"output_dir": str(Path(cfg.paths.output_dir) / "test")},
    })


def check_test_options(cfg: DictConfig, val_paths: tuple[Any, Any] | None) -> None:
    """Before training: ``final_test_options`` of the right names and types (named as ``final_test_options.*``)."""
    if cfg.get("final_test") is not None and not isinstance(cfg.get("final_test"), bool):  # "no" would be true
        raise ConfigError(f"final_test must be true or false, got {cfg.get('final_test')!r}")
    optimized = str(cfg.get("optimized_metric") or "")
    if optimized.startswith(PREFIX) and optimized not in final_test_metrics(cfg):
        raise ConfigError(f"optimized_metric={optimized!r}: " + (
            f"the final test reports {', '.join(sorted(final_test_metrics(cfg)))}" if cfg.get("final_test") else
            "test/* metrics come from the final test: final_test=true"))
    if not cfg.get("final_test"):
        return
    if val_paths is None:
        raise ConfigError("final_test=true needs the data module's validation data (val_paths); this data module "
                          "has none")
    from strongpose.data.annotations import read_coco_json
    from strongpose.evaluation.coco_eval import CROWD_STAT_NAMES, has_crowd_index

    if optimized.startswith(PREFIX) and optimized[len(PREFIX):] in CROWD_STAT_NAMES \
            and not has_crowd_index(read_coco_json(Path(val_paths[1]))):
        raise ConfigError(f"optimized_metric={optimized!r} is CrowdPose's AP by crowd index, reported only when every "
                          f"validation image has a crowdIndex; {val_paths[1]} has none (COCO's AP: test/AP)")
    from strongpose.evaluate import TYPES
    from strongpose.inference.predictor import decode_settings

    ecfg = evaluate_config(cfg, "best.ckpt", val_paths)
    try:
        check_types(ecfg, TYPES)
    except ConfigError as err:
        raise ConfigError(re.sub(r"\btest\.", "final_test_options.", str(err))) from None
    decode_settings(OmegaConf.to_container(ecfg.test.codec) if ecfg.test.codec is not None else None,
                    "final_test_options.codec")
    # the values the predictor checks when it is built, after training: here, before it
    from strongpose.inference.predictor import threshold
    from strongpose.inference.test_time import scale_sizes

    try:
        scale_sizes(512, list(ecfg.test.scales), 8)
    except ConfigError as err:
        raise ConfigError(re.sub(r"\btest\.", "final_test_options.", str(err))) from None
    for name in ("keypoint_threshold", "person_threshold"):
        threshold(f"final_test_options.{name}", ecfg.test[name])


def monitor_validation_twin(cfg: DictConfig) -> None:
    """``optimized_metric=test/AP`` with the checkpoint (or early stopping) callback monitoring it (their default,
    ``${optimized_metric}``): the final test comes after training, so the checkpoints are chosen (and the run stopped)
    by its validation twin, ``val/AP`` (by ``val/loss`` when the run computes no COCO statistics while training).
    In place."""
    optimized = cfg.get("optimized_metric")
    callbacks = cfg.get("callbacks") or {}
    for name in ("model_checkpoint", "early_stopping"):  # early stopping too: it watches the validations
        monitoring = callbacks.get(name)
        if optimized in final_test_metrics(cfg) and monitoring is not None and monitoring.get("monitor") == optimized:
            twin = "val/" + optimized[len(PREFIX):]
            monitoring.monitor = twin if callbacks.get("coco_eval") is not None else "val/loss"


def run_final_test(cfg: DictConfig, trainer: L.Trainer, val_paths: tuple[Any, Any], best: dict | None,
                    last: str) -> dict[str, float]:
    """After ``fit``: the final test on rank 0 (the others return nothing), ``{test/AP: ..., ...}``."""
    if not cfg.get("final_test") or not trainer.is_global_zero:
        return {}
    checkpoint = best["path"] if best else last
    if not checkpoint or not Path(checkpoint).is_file():
        say("final_test=true: no checkpoint was written (fast_dev_run, or checkpointing off): nothing to test")
        return {}
    from strongpose import evaluate

    ecfg = evaluate_config(cfg, checkpoint, val_paths)
    options = ", ".join(f"{key}={value}" for key, value in ecfg.test.items() if value not in (None, False, [1.0]))
    say(f"Testing {'the best' if best else 'the last'} checkpoint {checkpoint} ({options or 'no test-time options'}) "
        f"on {ecfg.data.val_annotations}")
    summary = evaluate.run(ecfg)
    return {f"{PREFIX}{name}": float(value) for name, value in summary["stats"].items()}
