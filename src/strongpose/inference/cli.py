"""Shared pieces of the inference entry points (``strongpose.evaluate``, ``strongpose.predict``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from strongpose.inference.predictor import Predictor, load


def predictor_from_config(cfg: DictConfig, input_size: int | None) -> Predictor:
    """``strongpose.load`` with the ``ckpt_path``, ``device``, ``precision`` and ``test.*`` options of an entry
    point's config."""
    test = cfg.test
    return load(cfg.ckpt_path, device=cfg.get("device"), flip=test.flip, scales=list(test.scales),
                keypoint_threshold=test.keypoint_threshold, person_threshold=test.person_threshold,
                input_size=input_size, precision=cfg.get("precision", "32"))


def timing_summary(totals: dict[str, float], images: int, wall_s: float) -> dict[str, float]:
    """Per-image milliseconds of each stage of :attr:`Predictor.last_timing` totals, and the wall time."""
    n = max(images, 1)
    return {**{key.replace("_ms", "_ms_per_image"): value / n for key, value in totals.items() if key.endswith("_ms")},
            "wall_s": wall_s, "images_per_s": images / wall_s if wall_s > 0 else 0.0}


def add_timing(totals: dict[str, float], timing: dict[str, float]) -> None:
    for key, value in timing.items():
        if key.endswith("_ms"):
            totals[key] = totals.get(key, 0.0) + value


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1 if isinstance(data, dict) else None))
    return path
