"""Prediction heads: one small conv stack per codec output, run side by side as one stack."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from strongpose.codec import HEATMAP_MAPS, OFFSET_MAPS

HEATMAP_HEADS = HEATMAP_MAPS  # heads whose outputs are logits of binary maps (the rest are offsets)
CODEC_ORDER = HEATMAP_MAPS + OFFSET_MAPS  # the heads' order (the codec's channels')


def output_conv(in_channels: int, out_channels: int, prior: float | None = None) -> nn.Conv2d:
    """A head's last layer, a 1x1 conv. ``prior``: initial output probability of a logit head (bias =
    logit(prior)), so that training does not start with a large loss on the mostly-empty heat maps (as
    RetinaNet does); offsets start near 0 (cell = keypoint): small, not random, first predictions."""
    out = nn.Conv2d(in_channels, out_channels, 1)
    if prior is not None:
        nn.init.constant_(out.bias, -math.log((1 - prior) / prior))
    else:
        nn.init.normal_(out.weight, std=1e-3)
        nn.init.zeros_(out.bias)
    return out


class Heads(nn.Module):
    """One head per entry of ``channels`` (the codec's ``channels``): ``forward(x) -> {name: map}``.

    Each head is ``num_convs`` x (conv ``kernel_size``, BatchNorm, ReLU) of ``width`` channels, then a 1x1 conv
    to its channels. The heads' stacks run side by side as one: the first layer is one convolution to
    heads x ``width`` channels (all heads read the same features), each further one a grouped convolution (one
    group per head, so that no head reads another's channels), each BatchNorm and ReLU one over all channels.
    That is the same arithmetic as separate stacks (BatchNorm's statistics are per channel) in a third of the
    operations: on a fast GPU a small batch's training step is limited by the host queueing its operations
    (experiments/RESULTS.md, "Seventeenth session"), and one wide convolution gives a GPU more work per launch
    than five narrow ones. Checkpoints written with separate stacks (``heads.<name>.<i>.*``) or with other heads
    load: see :func:`adapt_heads`.
    """

    def __init__(self, in_channels: int, channels: dict[str, int], num_convs: int = 1, width: int = 64,
                 kernel_size: int = 3, heatmap_prior: float = 0.01) -> None:
        super().__init__()
        if num_convs < 0 or width < 1:
            raise ValueError(f"heads need num_convs >= 0 and width >= 1, got num_convs={num_convs}, width={width}")
        n = len(channels)
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else n * width, n * width, kernel_size,
                                 padding=kernel_size // 2, groups=1 if i == 0 else n, bias=False),
                       nn.BatchNorm2d(n * width), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({
            name: output_conv(width if num_convs else in_channels, out,
                              prior=heatmap_prior if name in HEATMAP_HEADS else None)
            for name, out in channels.items()
        })
        self.register_load_state_dict_pre_hook(_fuse_on_load)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.convs(x)
        if len(self.convs):
            # (B, n x width, h, w) -> n contiguous (B, width, h, w): one copy, where a convolution on each channel
            # slice (not contiguous for B > 1) would copy it in forward and again in backward
            parts = _per_head(x, len(self.heads))
        else:
            parts = [x] * len(self.heads)
        return {name: head(part) for (name, head), part in zip(self.heads.items(), parts)}


def _per_head(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """(B, n x C, h, w) -> n (B, C, h, w), each contiguous in ``x``'s memory format (channels_last or not)."""
    b, nc, h, w = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # memory (B, h, w, n, C) -> (n, B, h, w, C): each head's part is a channels_last (B, C, h, w)
        heads = x.permute(0, 2, 3, 1).reshape(b, h, w, n, nc // n).permute(3, 0, 1, 2, 4).contiguous()
        return tuple(part.permute(0, 3, 1, 2) for part in heads.unbind())
    return x.reshape(b, n, nc // n, h, w).transpose(0, 1).contiguous().unbind()


_SEPARATE_KEY = re.compile(r"heads\.(?P<head>[^.]+)\.(?P<index>\d+)\.(?P<tensor>[^.]+)$")


def _in_codec_order(names) -> list[str]:
    """Head names in the codec's order of maps (the order of the module that wrote them, whatever the order of a
    state dict's keys); names it does not know after those, as given."""
    return sorted(names, key=lambda name: CODEC_ORDER.index(name) if name in CODEC_ORDER else len(CODEC_ORDER))


def _separate_key(key: str, prefix: str) -> re.Match | None:
    """The (head, index, tensor) of a separate head stack's key ``<prefix>heads.<name>.<i>.<tensor>``, else None."""
    return _SEPARATE_KEY.match(key[len(prefix):]) if key.startswith(prefix) else None


def has_separate_heads(state: dict, prefix: str = "") -> bool:
    """Whether ``state`` holds separate head stacks (``<prefix>heads.<name>.<i>.<tensor>``, before fused heads)."""
    return any(_separate_key(key, prefix) for key in state)


def fuse_separate_heads(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` with the tensors of separate head stacks (StrongPose before the heads were fused:
    ``<prefix>heads.<name>.<i>.<tensor>``, i = 0, 3, 6, ... a conv, 1, 4, ... its BatchNorm, 3 x num_convs the
    output conv) replaced by :class:`Heads`' (``<prefix>convs.<i>.<tensor>``, ``<prefix>heads.<name>.<tensor>``):
    the stacks' tensors concatenated along their output channels in the codec's order of heads. A state without
    such keys comes back as it is."""
    found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    fused = {}
    for key, value in state.items():
        if match := _separate_key(key, prefix):
            found.setdefault(match["head"], {}).setdefault(int(match["index"]), {})[match["tensor"]] = value
        else:
            fused[key] = value
    if not found:
        return state
    last = {head: max(layers) for head, layers in found.items()}
    if len(set(last.values())) != 1:
        raise ValueError(f"separate head stacks of unequal depth in a checkpoint: {last}")
    output = next(iter(last.values()))
    heads = _in_codec_order(found)
    for index in range(output):
        for tensor in found[heads[0]].get(index, {}):
            values = [found[head][index][tensor] for head in heads]
            # num_batches_tracked: one count for all the heads' BatchNorms (they saw the same batches)
            fused[f"{prefix}convs.{index}.{tensor}"] = (values[0] if tensor == "num_batches_tracked"
                                                        else torch.cat(values))
    for head in heads:
        for tensor, value in found[head][output].items():
            fused[f"{prefix}heads.{head}.{tensor}"] = value
    return fused


def select_heads(state: dict[str, torch.Tensor], prefix: str, module: Heads) -> dict[str, torch.Tensor]:
    """``state`` (fused heads) with its stack's tensors made for ``module``'s heads, in its order, when the
    checkpoint's heads (those with an output conv ``<prefix>heads.<name>.weight``) are others, e.g. ``long`` with
    ``codec.long_range`` on in one and off in the other: each head's channels of every layer are its own. A head
    the checkpoint lacks keeps ``module``'s channels (its initial values), so that the other heads' layers still
    load. A state whose heads are ``module``'s comes back as it is: the writer's own layout."""
    heads = list(module.heads)
    saved = _in_codec_order(key[len(prefix) + len("heads."):-len(".weight")] for key in state
                            if key.startswith(f"{prefix}heads.") and key.endswith(".weight")
                            and key.count(".", len(prefix)) == 2)
    if not saved or set(saved) == set(heads):
        return state
    own = module.state_dict() if set(heads) - set(saved) else {}  # the lacking heads' channels
    cut = dict(state)
    for key, value in state.items():
        if not key.startswith(f"{prefix}convs.") or value.dim() == 0 or value.shape[0] % len(saved):
            continue
        parts = value.chunk(len(saved))
        if own:
            mine = own.get(key[len(prefix):])
            fresh = mine.chunk(len(heads)) if mine is not None and mine.shape[0] % len(heads) == 0 else None
            if fresh is None or fresh[0].shape != parts[0].shape:  # another width: nothing of it fits
                continue
        cut[key] = torch.cat([parts[saved.index(head)] if head in saved else fresh[i].to(value)
                              for i, head in enumerate(heads)])
    return cut


def adapt_heads(state: dict[str, torch.Tensor], prefix: str, module: Heads) -> dict[str, torch.Tensor]:
    """A checkpoint's head tensors for ``module``: :func:`fuse_separate_heads`, then :func:`select_heads`."""
    return select_heads(fuse_separate_heads(state, prefix), prefix, module)


def _fuse_on_load(module: Heads, state: dict, prefix: str, *args, **kwargs) -> None:
    """load_state_dict pre-hook: a checkpoint of separate head stacks or of other heads (:func:`adapt_heads`), in
    place."""
    fused = adapt_heads(state, prefix, module)
    if fused is not state:
        state.clear()
        state.update(fused)
