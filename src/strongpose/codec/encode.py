"""Target generation: COCO people -> StrongPose training targets (all vectorised over pixels).

Shape letters: N people, K keypoint types, E directed edges, H x W input, h x w map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from strongpose.structures import inside_image, map_size, map_to_input


def _coverage(mask: torch.Tensor, stride: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) mask -> (h, w) fraction of each map cell that the mask covers (area downsampling)."""
    h, w = out_hw
    m = mask.to(torch.float32)[None, None]
    pad_h, pad_w = h * stride - m.shape[-2], w * stride - m.shape[-1]
    if pad_h or pad_w:
        m = F.pad(m, (0, pad_w, 0, pad_h))
    return F.avg_pool2d(m, stride)[0, 0] if stride > 1 else m[0, 0]


def _boxes_on_map(boxes: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(M, 4) x0, y0, x1, y1 boxes -> (h, w) bool union of the cells whose centre lies inside one."""
    if boxes.numel() == 0:
        return torch.zeros(ys.numel(), xs.numel(), dtype=torch.bool, device=xs.device)
    in_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # (M, w)
    in_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # (M, h)
    return (in_y[:, :, None] & in_x[:, None, :]).any(0)


def encode_targets(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    *,
    stride: int,
    disk_radius: float,
    directed_edges: torch.Tensor,
    long_range: bool,
    masks: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Encode the people of one image. See :meth:`strongpose.codec.StrongPoseCodec.encode`."""
    height, width = image_size
    h, w = map_size(image_size, stride)
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, K, 3), got {tuple(kp.shape)}")
    device = kp.device
    n, k = kp.shape[:2]
    edges = directed_edges.to(device)
    num_edges = edges.shape[0]

    xs = map_to_input(torch.arange(w, device=device, dtype=torch.float32), stride)  # (w,)
    ys = map_to_input(torch.arange(h, device=device, dtype=torch.float32), stride)  # (h,)
    # a keypoint counts when it is labelled, finite and on the image; others are unlabelled
    labelled = (kp[..., 2] > 0) & torch.isfinite(kp[..., :2]).all(-1) & inside_image(kp[..., :2], image_size)
    kx = torch.where(labelled, kp[..., 0], 0.0)  # (N, K)
    ky = torch.where(labelled, kp[..., 1], 0.0)
    has_kp = labelled.any(1)  # (N,)

    out: dict[str, torch.Tensor] = {}
    if n:
        # squared distance of every cell centre to every keypoint; separable in x and y
        d2 = (xs[None, None, None, :] - kx[:, :, None, None]) ** 2 + (ys[None, None, :, None] - ky[:, :, None, None]) ** 2
        d2 = d2.masked_fill(~labelled[:, :, None, None], float("inf"))  # (N, K, h, w)
        d2_min, owner = d2.min(0)  # nearest person per keypoint type: disk ownership
        skhm = d2_min <= disk_radius**2  # (K, h, w)
    else:
        owner = torch.zeros(k, h, w, dtype=torch.long, device=device)
        skhm = torch.zeros(k, h, w, dtype=torch.bool, device=device)
        d2_min = torch.full((k, h, w), float("inf"), device=device)

    def offsets_to(person: torch.Tensor, kp_type: torch.Tensor) -> torch.Tensor:
        """(..., h, w) person and keypoint-type indices -> (..., 2, h, w) vector cell -> that keypoint."""
        if n == 0:
            return torch.zeros(*person.shape[:-2], 2, h, w, device=device)
        dx = kx[person, kp_type] - xs
        dy = ky[person, kp_type] - ys[:, None]
        return torch.stack((dx, dy), dim=-3)

    types = torch.arange(k, device=device)[:, None, None]
    short = offsets_to(owner, types) * skhm[:, None]
    out["skhm"] = skhm.to(torch.float32)
    out["short"] = short.reshape(2 * k, h, w)
    out["short_valid"] = skhm

    src, dst = edges[:, 0], edges[:, 1]
    owner_src = owner[src]  # (E, h, w)
    mid_valid = skhm[src] & (labelled[owner_src, dst[:, None, None]] if n else skhm[src])
    mid = offsets_to(owner_src, dst[:, None, None]) * mid_valid[:, None]
    out["mid"] = mid.reshape(2 * num_edges, h, w)
    out["mid_valid"] = mid_valid

    any_disk = skhm.any(0)  # (h, w)
    if long_range:
        # a cell in a disk belongs to the person of its nearest keypoint (any type)
        nearest_type = d2_min.argmin(0)  # (h, w)
        person = owner.gather(0, nearest_type[None])[0]  # (h, w)
        long_valid = any_disk[None] & (labelled[person].permute(2, 0, 1) if n else any_disk[None].expand(k, h, w))
        long_off = offsets_to(person.expand(k, h, w), types) * long_valid[:, None]
        out["long"] = long_off.reshape(2 * k, h, w)
        out["long_valid"] = long_valid

    # body heat map and the ignore weight
    body = torch.zeros(h, w, device=device)
    ignore = torch.zeros(h, w, device=device)
    need_box = has_kp.clone()  # people whose body falls back to a box
    if masks is not None and n:
        masks = torch.as_tensor(masks, device=device).to(torch.bool)
        if masks.shape != (n, height, width):
            raise ValueError(f"masks must be (N, H, W) = {(n, height, width)}, got {tuple(masks.shape)}")
        has_mask = masks.flatten(1).any(1)
        if (has_kp & has_mask).any():
            body = _coverage(masks[has_kp & has_mask].any(0), stride, (h, w))
        if (~has_kp & has_mask).any():
            ignore = _coverage(masks[~has_kp & has_mask].any(0), stride, (h, w))
        need_box &= ~has_mask
        no_kp_box = ~has_kp & ~has_mask
    else:
        no_kp_box = ~has_kp
    if n:
        # fallback body: the annotated box when given, else the keypoints' bounding box grown by R / 2
        big = torch.tensor(1e9, device=device)
        kp_box = torch.stack((torch.where(labelled, kx, big).min(1).values, torch.where(labelled, ky, big).min(1).values,
                              torch.where(labelled, kx, -big).max(1).values, torch.where(labelled, ky, -big).max(1).values), 1)
        kp_box = kp_box + torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device) * (disk_radius / 2)
        if boxes is not None:
            xywh = torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(n, 4)
            given = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1)
            fallback = torch.where((xywh[:, 2:] > 0).all(1, keepdim=True), given, kp_box)
        else:
            fallback = kp_box
        body = torch.maximum(body, _boxes_on_map(fallback[need_box], xs, ys).float())
        if boxes is not None:  # unlabelled people without a mask: ignore their box
            ignore = torch.maximum(ignore, _boxes_on_map(fallback[no_kp_box & (fallback[:, 2] > fallback[:, 0])], xs, ys).float())
    if ignore_mask is not None:
        ignore_mask = torch.as_tensor(ignore_mask, device=device)
        if ignore_mask.shape != (height, width):
            raise ValueError(f"ignore_mask must be (H, W) = {(height, width)}, got {tuple(ignore_mask.shape)}")
        if ignore_mask.any():
            ignore = torch.maximum(ignore, _coverage(ignore_mask.to(torch.bool), stride, (h, w)))
    out["bhm"] = (body >= 0.5).to(torch.float32)[None]
    # crowd regions and unlabelled people cost nothing, except where a labelled keypoint's disk lies
    out["weight"] = ((ignore <= 0) | any_disk).to(torch.float32)[None]
    return out
