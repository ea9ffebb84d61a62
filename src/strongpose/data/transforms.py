"""Albumentations pipelines that move an image, its keypoints, person masks and crowd mask together.

Both pipelines return a :class:`PoseSample` at the square input size S and the (2, 3) affine matrix
mapping input-pixel coordinates back to the original image (pixel convention of
:mod:`strongpose.structures`: the centre of pixel i is coordinate i). :func:`to_original` applies it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, fields

import albumentations as A
import cv2
import numpy as np
import torch

from strongpose.data.annotations import ImageAnnotations
from strongpose.skeleton import Skeleton


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation knobs.

    scale_range: random zoom after fitting the longer side to S (1 = whole image fits).
    rotation: maximum rotation in degrees (uniform in [-rotation, rotation]).
    translate: maximum shift as a fraction of S, per axis.
    flip_prob: probability of a horizontal flip (left/right keypoints are swapped).
    color_jitter: brightness, contrast and saturation strength (factors in [1 - c, 1 + c]). 0 = off.
    hue: hue shift strength in [0, 0.5] (off by default: it costs an HSV round trip, about 1 ms).
    """

    scale_range: tuple[float, float] = (0.75, 1.25)
    rotation: float = 30.0
    translate: float = 0.1
    flip_prob: float = 0.5
    color_jitter: float = 0.2
    hue: float = 0.0

    @classmethod
    def from_dict(cls, knobs: Mapping | "AugmentConfig" | None) -> "AugmentConfig":
        """From a dict (or Hydra DictConfig); unknown keys fail, so a typo cannot silently do nothing."""
        if knobs is None or isinstance(knobs, AugmentConfig):
            return knobs or cls()
        known = {f.name for f in fields(cls)}
        unknown = set(knobs) - known
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(knobs)
        if "scale_range" in values:
            values["scale_range"] = tuple(float(v) for v in values["scale_range"])
        return cls(**values)


@dataclass
class PoseSample:
    """One image after a pipeline, at input size S (N people, K keypoints).

    image (S, S, 3) uint8 RGB; keypoints (N, K, 3) x, y, visibility (0 where the keypoint left the
    image); masks (N, S, S) bool; crowd (S, S) bool; boxes (N, 4) xywh (the box of the transformed
    corners, approximate under rotation); affine (2, 3) float64 input -> original coordinates.
    """

    image: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray
    crowd: np.ndarray
    boxes: np.ndarray
    affine: np.ndarray


def _fit_and_pad(size: int, position: str) -> list[A.BasicTransform]:
    # longer side -> S, then pad to S x S with zeros (image) and "no person" (masks)
    return [A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR),
            A.PadIfNeeded(size, size, position=position, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)]


def _resized_shape(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """Shape after ``LongestMaxSize`` (it rounds the same way)."""
    scale = size / max(hw)
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _resize_matrix(hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """3x3 matrix of cv2.resize on pixel centres: x' = (x + 0.5) * W'/W - 0.5."""
    sy, sx = new_hw[0] / hw[0], new_hw[1] / hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _pre_resize_points(points: np.ndarray, hw: tuple[int, int], size: int) -> np.ndarray:
    """Undo in advance albumentations' keypoint resize (x * s, corner convention) so that the points land
    where cv2 puts the pixels (x' = (x + 0.5) * s - 0.5); without this they drift by 0.5 * |1 - s| px."""
    m = _resize_matrix(hw, _resized_shape(hw, size))
    return (points @ m[:2, :2].T + m[:2, 2]) / (size / max(hw))


def pack_masks(masks: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(M, H, W) 0/1 masks and the (H, W) crowd mask -> (H, W, C) uint8 bit planes, C = ceil((M + 1) / 8).

    Nearest-neighbour resizing, padding, warping and flipping copy whole pixel values, so the bits come
    through exactly; one multi-channel mask costs albumentations a few warps instead of M + 1.
    """
    layers = list(masks) + [crowd]
    # work in the layers' own memory order (pycocotools gives Fortran) and transpose once at the end
    order = "F" if all(layer.flags.f_contiguous for layer in layers) else "C"
    planes = [np.zeros(crowd.shape, np.uint8, order=order) for _ in range((len(layers) + 7) // 8)]
    shifted = np.empty(crowd.shape, np.uint8, order=order)
    for i, layer in enumerate(layers):
        np.left_shift(layer, np.uint8(i % 8), out=shifted)
        np.bitwise_or(planes[i // 8], shifted, out=planes[i // 8])
    packed = np.empty(crowd.shape + (len(planes),), np.uint8)
    for c, plane in enumerate(planes):
        packed[..., c] = plane
    return packed


def unpack_masks(packed: np.ndarray, count: int) -> np.ndarray:
    """(S, S, C) bit planes -> (count, S, S) bool (inverse of :func:`pack_masks`)."""
    planes = np.ascontiguousarray(np.asarray(packed).reshape(packed.shape[0], packed.shape[1], -1).transpose(2, 0, 1))
    index = np.arange(count)
    bits = np.left_shift(1, index % 8).astype(np.uint8)
    return (planes[index // 8] & bits[:, None, None]) != 0


def _box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xywh -> (4N, 2) corners, moved as keypoints to get approximate boxes after the transform."""
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1),
                     np.stack([x1, y1], 1)], 1).reshape(-1, 2)


def _corners_to_boxes(corners: np.ndarray) -> np.ndarray:
    c = corners.reshape(-1, 4, 2)
    lo, hi = c.min(1), c.max(1)
    return np.concatenate([lo, hi - lo], 1).astype(np.float32)


def _inside(xy: np.ndarray, size: int) -> np.ndarray:
    """Same test as :func:`strongpose.structures.inside_image`, for a square S x S image."""
    return ((xy >= -0.5) & (xy < size - 0.5)).all(-1)


class _Pipeline:
    """Shared run: points and masks through one albumentations Compose, then unpacking."""

    def __init__(self, size: int, transforms: list[A.BasicTransform]) -> None:
        self.size = int(size)
        self.compose = A.Compose(transforms, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                                 save_applied_params=True, seed=0)

    def _run(self, image: np.ndarray, people: ImageAnnotations) -> tuple[dict, np.ndarray, int]:
        n, k = people.keypoints.shape[:2]
        hw = image.shape[:2]
        points = np.concatenate([people.keypoints[..., :2].reshape(-1, 2), _box_corners(people.boxes)])
        points = _pre_resize_points(points.astype(np.float64), hw, self.size)
        packed = pack_masks(people.masks, people.crowd)  # crowd rides along as the last bit
        out = self.compose(image=image, keypoints=points, mask=packed)
        return out, np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2), n * k

    def _finish(self, out: dict, people: ImageAnnotations, points: np.ndarray, nk: int,
                to_input: np.ndarray, flip: bool, flip_index: np.ndarray | None) -> PoseSample:
        n, k = people.keypoints.shape[:2]
        xy = points[:nk].reshape(n, k, 2)
        vis = people.keypoints[..., 2].copy()
        if flip:  # albumentations mirrors positions but not names: keypoint j of the flipped person
            xy, vis = xy[:, flip_index], vis[:, flip_index]  # is keypoint flip_index[j] of the original
        vis[~_inside(xy, self.size)] = 0  # left the image: unlabelled
        masks = unpack_masks(out["mask"], n + 1)
        return PoseSample(
            image=out["image"],
            keypoints=np.concatenate([xy, vis[..., None]], -1).astype(np.float32),
            masks=masks[:n], crowd=masks[n],
            boxes=_corners_to_boxes(points[nk:]),
            affine=np.linalg.inv(to_input)[:2],
        )


class ValTransform(_Pipeline):
    """Deterministic: resize keeping the aspect ratio so the longer side is S, pad right/bottom to S x S."""

    def __init__(self, input_size: int) -> None:
        super().__init__(input_size, _fit_and_pad(input_size, "top_left"))

    def __call__(self, image: np.ndarray, people: ImageAnnotations,
                 rng: np.random.Generator | None = None) -> PoseSample:
        out, points, nk = self._run(image, people)
        hw = image.shape[:2]
        to_input = _resize_matrix(hw, _resized_shape(hw, self.size))  # top-left padding adds no shift
        return self._finish(out, people, points, nk, to_input, False, None)


class TrainTransform(_Pipeline):
    """Random scale, rotation, translation, crop/pad to S x S, horizontal flip (with the left/right swap)
    and colour jitter, in one albumentations Compose."""

    def __init__(self, input_size: int, skeleton: Skeleton, augment: AugmentConfig | Mapping | None = None) -> None:
        cfg = AugmentConfig.from_dict(augment)
        self.config = cfg
        self.flip_index = np.asarray(skeleton.flip_index)
        transforms = _fit_and_pad(input_size, "center") + [
            # rotation / zoom about the centre; pixels pushed outside S x S are cropped away
            A.Affine(scale=cfg.scale_range, rotate=(-cfg.rotation, cfg.rotation),
                     translate_percent=(-cfg.translate, cfg.translate), keep_ratio=True,
                     interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
            A.HorizontalFlip(p=cfg.flip_prob),
        ]
        if cfg.color_jitter > 0 or cfg.hue > 0:
            c = cfg.color_jitter
            transforms.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=cfg.hue, p=1.0))
        super().__init__(input_size, transforms)

    def __call__(self, image: np.ndarray, people: ImageAnnotations,
                 rng: np.random.Generator | None = None) -> PoseSample:
        """``rng`` fixes every random choice of this call (None: continue the pipeline's own stream)."""
        if rng is not None:  # one shared stream for all transforms (per-transform seeds would correlate them)
            self.compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        out, points, nk = self._run(image, people)
        applied = dict(out["applied_transforms"])
        flip = "HorizontalFlip" in applied
        hw = image.shape[:2]
        pad = applied["PadIfNeeded"]
        to_input = np.array([[1.0, 0, pad["pad_left"]], [0, 1.0, pad["pad_top"]], [0, 0, 1.0]]) @ \
            _resize_matrix(hw, _resized_shape(hw, self.size))
        to_input = applied["Affine"]["matrix"] @ to_input
        if flip:  # x -> S - 1 - x
            to_input = np.array([[-1.0, 0, self.size - 1], [0, 1.0, 0], [0, 0, 1.0]]) @ to_input
        return self._finish(out, people, points, nk, to_input, flip, self.flip_index)


def to_original(keypoints_xy: torch.Tensor | np.ndarray, meta: Mapping | torch.Tensor | np.ndarray):
    """Map input-pixel coordinates back to the original image.

    Args:
        keypoints_xy: (..., 2) x, y, or (..., 2 + C) whose extra columns (scores, visibility) are kept.
        meta: a sample's or a batch's ``meta`` dict (its ``affine``), or the affine itself: (2, 3) for
            one image, or (B, 2, 3) with ``keypoints_xy`` of shape (B, ..., 2 + C).

    Returns the same type as ``keypoints_xy`` with x, y replaced.
    """
    affine = meta["affine"] if isinstance(meta, Mapping) else meta
    is_numpy = isinstance(keypoints_xy, np.ndarray)
    kp = torch.as_tensor(keypoints_xy)
    a = torch.as_tensor(affine, dtype=torch.float64, device=kp.device)
    xy = kp[..., :2].to(torch.float64)
    if a.ndim == 3:  # batch: one matrix per leading index
        shape = xy.shape
        flat = xy.reshape(shape[0], -1, 2)
        mapped = (flat @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]).reshape(shape)
    else:
        mapped = xy @ a[:, :2].T + a[:, 2]
    out = kp.clone() if kp.is_floating_point() else kp.to(torch.float32)
    out[..., :2] = mapped.to(out.dtype)
    return out.numpy() if is_numpy else out
