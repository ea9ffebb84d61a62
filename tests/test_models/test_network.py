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
        out = _net(codec)(torch.randn(2, 3, 64, 80))
    assert {name: o.shape[1] for name, o in out.items()} == codec.channels
    assert all(o.shape[-2:] == codec.map_size((64, 80)) and o.shape[0] == 2 for o in out.values())


def test_offsets_come_out_in_input_pixels():
    codec = StrongPoseCodec(stride=8, disk_radius=20.0)
    net = _net(codec, num_convs=0)
    for head in net.heads.heads.values():  # each head predicts a constant 1.5
        torch.nn.init.zeros_(head[-1].weight)
        torch.nn.init.constant_(head[-1].bias, 1.5)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    for name, o in out.items():
        expected = 1.5 if name in HEATMAP_HEADS else 1.5 * codec.disk_radius
        assert torch.allclose(o, torch.full_like(o, expected))


def test_heatmaps_start_at_the_prior():
    codec = StrongPoseCodec(stride=8)
    with torch.no_grad():
        probs = to_probabilities(_net(codec, heatmap_prior=0.01)(torch.randn(1, 3, 64, 64)))
    assert 0.002 < probs["skhm"].mean() < 0.05
    assert probs["short"].abs().mean() < 1.0  # offsets start near zero and are not squashed


def test_stride_mismatch_fails():
    with pytest.raises(ValueError, match="stride"):
        StrongPoseNet(ResNetBackbone(output_stride=16), StrongPoseCodec(stride=8))
