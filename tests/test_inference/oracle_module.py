"""A network stand-in whose outputs are the codec's targets of known people, wherever the predictor puts them.

It places the people itself from the original image size and the input it receives (cv2's resize of
pixel centres, per axis, with the validation transform's rounding), independently of the predictor's
affines; and it recognises a mirrored input by the image's bright left half, mirroring the people
geometrically (x -> S - 1 - x, left/right swapped) rather than through ``codec.flip_maps``. Decoding its
outputs must therefore give the people back in original pixels only if the predictor preprocesses, flips,
fuses scales and maps back correctly.
"""

from __future__ import annotations

import numpy as np
import torch

from strongpose.codec import StrongPoseCodec

# (x, y) of COCO's 17 keypoints for a standing person 1 unit tall, centred on x = 0
TEMPLATE = np.array([
    [0.0, 0.00], [-0.03, -0.02], [0.03, -0.02], [-0.07, 0.0], [0.07, 0.0],
    [-0.15, 0.15], [0.15, 0.15], [-0.22, 0.35], [0.22, 0.35], [-0.25, 0.52], [0.25, 0.52],
    [-0.10, 0.55], [0.10, 0.55], [-0.11, 0.78], [0.11, 0.78], [-0.12, 1.0], [0.12, 1.0],
], dtype=np.float32)

LOGIT = 12.0  # sigmoid(12) = 1 - 6e-6: the targets' 0 / 1 maps as logits


def people(centres: list[tuple[float, float, float]]) -> torch.Tensor:
    """(N, 17, 3) people from (centre x, top y, height) in original pixels, all keypoints visible."""
    kp = np.zeros((len(centres), 17, 3), np.float32)
    for n, (cx, top, height) in enumerate(centres):
        kp[n, :, 0] = cx + TEMPLATE[:, 0] * height
        kp[n, :, 1] = top + TEMPLATE[:, 1] * height
        kp[n, :, 2] = 2
    return torch.from_numpy(kp)


def marked_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 noise with a bright left half and a dark right half (so a mirror shows)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    image[:, : width // 2] += 200
    return image


class OracleModule(torch.nn.Module):
    def __init__(self, codec: StrongPoseCodec, keypoints: torch.Tensor, image_hw: tuple[int, int],
                 padded: dict[int, int] | None = None) -> None:
        """``padded``: input size -> resized size for inputs padded beyond the size they were resized to."""
        super().__init__()
        self.codec = codec
        self.keypoints = keypoints
        self.image_hw = image_hw
        self.padded = padded or {}
        self.input_sizes: list[int] = []  # what it was run at
        self.flipped: list[bool] = []

    def people_in_input(self, size: int) -> torch.Tensor:
        h, w = self.image_hw
        new_h, new_w = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
        kp = self.keypoints.clone()
        kp[..., 0] = (kp[..., 0] + 0.5) * new_w / w - 0.5
        kp[..., 1] = (kp[..., 1] + 0.5) * new_h / h - 0.5
        return kp

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-1]
        self.input_sizes.append(size)
        outputs = []
        for image in images:
            kp = self.people_in_input(self.padded.get(size, size))
            # the bright half is on the left unless the input was mirrored
            flipped = bool(image[:, :, 0].float().mean() < image[:, :, -1].float().mean())
            self.flipped.append(flipped)
            if flipped:
                kp = kp[:, list(self.codec.skeleton.flip_index)]
                kp[..., 0] = size - 1 - kp[..., 0]
            targets = self.codec.encode(kp, (images.shape[-2], size))
            outputs.append({key: targets[key] for key in self.codec.channels})
        out = {key: torch.stack([o[key] for o in outputs]) for key in outputs[0]}
        for key in ("skhm", "bhm"):
            out[key] = (2 * out[key] - 1) * LOGIT
        return out
