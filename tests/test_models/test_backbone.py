import time
import urllib.request

import pytest
import torch
import torchvision
from torch import nn

from strongpose.models.backbone import ARCHS, ResNetBackbone, WeightsFileError, imagenet_weights_file
from strongpose.structures import map_size

DEPTHS = ["resnet18", "resnet34", "resnet50",
          pytest.param("resnet101", marks=pytest.mark.slow), pytest.param("resnet152", marks=pytest.mark.slow),
          "resnext50_32x4d", *(pytest.param(arch, marks=pytest.mark.slow) for arch in ARCHS[6:])]


def test_every_arch_is_tested():
    assert [getattr(a, "values", (a,))[0] for a in DEPTHS] == list(ARCHS)


@pytest.mark.parametrize("arch", DEPTHS)
def test_every_depth_gives_neck_channels_at_stride_8(arch):
    backbone = ResNetBackbone(arch, output_stride=8, neck_channels=32).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 32, 8, 8)


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_output_size_is_the_codec_map_size(stride):
    backbone = ResNetBackbone("resnet18", output_stride=stride, neck_channels=16).eval()
    for size in [(64, 64), (72, 100), (33, 47)]:
        with torch.no_grad():
            out = backbone(torch.randn(1, 3, *size))
        assert out.shape[-2:] == map_size(size, stride)


def test_frozen_norm_has_no_batchnorm_and_no_trainable_statistics():
    backbone = ResNetBackbone("resnet18", norm="frozen")
    body = nn.ModuleList([backbone.stem, backbone.stages])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in body.modules())


def test_bad_arguments_fail():
    with pytest.raises(ValueError, match="unknown backbone"):
        ResNetBackbone("resnet7")
    with pytest.raises(ValueError, match="output_stride"):
        ResNetBackbone(output_stride=12)
    with pytest.raises(ValueError, match="norm"):
        ResNetBackbone(norm="group")


def _no_network(*args, **kwargs):
    raise AssertionError("the backbone tried the network")


def test_pretrained_without_file_fails_fast_and_says_where(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        ResNetBackbone("resnet18", pretrained=True)
    assert time.perf_counter() - start < 5
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file("resnet18") == expected
    assert str(expected) in str(err.value) and "weights_path" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ResNetBackbone("resnet18", pretrained=True, weights_path=str(tmp_path / "nowhere.pth"))


@pytest.mark.parametrize("where", ["hub_cache", "weights_path"])
def test_pretrained_loads_the_local_file(tmp_path, monkeypatch, where):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = imagenet_weights_file("resnet18") if where == "hub_cache" else tmp_path / "mine.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    backbone = ResNetBackbone("resnet18", pretrained=True, norm="frozen",
                              weights_path=str(path) if where == "weights_path" else None)
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
    assert torch.equal(backbone.stages["layer4"][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(backbone.stem[1].running_var, reference.bn1.running_var)


def test_a_wrong_weights_file_is_named_with_its_problem(tmp_path):
    """Another arch's weights, a damaged file and a whole checkpoint: one line naming the file, not torch's
    list of hundreds of tensors."""
    other = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), other)
    with pytest.raises(WeightsFileError, match=r"resnet34.pth do not fit torchvision's resnet18: .*unexpected "
                                               r"\(first: layer1.2.conv1.weight\).*backbone.arch=resnet18"):
        ResNetBackbone("resnet18", pretrained=True, weights_path=str(other))
    wide = tmp_path / "wide.pth"
    torch.save(torchvision.models.wide_resnet50_2().state_dict(), wide)
    with pytest.raises(WeightsFileError, match=r"of another shape \(first: layer1.0.conv1.weight \(128, 64, 1, 1\) "
                                               r"vs \(64, 64, 1, 1\)\)"):
        ResNetBackbone("resnet50", pretrained=True, weights_path=str(wide))
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(other.read_bytes()[:1000])
    with pytest.raises(WeightsFileError, match="damaged.pth: cannot be read as a torch file"):
        ResNetBackbone("resnet18", pretrained=True, weights_path=str(damaged))
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 8)  # no zip: torch reads it as a legacy pickle, and refuses it
    with pytest.raises(WeightsFileError, match="noise.pth: cannot be read as a torch file") as err:
        ResNetBackbone("resnet18", pretrained=True, weights_path=str(noise))
    assert "weights_only` set to `False`" not in str(err.value)  # torch's advice to load it unsafely: not passed on
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "epoch": 3}, checkpoint)
    with pytest.raises(WeightsFileError, match="last.ckpt: not a state dict of tensors .*init_from="):
        ResNetBackbone("resnet18", pretrained=True, weights_path=str(checkpoint))
