"""Hough voting of the keypoint heat maps through the short-range offsets, smoothing, and peak finding.

All functions are batched (B x C x h x w) and run on the tensors' device. On the CPU, decoding time is
mostly passes over whole maps and fixed per-op overhead (~5 us an op at these sizes), so whole maps are
touched by as few ops as possible: the cells that matter (voting cells, cells holding votes, peak
candidates) are listed once with :func:`nonzero_above` and the rest works on those lists.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from strongpose.structures import input_to_map, map_to_input


def _cached(maxsize: int):
    """``lru_cache`` for constant tensors, built as normal tensors even inside ``torch.inference_mode``
    (an inference tensor cannot be saved for backward, should the same constant later meet autograd)."""
    def wrap(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args):
            with torch.inference_mode(False):
                return fn(*args)
        return cached
    return wrap


@_cached(maxsize=512)
def _const(values: tuple, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Small constant tensor, made once per device (read-only: never modified in place)."""
    return torch.tensor(values, device=device, dtype=dtype)


def _column(values: tuple, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """(n, 1) constant, to broadcast against (V,) vectors."""
    return _const(tuple((v,) for v in values), device, dtype)


@_cached(maxsize=128)
def _cell_grid(h: int, w: int, device: torch.device, dtype: torch.dtype, stride: int | None = None) -> torch.Tensor:
    """(2, h*w) map column and row of every flat cell index (their centres in input pixels with a
    ``stride``): one gather instead of a division, a modulo and the conversion."""
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack((u.reshape(-1), v.reshape(-1))).to(dtype)
    return (grid if stride is None else map_to_input(grid, stride)).to(device)


@_cached(maxsize=128)
def _unring(h: int, w: int, device: torch.device) -> torch.Tensor:
    """((h+2)*(w+2),) flat cell index in the (h, w) map of each cell of the map with a one-cell ring."""
    cells = torch.arange(h * w).view(h, w)
    return F.pad(cells, (1, 1, 1, 1), value=-1).reshape(-1).to(device)


def _blur_radius(sigma: float) -> int:
    """Half-width of the Gaussian kernels: truncated at 2.5 sigma."""
    return max(1, math.ceil(2.5 * sigma))


def _gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian truncated at :func:`_blur_radius` (float64, 2r + 1 taps)."""
    radius = _blur_radius(sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    return taps / taps.sum()


@_cached(maxsize=128)
def _gaussian_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) banded matrix applying :func:`_gaussian_taps` with zero padding."""
    taps = _gaussian_taps(sigma)
    radius = taps.numel() // 2
    t = torch.arange(n)
    diff = t[None, :] - t[:, None] + radius
    g = torch.where((diff >= 0) & (diff <= 2 * radius), taps[diff.clamp(0, 2 * radius)], 0.0)
    return g.to(device=device, dtype=dtype)


@_cached(maxsize=32)
def _gaussian_footprint(sigma: float, row: int, device: torch.device, dtype: torch.dtype):
    """The 2-D kernel of :func:`gaussian_blur` as (flat offsets in a map with ``row`` cells a row, weights)."""
    taps = _gaussian_taps(sigma)
    radius = taps.numel() // 2
    d = torch.arange(-radius, radius + 1)
    offsets = (d[:, None] * row + d[None, :]).reshape(-1)
    return offsets.to(device), (taps[:, None] * taps[None, :]).reshape(-1).to(device=device, dtype=dtype)


def take(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat[index]`` for a 1-D tensor and an integer index of any shape; ``index_select`` is ~3x faster
    than advanced indexing on the CPU."""
    if index.dim() == 1:
        return flat.index_select(0, index)
    return flat.index_select(0, index.reshape(-1)).view(index.shape)


def _divmod(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.div(x, d, rounding_mode="floor")
    return q, x - q * d


def nonzero_above(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Sorted flat indices of the elements of ``maps`` above ``threshold`` (``(maps > t).flatten().nonzero()``).

    Decoding lists the few cells that matter this way (voting cells, cells holding votes, peak
    candidates). On the CPU, NumPy does it ~6x faster than torch (whose comparison to bool and
    ``nonzero`` take ~2 ns an element, ~0.2 ms on a 17 x 60 x 80 map); elsewhere it stays in torch.
    """
    flat = maps.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.flatnonzero(flat.numpy() > threshold))
    return (flat > threshold).nonzero().squeeze(1)


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


def smooth_votes(votes: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` of (B, K, h, w) vote maps, which are nonnegative and mostly zero.

    When few cells hold votes (targets, confident network outputs), :func:`scatter_blur` costs a
    fraction of the dense products (~0.4 ms on a 17 x 60 x 80 map on the CPU); many voting cells (an
    untrained network) take the dense products. Both give the same maps (up to rounding).
    """
    if sigma <= 0:
        return votes
    h, w = votes.shape[-2:]
    flat = votes.reshape(-1)
    # measured on the CPU: the products cost ~0.03 ns a multiply-add, numel x (h + w) of them; the
    # scatter ~60 us plus ~0.2 us a cell holding votes. On a GPU the products are always cheap.
    dense_work = flat.numel() * (h + w)
    if flat.device.type != "cpu" or dense_work < 2_000_000:
        return gaussian_blur(votes, sigma)
    cells = nonzero_above(flat, 0.0)
    if cells.numel() * 8_000 + 2_000_000 > dense_work:
        return gaussian_blur(votes, sigma)
    return scatter_blur(flat, cells, votes.shape, sigma)


def scatter_blur(flat: torch.Tensor, cells: torch.Tensor, shape: torch.Size, sigma: float) -> torch.Tensor:
    """:func:`gaussian_blur` of the (B, C, h, w) maps whose only nonzero values are ``flat[cells]``:
    each one's 2-D Gaussian footprint is scattered into a zero map."""
    b, c, h, w = shape
    radius = _blur_radius(sigma)
    hp, wp = h + 2 * radius, w + 2 * radius
    offsets, kernel = _gaussian_footprint(float(sigma), wp, flat.device, flat.dtype)
    channel, rest = _divmod(cells, h * w)
    # the same cell in a map padded by the kernel radius, which catches the footprints' edges
    centre = cells + channel * (hp * wp - h * w) + torch.div(rest, w, rounding_mode="floor") * (2 * radius)
    smooth = flat.new_zeros(b * c * hp * wp)
    smooth.index_add_(0, (centre[:, None] + (offsets + radius * wp + radius)).view(-1),
                      (take(flat, cells)[:, None] * kernel).view(-1))
    return smooth.view(b, c, hp, wp)[:, :, radius:-radius, radius:-radius]


def max_filter3(maps: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (B, C, h, w) maps (same as max_pool2d(3, 1, 1), separable and ~20x faster on CPU)."""
    p = F.pad(maps, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def hough_vote(skhm: torch.Tensor, short: torch.Tensor, stride: int, vote_threshold: float = 0.01,
               scale: float = 1.0, to_grid: torch.Tensor | None = None,
               grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Each cell votes its probability (times ``scale``) at (cell + short offset), bilinearly splatted.

    skhm: (B, K, h, w) probabilities; short: (B, 2K, h, w) offsets in input pixels, (dx, dy) per type.
    Returns (B, K, h, w) vote sums (unnormalised). ``to_grid`` (B, 2, 3), with ``grid_hw``: the votes land on
    another grid (B, K, *grid_hw) instead, each image's vote positions mapped there by its affine (map cells
    of this grid -> cells of that one): a multi-scale test votes every scale onto the reference scale's grid.
    """
    b, k, h, w = skhm.shape
    gh, gw = grid_hw if to_grid is not None else (h, w)
    hw, wr = h * w, gw + 3
    dev, dtype = skhm.device, skhm.dtype
    # only cells with some probability vote: for real outputs most of the map is background
    sel = nonzero_above(skhm, vote_threshold)  # flat (b * K + k) * hw + cell
    # Non-finite values (a diverged network, a half-precision overflow) are dropped where they are read, on
    # the few values taken rather than on whole maps (isfinite over the maps cost 4x the decoding on the CPU):
    # a NaN probability is never above the threshold, an infinite one counts as 1
    prob = take(skhm.reshape(-1), sel).nan_to_num_(posinf=1.0) * scale
    channel, cell = _divmod(sel, hw)
    # (x, y) the vote lands at, in map cells: channel c's (dx, dy) are short channels 2c and 2c + 1.
    # (2, V) layout throughout: on the CPU, ops on two long rows beat ops on V rows of two
    dxy = take(short.reshape(-1), (sel + channel * hw) + _column((0, hw), dev))
    xy = _cell_grid(h, w, dev, dtype).index_select(1, cell).add_(dxy, alpha=1.0 / stride)
    if to_grid is not None:  # each vote through its image's affine: (2, 3) @ (x, y, 1)
        m = to_grid.to(dtype).index_select(0, torch.div(channel, k, rounding_mode="floor"))  # (V, 2, 3)
        xy = torch.einsum("vij,jv->iv", m[:, :, :2], xy).add_(m[:, :, 2].T)
    xy = xy.nan_to_num_(nan=-1.0)  # a vote without a finite offset lands in the ring: cut off with it
    # clamped to a ring around the map: votes that leave the map land in the ring, which is cut off below
    # (no masking needed). The ring is one cell wide at the top / left and two at the bottom / right,
    # where a vote clamped to x = w still names its (zero-weight) corner x + 1
    xy = xy.clamp_(min=_column((-1.0, -1.0), dev, dtype), max=_column((float(gw), float(gh)), dev, dtype))
    low = xy.floor()
    frac = xy - low
    # x + y * row as a vector-matrix product: exact for these integers, faster than a sum over rows
    corner = (_const((1.0, float(wr)), dev, dtype) @ low).long() + channel * ((gh + 3) * wr)
    index = corner + _column((wr + 1, wr + 2, 2 * wr + 1, 2 * wr + 2), dev)  # the 4 cells around (x, y)
    g = torch.stack((1 - frac, frac))  # (2: low / high cell, 2: x / y, V)
    weight = (g[:, None, 1] * prob) * g[None, :, 0]  # (2 rows, 2 columns, V), in the order of ``index``
    votes = skhm.new_zeros(b * k * (gh + 3) * wr)
    votes.index_add_(0, index.view(-1), weight.view(-1))
    return votes.view(b, k, gh + 3, wr)[:, :, 1:gh + 1, 1:gw + 1]


def find_peaks(
    hough: torch.Tensor,
    short: torch.Tensor,
    stride: int,
    max_peaks: int,
    threshold: float,
    refine: bool = True,
    skhm: torch.Tensor | None = None,
    vote_radius: float = 0.0,
    vote_window: int = 5,
    vote_threshold: float = 0.01,
    vote_iters: int = 2,
    max_step: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local maxima (3x3) of (B, K, h, w) Hough scores above ``threshold``, the ``max_peaks`` best per type.

    Returns positions (B, K, L, 2) in input pixels (refined by the short offset read at the peak when
    ``refine``), scores (B, K, L) clamped to 1 and validity (B, K, L), strongest first; L >= 1 is the
    most peaks any (image, type) has, at most ``max_peaks``. Only cells above the threshold are tested,
    so the cost follows the number of candidates, not the map size. A refining offset longer than ``max_step``
    input px (the disk radius: no target is longer) is shortened to it: a diverged network's 1e5 px offset
    put a keypoint 1e5 px away, its person's box over everyone, and OKS-NMS dropped the others.
    """
    b, k, h, w = hough.shape
    dev = hough.device
    hp, wp = h + 2, w + 2
    # a -inf ring: border cells compare against their in-map neighbours only (as max_pool2d's padding)
    padded = F.pad(hough, (1, 1, 1, 1), value=float("-inf")).view(-1)
    cand = nonzero_above(padded, threshold)
    if cand.numel() * 8 > padded.numel():  # mostly above threshold (an untrained network): a dense filter first
        peaks = torch.where(hough >= max_filter3(hough), hough, float("-inf"))
        cand = nonzero_above(F.pad(peaks, (1, 1, 1, 1), value=float("-inf")).view(-1), threshold)
    # 3x3 local maxima among the candidates (as max-pooling: >= every neighbour); of equal maxima side by side only
    # the first in raster order (a keypoint on a cell corner gives four equal cells: one peak, not four copies of
    # its person). An equal neighbour that is not a maximum itself (beside a higher cell) suppresses nothing.
    score = take(padded, cand)
    # (8, N), the 4 neighbours before the cell then the 4 after: a max over the leading dim is ~4x faster than over
    # a short last one on the CPU
    ring_offsets = _column((-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1), dev)
    ring = take(padded, cand + ring_offsets)
    before = ring[:4].amax(0)
    is_max = (before <= score) & (ring[4:].amax(0) <= score)
    tied = (is_max & (before == score)).nonzero().squeeze(1)  # rare: exact ties with an earlier neighbour
    if tied.numel():
        # the earlier neighbours (4, T) and their own rings (8, 4, T); a neighbour in the -inf ring is never
        # equal to a score above the threshold, so clamping its ring's indices changes nothing
        first = take(cand, tied) + ring_offsets[:4]
        equal = take(padded, first) == take(score, tied)
        first_max = take(padded, (first + ring_offsets[:, None]).clamp_(0, padded.numel() - 1)).amax(0) <= \
            take(padded, first)
        is_max.index_fill_(0, tied[(equal & first_max).any(0)], False)
    keep = is_max.nonzero().squeeze(1)
    cand, score = take(cand, keep), take(score, keep)
    channel = torch.div(cand, hp * wp, rounding_mode="floor")  # b * K + k, nondecreasing
    # strongest first within each (image, type): sort by score, then stably by channel
    score, order = score.sort(descending=True, stable=True)
    channel, by_channel = take(channel, order).sort(stable=True)
    cand, score = take(cand, take(order, by_channel)), take(score, by_channel)
    rank = torch.arange(cand.numel(), device=dev) - torch.searchsorted(channel, channel)
    most = int(rank.max()) + 1 if rank.numel() else 1
    num = min(most, max_peaks)
    if most > num:
        keep = (rank < num).nonzero().squeeze(1)
        cand, score, channel, rank = take(cand, keep), take(score, keep), take(channel, keep), take(rank, keep)
    cell = take(_unring(h, w, dev), cand - channel * (hp * wp))
    pos = _cell_grid(h, w, dev, hough.dtype, stride).index_select(1, cell).T  # (P, 2)
    if refine:  # channel c's (dx, dy) are short channels 2c and 2c + 1; a non-finite one: the cell's centre
        step = take(short.reshape(-1), (channel * (2 * h * w) + cell)[:, None] + _const((0, h * w), dev))
        step = step.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        if math.isfinite(max_step):
            step = step * (max_step / step.norm(dim=1, keepdim=True).clamp_(min=max_step))
        pos = pos + step
        if skhm is not None and vote_radius > 0 and pos.numel():
            pos = vote_mean(pos, channel, cell, skhm, short, stride, vote_radius, vote_window, vote_threshold,
                            vote_iters)
    slot = channel * num + rank
    out_pos = hough.new_zeros(b * k * num, 2).index_copy_(0, slot, pos)
    # clamp the few peaks, not the whole map (overlapping disks can sum above 1)
    out_score = hough.new_zeros(b * k * num).index_copy_(0, slot, score.clamp(max=1.0))
    valid = torch.zeros(b * k * num, dtype=torch.bool, device=dev).index_fill_(0, slot, True)
    return out_pos.view(b, k, num, 2), out_score.view(b, k, num), valid.view(b, k, num)


@_cached(maxsize=32)
def _window_offsets(window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) of the (2 * window + 1)^2 cells of a square window, row by row (constants, made once)."""
    d = torch.arange(-window, window + 1, device=device)
    return d.repeat(d.numel()), d.repeat_interleave(d.numel())


def vote_mean(pos: torch.Tensor, channel: torch.Tensor, cell: torch.Tensor, skhm: torch.Tensor, short: torch.Tensor,
              stride: int, radius: float, window: int, threshold: float, iters: int) -> torch.Tensor:
    """Peaks (P, 2) in input pixels moved to the probability-weighted mean of the votes (cell + short offset)
    that land within ``radius`` px of them, ``iters`` times (mean shift with a flat kernel). The votes are
    read from the cells within ``window`` cells of each peak's cell (``channel`` b * K + k, flat ``cell``).
    A single cell's offset carries that cell's regression error; the mean of the votes that agree with it
    averages many cells' errors (a vote off by more than ``radius``, e.g. another person's, does not count)."""
    b, k, h, w = skhm.shape
    hw, dev, dtype = h * w, pos.device, pos.dtype
    du, dv = _window_offsets(window, dev)
    row, col = _divmod(cell, w)
    u, v = col[:, None] + du, row[:, None] + dv
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    c = v.clamp(0, h - 1) * w + u.clamp(0, w - 1)
    p = take(skhm.reshape(-1), channel[:, None] * hw + c).to(dtype).nan_to_num_(posinf=1.0)  # as hough_vote
    # dx and dy in one gather, as find_peaks' refinement reads them: short channels 2c and 2c + 1
    dxy = take(short.reshape(-1), (2 * channel * hw)[:, None, None] + _const((0, hw), dev)[:, None] + c[:, None])
    vx = dxy[:, 0].to(dtype) + map_to_input(u.to(dtype), stride)
    vy = dxy[:, 1].to(dtype) + map_to_input(v.to(dtype), stride)
    ok = inside & (p > threshold) & vx.isfinite() & vy.isfinite()
    p = torch.where(ok, p, 0.0)
    vx, vy = vx.nan_to_num(0.0, 0.0, 0.0), vy.nan_to_num(0.0, 0.0, 0.0)
    for _ in range(iters):
        near = ((vx - pos[:, :1]) ** 2 + (vy - pos[:, 1:]) ** 2) <= radius * radius
        wgt = torch.where(near, p, 0.0)
        total = wgt.sum(1)
        mean = torch.stack(((wgt * vx).sum(1), (wgt * vy).sum(1)), 1) / total.clamp(min=1e-12)[:, None]
        pos = torch.where((total > 0)[:, None], mean, pos)
    return pos


def nearest_cells(pos: torch.Tensor, stride: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2) input coordinates -> (...) flat index of the nearest map cell (clamped to the map) and
    (..., 2) that cell's centre in input coordinates."""
    h, w = hw
    dev, dtype = pos.device, pos.dtype
    uv = input_to_map(pos, stride).round_().clamp_(min=_const((0.0, 0.0), dev, dtype),
                                                   max=_const((w - 1.0, h - 1.0), dev, dtype))
    cells = (uv @ _const((1.0, float(w)), dev, dtype)).long()  # u + v * w, exact below 2^24
    return cells, map_to_input(uv, stride)
