"""Flip test, multi-scale fusion and thresholds as pure functions."""

import numpy as np
import pytest
import torch

from strongpose.codec import StrongPoseCodec
from strongpose.data.annotations import ImageAnnotations
from strongpose.data.transforms import ValTransform, to_original
from strongpose.inference.test_time import (flip_average, fuse_scales, reference_grid, scale_sizes,
                                            threshold_poses)
from strongpose.models.backbone import ResNetBackbone
from strongpose.models.network import StrongPoseNet, to_probabilities
from strongpose.structures import Poses


@pytest.fixture
def codec():
    return StrongPoseCodec(stride=8, disk_radius=16.0)


def random_maps(codec, batch=2, hw=(8, 8), seed=0):
    """Probabilities anywhere in (0, 1); offsets within half a cell (votes stay on the map)."""
    g = torch.Generator().manual_seed(seed)
    maps = {key: (torch.rand(batch, ch, *hw, generator=g) - 0.5) * codec.stride
            for key, ch in codec.channels.items()}
    maps["skhm"] = torch.rand(maps["skhm"].shape, generator=g)
    maps["bhm"] = torch.rand(maps["bhm"].shape, generator=g)
    return maps


def val_affine(hw, size):
    """(1, 2, 3) input -> original affine of the validation transform for an image of size hw."""
    empty = ImageAnnotations(np.zeros((0, 17, 3), np.float32), np.zeros((0, 4), np.float32),
                             np.zeros((0, *hw), np.uint8), np.zeros(hw, np.uint8))
    return torch.from_numpy(ValTransform(size)(np.zeros((*hw, 3), np.uint8), empty).affine)[None]


def test_averaging_with_the_exact_mirror_output_changes_nothing(codec):
    maps = random_maps(codec)
    mirrored = codec.flip_maps(maps)  # what a perfectly flip-equivariant network gives for the mirror image
    assert any(not torch.allclose(mirrored[k], maps[k]) for k in maps)
    for key, value in flip_average(maps, mirrored, codec).items():
        torch.testing.assert_close(value, maps[key], rtol=0, atol=1e-6)


def test_flip_test_of_a_symmetric_input_is_symmetric(codec):
    torch.manual_seed(0)
    net = StrongPoseNet(ResNetBackbone("resnet18", 8, neck_channels=16), codec).eval()
    half = torch.randint(0, 256, (1, 3, 64, 32), dtype=torch.uint8)  # pixels, as the Predictor sends
    image = torch.cat([half, half.flip(-1)], -1)  # width 64: a multiple of the stride
    with torch.no_grad():
        plain = to_probabilities(net(image))
        fused = flip_average(plain, to_probabilities(net(image.flip(-1))), codec)
    mirror = codec.flip_maps(fused)
    assert not torch.allclose(codec.flip_maps(plain)["skhm"], plain["skhm"], atol=1e-4)  # the net alone is not
    for key in fused:
        torch.testing.assert_close(mirror[key], fused[key], rtol=0, atol=1e-5)
    # so are the keypoint detections' Hough maps
    hough = codec.keypoint_scores(fused["skhm"], fused["short"])
    torch.testing.assert_close(codec.flip_maps({"skhm": hough})["skhm"], hough, rtol=0, atol=1e-5)


def test_fusing_one_scale_is_no_fusion(codec):
    maps = random_maps(codec, batch=1, hw=(8, 8))
    affine = val_affine((48, 64), 64)
    fused, hough = fuse_scales([(maps, affine)], affine, (8, 8), codec)
    for key in maps:
        torch.testing.assert_close(fused[key], maps[key], rtol=0, atol=1e-4)
    torch.testing.assert_close(hough, codec.keypoint_scores(maps["skhm"], maps["short"]), rtol=0, atol=1e-4)


def test_reference_grid_and_offset_scaling(codec):
    hw = (100, 200)
    ref, big = val_affine(hw, 64), val_affine(hw, 128)
    grid, beyond, to_ref = reference_grid(big, ref, (16, 16), (8, 8), codec.stride)
    assert grid.shape == (1, 8, 8, 2) and beyond.abs().max() == 0
    torch.testing.assert_close(to_ref[0], torch.eye(2) * 0.5, rtol=0, atol=1e-6)  # offsets twice as long
    # reference cell u (centre 8u + 3.5 at 64 px) lies at input x = 2 (8u + 4) - 0.5 at 128 px: cell u' = 2u + 0.5
    u = (grid[0, 0, :, 0] + 1) * 16 / 2 - 0.5
    torch.testing.assert_close(u, torch.arange(8.0) * 2 + 0.5, rtol=0, atol=1e-5)
    # the other way, the outer reference cells lie past the small maps' outermost centres, by 2 px at 64
    grid, beyond, to_ref = reference_grid(ref, big, (8, 8), (16, 16), codec.stride)
    assert grid.abs().max() <= 1 - 1 / 8 + 1e-6
    assert beyond[0, 0, 0, 0] == pytest.approx(-2.0) and beyond[0, 0, 0, -1] == pytest.approx(2.0)
    assert beyond[0, :, 1:-1, 1:-1].abs().max() == 0


def encoded_people(codec, keypoints, hw, size):
    """Targets of people given in original pixels, at one input size, and that size's affine."""
    affine = val_affine(hw, size)
    a = affine[0].double()
    kp = keypoints.clone().double()
    kp[..., :2] = (kp[..., :2] - a[:, 2]) / torch.diagonal(a[:, :2])  # axis-aligned: invert per axis
    targets = codec.encode(kp.float(), (size, size))
    return {key: targets[key][None] for key in codec.channels}, affine


def test_targets_of_the_same_people_at_two_scales_fuse_to_those_people(codec):
    hw = (200, 320)
    kp = torch.zeros(2, 17, 3)
    g = torch.Generator().manual_seed(1)
    for n, cx in enumerate((90.0, 230.0)):  # two people side by side, keypoints on a 140 x 60 box
        kp[n, :, 0] = cx + (torch.rand(17, generator=g) - 0.5) * 60
        kp[n, :, 1] = 30 + torch.rand(17, generator=g) * 140
    kp[..., 2] = 2
    small, ref_affine = encoded_people(codec, kp, hw, 96)
    large, large_affine = encoded_people(codec, kp, hw, 144)
    for per_scale in ([(small, ref_affine), (large, large_affine)], [(large, large_affine)]):
        fused, hough = fuse_scales(per_scale, ref_affine, (12, 12), codec)
        poses = codec.decode(fused, keypoint_scores=hough)[0]
        assert len(poses) == 2
        found = to_original(poses.keypoints, ref_affine[0])
        found = found[found[:, :, 0].mean(1).argsort()]
        torch.testing.assert_close(found[..., :2], kp[..., :2], rtol=0, atol=0.05)


def test_a_finer_scale_scores_its_keypoints_as_its_own_grid_does(codec):
    """Each scale votes onto the reference grid: a finer scale's Hough map resampled there was read between
    its samples, and its perfect keypoints scored ~30 % lower (0.53 instead of 0.77 at 2x)."""
    hw = (400, 400)
    kp = torch.zeros(1, 17, 3)
    kp[0, :, 0] = 150.3 + torch.linspace(-40, 40, 17)
    kp[0, :, 1] = 60.7 + torch.linspace(0, 230, 17)
    kp[..., 2] = 2
    ref, ref_affine = encoded_people(codec, kp, hw, 256)
    for size in (384, 512):
        maps, affine = encoded_people(codec, kp, hw, size)
        own = codec.keypoint_scores(maps["skhm"], maps["short"]).amax((-2, -1))
        fused, hough = fuse_scales([(maps, affine)], ref_affine, codec.map_size((256, 256)), codec)
        on_reference = hough.amax((-2, -1))
        ratio = on_reference / own  # per keypoint: where it falls in a cell moves it either way
        assert ratio.mean() > 0.9 and ratio.min() > 0.75, (size, ratio)
        poses = codec.decode(fused, keypoint_scores=hough)[0]
        torch.testing.assert_close(to_original(poses.keypoints[:1], ref_affine[0])[..., :2], kp[..., :2],
                                   rtol=0, atol=0.05)


def test_scale_sizes():
    assert scale_sizes(256, [1.0, 1.5, 0.75], 8) == [256, 384, 192]
    assert scale_sizes(100, [1.0, 1.3], 8) == [100, 128]  # other scales: multiples of the stride
    with pytest.raises(ValueError, match="positive"):
        scale_sizes(256, [1.0, 0.0], 8)
    with pytest.raises(ValueError, match="at least one"):
        scale_sizes(256, [], 8)


def test_threshold_poses():
    kps = torch.tensor([[[1.0, 2.0, 0.9], [3.0, 4.0, 0.2]], [[5.0, 6.0, 0.5], [7.0, 8.0, 0.05]]])
    poses = Poses(kps, torch.tensor([0.8, 0.3]))
    same = threshold_poses(poses)
    assert torch.equal(same.keypoints, kps) and torch.equal(same.scores, poses.scores)
    out = threshold_poses(poses, keypoint_threshold=0.3, person_threshold=0.5)
    assert len(out) == 1 and out.scores.tolist() == [pytest.approx(0.8)]
    assert out.keypoints[0, :, 2].tolist() == [pytest.approx(0.9), 0.0]
    assert torch.equal(out.keypoints[..., :2], kps[:1, :, :2])  # positions kept
    assert kps[0, 1, 2] == pytest.approx(0.2)  # the input is not modified
