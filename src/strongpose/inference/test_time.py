"""Test-time options as small pure functions on decoded-ready maps: flip test, multi-scale fusion, thresholds.

All maps are what :meth:`StrongPoseCodec.decode` takes: ``skhm`` / ``bhm`` probabilities, ``short`` /
``mid`` / ``long`` offsets in input pixels, shaped (B, C, h, w).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from strongpose.codec import OFFSET_MAPS, StrongPoseCodec
from strongpose.config_check import ConfigError
from strongpose.structures import Poses, input_to_map, map_to_input


def flip_average(outputs: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor],
                 codec: StrongPoseCodec) -> dict[str, torch.Tensor]:
    """Average ``outputs`` of an image with ``flipped``, the outputs of its mirror image mapped back by
    :meth:`StrongPoseCodec.flip_maps` (left/right types and edges swapped, x offsets negated).

    Exact when the input width is a multiple of the stride (cell centres then mirror onto cell centres).
    """
    back = codec.flip_maps(flipped)
    return {key: (outputs[key] + back[key]) / 2 for key in outputs if key in back}


def reference_grid(affine: torch.Tensor, ref_affine: torch.Tensor, map_hw: tuple[int, int],
                   ref_map_hw: tuple[int, int], stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each reference map cell falls in another scale's maps, for ``F.grid_sample``.

    Args:
        affine: (B, 2, 3) this scale's input -> original-image pixels (a batch ``meta["affine"]``).
        ref_affine: (B, 2, 3) the same for the reference scale.
        map_hw, ref_map_hw: map sizes of this scale and of the reference.

    Returns ``grid`` (B, h_ref, w_ref, 2), normalised for ``align_corners=False`` and clamped to this
    scale's outermost cell centres; ``beyond`` (B, 2, h_ref, w_ref), how far (x, y) each reference cell lies
    past that clamp, in this scale's input pixels (0 inside); and ``to_ref`` (B, 2, 2), the linear map taking
    an offset in this scale's input pixels to reference input pixels.
    """
    b = affine.shape[0]
    device = affine.device
    h, w = ref_map_hw
    ref_to_src = _input_to_input(ref_affine, affine)  # (B, 3, 3)
    ys = map_to_input(torch.arange(h, dtype=torch.float64, device=device), stride)
    xs = map_to_input(torch.arange(w, dtype=torch.float64, device=device), stride)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(1, -1, 3)
    src = (points @ ref_to_src.transpose(1, 2))[..., :2]  # (B, h*w, 2) in this scale's input pixels
    cells = input_to_map(src, stride)
    last = torch.tensor([map_hw[1] - 1, map_hw[0] - 1], dtype=torch.float64, device=device)
    clamped = torch.minimum(cells.clamp(min=0), last)
    beyond = ((cells - clamped) * stride).reshape(b, h, w, 2).permute(0, 3, 1, 2)
    grid = ((2 * clamped + 1) / (last + 1) - 1).reshape(b, h, w, 2)  # cell u's centre is (2u + 1) / size - 1
    to_ref = torch.linalg.inv(ref_to_src[:, :2, :2])
    return grid.to(torch.float32), beyond.to(torch.float32), to_ref.to(torch.float32)


def _input_to_input(affine: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) homogeneous map from the input pixels of one scale to another's, through the original image;
    ``affine`` / ``other``: their (B, 2, 3) input -> original affines."""
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=affine.device).expand(affine.shape[0], 1, 3)
    src3 = torch.cat([affine.to(torch.float64), bottom], 1)
    dst3 = torch.cat([other.to(torch.float64), bottom], 1)
    return torch.linalg.solve(dst3, src3)


def cells_to_reference(affine: torch.Tensor, ref_affine: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, 2, 3) affine taking this scale's map cells to the reference scale's (both at ``stride``), through
    input pixels and the original image; ``affine`` / ``ref_affine`` as in :func:`reference_grid`."""
    src_to_ref = _input_to_input(affine, ref_affine)  # this scale's input -> reference input
    shift = (stride - 1) / 2.0  # map_to_input(u) = u * stride + shift, input_to_map its inverse
    to_input = torch.tensor([[stride, 0.0, shift], [0.0, stride, shift], [0.0, 0.0, 1.0]], dtype=torch.float64,
                            device=affine.device)
    to_cells = torch.linalg.inv(to_input)
    return (to_cells @ src_to_ref @ to_input)[:, :2].to(torch.float32)


def resample(maps: dict[str, torch.Tensor], grid: torch.Tensor, beyond: torch.Tensor,
             to_ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bilinear resampling of every map at ``grid`` (see :func:`reference_grid`); offsets are turned into
    reference input pixels.

    Cells past the outermost cell centres (an image edge, a keypoint disk cut by it) take the edge value
    for probabilities; offsets, which point from the cell to a keypoint, are extrapolated exactly
    (offset - ``beyond``) rather than mixed with the zeros beyond the map.
    """
    out = {}
    for key, m in maps.items():
        r = F.grid_sample(m.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if key in OFFSET_MAPS:  # (B, 2C, h, w) as C (dx, dy) pairs
            pairs = r.unflatten(1, (r.shape[1] // 2, 2)) - beyond[:, None]
            r = torch.einsum("bij,bcjhw->bcihw", to_ref, pairs).flatten(1, 2)
        out[key] = r
    return out


def fuse_scales(per_scale: Sequence[tuple[dict[str, torch.Tensor], torch.Tensor]], ref_affine: torch.Tensor,
                ref_map_hw: tuple[int, int], codec: StrongPoseCodec) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Multi-scale test: fuse the outputs of several input scales on the reference scale's map grid.

    ``per_scale`` holds, for each scale, its (B, C, h_s, w_s) maps and its (B, 2, 3) input -> original
    affine. Each scale votes (:meth:`StrongPoseCodec.keypoint_scores`) straight onto the reference grid,
    where its votes land, so that a perfect keypoint peaks at about 1 whatever the scale (a finer scale's
    smoothed Hough map resampled onto the coarser grid would be read between its samples: about 30 % of its
    peak was lost at 2x); the maps are resampled onto the reference grid, offsets rescaled to reference
    input pixels, and everything averaged over scales.

    Returns the fused maps and the fused (B, K, h, w) keypoint scores, for
    ``codec.decode(maps, keypoint_scores=scores)``.
    """
    if not per_scale:
        raise ValueError("fuse_scales needs at least one scale")
    fused: dict[str, torch.Tensor] = {}
    hough = None
    for maps, affine in per_scale:
        device = maps["skhm"].device
        alignment = reference_grid(affine.to(device), ref_affine.to(device), tuple(maps["skhm"].shape[-2:]),
                                   ref_map_hw, codec.stride)
        to_ref = cells_to_reference(affine.to(device), ref_affine.to(device), codec.stride)
        scores = codec.keypoint_scores(maps["skhm"].float(), maps["short"].float(), to_grid=to_ref,
                                       grid_hw=tuple(ref_map_hw))
        hough = scores if hough is None else hough + scores
        aligned = resample(maps, *alignment)
        for key, value in aligned.items():
            fused[key] = value if key not in fused else fused[key] + value
    n = len(per_scale)
    return {key: value / n for key, value in fused.items()}, hough / n


def scale_sizes(input_size: int, scales: Sequence[float], stride: int) -> list[int]:
    """Square input size of each scale: ``input_size`` itself at scale 1, else ``input_size * s`` rounded
    to a multiple of the stride (so that those inputs mirror exactly in the flip test)."""
    if not scales:
        raise ConfigError("test.scales must hold at least one scale")
    sizes = []
    for s in scales:
        if not s > 0:
            raise ConfigError(f"test.scales must be positive, got {list(scales)}")
        sizes.append(int(input_size) if s == 1 else max(stride, round(input_size * s / stride) * stride))
    return sizes


def threshold_poses(poses: Poses, keypoint_threshold: float | None = None,
                    person_threshold: float | None = None) -> Poses:
    """Keypoints scoring below ``keypoint_threshold`` get score 0 (their position is kept: a best guess);
    people scoring below ``person_threshold`` are dropped. None leaves either as it is."""
    keypoints, scores = poses.keypoints, poses.scores
    if person_threshold is not None:
        keep = scores >= person_threshold
        keypoints, scores = keypoints[keep], scores[keep]
    if keypoint_threshold is not None:
        keypoints = keypoints.clone()
        keypoints[..., 2] = torch.where(keypoints[..., 2] >= keypoint_threshold, keypoints[..., 2], 0.0)
    return Poses(keypoints, scores)
