"""Drawing people: skeletons, keypoints and person scores, coloured from the Skeleton dataclass.

torchvision's ``draw_keypoints`` does the rasterising (lines and disks); this module only chooses what to
draw and in which colour, so the callback, ``predict`` and notebooks draw alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import draw_keypoints

from strongpose.data.coco import IMAGENET_MEAN, IMAGENET_STD
from strongpose.skeleton import Skeleton
from strongpose.structures import Poses

LIMB_COLOR = (255, 255, 255)


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) ImageNet-normalised float image (the data module's) -> (3, H, W) uint8."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (image.float() * std + mean).clamp(0, 255).round().to(torch.uint8)


def draw_poses(image: torch.Tensor, poses: Poses, skeleton: Skeleton, score_threshold: float = 0.1,
               person_threshold: float = 0.0, radius: int = 3, width: int = 2) -> torch.Tensor:
    """Draw ``poses`` (input-pixel coordinates) on a (3, H, W) uint8 image; returns a new image.

    Keypoints scoring below ``score_threshold`` (and limbs touching them) and people below
    ``person_threshold`` are left out. Limbs are the skeleton's tree edges; keypoints take the skeleton's
    colour of their type.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"draw_poses needs a (3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    keep = poses.scores >= person_threshold
    kps = poses.keypoints[keep].detach().float().cpu()
    if len(kps) == 0:
        return image.clone()
    visible = kps[..., 2] >= score_threshold  # (N, K)
    out = draw_keypoints(image.cpu(), kps[..., :2], connectivity=list(skeleton.edges(redundant=False)),
                         colors=LIMB_COLOR, radius=0, width=width, visibility=visible)
    colors = skeleton.colors or ((255, 0, 0),) * skeleton.num_keypoints
    # one pass per colour: draw_keypoints takes a single keypoint colour per call
    for color in sorted(set(colors)):
        of_color = torch.tensor([c == color for c in colors])
        out = draw_keypoints(out, kps[..., :2], colors=color, radius=radius, width=0,
                             visibility=visible & of_color[None])
    return out


def draw_batch(images: torch.Tensor, poses: list[Poses], skeleton: Skeleton, **kwargs) -> list[np.ndarray]:
    """Normalised (B, 3, H, W) batch + decoded poses -> list of (H, W, 3) uint8 arrays (for loggers)."""
    return [draw_poses(denormalise(img.cpu()), p, skeleton, **kwargs).permute(1, 2, 0).numpy()
            for img, p in zip(images, poses)]
