"""StrongPose losses as free functions: heat maps as binary classification, offsets as masked L1.

Shapes: B batch, C channels, h x w map. Targets are the codec's (see ``StrongPoseCodec.encode``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from strongpose.codec.hough import _const  # small constants made once per device (outside inference mode)
from strongpose.models.heads import HEATMAP_HEADS

HEATMAP_LOSSES = ("bce", "focal")
# strongpose_losses' ``counts`` are integers, in units of 1 / COUNT_SCALE (fixed point: a batch's float tensors
# are cast to float16 / bfloat16 under a *-true precision, too coarse or too small for millions of cells)
COUNT_SCALE = 2**16


def _heatmap_channel_sums(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str,
                          focal_gamma: float, focal_alpha: float | None) -> torch.Tensor:
    """(2, C): per channel, the weighted sum of the per-cell losses and the sum of the weights (:func:`heatmap_loss`
    before the division)."""
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
    return torch.stack([torch.where(weight > 0, loss * weight, 0.0).sum((0, 2, 3)), weight.sum((0, 2, 3))])


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
    total, count = _heatmap_channel_sums(logits, target, weight, kind, focal_gamma, focal_alpha).sum(1)
    return total / count.clamp(min=1.0)


def _offset_channel_sums(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                         count_scale: float = 1.0) -> torch.Tensor:
    """(2, C): per map, the sum of |dx| + |dy| over its valid cells and the number of valid cells x ``count_scale``."""
    b, c2, h, w = pred.shape
    err = (pred.float() - target).abs().view(b, c2 // 2, 2, h, w).sum(2)
    return torch.stack([torch.where(valid, err, 0.0).sum((0, 2, 3)), valid.sum((0, 2, 3)) * float(count_scale)])


def offset_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, disk_radius: float) -> torch.Tensor:
    """L1 of (dx, dy) over the valid cells, in units of the disk radius (PersonLab's normalisation).

    Args:
        pred, target: (B, 2C, h, w) offsets in input pixels, channels (dx, dy) per map.
        valid: (B, C, h, w) bool.

    Returns the mean over valid (map, cell) pairs of (|dx| + |dy|) / R; 0 when nothing is valid.
    """
    total, count = _offset_channel_sums(pred, target, valid).sum(1)
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
    names = list(outputs)
    missing = set(names) - set(weights)
    if missing:
        raise KeyError(f"no loss weight for {sorted(missing)} (weights: {dict(weights)})")
    # The terms side by side, a few operations on all the maps of a kind rather than ten on each map: on a fast
    # GPU a small batch's step is limited by the host queueing its operations (experiments/RESULTS.md, "Seventeenth
    # session"). Per channel (heat maps) or map (offsets): (loss sum, count), then summed per term.
    heat = [name for name in names if name in HEATMAP_HEADS]
    offsets = [name for name in names if name not in HEATMAP_HEADS]
    per_channel = []
    if heat:
        per_channel.append(_heatmap_channel_sums(_cat([outputs[n] for n in heat]), _cat([targets[n] for n in heat]),
                                                 targets["weight"], heatmap, focal_gamma, focal_alpha))
    if offsets:  # counts in disk radii: the terms are in units of the disk radius
        per_channel.append(_offset_channel_sums(_cat([outputs[n] for n in offsets]), _cat([targets[n] for n in offsets]),
                                                _cat([targets[f"{n}_valid"] for n in offsets]), disk_radius))
    order = heat + offsets
    sizes = [outputs[name].shape[1] // (1 if name in HEATMAP_HEADS else 2) for name in order]
    per_channel = _cat(per_channel)
    # per term: the channels selected by a (channel, term) mask, summed (not a product with a 0/1 matrix, where an
    # infinite term would make every other NaN, nor a matmul, which autocast would lower)
    segments = _segments(tuple(sizes), per_channel.device)
    totals, own_counts = torch.where(segments, per_channel.unsqueeze(2), 0.0).sum(1).unbind()
    if counts is None:
        counts = own_counts.detach()
    else:  # in the units of the own counts: offsets in disk radii
        # (a Python number times a tensor: no copy from the host, which would wait for the GPU; float32 keeps 7
        # significant digits of any count, and no float64, which MPS lacks)
        counts = torch.stack([counts[name].float() * ((1.0 if name in HEATMAP_HEADS else disk_radius) / COUNT_SCALE)
                              for name in order]).to(totals.device)
    if mean_over_processes is not None:  # one all-reduce for all terms
        counts = mean_over_processes(counts)
    # clamp: a term with nothing to learn (no valid cell) is 0, not 0 / 0
    values = totals / counts.clamp(min=1.0)
    terms = dict(zip(order, values.unbind()))
    terms = {name: terms[name] for name in names}
    # (a product and a sum, not torch.dot: no autocast list may ever lower it)
    terms["total"] = (values * _const(tuple(float(weights[name]) for name in order), values.device, torch.float32)).sum()
    return terms


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The maps side by side along the channels (one map: itself, no copy), of the dtype they promote to."""
    if len(tensors) == 1:
        return tensors[0]
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):  # autocast's cat refuses float16 targets under bfloat16 autocast
        with torch.autocast(device, enabled=False):
            return torch.cat(tensors, 1)
    return torch.cat(tensors, 1)


@functools.lru_cache(maxsize=64)
def _segments(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(sum(sizes), len(sizes)) bool on ``device``: True where a channel belongs to a term (``sizes[t]`` channels
    each, in order), made once (its Python tuple too: it would cost the host more than the step's operations)."""
    return _const(tuple(tuple(term == t for t in range(len(sizes))) for term, size in enumerate(sizes)
                        for _ in range(size)), device, torch.bool)
