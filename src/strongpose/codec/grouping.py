"""Pose Plot grouping: detected keypoints -> people.

Two stages, so that the per-image sequential part stays small:
1. :func:`link_candidates` (batched, on the maps' device): for every detected keypoint, where the
   mid-range offsets say each skeleton neighbour is, and where the long-range offsets say every other
   keypoint of the same person is, each matched to its T nearest detections of that type.
2. :func:`group_image` (per image, NumPy on the CPU): greedy walk from the strongest unclaimed keypoint
   along the skeleton graph using those precomputed links; long-range links attach what the tree
   cannot reach; OKS-NMS removes duplicates.
"""

from __future__ import annotations

import numpy as np
import torch

from strongpose.codec.hough import cell_index
from strongpose.structures import map_to_input


def _cell_centres(cells: torch.Tensor, stride: int, w: int) -> torch.Tensor:
    u = (cells % w).to(torch.float32)
    v = torch.div(cells, w, rounding_mode="floor").to(torch.float32)
    return torch.stack((map_to_input(u, stride), map_to_input(v, stride)), -1)


def _nearest(pred: torch.Tensor, cand: torch.Tensor, cand_valid: torch.Tensor, topn: int):
    """pred (..., P, 2) vs cand (..., L, 2) -> distances and indices (..., P, T) of the T nearest valid."""
    d = torch.linalg.vector_norm(pred[..., :, None, :] - cand[..., None, :, :], dim=-1)
    d = d.masked_fill(~cand_valid[..., None, :], float("inf"))
    t = min(topn, d.shape[-1])
    dist, idx = d.topk(t, dim=-1, largest=False)
    return dist, idx


def link_candidates(
    pos: torch.Tensor,
    valid: torch.Tensor,
    short: torch.Tensor,
    mid: torch.Tensor,
    long: torch.Tensor | None,
    edges: torch.Tensor,
    stride: int,
    topn: int = 3,
    mid_refine: bool = True,
    mid_valid: torch.Tensor | None = None,
    long_valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Batched link computation.

    pos (B, K, L, 2) refined peak positions, valid (B, K, L); short (B, 2K, h, w); mid (B, 2E, h, w);
    long (B, 2K, h, w) or None; edges (E, 2) directed (src, dst). ``mid_valid`` (B, E, h, w) and
    ``long_valid`` (B, K, h, w), when given (decoding targets), drop links read where no offset is defined.
    Returns mid_dist / mid_idx (B, E, L, T) and, with long, long_dist / long_idx (B, K, L, K, T) and
    long_pred (B, K, L, K, 2): where each detected keypoint says every type of its person is.
    """
    b, k, num, _ = pos.shape
    h, w = short.shape[-2:]
    e = edges.shape[0]
    src, dst = edges[:, 0], edges[:, 1]
    cells = cell_index(pos, stride, (h, w))  # (B, K, L): offsets are read where each keypoint lies
    centres = _cell_centres(cells, stride, w)  # (B, K, L, 2)

    def read(maps: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """maps (B, C, 2, hw), at (B, C, P) -> (B, C, P, 2)."""
        return maps.gather(3, at[:, :, None, :].expand(-1, -1, 2, -1)).permute(0, 1, 3, 2)

    mid_at = read(mid.reshape(b, e, 2, h * w), cells[:, src])
    pred = centres[:, src] + mid_at  # (B, E, L, 2)
    if mid_refine:  # one step of PersonLab's refinement: follow the short offset where the edge lands
        pcells = cell_index(pred, stride, (h, w))  # (B, E, L)
        # flat gather of short[b, dst, :, cell]: indexing short by dst first would copy E maps
        base = ((torch.arange(b, device=pos.device)[:, None, None] * k + dst[None, :, None]) * 2) * (h * w) + pcells
        flat = short.reshape(-1)
        pred = _cell_centres(pcells, stride, w) + torch.stack((flat[base], flat[base + h * w]), -1)
    mid_dist, mid_idx = _nearest(pred, pos[:, dst], valid[:, dst], topn)
    if mid_valid is not None:  # decoding targets: an offset is only defined where its mask says so
        ok = mid_valid.reshape(b, e, h * w).gather(2, cells[:, src])
        mid_dist = mid_dist.masked_fill(~ok[..., None], float("inf"))
    out = {"mid_dist": mid_dist, "mid_idx": mid_idx}
    if long is not None:
        long_flat = long.reshape(b, 2 * k, h * w)
        at = long_flat.gather(2, cells.reshape(b, 1, k * num).expand(b, 2 * k, k * num))
        at = at.reshape(b, k, 2, k, num).permute(0, 3, 4, 1, 2)  # (B, K_src, L, K_dst, 2)
        long_pred = centres[:, :, :, None, :] + at
        # one prediction per (src keypoint, dst type) against the detections of that dst type
        long_dist, long_idx = _nearest(long_pred[..., None, :], pos[:, None, None], valid[:, None, None], topn)
        if long_valid is not None:
            ok = long_valid.reshape(b, 1, k, h * w).expand(b, k, k, h * w).gather(3, cells[:, :, None].expand(b, k, k, num))
            long_dist = long_dist.masked_fill(~ok.permute(0, 1, 3, 2)[..., None, None], float("inf"))
        out.update(long_dist=long_dist[..., 0, :], long_idx=long_idx[..., 0, :], long_pred=long_pred)
    return out


def oks_matrix(kps: np.ndarray, found: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """OKS between people over the keypoints both have found; (P, K, 2), (P, K) -> (P, P).

    The scale is the area of the first person's keypoint box, as COCO uses the ground truth's area.
    """
    lo = np.where(found[..., None], kps, np.inf).min(1)
    hi = np.where(found[..., None], kps, -np.inf).max(1)
    area = np.clip(np.prod(np.clip(hi - lo, 0, None), axis=1), 1.0, None)  # (P,)
    d2 = ((kps[:, None] - kps[None]) ** 2).sum(-1)  # (P, P, K)
    var = (2 * sigmas) ** 2
    e = d2 / var / (area[:, None, None] + np.spacing(1)) / 2
    both = found[:, None] & found[None]
    n_both = both.sum(-1)
    oks = np.where(both, np.exp(-e), 0.0).sum(-1) / np.maximum(n_both, 1)
    return np.where(n_both > 0, oks, 0.0)


def group_image(
    pos: np.ndarray,
    score: np.ndarray,
    valid: np.ndarray,
    edges: np.ndarray,
    mid_dist: np.ndarray,
    mid_idx: np.ndarray,
    snap_radius: float,
    sigmas: np.ndarray,
    long_dist: np.ndarray | None = None,
    long_idx: np.ndarray | None = None,
    long_pred: np.ndarray | None = None,
    bhm_at: np.ndarray | None = None,
    bhm_weight: float = 0.0,
    nms_oks: float = 0.5,
    min_keypoints: int = 1,
    max_people: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy Pose Plot grouping of one image's detections (shapes as :func:`link_candidates`, no B).

    Returns keypoints (N, K, 3) and person scores (N,), sorted by score.
    """
    k, num = score.shape
    out_edges: list[list[tuple[int, int]]] = [[] for _ in range(k)]
    for ei, (a, b) in enumerate(edges.tolist()):
        out_edges[a].append((ei, b))
    claimed = ~valid.copy()
    mid_ok = (mid_dist <= snap_radius).tolist()
    mid_j = mid_idx.tolist()
    order = np.argsort(-np.where(valid, score, -1.0), axis=None, kind="stable")[: int(valid.sum())]
    people: list[np.ndarray] = []
    for flat in order.tolist():
        k0, l0 = divmod(flat, num)
        if claimed[k0, l0]:
            continue
        assign = np.full(k, -1, dtype=np.int64)
        assign[k0] = l0
        claimed[k0, l0] = True
        stack = [k0]
        while stack:
            while stack:  # walk the skeleton graph with the mid-range links
                a = stack.pop()
                la = int(assign[a])
                for ei, b in out_edges[a]:
                    if assign[b] >= 0:
                        continue
                    for ok, j in zip(mid_ok[ei][la], mid_j[ei][la]):
                        if not ok:
                            break
                        if not claimed[b, j]:
                            assign[b] = j
                            claimed[b, j] = True
                            stack.append(b)
                            break
            if long_idx is None:
                break
            # only types that still have an unclaimed detection can be attached
            missing = np.flatnonzero((assign < 0) & ~claimed.all(1))
            if missing.size == 0:
                break
            found = np.flatnonzero(assign >= 0)
            d = long_dist[found, assign[found]][:, missing]  # (F, M, T)
            j = long_idx[found, assign[found]][:, missing]
            usable = (d <= snap_radius) & ~claimed[missing[None, :, None], j]
            d = np.where(usable, d, np.inf).transpose(1, 0, 2).reshape(missing.size, -1)
            j = j.transpose(1, 0, 2).reshape(missing.size, -1)
            best = d.argmin(1)
            for mi in np.flatnonzero(np.isfinite(d[np.arange(missing.size), best])).tolist():
                t, jj = int(missing[mi]), int(j[mi, best[mi]])
                if not claimed[t, jj]:
                    assign[t] = jj
                    claimed[t, jj] = True
                    stack.append(t)
        people.append(assign)

    if not people:
        return np.zeros((0, k, 3), np.float32), np.zeros((0,), np.float32)
    assign = np.stack(people)  # (P, K)
    found = assign >= 0
    safe = np.where(found, assign, 0)
    types = np.arange(k)[None]
    kps = np.zeros((len(people), k, 3), np.float32)
    kps[..., :2] = pos[types, safe]
    kps[..., 2] = np.where(found, score[types, safe], 0.0)
    # a keypoint not found gets a best guess: where the person's strongest keypoint's long-range
    # offset points, else the mean of its found keypoints (COCO's OKS scores every position)
    strongest = np.where(found, kps[..., 2], -1.0).argmax(1)
    if long_pred is not None:
        guess = long_pred[strongest, safe[np.arange(len(people)), strongest]]  # (P, K, 2)
    else:
        mean = (kps[..., :2] * found[..., None]).sum(1) / found.sum(1, keepdims=True)
        guess = np.broadcast_to(mean[:, None], kps[..., :2].shape)
    kps[..., :2] = np.where(found[..., None], kps[..., :2], guess)
    # mean over all K keypoint scores (unfound = 0) ranks fragments below whole people
    scores = kps[..., 2].mean(1)
    if bhm_at is not None and bhm_weight > 0:
        body = np.where(found, bhm_at[types, safe], 0.0).sum(1) / np.maximum(found.sum(1), 1)
        scores = scores * np.clip(body, 1e-6, 1.0) ** bhm_weight
    keep_mask = found.sum(1) >= min_keypoints
    order = np.argsort(-scores, kind="stable")
    order = order[keep_mask[order]]
    kps, scores, found = kps[order], scores[order], found[order]
    if len(order) > 1 and nms_oks < 1.0:
        oks = oks_matrix(kps[..., :2].astype(np.float64), found, sigmas)
        keep: list[int] = []
        for i in range(len(order)):
            if all(oks[q, i] <= nms_oks for q in keep):
                keep.append(i)
        kps, scores = kps[keep], scores[keep]
    return kps[:max_people], scores[:max_people].astype(np.float32)
