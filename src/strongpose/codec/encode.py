"""Target generation: COCO people -> StrongPose training targets.

Two parts, so that the keypoint part can run where it is cheapest (a data worker, or the training device
after the batch is copied there):
- :func:`encode_regions`, per image: body and ignore maps from the full-resolution masks, crowd regions
  and boxes (the only full-resolution inputs; two (1, h, w) bool maps come out);
- :func:`encode_keypoint_maps`, per batch: disks, short / mid / long offsets from the keypoints alone.
  Vectorised over images, people, keypoints and cells at once: every keypoint visits the cells of a
  window around it (an "entry" each), scatter-min picks the entry that owns each cell, the short and mid
  offsets are scattered from the winning entries and the long ones gathered by each cell's owner. On a
  CPU the entries are compacted first (``nonzero``); on a GPU they keep fixed shapes, with the entries
  that do not count written to a dump slot, so that nothing waits for a host read. Work is proportional
  to the windows' area plus the maps', not to N x K x h x w.

Shape letters: B images, N people, K keypoint types, E directed edges, H x W input, h x w map.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from strongpose.structures import input_to_map, inside_image, map_size, map_to_input

NEVER = torch.iinfo(torch.int64).max  # the key of an entry that does not count


def out_edge_table(edges: torch.Tensor, num_keypoints: int) -> torch.Tensor:
    """(E, 2) directed edges -> (K, D) ids of the edges leaving each type, -1 padded."""
    src = edges[:, 0].tolist()
    rows = [[e for e, s in enumerate(src) if s == k] for k in range(num_keypoints)]
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


def _coverage(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """(H, W) 0/1 mask -> (h, w) fraction of each map cell's (on-image) pixels the mask covers."""
    m = mask.to(torch.float32)[None, None]
    return F.avg_pool2d(m, stride, ceil_mode=True)[0, 0] if stride > 1 else m[0, 0]


def _boxes_on_map(boxes: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(M, 4) x0, y0, x1, y1 boxes -> (h, w) bool union of the cells whose centre lies inside one."""
    if boxes.numel() == 0:
        return torch.zeros(ys.numel(), xs.numel(), dtype=torch.bool, device=xs.device)
    in_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # (M, w)
    in_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # (M, h)
    return (in_y[:, :, None] & in_x[:, None, :]).any(0)


def _body_and_ignore(kx, ky, labelled, masks, ignore_mask, boxes, image_size, stride, disk_radius, xs, ys,
                     has_mask=None, body_mask=None):
    """(h, w) body coverage of labelled people and ignore coverage (crowd, people without keypoints)."""
    height, width = image_size
    n = labelled.shape[0]
    device = xs.device
    h, w = ys.numel(), xs.numel()
    body = torch.zeros(h, w, device=device)
    ignore = torch.zeros(h, w, device=device)
    has_kp = labelled.any(1)
    need_box = has_kp.clone()  # labelled people whose body falls back to a box
    no_kp_box = ~has_kp  # unlabelled people whose ignore region falls back to their box
    if has_mask is not None:
        if masks is None and body_mask is None:
            raise ValueError("has_mask needs masks or body_mask")
        has_mask = torch.as_tensor(has_mask, dtype=torch.bool, device=device)
        if has_mask.shape != (n,):
            raise ValueError(f"has_mask must be (N,) = {(n,)}, got {tuple(has_mask.shape)}")
    others = None  # the union of the masks of the people without a labelled keypoint
    if masks is not None and body_mask is None and n:
        masks = torch.as_tensor(masks, device=device)
        if masks.shape != (n, height, width):
            raise ValueError(f"masks must be (N, H, W) = {(n, height, width)}, got {tuple(masks.shape)}")
        # uint8 reductions: on the CPU torch's bool any() is ~40x slower than amax on bytes
        masks = masks.to(torch.bool).contiguous().view(torch.uint8)
        if has_mask is None:
            has_mask = masks.view(n, -1).amax(1) > 0
        counts, labelled_people = has_mask.tolist(), has_kp.tolist()
        # per-person masks come down to the merged form (body_mask, and the others' part of ignore_mask);
        # the union of a handful of masks: pairwise maximum beats a strided amax(0) by ~10x
        with_body = [masks[i] for i in range(n) if counts[i] and labelled_people[i]]
        without_kp = [masks[i] for i in range(n) if counts[i] and not labelled_people[i]]
        body_mask = functools.reduce(torch.maximum, with_body) if with_body else None
        others = functools.reduce(torch.maximum, without_kp) if without_kp else None
    elif body_mask is not None:
        if masks is not None or has_mask is None:
            raise ValueError("body_mask replaces masks and needs has_mask: give masks, or body_mask and has_mask")
        body_mask = _as_bytes(body_mask, device)
        if body_mask.shape != (height, width):
            raise ValueError(f"body_mask must be (H, W) = {(height, width)}, got {tuple(body_mask.shape)}")
    if body_mask is not None:
        body = _coverage(body_mask, stride)
    if others is not None:
        ignore = _coverage(others, stride)
    if has_mask is not None:  # the others fall back to boxes
        need_box &= ~has_mask
        no_kp_box &= ~has_mask
    if need_box.any() or (boxes is not None and no_kp_box.any()):
        # fallback body: the annotated box when given, else the keypoints' bounding box grown by R / 2
        big = torch.tensor(1e9, device=device)
        kp_box = torch.stack((torch.where(labelled, kx, big).amin(1), torch.where(labelled, ky, big).amin(1),
                              torch.where(labelled, kx, -big).amax(1), torch.where(labelled, ky, -big).amax(1)), 1)
        kp_box = kp_box + torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device) * (disk_radius / 2)
        if boxes is not None:
            xywh = torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(n, 4)
            # COCO boxes span pixel edges x .. x + w: pixel centres x - 0.5 .. x + w - 0.5 (structures.py)
            given = torch.cat((xywh[:, :2] - 0.5, xywh[:, :2] + xywh[:, 2:] - 0.5), 1)
            fallback = torch.where((xywh[:, 2:] > 0).all(1, keepdim=True), given, kp_box)
        else:
            fallback = kp_box
        body = torch.maximum(body, _boxes_on_map(fallback[need_box], xs, ys).float())
        if boxes is not None:
            ignore = torch.maximum(ignore, _boxes_on_map(fallback[no_kp_box], xs, ys).float())
    if ignore_mask is not None:
        ignore_mask = _as_bytes(ignore_mask, device)
        if ignore_mask.shape != (height, width):
            raise ValueError(f"ignore_mask must be (H, W) = {(height, width)}, got {tuple(ignore_mask.shape)}")
        if ignore_mask.amax() > 0:
            ignore = torch.maximum(ignore, _coverage(ignore_mask, stride))
    return body, ignore


def _as_bytes(mask, device: torch.device) -> torch.Tensor:
    """A mask (any nonzero value counts) as 0/1 uint8 for the reductions above (torch's bool reductions are
    slow on the CPU, and a 0/255 mask must not count 255 times in a coverage)."""
    return torch.as_tensor(mask, device=device).to(torch.bool).contiguous().view(torch.uint8)


def labelled_keypoints(keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(..., K, 3) keypoints -> (..., K) bool: labelled (v > 0), finite and on the image; the others are
    unlabelled."""
    xy = keypoints[..., :2]
    return (keypoints[..., 2] > 0) & torch.isfinite(xy).all(-1) & inside_image(xy, image_size)


def encode_regions(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    *,
    stride: int,
    disk_radius: float,
    masks: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    body_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One image's (N, K, 3) people -> ``bhm`` (1, h, w) bool body map (cells at least half covered by a
    labelled person) and ``ignore`` (1, h, w) bool (cells touched by a crowd region or an unlabelled
    person). See :meth:`strongpose.codec.StrongPoseCodec.encode` for the fallbacks to boxes and for
    ``has_mask`` / ``body_mask``."""
    h, w = map_size(image_size, stride)
    device = keypoints.device
    labelled = labelled_keypoints(keypoints, image_size)
    kx = torch.where(labelled, keypoints[..., 0], 0.0)
    ky = torch.where(labelled, keypoints[..., 1], 0.0)
    xs = map_to_input(torch.arange(w, device=device, dtype=torch.float32), stride)
    ys = map_to_input(torch.arange(h, device=device, dtype=torch.float32), stride)
    body, ignore = _body_and_ignore(kx, ky, labelled, masks, ignore_mask, boxes, image_size, stride,
                                    disk_radius, xs, ys, has_mask, body_mask)
    return {"bhm": (body >= 0.5)[None], "ignore": (ignore > 0)[None]}


def encode_keypoint_maps(
    keypoints: torch.Tensor,
    regions: dict[str, torch.Tensor],
    image_size: tuple[int, int],
    *,
    stride: int,
    disk_radius: float,
    directed_edges: torch.Tensor,
    out_edges: torch.Tensor,
    long_range: bool,
    offset_dtype: torch.dtype = torch.float32,
    compact: bool | None = None,
) -> dict[str, torch.Tensor]:
    """A batch's targets from its (B, N, K, 3) people (padded with unlabelled rows) and the
    :func:`encode_regions` maps stacked to (B, 1, h, w); all on one device, where this runs (the edge
    tables ``directed_edges`` (E, 2) and ``out_edges`` (K, D) too).

    ``compact`` (default: on the CPU) first drops the unlabelled keypoints and the window cells outside the
    disks (``nonzero``: a host read); without it every entry keeps its place and does not count (fixed
    shapes, no host read: what a GPU wants). Both give the same maps (tested). The fixed shapes cost
    transient memory in proportion to B x N x K x (2 ceil(R / stride) + 3)^2 entries, ~0.5 KB each with the
    mid-range ones (~0.6 GB for 32 images of 20 people at R = 32, stride 8): pad N to the people who have a
    labelled keypoint, as the dataset does.

    Returns the maps of :meth:`strongpose.codec.StrongPoseCodec.encode` with a batch dim."""
    kp = keypoints
    device = kp.device
    compact = device.type == "cpu" if compact is None else compact
    if kp.shape[1] == 0:  # nobody: one unlabelled row, so that the gathers below have something to index
        kp = kp.new_zeros(kp.shape[0], 1, *kp.shape[2:])
    b, n, k = kp.shape[:3]
    h, w = map_size(image_size, stride)
    hw = h * w
    num_edges = directed_edges.shape[0]
    labelled = labelled_keypoints(kp, image_size)  # (B, N, K)
    kx = torch.where(labelled, kp[..., 0], 0.0)
    ky = torch.where(labelled, kp[..., 1], 0.0)

    # entries: every keypoint visits the S x S cells of the window holding its disk; unlabelled keypoints
    # (and padding rows) and cells off the map or outside the disk do not count (`keep`)
    if compact:
        eb, ep, ek = labelled.nonzero(as_tuple=True)
    else:
        eb, ep, ek = (i.flatten() for i in torch.meshgrid(
            *(torch.arange(size, device=device) for size in (b, n, k)), indexing="ij"))
    px, py = kx[eb, ep, ek], ky[eb, ep, ek]
    reach = math.ceil(disk_radius / stride) + 1
    win = torch.arange(-reach, reach + 1, device=device)
    u = input_to_map(px, stride).round().long()[:, None, None] + win  # (M, 1, S)
    v = input_to_map(py, stride).round().long()[:, None, None] + win[:, None]  # (M, S, 1)
    cx, cy = map_to_input(u.to(torch.float32), stride), map_to_input(v.to(torch.float32), stride)  # cell centres
    dx, dy = px[:, None, None] - cx, py[:, None, None] - cy  # cell -> keypoint
    d2 = dx**2 + dy**2  # (M, S, S)
    keep = (d2 <= disk_radius**2) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & labelled[eb, ep, ek][:, None, None]
    # the kept entries as flat indices into (M, S, S), read with index_select: indexing with three index tensors
    # took half the encoding time in crowds (13 of 28 ms for 100 people at 512 px; 2.8 -> 2.4 ms for 5)
    flat = keep.view(-1).nonzero().squeeze(1) if compact else None
    if compact:
        keep = None
    _, size_y, size_x = d2.shape
    index_of: dict[tuple[int, ...], torch.Tensor] = {}

    def entries(t: torch.Tensor) -> torch.Tensor:
        """(M, S, S)-broadcastable -> one value per entry (1-D)."""
        if flat is None:
            return t.expand(d2.shape).reshape(-1)
        shape = tuple(t.shape)
        if shape not in index_of:  # the entries' flat index into a tensor of this (broadcast) shape
            m, rest = flat.div(size_y * size_x, rounding_mode="floor"), flat.remainder(size_y * size_x)
            index = m * (shape[1] * shape[2]) if shape[0] > 1 else torch.zeros_like(flat)
            if shape[1] > 1:
                index = index + rest.div(size_x, rounding_mode="floor") * shape[2]
            if shape[2] > 1:
                index = index + rest.remainder(size_x)
            index_of[shape] = index
        return t.reshape(-1).index_select(0, index_of[shape])

    eb, ep, ek = (entries(t[:, None, None]) for t in (eb, ep, ek))
    cell = entries(v.clamp(0, h - 1) * w + u.clamp(0, w - 1))
    cx, cy, dx, dy = entries(cx), entries(cy), entries(dx), entries(dy)
    # ownership by distance, exact ties to the lower person index: (d2, person) packed into one int64, d2's
    # float32 bits in the high half (a non-negative float's bits order as the float does)
    key = (entries(d2).contiguous().view(torch.int32).long() << 32) | ep
    if keep is not None:
        keep = keep.reshape(-1)
        key = torch.where(keep, key, NEVER)

    def slot(index: torch.Tensor, size: int) -> torch.Tensor:
        """Entries that do not count go to one extra slot at the end (the dump)."""
        return index if keep is None else torch.where(keep, index, size)

    # per type, a cell belongs to the nearest keypoint of that type
    type_slot = slot((eb * k + ek) * hw + cell, b * k * hw)
    won = _winners(type_slot, key, b * k * hw)
    # short: the winning entries' own (dx, dy); the cells they won are the disks
    short, skhm = _scatter_offsets(won, type_slot, dx, dy, b, k, (h, w), offset_dtype)
    out = {"skhm": skhm.to(torch.float32), "short": short, "short_valid": skhm}
    # mid: along each edge a -> b leaving the winner's type, from the cell's centre to keypoint b of the
    # same person
    # (the tables must be on the device already: a copy from the host would wait for the device)
    edge_ids = out_edges[ek]  # (entries, D) the edges leaving each entry's type, -1 padded
    # their end, keypoint b of the same person, as a flat index into (B, N, K) (index_select, as above)
    ends = directed_edges[:, 1].index_select(0, edge_ids.clamp(min=0).view(-1)).view(edge_ids.shape)
    dst = ((eb * n + ep) * k)[:, None] + ends

    def at_end(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).index_select(0, dst.view(-1)).view(dst.shape)

    mid_won = won[:, None] & (edge_ids >= 0) & at_end(labelled)
    mid_slot = (eb[:, None] * num_edges + edge_ids.clamp(min=0)) * hw + cell[:, None]
    mid_x, mid_y = at_end(kx) - cx[:, None], at_end(ky) - cy[:, None]
    if compact:
        sel = mid_won.view(-1).nonzero().squeeze(1)
        mid_slot, mid_x, mid_y = (t.reshape(-1).index_select(0, sel) for t in (mid_slot, mid_x, mid_y))
        mid_won = torch.ones_like(sel, dtype=torch.bool)
    out["mid"], out["mid_valid"] = _scatter_offsets(mid_won.flatten(), mid_slot.flatten(), mid_x.flatten(),
                                                    mid_y.flatten(), b, num_edges, (h, w), offset_dtype)
    if long_range:
        # a cell in any disk belongs to the person of its nearest keypoint (any type); the long-range maps
        # of every type are one gather of the per-type tables (B, K, N) by that person
        any_slot = slot(eb * hw + cell, b * hw)
        won_any = _winners(any_slot, key, b * hw)
        owner = torch.full((b * hw + 1,), -1, dtype=torch.long, device=device)
        owner[torch.where(won_any, any_slot, b * hw)] = ep
        owner = owner[:-1].view(b, 1, hw)
        who = owner.clamp(min=0).expand(b, k, hw)
        valid = (owner >= 0) & labelled.transpose(1, 2).gather(2, who)
        xs = map_to_input(torch.arange(w, device=device, dtype=torch.float32), stride)
        ys = map_to_input(torch.arange(h, device=device, dtype=torch.float32), stride)
        long = torch.empty(b, k, 2, hw, dtype=offset_dtype, device=device)
        for axis, (table, centre) in enumerate(((kx, xs.repeat(h)), (ky, ys.repeat_interleave(w)))):
            long[:, :, axis] = table.transpose(1, 2).gather(2, who).sub_(centre).masked_fill_(~valid, 0.0)
        out["long"], out["long_valid"] = long.view(b, 2 * k, h, w), valid.view(b, k, h, w)

    out["bhm"] = regions["bhm"].to(device=device, dtype=torch.float32)
    # crowd regions and unlabelled people cost nothing; the heat-map loss still counts a labelled person's
    # positive targets there (a keypoint's disk in its own channel), and only those
    out["weight"] = (~regions["ignore"].to(device)).to(torch.float32)
    return out


def _winners(flat: torch.Tensor, key: torch.Tensor, size: int) -> torch.Tensor:
    """(entries,) bool: the entries with the smallest ``key`` at their slot of ``flat`` (slot ``size``, the dump,
    never wins). Winners of one slot are one person's (the key holds the person index): one entry for a
    per-type slot, possibly several keypoints equally near for a per-cell slot, which write the same person."""
    best = torch.full((size + 1,), NEVER, dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, flat, key, reduce="amin")
    return (key == best[flat]) & (flat < size)


def _scatter_offsets(won: torch.Tensor, slot: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, batch: int,
                     channels: int, map_hw: tuple[int, int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, h, w) offsets (dx, dy per channel) and (B, C, h, w) validity from the (1-D) entries that ``won``
    their ``slot`` ((b * C + c) * hw + cell); the others write to a dump slot."""
    h, w = map_hw
    hw = h * w
    size = batch * channels * hw
    valid = torch.zeros(size + 1, dtype=torch.bool, device=won.device)
    valid.index_fill_(0, torch.where(won, slot, size), True)  # (a scalar fill: no value copied to the device)
    at = torch.where(won, slot + (slot // hw) * hw, 2 * size)  # x of channel c at map 2c, y at map 2c + 1
    offsets = torch.zeros(2 * size + 1, dtype=dtype, device=won.device)
    offsets[at] = ox.to(dtype)
    offsets[torch.where(won, at + hw, 2 * size)] = oy.to(dtype)
    return offsets[:-1].view(batch, 2 * channels, h, w), valid[:-1].view(batch, channels, h, w)
