"""Typed containers and the one pixel convention used in both directions.

Pixel convention (as albumentations, whose flip maps x -> W-1-x): the centre of image pixel i is at
coordinate i, so an image of width W spans [-0.5, W-0.5). A map cell u at stride s covers input pixels
u*s .. u*s+s-1, whose centre is at ``u*s + (s-1)/2``. Encoding and decoding both go through the two
helpers below; nothing else converts between input and map coordinates.

Shape letters used in docstrings: B batch, N people, K keypoint types, E directed edges,
H x W input image, h x w output map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def map_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(h, w) of the output maps for an (H, W) input."""
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


def map_to_input(u: torch.Tensor | float, stride: int) -> torch.Tensor | float:
    """Input-pixel coordinate of map cell centre ``u``."""
    return u * stride + (stride - 1) / 2.0


def input_to_map(x: torch.Tensor | float, stride: int) -> torch.Tensor | float:
    """Continuous map coordinate of input coordinate ``x`` (inverse of :func:`map_to_input`)."""
    return (x - (stride - 1) / 2.0) / stride


def inside_image(xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(..., 2) coordinates -> (...) bool, True where the point lies on the image."""
    height, width = image_size
    return (xy[..., 0] >= -0.5) & (xy[..., 0] < width - 0.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] < height - 0.5)


@dataclass
class Poses:
    """People found in one image.

    keypoints: (N, K, 3) float tensor of x, y (input pixels) and score in [0, 1]; a keypoint that was
        not found has score 0 and a best-guess position.
    scores: (N,) person scores, sorted in descending order.
    """

    keypoints: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __getitem__(self, index: int | slice | torch.Tensor | list) -> "Poses":
        """The people at ``index`` as Poses, in their order: an int (one person), a slice, indices or a bool mask,
        e.g. ``poses[poses.scores > 0.5]``; ``for person in poses`` gives one-person Poses."""
        if isinstance(index, int):
            index = [index]  # keeps the person dimension (and -1 means the last)
        return Poses(self.keypoints[index], self.scores[index])

    def to(self, device: torch.device | str) -> "Poses":
        return Poses(self.keypoints.to(device), self.scores.to(device))

    def on_image(self, image_size: tuple[int, int]) -> "Poses":
        """The people with a found keypoint (score > 0) on an (H, W) image: in original-image pixels, a
        person decoded in the padding of a resized batch (or beyond the image) is left out."""
        found = (self.keypoints[..., 2] > 0) & inside_image(self.keypoints[..., :2], image_size)
        keep = found.any(-1)
        return self if bool(keep.all()) else Poses(self.keypoints[keep], self.scores[keep])

    def guesses_on_image(self, image_size: tuple[int, int]) -> "Poses":
        """Unfound keypoints (score 0, the decoder's guesses) moved onto an (H, W) image's pixels (``-0.5 ..
        W - 0.5``): a guess off the image is never nearer a keypoint annotated on it. Found keypoints stay."""
        kps = self.keypoints
        unfound = kps[..., 2] <= 0
        if not bool(unfound.any()):
            return self
        h, w = image_size
        xy = kps[..., :2]
        on = torch.stack([xy[..., 0].clamp(-0.5, w - 0.5), xy[..., 1].clamp(-0.5, h - 0.5)], dim=-1)
        return Poses(torch.cat([torch.where(unfound[..., None], on, xy), kps[..., 2:]], dim=-1), self.scores)

    def to_coco(self, image_id: int, category_id: int = 1) -> list[dict]:
        """COCO keypoint results (one dict a person)."""
        kps = self.keypoints.detach().cpu()
        return [
            {"image_id": int(image_id), "category_id": int(category_id),
             "keypoints": [round(float(v), 2) for v in kps[i].reshape(-1)],
             "score": float(self.scores[i])}
            for i in range(len(self))
        ]
