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

import functools
import math

import numpy as np
import torch

from strongpose.codec.hough import _cached, _const, nearest_cells, take


def _nearest(pred: torch.Tensor, cand: torch.Tensor, cand_valid: torch.Tensor, topn: int):
    """pred (..., P, 2) vs cand (..., L, 2) -> distances and indices (..., P, T) of the T nearest valid."""
    # cdist without the matrix-product shortcut: exact, and ~3x faster than a difference and a norm
    d = torch.cdist(pred, cand, compute_mode="donot_use_mm_for_euclid_dist")
    d = torch.where(cand_valid[..., None, :], d, float("inf"))
    return d.topk(min(topn, d.shape[-1]), dim=-1, largest=False)


# above this many detection slots per type, links within a finite snap radius are found through a grid of buckets
# (:func:`_nearest_within`) rather than against every detection: measured on the CPU, the dense search wins below
# ~32 slots (its fixed op cost is smaller), the buckets above (crowds: 100 people, 24 -> 9 ms)
BUCKET_MIN_SLOTS = 32
# buckets per (image, type) the grid may have: about this many per detection, at least MIN_BUCKETS; bigger buckets
# (fewer) otherwise, so that the table stays small whatever the image size, the radius or a stray far detection
BUCKETS_PER_DETECTION, MIN_BUCKETS = 16, 4096


def _within(dist: torch.Tensor, index: torch.Tensor, radius: float, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_nearest`'s lists with the links beyond ``radius`` dropped (inf, index ``num``)."""
    near = dist <= radius
    return torch.where(near, dist, float("inf")), torch.where(near, index, num)


def _nearest_within(pred: torch.Tensor, cand: torch.Tensor, cand_valid: torch.Tensor, topn: int, radius: float):
    """:func:`_nearest` among the valid detections within ``radius`` only: distances and indices (..., P, T) of
    the T nearest of them, nearest first (equal distances: the lower slot first), then inf and index L (past the
    slots: what grouping drops).

    The detections are sorted into a grid of buckets per (image, type), at least ``radius`` wide, and each
    prediction is compared with those in the 3x3 buckets around its own: the pairs within reach of each other, not
    P x L. In crowds most of the P x L distances are between people far apart (K^2 L^2 for the long-range links).
    Where the buckets would hold most pairs anyway (a radius as large as the image), the dense search runs.
    """
    *lead, p, _ = pred.shape
    num = cand.shape[-2]
    t = min(topn, num)
    groups = int(np.prod(lead))
    dev = pred.device
    dist = pred.new_full((groups * p * t,), float("inf"))
    index = torch.full((groups * p * t,), num, dtype=torch.long, device=dev)
    det = cand_valid.reshape(-1).nonzero().squeeze(1)  # flat group * L + slot
    if not det.numel():
        return dist.view(*lead, p, t), index.view(*lead, p, t)
    flat_cand = cand.reshape(-1, 2)
    points = flat_cand.index_select(0, det).double()  # float64: a stray far detection's bucket stays exact
    (x0, y0), (x1, y1) = points.amin(0).tolist(), points.amax(0).tolist()
    width, height = max(x1 - x0, radius), max(y1 - y0, radius)
    buckets = max(BUCKETS_PER_DETECTION * det.numel() / groups, MIN_BUCKETS)
    # a hair over the radius: a pair exactly ``radius`` apart (as cdist rounds it) is never two buckets apart
    size = max(radius * (1 + 1e-6), math.sqrt(width * height / buckets), max(width, height) / buckets, 1e-6)
    # a margin of two buckets around each group's grid: the 3x3 buckets around a prediction at most one bucket
    # off the detections' stay in its group's grid, with no bounds to test
    low = torch.tensor((math.floor(x0 / size) - 2, math.floor(y0 / size) - 2), dtype=torch.float64, device=dev)
    gw, gh = math.floor(x1 / size) - int(low[0]) + 3, math.floor(y1 / size) - int(low[1]) + 3
    bucket = ((points / size).floor_() - low).long()
    key = (torch.div(det, num, rounding_mode="floor") * gh + bucket[:, 1]) * gw + bucket[:, 0]
    key, order = key.sort(stable=True)  # stable: each bucket's detections by slot
    det = take(det, order)
    # each bucket's detections: count and first position in ``det`` (a table read is ~20x faster than searching
    # the sorted keys on the CPU)
    counts = torch.bincount(key, minlength=groups * gh * gw)
    starts = counts.cumsum(0) - counts
    # the predictions that can reach a detection's bucket (not +-inf: a non-finite offset points nowhere)
    flat_pred = pred.reshape(-1, 2)
    pbucket = (flat_pred.double() / size).floor_() - low
    reach = (pbucket.isfinite().all(1) & (pbucket >= 1).all(1) & (pbucket[:, 0] <= gw - 2)
             & (pbucket[:, 1] <= gh - 2)).nonzero().squeeze(1)
    pbucket = pbucket.index_select(0, reach).long()  # (no integer matmul on CUDA)
    pkey = pbucket[:, 0] + pbucket[:, 1] * gw + torch.div(reach, p, rounding_mode="floor") * (gh * gw)
    nkey = (pkey[:, None] + _const(tuple(dy * gw + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)), dev)).view(-1)
    start, count = take(starts, nkey), take(counts, nkey)
    total = int(count.sum())
    if total * 2 > groups * p * num:  # most pairs anyway: the dense search does them faster
        return _within(*_nearest(pred, cand, cand_valid, topn), radius, num)
    # every (prediction, detection) pair of those buckets
    row = torch.repeat_interleave(count, output_size=total)
    first = (count.cumsum(0) - count).index_select(0, row)
    at = take(start, row) + torch.arange(total, device=dev) - first
    src = take(reach, torch.div(row, 9, rounding_mode="floor"))
    slot = take(det, at)
    # the same values as cdist without the matrix-product shortcut (a sum of squares and a square root is not)
    d = torch.linalg.vector_norm(flat_pred.index_select(0, src) - flat_cand.index_select(0, slot), dim=1)
    near = (d <= radius).nonzero().squeeze(1)
    d, src, slot = take(d, near), take(src, near), take(slot, near)
    # nearest first within each prediction, equal distances by slot: by slot first, then stably by (prediction,
    # distance) as one float64 key (distances are <= radius)
    order = (slot % num).sort(stable=True)[1]
    d, src, slot = take(d, order), take(src, order), take(slot, order)
    order = (src.double() * (radius + 1.0) + d.double()).sort(stable=True)[1]
    d, src, slot = take(d, order), take(src, order), take(slot, order)
    step = torch.arange(src.numel(), device=dev)
    rank = step - torch.where(torch.diff(src, prepend=src[:1] - 1) != 0, step, 0).cummax(0)[0]
    keep = (rank < t).nonzero().squeeze(1)
    out = take(src, keep) * t + take(rank, keep)
    dist.index_copy_(0, out, take(d, keep))
    index.index_copy_(0, out, take(slot, keep) % num)
    return dist.view(*lead, p, t), index.view(*lead, p, t)


@_cached(maxsize=16)
def _link_plan(edges: tuple[int, ...], k: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Index constants of :func:`link_candidates` for a skeleton: the edges' ends and the channels read
    in each offset map ((dx, dy) of type t are channels 2t and 2t + 1). Made once, not every call."""
    pairs = torch.tensor(edges, dtype=torch.long).view(-1, 2)
    src, dst = pairs[:, 0], pairs[:, 1]
    edge = torch.arange(len(src)).view(-1, 1, 1)
    types = torch.arange(k).view(1, k, 1)
    xy = torch.arange(2)
    plan = {"src": src, "dst": dst, "edge": edge, "mid": 2 * edge + xy, "short": 2 * dst.view(-1, 1, 1) + xy,
            "long": 2 * types + xy, "type": types}
    return {key: v.to(device) for key, v in plan.items()}


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
    bhm: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    snap_radius: float | None = None,
) -> dict[str, torch.Tensor]:
    """Batched link computation.

    pos (B, K, L, 2) refined peak positions, valid (B, K, L); short (B, 2K, h, w); mid (B, 2E, h, w);
    long (B, 2K, h, w) or None; edges (E, 2) directed (src, dst). ``mid_valid`` (B, E, h, w) and
    ``long_valid`` (B, K, h, w), when given (decoding targets), drop links read where no offset is defined.
    ``images`` (B',): the maps' images that ``pos`` / ``valid`` (B', K, L, ...) belong to, read in place (some
    of the batch's images, without copying their maps); default all, in order. ``snap_radius`` (input px): the
    reach of grouping's links; with more than ``BUCKET_MIN_SLOTS`` detection slots, links are only
    searched within it (farther ones: inf, index L), which grouping drops anyway.
    Returns mid_dist / mid_idx (B, E, L, T) and, with long, long_dist / long_idx (B, K, L, K, T) and
    long_pred (B, K, L, K, 2): where each detected keypoint says every type of its person is; with
    ``bhm`` (B, 1, h, w), bhm_at (B, K, L): the body map under each detection.
    The tensors are tiny, so the op count is what costs: each map is read with one flat gather.
    """
    b, k, num, _ = pos.shape
    h, w = short.shape[-2:]
    hw = h * w
    plan = _link_plan(tuple(edges.flatten().tolist()), k, pos.device)
    if images is not None:
        image = images.view(b, 1, 1, 1)
    else:
        image = torch.arange(b, device=pos.device).view(b, 1, 1, 1) if b > 1 else None

    def read(maps: torch.Tensor, channels: torch.Tensor | int, cells: torch.Tensor) -> torch.Tensor:
        """``maps`` (B, C, h, w) at ``channels`` (X, 1, c) and flat ``cells`` (B, X, L, 1) -> (B, X, L, c)."""
        index = channels * hw + cells
        if image is not None:  # image i's maps start at i * C * hw
            index = index + image * (maps.shape[1] * hw)
        return take(maps.reshape(-1), index)

    cells, centres = nearest_cells(pos, stride, (h, w))  # (B, K, L): offsets are read where each keypoint lies
    src_cells = cells.index_select(1, plan["src"])[..., None]  # (B, E, L, 1)
    # a non-finite offset (a diverged network) points nowhere: +-inf, at an infinite distance from every detection
    pred = (centres.index_select(1, plan["src"]) + read(mid, plan["mid"], src_cells)).nan_to_num_(nan=float("inf"))
    if mid_refine:  # one step of PersonLab's refinement: follow the short offset where the edge lands
        pcells, pcentres = nearest_cells(pred, stride, (h, w))
        step = read(short, plan["short"], pcells[..., None]).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        pred = torch.where(pred.isinf(), pred, pcentres + step)  # nowhere stays nowhere
    # with many detections, only those within the snap radius (grouping's reach) are searched
    bucketed = snap_radius is not None and math.isfinite(snap_radius) and num > BUCKET_MIN_SLOTS
    nearest = functools.partial(_nearest_within, radius=snap_radius) if bucketed else _nearest
    mid_dist, mid_idx = nearest(pred, pos.index_select(1, plan["dst"]), valid.index_select(1, plan["dst"]), topn)
    if mid_valid is not None:  # decoding targets: an offset is only defined where its mask says so
        mid_dist = torch.where(read(mid_valid, plan["edge"], src_cells), mid_dist, float("inf"))
    out = {"mid_dist": mid_dist, "mid_idx": mid_idx}
    if bhm is not None:
        out["bhm_at"] = read(bhm, 0, cells[..., None]).view(b, k, num)  # NaN kept: group_image skips it
    if long is not None:
        at = cells.view(b, k * num, 1, 1)  # one row per source keypoint, then the dst types
        long_pred = (centres.view(b, k * num, 1, 2) + read(long, plan["long"], at)).nan_to_num_(nan=float("inf"))
        # one prediction per (src keypoint, dst type) against the detections of that dst type
        long_dist, long_idx = nearest(long_pred.transpose(1, 2), pos, valid, topn)  # (B, K_dst, K*L, T)
        long_dist = long_dist.transpose(1, 2).reshape(b, k, num, k, -1)
        long_idx = long_idx.transpose(1, 2).reshape(b, k, num, k, -1)
        if long_valid is not None:
            ok = read(long_valid, plan["type"], at).view(b, k, num, k, 1)
            long_dist = torch.where(ok, long_dist, float("inf"))
        out.update(long_dist=long_dist, long_idx=long_idx, long_pred=long_pred.view(b, k, num, k, 2))
    return out


@functools.lru_cache(maxsize=16)
def _out_edges(edges: bytes, num_edges: int, k: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(edge id, dst type) of the edges leaving each type, from the (E, 2) int64 edges' bytes."""
    pairs = np.frombuffer(edges, dtype=np.int64).reshape(num_edges, 2).tolist()
    return tuple(tuple((ei, b) for ei, (a, b) in enumerate(pairs) if a == t) for t in range(k))


def _long_links(long_dist: np.ndarray, long_idx: np.ndarray, snap_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, L, K, T) long-range link lists -> (K*L, K, T) distances and slots, one row per detection: the
    listed links within the snap radius and to this image's own slots, inf (and a valid slot) elsewhere.
    A list, not a (K*L, K, L) matrix: grouping reads F x K x T entries per person, not F x K x L (crowds)."""
    k, num = long_dist.shape[:2]
    # links to slots past the image's own (a batch's other images had more detections) are at an infinite distance
    dist = np.where((long_dist <= snap_radius) & (long_idx < num), long_dist, np.inf)
    return dist.reshape(k * num, k, -1), np.minimum(long_idx, num - 1).reshape(k * num, k, -1)


def _oks(a: np.ndarray, a_found: np.ndarray, a_scale: np.ndarray, b: np.ndarray, b_found: np.ndarray,
         var: np.ndarray) -> np.ndarray:
    """(M, N) OKS of people ``b`` (N, K, 2) with people ``a`` (M, K, 2), over the keypoints both have found, at
    the scales (M,) of ``a`` (COCO's 2 x area); no keypoint in common: 0."""
    both = a_found[:, None] & b_found[None]
    e = ((a[:, None] - b[None]) ** 2).sum(-1) / var / a_scale[:, None, None]
    return np.where(both, np.exp(-e), 0.0).sum(-1) / np.maximum(both.sum(-1), 1)


def oks_nms(kps: np.ndarray, found: np.ndarray, sigmas: np.ndarray, threshold: float, max_people: int,
            block: int = 64) -> list[int]:
    """Greedy OKS-NMS of people sorted by score, (P, K, 2) and (P, K) found: the indices kept, at most
    ``max_people``. A person is dropped when its OKS with a kept one, over the keypoints both have found
    and at the scale of the kept one's keypoint box (as COCO scales by the ground truth's area), is above
    ``threshold``. Each is compared with the kept ones only, and the scan stops at ``max_people``: noisy
    maps give hundreds of fragments, and a P x P matrix of them cost ~1 s and ~0.5 GB at 2048 px.
    People are taken ``block`` at a time: each block against the kept ones and against itself in two array
    operations, then the greedy pass over the block reads that (crowds: half the time of one person a step)."""
    lo = np.where(found[..., None], kps, np.inf).min(1)
    hi = np.where(found[..., None], kps, -np.inf).max(1)
    area = np.maximum(np.prod(np.maximum(hi - lo, 0.0), axis=1), 1.0)  # (P,)
    scale = 2 * (area + np.spacing(1))
    var = (2 * sigmas) ** 2
    keep: list[int] = []
    for start in range(0, len(kps) if max_people > 0 else 0, block):
        end = min(start + block, len(kps))
        part, part_found, part_scale = kps[start:end], found[start:end], scale[start:end]
        alive = np.ones(end - start, bool)
        if keep:
            alive = ~(_oks(kps[keep], found[keep], scale[keep], part, part_found, var) > threshold).any(0)
        # drops[i, j]: j would be dropped, were i kept
        drops = _oks(part, part_found, part_scale, part, part_found, var) > threshold
        for j in np.flatnonzero(alive).tolist():
            if not alive[j]:
                continue
            keep.append(start + j)
            if len(keep) == max_people:
                return keep
            alive[j + 1:] &= ~drops[j, j + 1:]
    return keep


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
    extent: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy Pose Plot grouping of one image's detections (shapes as :func:`link_candidates`, no B).

    ``extent`` (width, height) of the maps in input pixels: unfound keypoints' guesses are kept on it.
    Returns keypoints (N, K, 3) and person scores (N,), sorted by score.
    """
    k, num = score.shape
    out_edges = _out_edges(edges.tobytes(), edges.shape[0], k)
    claimed = ~valid
    # each (edge, source slot)'s detections within the snap radius, nearest first, -1 after
    # (slots past this image's own, which a batch's busier image has, are at an infinite distance: out too,
    # also with an infinite snap radius)
    mid_cands = np.where((mid_dist <= snap_radius) & (mid_idx < num), mid_idx, -1).tolist()
    order = np.argsort(-np.where(valid, score, -1.0), axis=None, kind="stable")[: int(valid.sum())]
    if long_idx is not None:
        link_dist, link_slot = _long_links(long_dist, long_idx, snap_radius)  # (K*L, K, T)
        dst_types = np.arange(k)[:, None]
    people: list[list[int]] = []
    for flat in order.tolist():
        k0, l0 = divmod(flat, num)
        if claimed[k0, l0]:
            continue
        assign = [-1] * k  # a list: the walk reads it element by element, ~3x faster than an array
        assign[k0] = l0
        claimed[k0, l0] = True
        stack = [k0]
        while stack:
            while stack:  # walk the skeleton graph with the mid-range links
                a = stack.pop()
                la = assign[a]
                for ei, b in out_edges[a]:
                    if assign[b] >= 0:
                        continue
                    for j in mid_cands[ei][la]:
                        if j < 0:
                            break
                        if not claimed[b, j]:
                            assign[b] = j
                            claimed[b, j] = True
                            stack.append(b)
                            break
            if long_idx is None:
                break
            # long-range links attach what the tree cannot reach: for each type still missing, the
            # unclaimed detection nearest to where any found keypoint says it is
            slots = np.array(assign)
            found = slots >= 0
            rows = np.flatnonzero(found)
            src = rows * num + slots[rows]
            slot = link_slot[src]  # (F, K, T)
            d = np.where(claimed[dst_types, slot] | found[:, None], np.inf, link_dist[src])
            # per type, the nearest over (found keypoint, listed detection); equal distances go to the first found
            # type, then the lower slot (the stronger peak)
            d, slot = d.transpose(1, 0, 2).reshape(k, -1), slot.transpose(1, 0, 2).reshape(k, -1)
            best = d.argmin(1)
            nearest = d[dst_types[:, 0], best]
            tied = (d == nearest[:, None]).sum(1) > 1  # rare: exact float ties
            for t in np.flatnonzero(nearest < np.inf).tolist():
                if tied[t]:
                    at = np.flatnonzero(d[t] == nearest[t])
                    j = int(min(at // link_dist.shape[-1] * num + slot[t, at])) % num
                else:
                    j = int(slot[t, best[t]])
                assign[t] = j
                claimed[t, j] = True
                stack.append(t)
        people.append(assign)

    if not people:
        return np.zeros((0, k, 3), np.float32), np.zeros((0,), np.float32)
    assign = np.array(people)  # (P, K)
    found = assign >= 0
    types = np.arange(k)
    # an unfound keypoint (-1) reads the last slot here; its position and score are replaced below
    kps = np.empty((len(people), k, 3), np.float32)
    kps[..., :2] = pos[types, assign]
    kps[..., 2] = np.where(found, score[types, assign], 0.0)
    # a keypoint not found gets a best guess: where the person's strongest keypoint's long-range
    # offset points, else the mean of its found keypoints (COCO's OKS scores every position)
    strongest = np.where(found, kps[..., 2], -1.0).argmax(1)
    def mean() -> np.ndarray:  # (P, 1, 2) of the found keypoints
        return (kps[..., :2] * found[..., None]).sum(1, keepdims=True) / found.sum(1, keepdims=True)[..., None]

    if long_pred is not None:  # (P, K, 2); where it is not finite (a diverged network), the mean
        guess = long_pred[strongest, assign[np.arange(len(people)), strongest]]
        if not np.isfinite(guess).all():
            guess = np.where(np.isfinite(guess), guess, mean())
    else:
        guess = mean()
    if extent is not None:  # a diverged network's long-range offset put guesses 1e5 px away (pixel centres at
        guess = np.clip(guess, -0.5, np.asarray(extent, np.float32) - 0.5)  # integers: the canvas' edges)
    kps[..., :2] = np.where(found[..., None], kps[..., :2], guess)
    # mean over all K keypoint scores (unfound = 0) ranks fragments below whole people
    scores = kps[..., 2].sum(1) / k
    if bhm_at is not None and bhm_weight > 0:  # the mean body map under the found keypoints
        at = np.where(found, bhm_at[types, assign], np.nan)
        known = np.isfinite(at)  # a non-finite value (a diverged network) says nothing: skipped, not 0
        body = np.where(known, at, 0.0).sum(1) / np.maximum(known.sum(1), 1)
        scores = scores * np.where(known.any(1), np.clip(body, 1e-6, 1.0), 1.0) ** bhm_weight
    order = np.argsort(-scores, kind="stable")
    if min_keypoints > 1:  # everyone has at least the keypoint they started from
        order = order[(found.sum(1) >= min_keypoints)[order]]
    kps, scores, found = kps[order], scores[order], found[order]
    if len(order) > 1 and nms_oks < 1.0:
        keep = oks_nms(kps[..., :2].astype(np.float64), found, sigmas, nms_oks, max_people)
        kps, scores = kps[keep], scores[keep]
    return kps[:max_people], scores[:max_people].astype(np.float32, copy=False)
