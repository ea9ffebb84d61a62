"""Shared pieces of the inference entry points (``strongpose.evaluate``, ``strongpose.predict``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from strongpose.config_check import ConfigError
from strongpose.inference.onnx import load_onnx
from strongpose.inference.predictor import Predictor, decode_settings, load

# the types of the options evaluate and predict share (their configs have no _target_ to read them from; the
# test.codec.decode_* ones are the codec's, checked by decode_settings)
COMMON_TYPES: dict[str, Any] = {
    "ckpt_path": Path, "device": str | int | None, "precision": str | int | None,
    "test.flip": bool, "test.scales": list, "test.keypoint_threshold": float | None,
    "test.person_threshold": float | None,
}


def predictor_from_config(cfg: DictConfig, input_size: int | None) -> Predictor:
    """``strongpose.load`` with the ``ckpt_path``, ``device``, ``precision`` and ``test.*`` options of an entry
    point's config; ``strongpose.load_onnx`` for an exported ``.onnx`` file."""
    if "codec" in cfg:  # +codec.decode_x=... adds a key nothing here reads: the checkpoint holds the codec
        raise ConfigError("codec.* is a training setting (the checkpoint holds the codec): for evaluate and "
                          "predict, decoding settings are test.codec.decode_*, e.g. test.codec.decode_nms_oks=0.3")
    test = cfg.test
    codec = OmegaConf.to_container(test.codec) if test.get("codec") is not None else None
    decode_settings(codec, "test.codec")  # named as the command line spells them
    if str(cfg.ckpt_path).lower().endswith(".onnx"):  # an exported network: ONNX Runtime runs it (float32)
        return load_onnx(cfg.ckpt_path, codec=codec, input_size=input_size, device=cfg.get("device") or "cpu",
                         flip=test.flip, scales=list(test.scales), keypoint_threshold=test.keypoint_threshold,
                         person_threshold=test.person_threshold, precision=cfg.get("precision", "32"))
    return load(cfg.ckpt_path, device=cfg.get("device"), flip=test.flip, scales=list(test.scales),
                keypoint_threshold=test.keypoint_threshold, person_threshold=test.person_threshold,
                input_size=input_size, precision=cfg.get("precision", "32"), codec=codec)


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
