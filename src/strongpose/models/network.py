"""StrongPoseNet: backbone + heads, a plain nn.Module sized by the codec."""

from __future__ import annotations

import torch
from torch import nn

from strongpose.codec import StrongPoseCodec
from strongpose.models.heads import HEATMAP_HEADS, Heads


class StrongPoseNet(nn.Module):
    """``forward(images) -> dict`` of raw outputs, the same in training and evaluation.

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
        if backbone.output_stride != codec.stride:
            raise ValueError(f"backbone output stride {backbone.output_stride} != codec stride {codec.stride}")
        self.backbone = backbone
        self.heads = Heads(backbone.out_channels, codec.channels, **dict(heads or {}))
        self.disk_radius = float(codec.disk_radius)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.heads(self.backbone(images))
        return {name: out if name in HEATMAP_HEADS else out * self.disk_radius for name, out in raw.items()}


def to_probabilities(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw outputs -> what :meth:`StrongPoseCodec.decode` takes (sigmoid on the heat-map logits)."""
    return {name: out.sigmoid() if name in HEATMAP_HEADS else out for name, out in outputs.items()}
