import re

import pytest
import torch

from strongpose.codec import StrongPoseCodec
from strongpose.models import HEATMAP_HEADS, ResNetBackbone, StrongPoseNet, to_probabilities


def _net(codec, **heads):
    return StrongPoseNet(ResNetBackbone("resnet18", output_stride=codec.stride, neck_channels=16), codec,
                         {"width": 16, **heads}).eval()


@pytest.mark.parametrize("long_range", [True, False])
def test_one_output_per_codec_channel_at_map_size(long_range):
    codec = StrongPoseCodec(stride=8, long_range=long_range)
    with torch.no_grad():
        out = _net(codec)(torch.rand(2, 3, 64, 80) * 255)
    assert {name: o.shape[1] for name, o in out.items()} == codec.channels
    assert all(o.shape[-2:] == codec.map_size((64, 80)) and o.shape[0] == 2 for o in out.values())


def test_offsets_come_out_in_input_pixels():
    codec = StrongPoseCodec(stride=8, disk_radius=20.0)
    net = _net(codec, num_convs=0)
    for head in net.heads.heads.values():  # each head predicts a constant 1.5
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.constant_(head.bias, 1.5)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 32, 32) * 255)
    for name, o in out.items():
        expected = 1.5 if name in HEATMAP_HEADS else 1.5 * codec.disk_radius
        assert torch.allclose(o, torch.full_like(o, expected))


def test_heatmaps_start_at_the_prior():
    codec = StrongPoseCodec(stride=8)
    with torch.no_grad():
        probs = to_probabilities(_net(codec, heatmap_prior=0.01)(torch.rand(1, 3, 64, 64) * 255))
    assert 0.002 < probs["skhm"].mean() < 0.05
    assert probs["short"].abs().mean() < 1.0  # offsets start near zero and are not squashed


def test_stride_mismatch_fails():
    with pytest.raises(ValueError, match="stride"):
        StrongPoseNet(ResNetBackbone(output_stride=16), StrongPoseCodec(stride=8))


class PatchStem(torch.nn.Module):
    """A ViT-style backbone: 8 x 8 patches without padding, i.e. floor(H / 8) cells."""

    out_channels, output_stride = 8, 8

    def __init__(self):
        super().__init__()
        self.patches = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, x):
        return self.patches(x)


def test_a_backbone_whose_maps_are_not_the_codecs_size_is_named():
    net = StrongPoseNet(PatchStem(), StrongPoseCodec(stride=8, disk_radius=12.0))
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 96) * 255)["skhm"].shape[-2:] == (8, 12)  # a multiple of 8: the same
        with pytest.raises(ValueError, match=re.escape("backbone PatchStem gives (7, 12) feature maps for (63, 96) "
                                                       "images; output stride 8 means (8, 12)")):
            net(torch.rand(1, 3, 63, 96) * 255)


def test_the_network_normalises_uint8_pixels_itself():
    """uint8 pixels in (what the data module and the Predictor give): the trunk sees ImageNet-normalised
    floats, the same as for float pixels; nothing of it enters the state dict (checkpoints keep their keys)."""
    codec = StrongPoseCodec(stride=8)
    net = _net(codec)
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    expected = (pixels.float() / 255 - mean) / std
    assert torch.allclose(net.normalize(pixels), expected, atol=1e-5)
    with torch.no_grad():
        from_uint8, from_float = net(pixels), net(pixels.float())
        trunk = net.heads(net.backbone(expected))
    for name in codec.channels:
        assert torch.allclose(from_uint8[name], from_float[name])
    assert torch.allclose(from_uint8["skhm"], trunk["skhm"], atol=1e-4)
    assert not any(key.startswith("normalize") for key in net.state_dict())


def test_normalising_keeps_channels_last_and_rejects_other_shapes():
    codec = StrongPoseCodec(stride=8)
    net = _net(codec)
    pixels = torch.zeros(1, 3, 16, 16, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    assert net.normalize(pixels).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net.normalize(torch.zeros(3, 16, 16, dtype=torch.uint8))


def test_imagenet_normalised_input_is_refused_with_the_reason():
    """The network used to take ImageNet-normalised floats; such input (negative values) now fails loudly
    instead of giving maps of a nearly blank image. Pixels as floats and NaN (the non-finite guard's case)
    pass."""
    net = _net(StrongPoseCodec(stride=8))
    pixels = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        net(net.normalize(pixels))
    with pytest.raises(ValueError, match=r"values in 0\.\.[0-9.]+: .*multiply 0\.\.1 images by 255"):
        net(pixels.float() / 255)  # torchvision's ToTensor() range
    with torch.no_grad():
        assert torch.isnan(net.normalize(torch.full((1, 3, 8, 8), float("nan")))).all()
        net(pixels.float())
        net(torch.zeros(1, 3, 32, 32))  # a black image as floats


def test_a_backbone_without_the_contract_attributes_is_named():
    """It was an AttributeError from inside the network, with nothing about what a backbone must have."""
    with pytest.raises(ValueError, match=r"backbone Identity has no out_channels and no output_stride: a backbone "
                                         r"module needs out_channels .* and output_stride \(the codec's stride, 8\)"):
        StrongPoseNet(torch.nn.Identity(), StrongPoseCodec(stride=8))
