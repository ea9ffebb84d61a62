"""Hough voting of the keypoint heat maps through the short-range offsets, and peak finding.

All functions are batched (B x C x h x w) and run on the tensors' device.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from strongpose.structures import input_to_map, map_to_input


@functools.lru_cache(maxsize=32)
def _gaussian_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) banded matrix applying a truncated 1-D Gaussian (radius ceil(2.5 sigma), zero padding)."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(n, device=device, dtype=torch.float64)
    diff = t[:, None] - t[None, :]
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    g = torch.exp(-0.5 * (diff / sigma) ** 2) * (diff.abs() <= radius) / taps.sum()
    return g.to(dtype)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, h, w) maps, sigma in map pixels (0 = none).

    Two small matrix products (G_h @ X @ G_w^T): on the CPU they are ~10x faster than conv2d with
    single-channel kernels, and they run unchanged on the GPU.
    """
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    gy = _gaussian_matrix(h, float(sigma), maps.device, maps.dtype)
    gx = _gaussian_matrix(w, float(sigma), maps.device, maps.dtype)
    return gy @ maps @ gx.T


def max_filter3(maps: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (B, C, h, w) maps (same as max_pool2d(3, 1, 1), separable and ~20x faster on CPU)."""
    p = F.pad(maps, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def hough_vote(skhm: torch.Tensor, short: torch.Tensor, stride: int, vote_threshold: float = 0.01,
               scale: float = 1.0) -> torch.Tensor:
    """Each cell votes its probability (times ``scale``) at (cell + short offset), bilinearly splatted.

    skhm: (B, K, h, w) probabilities; short: (B, 2K, h, w) offsets in input pixels, (dx, dy) per type.
    Returns (B, K, h, w) vote sums (unnormalised).
    """
    b, k, h, w = skhm.shape
    hw = h * w
    # only cells with some probability vote: for real outputs most of the map is background.
    # Flat 1-D indexing throughout: much cheaper than multi-tensor advanced indexing on the CPU.
    flat = skhm.reshape(-1)
    sel = (flat > vote_threshold).nonzero().squeeze(1)
    prob = flat[sel] * scale
    channel = torch.div(sel, hw, rounding_mode="floor")  # b * K + k
    cell = sel - channel * hw
    off = short.reshape(-1)
    dx_at = channel * hw + sel  # = (2 * channel) * hw + cell: the dx map of this channel
    # target in continuous map coordinates, clamped to a one-cell ring around the map: votes that
    # leave the map land in the ring, which is cut off below (no masking needed)
    px = (cell % w + off[dx_at] / stride).clamp_(-1, w)
    py = (torch.div(cell, w, rounding_mode="floor") + off[dx_at + hw] / stride).clamp_(-1, h)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    wp = w + 2
    corner = (channel * (h + 2) * wp + (y0.long() + 1) * wp + x0.long() + 1)
    index = corner[None] + torch.tensor([[0], [1], [wp], [wp + 1]], device=skhm.device)
    gx, gy = 1 - fx, 1 - fy
    weight = torch.stack((gx * gy, fx * gy, gx * fy, fx * fy)) * prob
    votes = torch.zeros(b * k * (h + 2) * wp, device=skhm.device, dtype=skhm.dtype)
    votes.index_add_(0, index.reshape(-1), weight.reshape(-1))
    return votes.view(b, k, h + 2, wp)[:, :, 1:-1, 1:-1]


def find_peaks(
    hough: torch.Tensor,
    short: torch.Tensor,
    stride: int,
    max_peaks: int,
    threshold: float,
    refine: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local maxima of (B, K, h, w) Hough scores, at most ``max_peaks`` per type.

    Returns positions (B, K, L, 2) in input pixels (refined by the short offset read at the peak when
    ``refine``), scores (B, K, L) and validity (B, K, L), L = min(max_peaks, h*w).
    """
    b, k, h, w = hough.shape
    pooled = max_filter3(hough)
    peak_score = torch.where(hough >= pooled, hough, torch.zeros_like(hough))
    num = min(max_peaks, h * w)
    scores, idx = peak_score.flatten(2).topk(num, dim=2)  # (B, K, L)
    # threshold and clamp the few peaks, not the whole map (overlapping disks can sum above 1)
    valid = scores > threshold
    scores = scores.clamp(max=1.0)
    u = (idx % w).to(hough.dtype)
    v = torch.div(idx, w, rounding_mode="floor").to(hough.dtype)
    pos = torch.stack((map_to_input(u, stride), map_to_input(v, stride)), dim=-1)
    if refine:
        off = short.reshape(b, k, 2, h * w).gather(3, idx[:, :, None, :].expand(b, k, 2, num))
        pos = pos + off.permute(0, 1, 3, 2)
    return pos, scores, valid


def cell_index(pos: torch.Tensor, stride: int, hw: tuple[int, int]) -> torch.Tensor:
    """(..., 2) input coordinates -> (...) flat index of the nearest map cell (clamped to the map)."""
    h, w = hw
    u = input_to_map(pos[..., 0], stride).round().clamp(0, w - 1).long()
    v = input_to_map(pos[..., 1], stride).round().clamp(0, h - 1).long()
    return v * w + u
