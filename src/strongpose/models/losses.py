"""StrongPose losses as free functions: heat maps as binary classification, offsets as masked L1.

Shapes: B batch, C channels, h x w map. Targets are the codec's (see ``StrongPoseCodec.encode``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from strongpose.models.heads import HEATMAP_HEADS

HEATMAP_LOSSES = ("bce", "focal")
# strongpose_losses' ``counts`` are integers, in units of 1 / COUNT_SCALE (fixed point: a batch's float tensors
# are cast to float16 / bfloat16 under a *-true precision, too coarse or too small for millions of cells)
COUNT_SCALE = 2**16


def _heatmap_sum(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str,
                 focal_gamma: float, focal_alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted sum of the per-cell losses, sum of the weights): :func:`heatmap_loss` before the division."""
    if kind not in HEATMAP_LOSSES:
        raise ValueError(f"heat-map loss must be one of {HEATMAP_LOSSES}, got {kind!r}")
    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if kind == "focal":
        # 1 - p_true, with sigmoid(-x) for 1 - p: 1 - sigmoid(x) is exactly 0 in float32 from x ~ 16.6, and
        # there m ** gamma has an infinite slope for gamma < 1 (a NaN gradient from a finite loss); the floor
        # keeps that slope finite for any gamma (its own gradient is 0 below it)
        p, q = logits.sigmoid(), (-logits).sigmoid()
        miss = (p * (1 - target) + q * target).clamp(min=1e-12)
        loss = loss * miss ** focal_gamma
        if focal_alpha is not None:
            loss = loss * (focal_alpha * target + (1 - focal_alpha) * (1 - target))
    weight = _cell_weights(target, weight)
    # where(), not a product, so that nothing at all (not even a NaN) passes from ignored cells
    return torch.where(weight > 0, loss * weight, 0.0).sum(), weight.sum()


def _cell_weights(target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) weight of each heat-map cell in the loss: the codec's weight map, except that a positive
    target always counts: a labelled keypoint's disk (in its own channel only) or a labelled person's body inside
    a crowd region or beside an unlabelled person (the negatives there are unknown)."""
    return torch.where(target > 0, 1.0, weight.float())  # broadcast over the channels


def heatmap_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "bce",
                 focal_gamma: float = 2.0, focal_alpha: float | None = None) -> torch.Tensor:
    """Per-cell binary classification loss, averaged over the cells with non-zero weight.

    Args:
        logits, target: (B, C, h, w); target in [0, 1].
        weight: (B, 1, h, w) the codec's weight map: 0 in crowd regions and on unlabelled people, where
            the prediction costs nothing, except at a positive target (a labelled person's keypoint disk in
            its own channel, its body): those always count.
        kind: ``bce`` or ``focal`` (sigmoid focal loss, Lin et al. 2017; ``focal_alpha`` None = no class
            balancing).
    """
    total, count = _heatmap_sum(logits, target, weight, kind, focal_gamma, focal_alpha)
    return total / count.clamp(min=1.0)


def _offset_sum(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over valid (map, cell) pairs of |dx| + |dy|, number of valid pairs)."""
    b, c2, h, w = pred.shape
    err = (pred.float() - target).abs().view(b, c2 // 2, 2, h, w).sum(2)
    return torch.where(valid, err, 0.0).sum(), valid.sum().float()


def offset_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, disk_radius: float) -> torch.Tensor:
    """L1 of (dx, dy) over the valid cells, in units of the disk radius (PersonLab's normalisation).

    Args:
        pred, target: (B, 2C, h, w) offsets in input pixels, channels (dx, dy) per map.
        valid: (B, C, h, w) bool.

    Returns the mean over valid (map, cell) pairs of (|dx| + |dy|) / R; 0 when nothing is valid.
    """
    total, count = _offset_sum(pred, target, valid)
    return total / (disk_radius * count.clamp(min=1))


def term_counts(targets: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """What each loss term the targets have divides its sum by (before the offsets' disk radius): the heat
    maps' cell weights, the offsets' valid (map, cell) pairs. Computed in the data workers for gradient
    accumulation (see :func:`strongpose_losses`' ``counts``)."""
    return {name: float(_cell_weights(value, targets["weight"]).sum() if name in HEATMAP_HEADS
                        else targets[f"{name}_valid"].sum())
            for name, value in targets.items() if name in HEATMAP_HEADS or f"{name}_valid" in targets}


def strongpose_losses(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                      weights: Mapping[str, float], disk_radius: float, heatmap: str = "bce",
                      focal_gamma: float = 2.0, focal_alpha: float | None = None,
                      mean_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      counts: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every term the network's outputs have, plus ``total`` = sum of ``weights[name] * term``.

    ``outputs`` are the network's raw outputs (heat-map logits, offsets in input pixels); terms are
    returned unweighted so that runs with different weights can be compared.

    ``mean_over_processes`` (data-parallel training): averages a tensor over the processes (an all-reduce).
    Each term's normaliser (heat-map weight sum, valid offset cells) is then the processes' mean rather than
    this process's own count, so that the average of the processes' gradients, which DDP takes, is the
    gradient of the global batch's loss: P processes x batch b train as one process x batch P*b. With
    per-process counts, a process whose images hold few people would weigh its cells more.

    ``counts`` (gradient accumulation over k micro-batches): per term, the window's :func:`term_counts` summed
    and divided by k, times :data:`COUNT_SCALE` (integer tensors), used instead of this micro-batch's own.
    Lightning divides each micro-batch's loss by k, so the accumulated gradient is then the gradient of the
    window's loss, as for one batch of all its images.
    """
    sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pred in outputs.items():
        if name in HEATMAP_HEADS:
            sums[name] = _heatmap_sum(pred, targets[name], targets["weight"], heatmap, focal_gamma, focal_alpha)
        else:
            total, count = _offset_sum(pred, targets[name], targets[f"{name}_valid"])
            sums[name] = total, count * disk_radius
    missing = set(sums) - set(weights)
    if missing:
        raise KeyError(f"no loss weight for {sorted(missing)} (weights: {dict(weights)})")
    if counts is None:
        counts = torch.stack([count for _, count in sums.values()]).detach()
    else:  # in the units of sums' own counts: offsets in disk radii
        # (a Python number times a tensor: no copy from the host, which would wait for the GPU; float32 keeps 7
        # significant digits of any count, and no float64, which MPS lacks)
        counts = torch.stack([counts[name].float() * ((1.0 if name in HEATMAP_HEADS else disk_radius) / COUNT_SCALE)
                              for name in sums]).to(next(iter(sums.values()))[0].device)
    if mean_over_processes is not None:  # one all-reduce for all terms
        counts = mean_over_processes(counts)
    # clamp: a term with nothing to learn (no valid cell) is 0, not 0 / 0
    terms = {name: total / count for (name, (total, _)), count in zip(sums.items(), counts.clamp(min=1.0).unbind())}
    terms["total"] = sum(weights[name] * term for name, term in terms.items())
    return terms
