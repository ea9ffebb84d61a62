"""Pipelines that move an image, its keypoints, person masks and crowd mask together.

Training warps the original image once, straight to S x S, under one matrix that also moves the points
and the masks (as bit planes); validation resizes and pads with albumentations. Both pipelines return a
:class:`PoseSample` at the square input size S and the (2, 3) affine matrix mapping input-pixel
coordinates back to the original image (pixel convention of :mod:`strongpose.structures`: the centre of
pixel i is coordinate i). :func:`to_original` applies it.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import albumentations as A
import albumentations.augmentations.geometric.functional as fgeometric
import cv2
import numpy as np
import torch

from strongpose.codec.encode import labelled_keypoints
from strongpose.config_check import ConfigError
from strongpose.data.annotations import ImageAnnotations
from strongpose.skeleton import Skeleton
from strongpose.structures import Poses


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation knobs.

    scale_range: random zoom after fitting the longer side to S (1 = whole image fits).
    rotation: maximum rotation in degrees (uniform in [-rotation, rotation]).
    translate: maximum shift as a fraction of S, per axis.
    flip_prob: probability of a horizontal flip (left/right keypoints are swapped).
    color_jitter: brightness, contrast and saturation strength (factors in [1 - c, 1 + c]). 0 = off.
    hue: hue shift strength in [0, 0.5] (off by default: it costs an HSV round trip, about 1 ms).
    pixel: more pixel-level albumentations transforms, applied in order after the colour jitter, each a config
        node ``{_target_: albumentations.GaussianBlur, blur_limit: [3, 5], p: 0.3}``; only transforms that change
        pixel values (``A.ImageOnlyTransform``: blur, noise, greyscale, JPEG compression, ...): one that moves
        pixels would leave the keypoints and masks behind, and is refused by name.
    """

    scale_range: tuple[float, float] = (0.75, 1.25)
    rotation: float = 30.0
    translate: float = 0.1
    flip_prob: float = 0.5
    color_jitter: float = 0.2
    hue: float = 0.0
    pixel: tuple[Mapping, ...] = ()

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
        if "pixel" in values:  # plain dicts (a Hydra node's too), so that the config pickles for the workers
            from omegaconf import OmegaConf

            pixel = values["pixel"] or ()
            pixel = OmegaConf.to_container(pixel, resolve=True) if OmegaConf.is_config(pixel) else pixel
            if isinstance(pixel, (str, Mapping)) or not isinstance(pixel, Sequence):
                raise ConfigError(f"data.augment.pixel must be a list of transforms ([{{_target_: "
                                  f"albumentations.<Name>, ...}}, ...]), got {pixel!r}")
            values["pixel"] = tuple(dict(t) if isinstance(t, Mapping) else t for t in pixel)
        return cls(**values)


@dataclass
class PoseSample:
    """One image after a pipeline, at input size S (N people, K keypoints).

    image (S, S, 3) uint8 RGB; keypoints (N, K, 3) x, y, visibility (0 where the keypoint left the
    image); masks (N, S, S) bool; crowd (S, S) bool; boxes (N, 4) xywh (the box of the transformed
    corners, approximate under rotation); affine (2, 3) float64 input -> original coordinates;
    has_mask (N,) bool, whose annotation has a segmentation (None: whose mask here is non-empty; the merged
    form needs it).

    Merged form (``merge_masks=True``, what training items are made of): ``masks`` and ``crowd`` are None,
    ``body_mask`` (S, S) bool is the union of the masks of the people with a labelled keypoint and
    ``ignore_mask`` (S, S) bool the union of the others' masks and the crowd regions: what the codec needs
    of them (:meth:`strongpose.codec.StrongPoseCodec.encode`'s ``body_mask``), two masks instead of N + 1.
    """

    image: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray | None
    crowd: np.ndarray | None
    boxes: np.ndarray
    affine: np.ndarray
    has_mask: np.ndarray | None = None
    body_mask: np.ndarray | None = None
    ignore_mask: np.ndarray | None = None


def _resized_shape(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """Shape after ``LongestMaxSize`` (it rounds the same way)."""
    scale = size / max(hw)
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _resize_matrix(hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """3x3 matrix of cv2.resize on pixel centres: x' = (x + 0.5) * W'/W - 0.5."""
    sy, sx = new_hw[0] / hw[0], new_hw[1] / hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def pack_masks(masks: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(M, H, W) 0/1 masks and the (H, W) 0/1 crowd mask -> (C, H, W) uint8 bit planes, C = ceil((M + 1) / 8).

    Nearest-neighbour warping copies whole pixel values, so the bits come through exactly; one plane
    costs one warp instead of up to 8. The planes keep the layers' memory order (pycocotools decodes in
    Fortran order; copying to C order would cost more than the packing), :func:`warp_planes` takes both.
    """
    layers = list(masks) + [crowd]
    fortran = all(layer.flags.f_contiguous for layer in layers)
    h, w = crowd.shape
    # (C, W, H) C-order transposed = (C, H, W) with Fortran-order planes
    planes = np.zeros(((len(layers) + 7) // 8, w, h), np.uint8).transpose(0, 2, 1) if fortran else \
        np.zeros(((len(layers) + 7) // 8, h, w), np.uint8)
    shifted = np.empty_like(planes[0])
    for i, layer in enumerate(layers):
        # 0/1 layers set disjoint bits, so multiply-add is the bitwise or (numpy's uint8 shift is ~5x slower)
        np.multiply(layer, np.uint8(1 << (i % 8)), out=shifted)
        np.add(planes[i // 8], shifted, out=planes[i // 8])
    return planes


def unpack_masks(planes: np.ndarray, count: int) -> np.ndarray:
    """(C, S, S) bit planes -> (count, S, S) bool (inverse of :func:`pack_masks`)."""
    out = np.empty((count,) + planes.shape[1:], np.uint8)
    # shift and mask straight into the output: fancy-indexing the planes first costs 2-20x more
    for i, layer in enumerate(out):
        np.right_shift(planes[i // 8], np.uint8(i % 8), out=layer)
        np.bitwise_and(layer, np.uint8(1), out=layer)
    return out.view(bool)


_SWAP_XY = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def warp_image(image: np.ndarray, to_input: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) image -> (S, S, 3) under the 3x3 original -> input matrix; bilinear, black outside."""
    return cv2.warpAffine(image, to_input[:2], (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_planes(planes: np.ndarray, to_input: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) mask bit planes -> (C, S, S), nearest neighbour, 0 (no person) outside."""
    out = np.empty((len(planes), size, size), np.uint8)
    for c, plane in enumerate(planes):
        # a Fortran-order plane is its C-order transpose: warp that with x and y swapped, no copy
        src, m = (plane.T, to_input @ _SWAP_XY) if not plane.flags.c_contiguous else (plane, to_input)
        cv2.warpAffine(src, m[:2], (size, size), dst=out[c], flags=cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def _box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) COCO xywh -> (4N, 2) corners, moved as keypoints to get approximate boxes after the transform.
    A COCO box spans pixel edges x .. x + w; in the pixel-centre convention that is x - 0.5 .. x + w - 0.5."""
    x0, y0 = boxes[:, 0] - 0.5, boxes[:, 1] - 0.5
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1),
                     np.stack([x1, y1], 1)], 1).reshape(-1, 2)


def _corners_to_boxes(corners: np.ndarray) -> np.ndarray:
    """Moved corners (pixel-centre coordinates) -> COCO xywh (pixel edges) of their bounding box."""
    c = corners.reshape(-1, 4, 2)
    lo, hi = c.min(1), c.max(1)
    return np.concatenate([lo + 0.5, hi - lo], 1).astype(np.float32)


def _inside(xy: np.ndarray, size: int) -> np.ndarray:
    """Same test as :func:`strongpose.structures.inside_image`, for a square S x S image."""
    return ((xy >= -0.5) & (xy < size - 0.5)).all(-1)


def _sample(image: np.ndarray, people: ImageAnnotations, to_input: np.ndarray, size: int,
            flip_index: np.ndarray | None = None, merge_masks: bool = False) -> PoseSample:
    """PoseSample of ``image`` (already at S x S) and the people moved by the 3x3 ``to_input`` matrix;
    ``flip_index``: the matrix mirrors, keypoint j of a moved person is keypoint flip_index[j];
    ``merge_masks``: the merged form (see :class:`PoseSample`)."""
    n, k = people.keypoints.shape[:2]
    points = np.concatenate([people.keypoints[..., :2].reshape(-1, 2), _box_corners(people.boxes)]).astype(np.float64)
    points = (points @ to_input[:2, :2].T + to_input[:2, 2]).astype(np.float32)
    xy = points[:n * k].reshape(n, k, 2)
    vis = people.keypoints[..., 2].copy()
    if flip_index is not None:  # the mirror moves positions, not names
        xy, vis = xy[:, flip_index], vis[:, flip_index]
    vis[~_inside(xy, size)] = 0  # left the image: unlabelled
    keypoints = np.concatenate([xy, vis[..., None]], -1).astype(np.float32)
    sample = PoseSample(image=image, keypoints=keypoints, masks=None, crowd=None,
                        boxes=_corners_to_boxes(points[n * k:]), affine=np.linalg.inv(to_input)[:2],
                        has_mask=people.has_mask())
    if merge_masks:  # which people are labelled is the codec's call, on the moved keypoints
        labelled = labelled_keypoints(torch.from_numpy(keypoints), (size, size)).any(-1).numpy()
        sample.body_mask, sample.ignore_mask = _warp_unions(people, labelled, to_input, size)
    else:
        sample.masks, sample.crowd = _warp_masks(people.decoded(), to_input, size)
    return sample


def _warp_masks(people: ImageAnnotations, to_input: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) bool person masks and (S, S) bool crowd mask under ``to_input``."""
    n = len(people.masks)
    if n == 0 and not people.crowd.any():  # nothing to move (images without people, inference)
        return np.zeros((0, size, size), bool), np.zeros((size, size), bool)
    masks = unpack_masks(warp_planes(pack_masks(people.masks, people.crowd), to_input, size), n + 1)
    return masks[:n], masks[n]


def _warp_unions(people: ImageAnnotations, labelled: np.ndarray, to_input: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) bool union of the ``labelled`` people's masks and (S, S) bool union of the other people's masks
    and the crowd regions, under ``to_input``. A nearest-neighbour warp moves whole pixels, so it commutes
    with the union: the same pixels as warping each mask, for two masks decoded (from merged RLEs) instead of
    N + 1, and one bit plane warped instead of ceil((N + 1) / 8) (``experiments/RESULTS.md``, "Data
    pipeline")."""
    body, ignore = people.union(labelled), people.union(~labelled, crowd=True)
    if not (body.any() or ignore.any()):  # nothing to move (no segmentation, no crowd)
        return np.zeros((size, size), bool), np.zeros((size, size), bool)
    masks = unpack_masks(warp_planes(pack_masks(body[None], ignore), to_input, size), 2)
    return masks[0], masks[1]


class ValTransform:
    """Deterministic: resize keeping the aspect ratio so the longer side is S, pad right/bottom to S x S.

    The image goes through albumentations (``LongestMaxSize`` + ``PadIfNeeded``), image only; the people
    move by the same matrix (:meth:`to_input`), masks as nearest-neighbour bit planes. :meth:`image_only`
    is the image half alone, for inference (no people to move).
    """

    def __init__(self, input_size: int) -> None:
        self.size = int(input_size)
        # longer side -> S, then pad right/bottom to S x S with black
        self.compose = A.Compose([
            A.LongestMaxSize(max_size=self.size, interpolation=cv2.INTER_LINEAR),
            A.PadIfNeeded(self.size, self.size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0),
        ], seed=0)

    def to_input(self, hw: tuple[int, int]) -> np.ndarray:
        """3x3 original -> input matrix for an image of shape ``hw`` (top-left padding adds no shift)."""
        return _resize_matrix(hw, _resized_shape(hw, self.size))

    def from_input(self, hw: tuple[int, int]) -> np.ndarray:
        """(2, 3) float64 input -> original affine for an image of shape ``hw``."""
        return np.linalg.inv(self.to_input(hw))[:2]

    def image_only(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S, S, 3) image and its :meth:`from_input` affine, as :meth:`__call__` gives them."""
        return self.compose(image=image)["image"], self.from_input(image.shape[:2])

    def __call__(self, image: np.ndarray, people: ImageAnnotations,
                 rng: np.random.Generator | None = None, merge_masks: bool = False) -> PoseSample:
        """``merge_masks``: the sample's merged form (:class:`PoseSample`), what training items need."""
        resized = self.compose(image=image)["image"]
        return _sample(resized, people, self.to_input(image.shape[:2]), self.size, merge_masks=merge_masks)


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the geometric augmentation: zoom, rotation (degrees), shift (whole pixels), flip."""

    scale: float
    rotate: float
    shift: tuple[int, int]
    flip: bool


def sample_params(cfg: AugmentConfig, size: int, rng: np.random.Generator) -> AugmentParams:
    """Draw as ``A.Affine(scale=scale_range, rotate=(-r, r), translate_percent=(-t, t), keep_ratio=True)`` and
    ``A.HorizontalFlip(p=flip_prob)`` do: uniform scale, rotation and shift, the shift truncated to whole
    pixels (``int(fraction * S)``)."""
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, 2)
    scale, rotate = rng.uniform(*cfg.scale_range), rng.uniform(-cfg.rotation, cfg.rotation)
    return AugmentParams(scale=float(scale), rotate=float(rotate), shift=(int(tx * size), int(ty * size)),
                         flip=bool(rng.random() < cfg.flip_prob))


def augment_matrix(params: AugmentParams, hw: tuple[int, int], size: int) -> np.ndarray:
    """3x3 original -> input matrix: fit the longer side to S and centre (``LongestMaxSize`` +
    ``PadIfNeeded(position="center")``), then zoom / rotate about the centre and shift (albumentations'
    own ``Affine`` matrix), then mirror x -> S - 1 - x when flipping."""
    new_h, new_w = _resized_shape(hw, size)
    fit = _translation((size - new_w) // 2, (size - new_h) // 2) @ _resize_matrix(hw, (new_h, new_w))
    affine = fgeometric.create_affine_transformation_matrix(
        translate={"x": params.shift[0], "y": params.shift[1]}, shear={"x": 0.0, "y": 0.0},
        scale={"x": params.scale, "y": params.scale}, rotate=params.rotate, shift=fgeometric.center((size, size)))
    m = affine @ fit
    if params.flip:
        m = np.array([[-1.0, 0.0, size - 1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


class TrainTransform:
    """Random scale, rotation, translation, crop/pad to S x S, horizontal flip (with the left/right swap)
    and colour jitter.

    The geometry is one warp from the original image straight to S x S (image bilinear, mask bit planes
    nearest, points by the same matrix): albumentations' ``LongestMaxSize`` + ``PadIfNeeded`` + ``Affine``
    + ``HorizontalFlip`` resample the image four times, through a Compose with keypoint bookkeeping: the
    augment stage of ``experiments/bench_data.py`` (512 px) went from 8.5-10 to 5-6.5 ms with the one warp
    (and cheaper mask packing); no albumentations transform warps to a fixed output size with a matrix it
    is given. The parameters are drawn as those transforms draw them (:func:`sample_params`) and
    the rotation / zoom matrix is albumentations' own. Colour jitter is albumentations' ``ColorJitter``.
    """

    def __init__(self, input_size: int, skeleton: Skeleton, augment: AugmentConfig | Mapping | None = None) -> None:
        self.size = int(input_size)
        self.config = cfg = AugmentConfig.from_dict(augment)
        self.flip_index = np.asarray(skeleton.flip_index)
        self.rng = np.random.default_rng(0)  # the stream of calls without their own rng
        self.jitter = None
        if cfg.color_jitter > 0 or cfg.hue > 0:
            c = cfg.color_jitter
            self.jitter = A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=cfg.hue, p=1.0)
        self.pixel = pixel_transforms(cfg.pixel)

    def __call__(self, image: np.ndarray, people: ImageAnnotations,
                 rng: np.random.Generator | None = None, merge_masks: bool = False) -> PoseSample:
        """``rng`` fixes every random choice of this call (None: continue the transform's own stream);
        ``merge_masks``: the sample's merged form (:class:`PoseSample`), what training items need."""
        rng = self.rng if rng is None else rng
        params = sample_params(self.config, self.size, rng)
        to_input = augment_matrix(params, image.shape[:2], self.size)
        warped = warp_image(image, to_input, self.size)
        for transform in ([self.jitter] if self.jitter is not None else []) + self.pixel:
            # the same stream drives them (their own seeds would correlate samples, and workers' copies repeat)
            transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
            warped = transform(image=warped)["image"]
        return _sample(warped, people, to_input, self.size, self.flip_index if params.flip else None, merge_masks)


def pixel_transforms(specs: Sequence[Any]) -> list[A.ImageOnlyTransform]:
    """:attr:`AugmentConfig.pixel`'s transforms, built (``_target_`` nodes) and checked to be pixel-level."""
    from hydra.utils import instantiate

    built = []
    for i, spec in enumerate(specs):
        where = f"data.augment.pixel[{i}]"
        if isinstance(spec, Mapping) and "_target_" in spec:
            try:
                spec = instantiate(dict(spec))
            except Exception as err:  # noqa: BLE001 - Hydra wraps the import or constructor error
                raise ConfigError(f"{where}: {err}") from err
        if not isinstance(spec, A.BasicTransform):
            raise ConfigError(f"{where}: {spec!r} is not an albumentations transform (a node with _target_: "
                              f"albumentations.<Name> and its arguments)")
        if not isinstance(spec, A.ImageOnlyTransform):
            raise ConfigError(f"{where}: {type(spec).__name__} is not a pixel-level transform (it can move pixels, "
                              f"and the keypoints and masks would not follow); the geometry is the scale / rotation "
                              f"/ translate / flip knobs")
        # once on a small uint8 image, applied for sure: one that changes the type or the size (Normalize, ToFloat)
        # would fail at the first training step, far from the config
        trial = copy.deepcopy(spec)
        trial.p = 1.0
        try:
            out = trial(image=np.zeros((64, 64, 3), np.uint8))["image"]
        except Exception as err:  # noqa: BLE001 - any failure here is this transform's
            raise ConfigError(f"{where}: {type(spec).__name__} fails on a 64 x 64 uint8 RGB image: {err}") from err
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (64, 64, 3)):
            raise ConfigError(f"{where}: {type(spec).__name__} turns a uint8 RGB image into "
                              f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}: the pipeline "
                              f"needs uint8 pixels of the same size (the network normalises them itself)")
        built.append(spec)
    return built


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


def poses_to_original(poses: Sequence[Poses], meta: Mapping, dtype: torch.dtype | None = None) -> list[Poses]:
    """A batch's decoded people (input pixels) in original-image pixels (:func:`to_original` of
    ``meta["affine"]``); with ``meta["orig_size"]`` ((H, W) each), only those with a found keypoint on their
    image (:meth:`Poses.on_image`: a person decoded in the padding of a letterboxed batch is none), their unfound
    keypoints' guesses on it (:meth:`Poses.guesses_on_image`; decoding keeps them on the letterboxed input).
    ``dtype``: of the keypoints and scores returned (None: as decoded)."""
    sizes = torch.as_tensor(meta["orig_size"]).tolist() if "orig_size" in meta else None  # one host read
    out = []
    for i, p in enumerate(poses):
        kps, scores = p.keypoints.detach(), p.scores.detach().reshape(-1)
        if dtype is not None:
            kps, scores = kps.to(dtype), scores.to(dtype)
        people = Poses(to_original(kps, meta["affine"][i]), scores)
        out.append(people if sizes is None else people.on_image(tuple(sizes[i])).guesses_on_image(tuple(sizes[i])))
    return out
