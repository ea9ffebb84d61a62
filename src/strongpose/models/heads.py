"""Prediction heads: one small conv stack per codec output."""

from __future__ import annotations

import math

from torch import nn

from strongpose.codec import HEATMAP_MAPS

HEATMAP_HEADS = HEATMAP_MAPS  # heads whose outputs are logits of binary maps (the rest are offsets)


def conv_head(in_channels: int, out_channels: int, num_convs: int = 1, channels: int = 128,
              kernel_size: int = 3, prior: float | None = None) -> nn.Sequential:
    """``num_convs`` x (conv, BN, ReLU) then a 1x1 conv to ``out_channels``.

    ``prior``: initial output probability of a logit head (bias = logit(prior)), so that training does
    not start with a large loss on the mostly-empty heat maps (as RetinaNet does).
    """
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(num_convs):
        layers += [nn.Conv2d(width, channels, kernel_size, padding=kernel_size // 2, bias=False),
                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        width = channels
    out = nn.Conv2d(width, out_channels, 1)
    if prior is not None:
        nn.init.constant_(out.bias, -math.log((1 - prior) / prior))
    else:
        # offsets start near 0 (cell = keypoint): small, not random, first predictions
        nn.init.normal_(out.weight, std=1e-3)
        nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


class Heads(nn.Module):
    """One head per entry of ``channels`` (the codec's ``channels``): ``forward(x) -> {name: map}``."""

    def __init__(self, in_channels: int, channels: dict[str, int], num_convs: int = 1, width: int = 64,
                 kernel_size: int = 3, heatmap_prior: float = 0.01) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({
            name: conv_head(in_channels, out, num_convs, width, kernel_size,
                            prior=heatmap_prior if name in HEATMAP_HEADS else None)
            for name, out in channels.items()
        })

    def forward(self, x):
        return {name: head(x) for name, head in self.heads.items()}
