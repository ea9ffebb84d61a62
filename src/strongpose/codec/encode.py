"""Target generation: COCO people -> StrongPose training targets.

Vectorised over people, keypoints and cells at once: every labelled keypoint visits the cells of a
window around it (its disk), and scatter-min decides which keypoint owns each cell. Work is
proportional to the disks' area, not to N x K x h x w.

Shape letters: N people, K keypoint types, E directed edges, H x W input, h x w map.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from strongpose.structures import input_to_map, inside_image, map_size, map_to_input


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


def _body_and_ignore(kx, ky, labelled, masks, ignore_mask, boxes, image_size, stride, disk_radius, xs, ys):
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
    if masks is not None and n:
        masks = torch.as_tensor(masks, device=device)
        if masks.shape != (n, height, width):
            raise ValueError(f"masks must be (N, H, W) = {(n, height, width)}, got {tuple(masks.shape)}")
        # uint8 reductions: on the CPU torch's bool any() is ~40x slower than amax on bytes
        masks = masks.to(torch.bool).contiguous().view(torch.uint8)
        has_mask = (masks.view(n, -1).amax(1) > 0).tolist()
        labelled_people = has_kp.tolist()
        # the union of a handful of masks: pairwise maximum beats a strided amax(0) by ~10x
        with_body = [masks[i] for i in range(n) if has_mask[i] and labelled_people[i]]
        if with_body:
            body = _coverage(functools.reduce(torch.maximum, with_body), stride)
        without_kp = [masks[i] for i in range(n) if has_mask[i] and not labelled_people[i]]
        if without_kp:
            ignore = _coverage(functools.reduce(torch.maximum, without_kp), stride)
        has_mask = torch.tensor(has_mask, device=device)
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
            given = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1)
            fallback = torch.where((xywh[:, 2:] > 0).all(1, keepdim=True), given, kp_box)
        else:
            fallback = kp_box
        body = torch.maximum(body, _boxes_on_map(fallback[need_box], xs, ys).float())
        if boxes is not None:
            ignore = torch.maximum(ignore, _boxes_on_map(fallback[no_kp_box], xs, ys).float())
    if ignore_mask is not None:
        ignore_mask = torch.as_tensor(ignore_mask, device=device)
        if ignore_mask.shape != (height, width):
            raise ValueError(f"ignore_mask must be (H, W) = {(height, width)}, got {tuple(ignore_mask.shape)}")
        if ignore_mask.dtype == torch.bool:
            ignore_mask = ignore_mask.contiguous().view(torch.uint8)
        if ignore_mask.amax() > 0:
            ignore = torch.maximum(ignore, _coverage(ignore_mask, stride))
    return body, ignore


def encode_targets(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    *,
    stride: int,
    disk_radius: float,
    directed_edges: torch.Tensor,
    out_edges: torch.Tensor,
    long_range: bool,
    masks: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    offset_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Encode the people of one image. See :meth:`strongpose.codec.StrongPoseCodec.encode`."""
    h, w = map_size(image_size, stride)
    hw = h * w
    kp = keypoints
    device = kp.device
    n, k = kp.shape[:2]
    num_edges = directed_edges.shape[0]
    xs = map_to_input(torch.arange(w, device=device, dtype=torch.float32), stride)
    ys = map_to_input(torch.arange(h, device=device, dtype=torch.float32), stride)

    # a keypoint counts when it is labelled, finite and on the image; others are unlabelled
    labelled = (kp[..., 2] > 0) & torch.isfinite(kp[..., :2]).all(-1) & inside_image(kp[..., :2], image_size)
    kx = torch.where(labelled, kp[..., 0], 0.0)  # (N, K)
    ky = torch.where(labelled, kp[..., 1], 0.0)

    # every labelled keypoint m visits the cells of the window holding its disk
    person, ktype = labelled.nonzero(as_tuple=True)  # (M,)
    px, py = kx[person, ktype], ky[person, ktype]
    reach = math.ceil(disk_radius / stride) + 1
    win = torch.arange(-reach, reach + 1, device=device)
    u = input_to_map(px, stride).round().long()[:, None, None] + win[None, None, :]  # (M, 1, W)
    v = input_to_map(py, stride).round().long()[:, None, None] + win[None, :, None]  # (M, W, 1)
    dx = px[:, None, None] - map_to_input(u.to(torch.float32), stride)  # cell -> keypoint
    dy = py[:, None, None] - map_to_input(v.to(torch.float32), stride)
    d2 = dx**2 + dy**2  # (M, W, W)
    keep = (d2 <= disk_radius**2) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    m_idx, wy, wx = keep.nonzero(as_tuple=True)
    cell = v[m_idx, wy, 0] * w + u[m_idx, 0, wx]
    edx, edy = dx[m_idx, 0, wx], dy[m_idx, wy, 0]
    ep, ek = person[m_idx], ktype[m_idx]
    # ownership by distance; the person index breaks exact ties deterministically
    key = d2[m_idx, wy, wx].double() + ep.double() * 1e-6

    # SKHM and short offsets: per type, a cell belongs to the nearest keypoint of that type
    flat = ek * hw + cell
    best = torch.full((k * hw,), float("inf"), dtype=torch.float64, device=device)
    best.scatter_reduce_(0, flat, key, reduce="amin")
    own = key == best[flat]
    o_cell, o_k, o_p = cell[own], ek[own], ep[own]
    skhm = torch.zeros(k * hw, device=device)
    skhm[flat[own]] = 1.0
    short = torch.zeros(2 * k * hw, device=device, dtype=offset_dtype)
    short[2 * o_k * hw + o_cell] = edx[own].to(offset_dtype)
    short[(2 * o_k + 1) * hw + o_cell] = edy[own].to(offset_dtype)
    out = {"skhm": skhm.view(k, h, w), "short": short.view(2 * k, h, w), "short_valid": skhm.view(k, h, w) > 0}

    # mid-range: from a cell in keypoint a's disk to keypoint b of the same person, along each edge a->b
    o_cx = kx[o_p, o_k] - edx[own]  # owned cells' centres
    o_cy = ky[o_p, o_k] - edy[own]
    e_ids = out_edges.to(device)[o_k]  # (n_own, D)
    dst = directed_edges.to(device)[e_ids.clamp(min=0), 1]
    ok = (e_ids >= 0) & labelled[o_p[:, None], dst]
    row, col = ok.nonzero(as_tuple=True)
    e_sel, c_sel = e_ids[row, col], o_cell[row]
    mid = torch.zeros(2 * num_edges * hw, device=device, dtype=offset_dtype)
    mid[2 * e_sel * hw + c_sel] = (kx[o_p[row], dst[row, col]] - o_cx[row]).to(offset_dtype)
    mid[(2 * e_sel + 1) * hw + c_sel] = (ky[o_p[row], dst[row, col]] - o_cy[row]).to(offset_dtype)
    mid_valid = torch.zeros(num_edges * hw, dtype=torch.bool, device=device)
    mid_valid[e_sel * hw + c_sel] = True
    out["mid"] = mid.view(2 * num_edges, h, w)
    out["mid_valid"] = mid_valid.view(num_edges, h, w)

    any_disk = skhm.view(k, hw).amax(0) > 0  # (hw,)
    if long_range:
        # a cell in any disk belongs to the person of its nearest keypoint (any type)
        best_any = torch.full((hw,), float("inf"), dtype=torch.float64, device=device)
        best_any.scatter_reduce_(0, cell, key, reduce="amin")
        win_any = (key == best_any[cell]).nonzero(as_tuple=True)[0]
        a_cell, a_p = cell[win_any], ep[win_any]
        a_cx = kx[a_p, ek[win_any]] - edx[win_any]
        a_cy = ky[a_p, ek[win_any]] - edy[win_any]
        types = torch.arange(k, device=device)
        long = torch.zeros(2 * k * hw, device=device, dtype=offset_dtype)
        long_valid = torch.zeros(k * hw, dtype=torch.bool, device=device)
        lv = labelled[a_p]  # (n, K)
        r, t = lv.nonzero(as_tuple=True)
        long[2 * types[t] * hw + a_cell[r]] = (kx[a_p[r], t] - a_cx[r]).to(offset_dtype)
        long[(2 * types[t] + 1) * hw + a_cell[r]] = (ky[a_p[r], t] - a_cy[r]).to(offset_dtype)
        long_valid[t * hw + a_cell[r]] = True
        out["long"] = long.view(2 * k, h, w)
        out["long_valid"] = long_valid.view(k, h, w)

    body, ignore = _body_and_ignore(kx, ky, labelled, masks, ignore_mask, boxes, image_size, stride,
                                    disk_radius, xs, ys)
    out["bhm"] = (body >= 0.5).to(torch.float32)[None]
    # crowd regions and unlabelled people cost nothing, except where a labelled keypoint's disk lies
    out["weight"] = ((ignore <= 0) | any_disk.view(h, w)).to(torch.float32)[None]
    return out
