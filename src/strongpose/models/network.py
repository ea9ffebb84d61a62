"""StrongPoseNet: backbone + heads, a plain nn.Module sized by the codec."""

from __future__ import annotations

import torch
from torch import nn

from strongpose.codec import StrongPoseCodec
from strongpose.config_check import ConfigError
from strongpose.models.capture import capturing
from strongpose.models.heads import HEATMAP_HEADS, Heads
from strongpose.structures import map_size


# ImageNet statistics of torchvision's pretrained ResNets, in 0..255 pixel units (RGB)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class PixelNormalize(nn.Module):
    """(B, 3, H, W) RGB pixel values 0..255 (uint8 or float) -> float32 ImageNet-normalised.

    Part of the network, as in detectron2 and torchvision's detection models, so that images travel as
    uint8 from the data workers to the device (a quarter of float32's bytes through shared memory,
    pinned memory and the host-to-device copy) and every caller (training, Predictor, ONNX) feeds the
    same pixels. Written out rather than torchvision's ``Normalize`` transform, which needs float input
    and makes its mean and std tensors anew (a host-to-device copy) at every call; these are buffers
    that follow ``.to(device)``. Not persistent: checkpoints hold no statistics and keep their keys (and
    ``load_state_dict`` never sets them: a module built on the meta device must be re-created, not
    ``to_empty()``-ed).

    Floats are taken as pixel values too. Float input with negative values, which pixels never have, is
    refused (most likely ImageNet-normalised images, what the network took before this layer): one
    reduction and host sync per float batch, none for uint8 (training, Predictor), skipped while tracing,
    compiling or exporting, where it cannot run.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t,
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not capturing():  # checks in Python: the TorchScript exporter warns, torch.export cannot branch on data
            if images.dim() != 4 or images.shape[1] != self.scale.shape[1]:
                raise ValueError(f"images must be (B, {self.scale.shape[1]}, H, W) RGB pixel values, "
                                 f"got shape {tuple(images.shape)}")
            if images.is_floating_point() and images.numel():
                low, high = torch.stack(images.aminmax()).tolist()  # one read of the device
                if low < 0:
                    raise ValueError("images have negative values: the network takes RGB pixel values 0..255 "
                                     "(uint8 or float) and normalises them itself; do not pass ImageNet-normalised "
                                     "images")
                if 0 < high <= 1:  # ToTensor()'s range: as pixel values, a black image, and no error otherwise
                    raise ValueError(f"float images with values in 0..{high:.3g}: the network takes RGB pixel values "
                                     f"0..255 (uint8 or float); multiply 0..1 images by 255")
        return torch.addcmul(self.shift, images.to(self.scale.dtype), self.scale)


class StrongPoseNet(nn.Module):
    """``forward(images) -> dict`` of raw outputs, the same in training and evaluation.

    ``images``: (B, 3, H, W) RGB pixel values 0..255, uint8 (as the data module and the Predictor give
    them) or float; the network normalises them itself (:class:`PixelNormalize`).

    ``skhm`` (B, K, h, w) and ``bhm`` (B, 1, h, w) are logits; ``short``, ``mid``, ``long`` are offsets in
    input pixels: the heads predict them in units of the disk radius R (values of order 1 whatever R
    is), and the network multiplies by R.

    Args:
        backbone: a module with ``out_channels`` and ``output_stride`` (e.g. ``ResNetBackbone``).
        codec: gives the channel count of each head, the disk radius and the stride.
        heads: keyword arguments of :class:`Heads` (``num_convs``, ``width``, ``kernel_size``, ``heatmap_prior``).
    """

    def __init__(self, backbone: nn.Module, codec: StrongPoseCodec, heads: dict | None = None) -> None:
        super().__init__()
        lacking = [name for name in ("out_channels", "output_stride") if not hasattr(backbone, name)]
        if lacking:  # the contract of a backbone of one's own (README, "A backbone is any nn.Module ...")
            raise ConfigError(f"backbone {type(backbone).__name__} has no {' and no '.join(lacking)}: a backbone "
                              f"module needs out_channels (its feature channels) and output_stride (the codec's "
                              f"stride, {codec.stride})")
        if backbone.output_stride != codec.stride:
            raise ConfigError(f"backbone output stride {backbone.output_stride} != codec stride {codec.stride}")
        self.normalize = PixelNormalize()
        self.backbone = backbone
        self.heads = Heads(backbone.out_channels, codec.channels, **dict(heads or {}))
        self.disk_radius = float(codec.disk_radius)
        self.stride = int(codec.stride)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(self.normalize(images))
        if not capturing():  # shapes only (no device read): a backbone whose maps are not what the targets are
            expected = map_size(tuple(images.shape[-2:]), self.stride)
            if tuple(features.shape[-2:]) != expected:  # (a custom one; floor where the codec takes ceil)
                raise ValueError(f"backbone {type(self.backbone).__name__} gives {tuple(features.shape[-2:])} "
                                 f"feature maps for {tuple(images.shape[-2:])} images; output stride "
                                 f"{self.stride} means {expected} (ceil(H / stride), ceil(W / stride))")
        raw = self.heads(features)
        return {name: out if name in HEATMAP_HEADS else out * self.disk_radius for name, out in raw.items()}


def to_probabilities(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw outputs -> what :meth:`StrongPoseCodec.decode` takes (sigmoid on the heat-map logits)."""
    return {name: out.sigmoid() if name in HEATMAP_HEADS else out for name, out in outputs.items()}
