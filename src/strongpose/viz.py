"""Drawing people: skeletons, keypoints and person scores, coloured from the Skeleton dataclass.

torchvision's ``draw_keypoints`` does the rasterising (lines and disks); this module only chooses what to
draw and in which colour, so the callback, ``predict`` and notebooks draw alike. :func:`draw_targets`
pictures what the network learns (codec targets, or predicted maps): SKHM disks, BHM, offset arrows.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torchvision.utils import draw_keypoints

from strongpose.skeleton import Skeleton
from strongpose.structures import Poses, map_to_input

LIMB_COLOR = (255, 255, 255)
GROUND_TRUTH_COLOR = (0, 255, 0)  # evaluate's drawings: the ground truth under the predictions


def draw_poses(image: torch.Tensor, poses: Poses, skeleton: Skeleton, score_threshold: float = 0.1,
               person_threshold: float = 0.0, radius: int = 3, width: int = 2,
               labels: Sequence[str] | None = None) -> torch.Tensor:
    """Draw ``poses`` on a (3, H, W) uint8 image in the same pixels (a Predictor's poses on the original
    image, a decoded batch's on the network input); returns a new image, on the CPU.

    Keypoints scoring below ``score_threshold`` (and limbs touching them) and people below
    ``person_threshold`` are left out. Limbs are the skeleton's tree edges; keypoints take the skeleton's
    colour of their type. ``labels``, one a person (e.g. track ids), are written above each drawn person.
    """
    if labels is not None and len(labels) != len(poses):
        raise ValueError(f"draw_poses: {len(labels)} labels for {len(poses)} people")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"draw_poses needs a (3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    keep = poses.scores >= person_threshold
    kps = poses.keypoints[keep].detach().float().cpu()
    if len(kps) == 0:
        return image.cpu().clone()  # on the CPU, as a drawn image is
    visible = kps[..., 2] >= score_threshold  # (N, K)
    out = draw_keypoints(image.cpu(), kps[..., :2], connectivity=list(skeleton.edges(redundant=False)),
                         colors=LIMB_COLOR, radius=0, width=width, visibility=visible)
    colors = skeleton.colors
    # one pass per colour: draw_keypoints takes a single keypoint colour per call
    for color in sorted(set(colors)):
        of_color = torch.tensor([c == color for c in colors])
        out = draw_keypoints(out, kps[..., :2], colors=color, radius=radius, width=0,
                             visibility=visible & of_color[None])
    if labels is not None:
        out = _write_labels(out, kps, visible, [label for label, k in zip(labels, keep.tolist()) if k])
    return out


def _write_labels(image: torch.Tensor, kps: torch.Tensor, visible: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """Each label above its person's highest drawn keypoint, white on a dark outline (readable on any image)."""
    canvas = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    for label, person, seen in zip(labels, kps, visible):
        if not bool(seen.any()):
            continue
        top = int(torch.argmin(torch.where(seen, person[:, 1], float("inf"))))
        at = (int(person[top, 0]) - 4 * len(label), max(int(person[top, 1]) - 8, 12))
        for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(canvas, str(label), at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thickness, cv2.LINE_AA)
    return torch.from_numpy(canvas).permute(2, 0, 1)


def draw_batch(images: torch.Tensor, poses: list[Poses], skeleton: Skeleton, **kwargs) -> list[np.ndarray]:
    """(B, 3, H, W) uint8 batch (the data module's) + decoded poses -> (H, W, 3) uint8 arrays (for loggers)."""
    return [draw_poses(img.cpu(), p, skeleton, **kwargs).permute(1, 2, 0).numpy()
            for img, p in zip(images, poses)]


def draw_ground_truth(image: torch.Tensor, keypoints: np.ndarray | torch.Tensor, skeleton: Skeleton,
                      color: tuple[int, int, int] = GROUND_TRUTH_COLOR, radius: int = 2, width: int = 1) -> torch.Tensor:
    """Annotated people ((N, K, 3) COCO keypoints, v > 0 labelled) on a (3, H, W) uint8 image in one colour, thin,
    so that predictions drawn over them (:func:`draw_poses`) show where they differ."""
    kps = torch.as_tensor(np.asarray(keypoints, np.float32)).reshape(-1, skeleton.num_keypoints, 3)
    if len(kps) == 0:
        return image.cpu().clone()
    return draw_keypoints(image.cpu(), kps[..., :2], connectivity=list(skeleton.edges(redundant=False)),
                          colors=color, radius=radius, width=width, visibility=kps[..., 2] > 0)


# draw_targets: body map tint, ignored (crowd) regions, mid-range arrows
BHM_COLOR = (190, 90, 255)
IGNORE_COLOR = (255, 0, 0)
MID_COLOR = (255, 255, 255)


def draw_targets(image: torch.Tensor, targets: dict[str, torch.Tensor], codec, *, alpha: float = 0.45,
                 short_step: int = 2, mid_edge: int | tuple[str, str] | None = None, mid_step: int = 2,
                 width: int = 1) -> torch.Tensor:
    """Picture of StrongPose targets (``codec.encode`` of one image) over that (3, H, W) uint8 image.

    * BHM: the body map tints people (``BHM_COLOR``, outlined), the background is dimmed; cells ignored by the loss
      (``weight`` 0: crowds, people without keypoints) are tinted red;
    * SKHM: each keypoint type's disks in the skeleton's colour of that type (overlaps mix), ``alpha``;
    * short-range offsets: an arrow from every ``short_step``-th cell (in x and y) of a disk to its keypoint,
      in the type's colour (``short_step=0``: none);
    * mid-range offsets of one directed edge ``mid_edge`` (index into ``codec.edges`` or a pair of keypoint
      names): white arrows from the source type's disk to the target keypoint, every ``mid_step``-th cell.

    Predicted maps (``to_probabilities`` of one image's outputs) work too: probabilities weigh the colours
    and, without ``short_valid`` / ``mid_valid``, arrows start where the SKHM exceeds 0.5.
    Map cells are drawn as stride x stride squares; returns a new (3, H, W) uint8 image.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"draw_targets needs a (3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    height, width_px = image.shape[1:]
    maps = {key: value.detach().cpu() for key, value in targets.items() if isinstance(value, torch.Tensor)}
    skhm = maps["skhm"].float()
    if skhm.shape != (codec.num_keypoints, *codec.map_size((height, width_px))):
        raise ValueError(f"draw_targets: skhm {tuple(skhm.shape)} does not fit a {height}x{width_px} image with "
                         f"{codec} (expected {(codec.num_keypoints, *codec.map_size((height, width_px)))})")
    s = codec.stride

    def to_pixels(m: torch.Tensor) -> torch.Tensor:  # (C, h, w) -> (C, H, W): cell u covers [u s, (u + 1) s)
        return m.repeat_interleave(s, -2).repeat_interleave(s, -1)[..., :height, :width_px]

    out = image.float()
    if "bhm" in maps:
        body = to_pixels(maps["bhm"].float().clamp(0, 1))
        tint = torch.tensor(BHM_COLOR, dtype=torch.float32)[:, None, None]
        out = out * (0.45 + 0.55 * body) * (1 - 0.3 * body) + 0.3 * body * tint
    if "weight" in maps:
        ignored = to_pixels(1 - maps["weight"].float().clamp(0, 1))
        out = out * (1 - 0.4 * ignored) + 0.4 * ignored * torch.tensor(IGNORE_COLOR, dtype=torch.float32)[:, None, None]
    colors = torch.tensor(codec.skeleton.colors, dtype=torch.float32)
    cover = skhm.clamp(0, 1)  # (K, h, w)
    total = cover.sum(0, keepdim=True)
    mixed = torch.einsum("khw,kc->chw", cover, colors) / total.clamp(min=1e-6)  # mean colour of the disks
    strength = to_pixels(alpha * cover.amax(0, keepdim=True))
    out = out * (1 - strength) + to_pixels(mixed) * strength

    canvas = np.ascontiguousarray(out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    if "bhm" in maps:  # the outline stays visible under the disks
        inside = (body[0] >= 0.5).to(torch.uint8).numpy()
        contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, BHM_COLOR, width, cv2.LINE_AA)
    if short_step > 0:
        valid = maps["short_valid"] if "short_valid" in maps else skhm > 0.5
        offsets = maps["short"].float().unflatten(0, (codec.num_keypoints, 2))  # (K, 2, h, w)
        _arrows(canvas, _every(valid, short_step), offsets, colors, s, width)
    if mid_edge is not None:
        e = _edge_index(codec, mid_edge)
        source = int(codec.edges[e, 0])
        valid = maps["mid_valid"][e] if "mid_valid" in maps else skhm[source] > 0.5
        offsets = maps["mid"].float().unflatten(0, (codec.num_edges, 2))[e][None]  # (1, 2, h, w)
        _arrows(canvas, _every(valid[None], mid_step), offsets, torch.tensor([MID_COLOR], dtype=torch.float32),
                s, width)
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def _every(valid: torch.Tensor, step: int) -> torch.Tensor:
    """(C, h, w) bool -> the same, kept only on every ``step``-th cell in y and in x."""
    grid = torch.zeros(valid.shape[-2:], dtype=torch.bool)
    grid[step // 2::step, step // 2::step] = True
    return valid.bool() & grid


def _arrows(canvas: np.ndarray, where: torch.Tensor, offsets: torch.Tensor, colors: torch.Tensor, stride: int,
            width: int) -> None:
    """Arrows from the centre of each cell ``where[c]`` marks to centre + ``offsets[c]``, colour ``colors[c]``.

    One cv2.arrowedLine per arrow: OpenCV has no batched arrow call; the cells are subsampled, so a few
    hundred calls at most (far from a per-pixel loop).
    """
    channel, v, u = where.nonzero(as_tuple=True)
    if len(channel) == 0:
        return
    start = map_to_input(torch.stack((u, v), 1).float(), stride)  # the cell centres
    end = start + torch.stack((offsets[channel, 0, v, u], offsets[channel, 1, v, u]), 1)
    length = (end - start).norm(dim=1).clamp(min=1e-6)
    tips = (6.0 / length).clamp(max=0.4).tolist()  # heads of about 6 px whatever the length
    shift = 2  # sub-pixel positions: cv2 takes integer coordinates scaled by 2 ** shift
    start_i = (start * 2**shift).round().long().tolist()
    end_i = (end * 2**shift).round().long().tolist()
    rgb = colors[channel].round().long().tolist()
    for p, q, color, tip in zip(start_i, end_i, rgb, tips):
        cv2.arrowedLine(canvas, tuple(p), tuple(q), tuple(color), width, cv2.LINE_AA, shift, tip)


def _edge_index(codec, edge: int | tuple[str, str]) -> int:
    """A directed edge given by index or by its keypoint names -> its index in ``codec.edges``."""
    if isinstance(edge, int):
        if not 0 <= edge < codec.num_edges:
            raise ValueError(f"mid_edge {edge} out of range: {codec} has {codec.num_edges} directed edges")
        return edge
    skeleton = codec.skeleton
    unknown = [name for name in edge if name not in skeleton.keypoints]
    if unknown or len(edge) != 2:
        raise ValueError(f"mid_edge must be an index or two keypoint names of {skeleton.name!r}, got {edge!r}"
                         + (f" (unknown: {unknown})" if unknown else ""))
    a, b = (skeleton.index(name) for name in edge)
    matches = ((codec.edges[:, 0] == a) & (codec.edges[:, 1] == b)).nonzero().flatten().tolist()
    if not matches:
        raise ValueError(f"mid_edge {tuple(edge)} is not a directed edge of {codec}")
    return matches[0]
