"""ResNet (ResNeXt, Wide ResNet) backbone with a light top-down neck that brings the features to the codec's output stride.

Output stride mechanism: a top-down neck (FPN-like: 1x1 laterals on C(stride)..C5, nearest upsampling
and sums, one 3x3 conv) rather than ``replace_stride_with_dilation``. Why:
  * torchvision refuses dilation in BasicBlock, so ResNet-18/34 would need hand-patched convolutions;
  * dilation runs layer3/layer4 at 4x/16x their usual area: measured on this project's 2-core CPU,
    batch 8 at 256 px, forward+backward, stride 8: ResNet-18 neck 4.3 s vs dilated 5.4 s, ResNet-50
    neck 8.0 s vs dilated 16.2 s;
  * the neck gives every depth the same, small head input (``neck_channels``) and any stride 4..32.
Feature-map sizes follow the convolutions' ceil(H / stride), which is the codec's ``map_size``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from strongpose.config_check import InputError
from strongpose.models.frozen_norm import CachedFrozenBatchNorm2d

# torchvision's ResNet family: the same stages and block layout (ResNeXt: grouped 3x3 convolutions; Wide ResNet:
# twice the bottleneck width), so one neck fits all; ImageNet weights by torchvision's name of each
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
NORMS = ("batch", "frozen")
# stride of each ResNet stage's output: stem+layer1 = C2 ... layer4 = C5
_STAGE_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class WeightsFileError(InputError, ValueError):
    """An ImageNet weights file that cannot be read, or that holds another network's tensors."""


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision's ImageNet weights for ``arch`` live in the local torch hub cache."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_imagenet_weights(model: nn.Module, arch: str, weights_path: str | Path | None = None) -> None:
    """Load ImageNet weights from a local file only: this project's machines cannot download them."""
    path = Path(weights_path).expanduser() if weights_path else imagenet_weights_file(arch)
    if not path.is_file():
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
        raise FileNotFoundError(
            f"ImageNet weights for {arch} not found at {path}. Download {url} on a machine with network "
            f"access and put it at {imagenet_weights_file(arch)} (or pass backbone.weights_path=/path/to/file), "
            f"or train from scratch with backbone.pretrained=false.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or non-torch file: zip, pickle or weights_only errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if first.startswith("Weights only load failed"):  # torch's advice to load it unsafely is no advice here
            first = "damaged, or pickled objects besides tensors, which are not loaded"
        raise WeightsFileError(f"ImageNet weights {path}: cannot be read as a torch file "
                               f"({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"ImageNet weights {path}: not a state dict of tensors (a training checkpoint "
                               f"starts a run with init_from=, not backbone.weights_path=)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # torch lists every one of hundreds of tensors: the file, the arch and the first
        own = model.state_dict()  # (frozen BatchNorm drops num_batches_tracked as it loads: not a mismatch)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
        reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                    if k in state and state[k].shape != own[k].shape]
        parts = [f"{len(found)} {what} (first: {found[0]})" for what, found in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if found]
        raise WeightsFileError(f"ImageNet weights {path} do not fit torchvision's {arch}: "
                               f"{'; '.join(parts) or str(err).splitlines()[0]}; weights of another network? "
                               f"backbone.arch={arch} needs {arch}'s") from err


class ResNetBackbone(nn.Module):
    """torchvision ResNet + top-down neck; ``forward(images) -> (B, neck_channels, h, w)`` at ``output_stride``.

    Args:
        arch: one of ``resnet18`` ... ``resnet152``, ``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``,
            ``wide_resnet50_2``, ``wide_resnet101_2`` (:data:`ARCHS`).
        output_stride: 4, 8, 16 or 32 (must equal the codec's stride).
        neck_channels: channels of the neck, i.e. of the heads' input.
        pretrained: load torchvision's ImageNet weights from a local file (see :func:`load_imagenet_weights`).
        weights_path: that file, when not in the torch hub cache.
        norm: ``batch`` or ``frozen`` (:class:`CachedFrozenBatchNorm2d`: statistics and affine fixed, the usual
            choice with pretrained weights and small batches). SyncBatchNorm across DDP ranks is the trainer's
            ``sync_batchnorm=True``, which converts every BatchNorm, heads included.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        output_stride: int = 8,
        neck_channels: int = 128,
        pretrained: bool = False,
        weights_path: str | None = None,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone {arch!r}; known: {', '.join(ARCHS)}")
        if output_stride not in _STAGE_STRIDES.values():
            raise ValueError(f"output_stride must be one of {sorted(_STAGE_STRIDES.values())}, got {output_stride}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.arch = arch
        self.output_stride = int(output_stride)
        self.out_channels = int(neck_channels)

        # FrozenBatchNorm2d keeps BatchNorm's state-dict keys, so ImageNet weights load either way
        resnet = getattr(torchvision.models, arch)(norm_layer=CachedFrozenBatchNorm2d if norm == "frozen" else None)
        if pretrained:
            load_imagenet_weights(resnet, arch, weights_path)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleDict({name: getattr(resnet, name) for name in _STAGE_STRIDES})
        # the neck reads every stage from the output stride down to C5
        self.used = [name for name, s in _STAGE_STRIDES.items() if s >= output_stride]
        widths = {name: _stage_width(stage) for name, stage in self.stages.items()}
        self.laterals = nn.ModuleDict({name: nn.Conv2d(widths[name], neck_channels, 1) for name in self.used})
        self.smooth = nn.Sequential(
            nn.Conv2d(neck_channels, neck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(neck_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        feats = {}
        for name, stage in self.stages.items():
            x = feats[name] = stage(x)
        y = self.laterals[self.used[-1]](feats[self.used[-1]])
        for name in reversed(self.used[:-1]):
            f = feats[name]
            y = self.laterals[name](f) + F.interpolate(y, size=f.shape[-2:], mode="nearest")
        return self.smooth(y)


def _stage_width(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
