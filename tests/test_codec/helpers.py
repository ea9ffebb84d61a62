"""Synthetic people for codec tests: a standing figure template placed and scaled at will."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# (x, y) of COCO's 17 keypoints for a standing person about 1 unit tall, centred on x = 0
TEMPLATE = np.array([
    [0.0, 0.00], [-0.03, -0.02], [0.03, -0.02], [-0.07, 0.0], [0.07, 0.0],
    [-0.15, 0.15], [0.15, 0.15], [-0.22, 0.35], [0.22, 0.35], [-0.25, 0.52], [0.25, 0.52],
    [-0.10, 0.55], [0.10, 0.55], [-0.11, 0.78], [0.11, 0.78], [-0.12, 1.0], [0.12, 1.0],
], dtype=np.float32)


def person(cx: float, top: float, height: float, visible=None) -> np.ndarray:
    """(17, 3) keypoints of a template person; ``visible`` (17,) bool selects labelled ones."""
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = cx + TEMPLATE[:, 0] * height
    kp[:, 1] = top + TEMPLATE[:, 1] * height
    kp[:, 2] = 2
    if visible is not None:
        kp[~np.asarray(visible), :] = 0
    return kp


def match_people(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of predicted to ground-truth people by mean distance over labelled keypoints."""
    lab = gt[..., 2] > 0
    d = np.linalg.norm(pred[:, None, :, :2] - gt[None, :, :, :2], axis=-1)  # (P, G, K)
    cost = (d * lab[None]).sum(-1) / np.maximum(lab.sum(-1), 1)[None]
    return linear_sum_assignment(cost)


def as_tensor(people: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(people)) if people else torch.zeros(0, 17, 3)
