"""Pipelines: flip swaps left/right, everything moves together, the affine maps back exactly."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from strongpose.data import AugmentConfig, COCOKeypointDataset, TrainTransform, ValTransform, to_original
from strongpose.config_check import ConfigError
from strongpose.data.annotations import ImageAnnotations, image_annotations, read_image
from strongpose.data.transforms import (AugmentParams, _sample, augment_matrix, pack_masks, sample_params,
                                        unpack_masks)
from strongpose.skeleton import COCO_PERSON

S = 128
K = COCO_PERSON.num_keypoints
NO_RANDOM = {"scale_range": (1.0, 1.0), "rotation": 0.0, "translate": 0.0, "color_jitter": 0.0}


def _person_facing_camera() -> np.ndarray:
    """(1, K, 3): left keypoints at larger x than their right counterparts (the person faces us)."""
    kp = np.zeros((1, K, 3), np.float32)
    for k, name in enumerate(COCO_PERSON.keypoints):
        side = 12.0 if name.startswith("left") else -12.0 if name.startswith("right") else 0.0
        kp[0, k] = (60.0 + side + k * 0.25, 20.0 + 5 * k, 2)
    return kp


def _people(kp: np.ndarray, hw: tuple[int, int]) -> ImageAnnotations:
    n = kp.shape[0]
    masks = np.zeros((n,) + hw, np.uint8)
    return ImageAnnotations(keypoints=kp, boxes=np.tile(np.array([[40, 10, 40, 100]], np.float32), (n, 1)),
                            masks=masks, crowd=np.zeros(hw, np.uint8))


def test_forced_flip_swaps_left_and_right() -> None:
    kp = _person_facing_camera()
    image = np.zeros((S, S, 3), np.uint8)
    out = TrainTransform(S, COCO_PERSON, {**NO_RANDOM, "flip_prob": 1.0})(image, _people(kp, (S, S)),
                                                                          np.random.default_rng(0))
    flip = np.array(COCO_PERSON.flip_index)
    expected_x = S - 1 - kp[0, flip, 0]  # keypoint j of the flipped person is keypoint flip[j] of the original
    np.testing.assert_allclose(out.keypoints[0, :, 0], expected_x, atol=1e-3)
    np.testing.assert_allclose(out.keypoints[0, :, 1], kp[0, flip, 1], atol=1e-3)
    # still a person facing the camera: each left keypoint right of its right counterpart
    for a, b in COCO_PERSON.flip_pairs:
        left, right = (a, b) if a.startswith("left") else (b, a)
        assert out.keypoints[0, COCO_PERSON.index(left), 0] > out.keypoints[0, COCO_PERSON.index(right), 0]


def test_a_flip_moves_the_visibility_flags_with_the_keypoints() -> None:
    """A left wrist that was not labelled is, mirrored, the right wrist that is not labelled: the flags swap
    with the positions (else the labelled side would move to the other side's unlabelled (0, 0))."""
    kp = _person_facing_camera()
    unlabelled = [COCO_PERSON.index("left_wrist"), COCO_PERSON.index("right_ankle"), COCO_PERSON.index("nose")]
    kp[0, unlabelled, 2] = 0
    out = TrainTransform(S, COCO_PERSON, {**NO_RANDOM, "flip_prob": 1.0})(
        np.zeros((S, S, 3), np.uint8), _people(kp, (S, S)), np.random.default_rng(0))
    flip = np.array(COCO_PERSON.flip_index)
    np.testing.assert_array_equal(out.keypoints[0, :, 2], kp[0, flip, 2])
    assert out.keypoints[0, COCO_PERSON.index("right_wrist"), 2] == 0
    assert out.keypoints[0, COCO_PERSON.index("left_wrist"), 2] > 0


def test_keypoints_moved_off_the_input_are_unlabelled() -> None:
    """A shift that moves the lower body below the S x S input leaves those keypoints without a flag, the
    others labelled where they moved."""
    kp = _person_facing_camera()  # y = 20 + 5 k
    shift = np.array([[1.0, 0, 0], [0, 1.0, S - 62.0], [0, 0, 1.0]])  # keypoint k lands at y = S - 42 + 5 k
    out = _sample(np.zeros((S, S, 3), np.uint8), _people(kp, (S, S)), shift, S)
    below = kp[0, :, 1] + S - 62.0 > S
    assert below.any() and not below.all()
    np.testing.assert_array_equal(out.keypoints[0, below, 2], 0)
    np.testing.assert_array_equal(out.keypoints[0, ~below, 2], 2)


def test_no_flip_keeps_order() -> None:
    kp = _person_facing_camera()
    out = TrainTransform(S, COCO_PERSON, {**NO_RANDOM, "flip_prob": 0.0})(
        np.zeros((S, S, 3), np.uint8), _people(kp, (S, S)), np.random.default_rng(0))
    np.testing.assert_allclose(out.keypoints, kp, atol=1e-3)


def test_train_affine_maps_sample_keypoints_back(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=256, train=True, augment={"flip_prob": 0.5})
    flip = np.array(codec.skeleton.flip_index)
    for index in range(len(ds)):
        _, people = ds.load(index)
        out = ds.transformed(index, epoch=3)
        back = to_original(out.keypoints, out.affine)
        # unflipped and flipped people: compare with the original in either order
        direct = np.abs(back[..., :2] - people.keypoints[..., :2]).max(-1)
        swapped = np.abs(back[..., :2] - people.keypoints[:, flip, :2]).max(-1)
        err = np.minimum(np.where(out.keypoints[..., 2] > 0, direct, 0).max(initial=0),
                         np.where(out.keypoints[..., 2] > 0, swapped, 0).max(initial=0))
        assert err < 1e-2


def test_val_round_trip_within_one_pixel(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=200, train=False)
    checked = 0
    for index in range(len(ds)):
        image, people = ds.load(index)
        out = ds.transformed(index)
        assert out.image.shape == (200, 200, 3)
        labelled = people.keypoints[..., 2] > 0
        np.testing.assert_array_equal(out.keypoints[..., 2] > 0, labelled)  # nothing leaves the image
        back = to_original(torch.from_numpy(out.keypoints), {"affine": torch.from_numpy(out.affine)})
        err = (back[..., :2].numpy() - people.keypoints[..., :2])[labelled]
        assert np.abs(err).max(initial=0) < 1.0
        checked += int(labelled.sum())
        # image edges map to image edges: the resize is about pixel centres (edges at -0.5 and W - 0.5)
        h, w = image.shape[:2]
        scale = 200 / max(h, w)
        edges = np.array([[-0.5, -0.5], [round(w * scale) - 0.5, round(h * scale) - 0.5]])
        np.testing.assert_allclose(to_original(edges, out.affine), [[-0.5, -0.5], [w - 0.5, h - 0.5]], atol=1e-3)
    assert checked > 100


def test_to_original_batched_keeps_extra_columns() -> None:
    affine = torch.tensor([[[2.0, 0, 1], [0, 2, 3]], [[1.0, 0, 0], [0, 1, 0]]])
    kp = torch.tensor([[[[1.0, 1.0, 0.9]]], [[[5.0, 6.0, 0.5]]]])  # (B=2, N=1, K=1, 3)
    out = to_original(kp, {"affine": affine})
    torch.testing.assert_close(out, torch.tensor([[[[3.0, 5.0, 0.9]]], [[[5.0, 6.0, 0.5]]]]))
    assert isinstance(to_original(kp[0].numpy(), affine[0].numpy()), np.ndarray)


def test_to_original_batched_equals_one_image_at_a_time_for_rotated_affines() -> None:
    """Training views are rotated: a batched mapping that used a transposed 2x2 would only agree on diagonal
    affines (scale and shift)."""
    g = torch.Generator().manual_seed(0)
    angles = torch.tensor([0.3, -1.1, 2.0])
    affine = torch.zeros(3, 2, 3)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = (
        1.5 * angles.cos(), -1.5 * angles.sin(), 1.5 * angles.sin(), 1.5 * angles.cos())
    affine[:, :, 2] = torch.randn(3, 2, generator=g) * 20
    kp = torch.rand(3, 4, 17, 3, generator=g) * 100  # (B, N, K, 3)
    batched = to_original(kp, {"affine": affine})
    for i in range(3):
        torch.testing.assert_close(batched[i], to_original(kp[i], affine[i]))
    x, y = kp[1, 2, 5, :2].double()
    expected = affine[1].double() @ torch.stack([x, y, torch.ones((), dtype=torch.float64)])
    torch.testing.assert_close(batched[1, 2, 5, :2].double(), expected, rtol=1e-5, atol=1e-4)


def test_masks_pack_round_trip() -> None:
    rng = np.random.default_rng(0)
    masks = (rng.random((17, 9, 11)) > 0.5).astype(np.uint8)
    crowd = (rng.random((9, 11)) > 0.5).astype(np.uint8)
    packed = pack_masks(masks, crowd)
    assert packed.shape == (3, 9, 11)
    unpacked = unpack_masks(packed, 18)
    np.testing.assert_array_equal(unpacked[:17], masks.astype(bool))
    np.testing.assert_array_equal(unpacked[17], crowd.astype(bool))


def test_augment_config_rejects_typos() -> None:
    with pytest.raises(ValueError, match="flip_probability"):
        AugmentConfig.from_dict({"flip_probability": 0.5})
    assert AugmentConfig.from_dict({"scale_range": [0.5, 1.5]}).scale_range == (0.5, 1.5)


def test_val_transform_is_deterministic(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=96, train=False)
    a, b = ds.transformed(2), ds.transformed(2)
    np.testing.assert_array_equal(a.image, b.image)
    assert isinstance(ds.transform, ValTransform)


def _blob_image(hw: tuple[int, int], x: float, y: float, sigma: float = 3.0) -> np.ndarray:
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    blob = 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(blob.astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("seed", range(8))
def test_one_warp_puts_a_keypoint_on_its_pixel(seed: int) -> None:
    """The bright dot drawn at a (sub-pixel) keypoint ends up at the moved keypoint, to 0.5 px, under random
    zoom, rotation, shift and flip from a non-square image; the mask disc drawn there too stays on it."""
    hw = (120, 170)
    rng = np.random.default_rng(100 + seed)
    x, y = float(rng.uniform(50, 120)), float(rng.uniform(40, 80))
    kp = np.zeros((1, K, 3), np.float32)
    kp[0, 0] = (x, y, 2)
    people = _people(kp, hw)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    people.masks[0] = (xx - x) ** 2 + (yy - y) ** 2 <= 8**2
    transform = TrainTransform(S, COCO_PERSON, {"color_jitter": 0.0, "rotation": 45.0, "scale_range": (0.6, 1.4),
                                                "flip_prob": 0.5})
    out = transform(_blob_image(hw, x, y), people, rng)
    moved = out.keypoints[0, 0 if out.keypoints[0, 0, 2] else COCO_PERSON.flip_index[0]]  # the nose keeps its name
    assert moved[2] == 2
    weight = out.image[..., 0].astype(float)
    weight[weight < 20] = 0  # the blob, not the interpolation dust
    oy, ox = np.mgrid[:S, :S]
    centre = np.array([(weight * ox).sum(), (weight * oy).sum()]) / weight.sum()
    assert np.hypot(*(centre - moved[:2])) < 0.5
    ys, xs = np.nonzero(out.masks[0])
    assert np.hypot(xs.mean() - moved[0], ys.mean() - moved[1]) < 0.5
    np.testing.assert_allclose(to_original(moved[None, :2], out.affine)[0], (x, y), atol=1e-3)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("fortran", [False, True])
def test_masks_and_crowd_stay_aligned_with_the_image(fortran: bool, train: bool) -> None:
    """A square drawn into the image, a person mask and the crowd mask covers the same pixels after the warp
    (nearest-neighbour masks against the bilinear image: they differ on the boundary only), with the masks in
    C order and in the loader's Fortran order, through the training warp and the validation resize (whose
    image goes through albumentations and masks through the matrix)."""
    hw = (100, 140)
    image = np.zeros(hw + (3,), np.uint8)
    image[30:70, 40:90] = 255
    people = _people(_person_facing_camera(), hw)
    if fortran:
        people.masks = np.zeros((1, hw[1], hw[0]), np.uint8).transpose(0, 2, 1)
        people.crowd = np.zeros(hw, np.uint8, order="F")
    people.masks[0, 30:70, 40:90] = 1
    people.crowd[30:70, 40:90] = 1
    transform = (TrainTransform(S, COCO_PERSON, {"color_jitter": 0.0, "rotation": 30.0}) if train
                 else ValTransform(S))
    out = transform(image, people, np.random.default_rng(3))
    bright = out.image[..., 0] > 127
    for mask in (out.masks[0], out.crowd):
        assert (bright & mask).sum() / (bright | mask).sum() > 0.95


def test_many_people_masks_survive_the_bit_planes() -> None:
    """More than 8 people: several bit planes, each mask comes back as its own."""
    hw = (64, 64)
    kp = np.tile(_person_facing_camera(), (11, 1, 1))
    people = _people(kp, hw)
    for i in range(11):
        people.masks[i, 5 * i: 5 * i + 4, 2: 60] = 1
    people.crowd[60:, :] = 1
    out = TrainTransform(64, COCO_PERSON, {**NO_RANDOM, "flip_prob": 0.0})(np.zeros(hw + (3,), np.uint8), people,
                                                                          np.random.default_rng(0))
    np.testing.assert_array_equal(out.masks, people.masks.astype(bool))  # identity warp: exact
    np.testing.assert_array_equal(out.crowd, people.crowd.astype(bool))


def test_a_fixed_rng_fixes_the_sample(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=128, train=True)
    a, b, other = ds.transformed(4, epoch=2), ds.transformed(4, epoch=2), ds.transformed(4, epoch=3)
    for field in ("image", "keypoints", "masks", "crowd", "boxes", "affine"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.affine, other.affine)


def test_each_image_of_an_epoch_draws_its_own_augmentation(sample, codec) -> None:
    """The per-sample generator is seeded by (seed, epoch, index): two images of the same size in one epoch
    get different views (without the index every image of an epoch would be scaled and turned alike)."""
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=128, train=True)
    sizes = {i: (ds.coco.imgs[image_id]["height"], ds.coco.imgs[image_id]["width"])
             for i, image_id in enumerate(ds.image_ids)}
    a, b = [i for i in sizes if sizes[i] == (427, 640)][:2]
    assert not np.allclose(ds.transformed(a, epoch=1).affine, ds.transformed(b, epoch=1).affine)


def test_parameters_cover_the_configured_ranges() -> None:
    cfg = AugmentConfig(scale_range=(0.7, 1.3), rotation=25.0, translate=0.1, flip_prob=0.3)
    rng = np.random.default_rng(0)
    draws = [sample_params(cfg, 500, rng) for _ in range(4000)]
    scale = np.array([d.scale for d in draws])
    rotate = np.array([d.rotate for d in draws])
    shift = np.array([d.shift for d in draws])
    assert 0.7 <= scale.min() < 0.705 and 1.295 < scale.max() <= 1.3
    assert -25 <= rotate.min() < -24.9 and 24.9 < rotate.max() <= 25
    assert abs(np.mean(rotate)) < 1.0 and abs(np.mean(scale) - 1.0) < 0.02  # uniform, centred
    assert shift.min() == -49 and shift.max() == 49  # int(fraction * S), as albumentations' Affine truncates
    assert abs(np.mean([d.flip for d in draws]) - 0.3) < 0.03


@pytest.mark.parametrize("seed", range(4))
def test_one_warp_matches_the_albumentations_chain(seed: int) -> None:
    """The matrix of the one warp is the composition of LongestMaxSize, PadIfNeeded(center), Affine and
    HorizontalFlip with the same parameters: albumentations moves points where the matrix puts them."""
    import albumentations as A
    import cv2

    hw, size = (90, 150), 96
    chain = A.Compose([A.LongestMaxSize(max_size=size), A.PadIfNeeded(size, size, position="center",
                                                                      border_mode=cv2.BORDER_CONSTANT),
                       A.Affine(scale=(0.7, 1.3), rotate=(-40, 40), translate_percent=(-0.1, 0.1), keep_ratio=True,
                                p=1.0),
                       A.HorizontalFlip(p=0.5)],
                      keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                      save_applied_params=True, seed=seed)
    points = np.array([[10.0, 20.0], [75.3, 44.1], [140.0, 80.0]])
    scale = size / max(hw)  # albumentations resizes points about corners: feed them pre-shifted, as before
    resize = np.array([round(hw[1] * scale) / hw[1], round(hw[0] * scale) / hw[0]])
    out = chain(image=np.zeros(hw + (3,), np.uint8), keypoints=((points + 0.5) * resize - 0.5) / scale)
    applied = dict(out["applied_transforms"])
    affine = applied["Affine"]
    rs = affine["matrix"][:2, :2]
    centre = np.full(2, size / 2 - 0.5)
    shift = affine["matrix"][:2, 2] - (centre - rs @ centre)  # the integer shift it drew
    params = AugmentParams(scale=affine["scale"]["x"], rotate=affine["rotate"],
                           shift=(int(round(shift[0])), int(round(shift[1]))),
                           flip="HorizontalFlip" in applied)
    np.testing.assert_allclose(shift, params.shift, atol=1e-9)
    m = augment_matrix(params, hw, size)
    np.testing.assert_allclose(points @ m[:2, :2].T + m[:2, 2], out["keypoints"], atol=1e-3)


def test_val_image_only_is_the_full_transform(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=160, train=False)
    for index in (0, 3):
        image, _ = ds.load(index)
        full = ds.transformed(index)
        resized, affine = ds.transform.image_only(image)
        np.testing.assert_array_equal(resized, full.image)
        np.testing.assert_array_equal(affine, full.affine)


@pytest.mark.parametrize("train", [True, False])
def test_merged_masks_are_the_unions_of_the_warped_masks(train: bool) -> None:
    """The merged form warps two unions instead of each mask: the labelled people's masks (body) and the others'
    with the crowd (ignore) come out as the unions of the per-person warps, pixel for pixel, under a rotation
    and zoom and under the validation resize, with people leaving the image."""
    from strongpose.codec.encode import labelled_keypoints

    hw = (90, 130)
    rng = np.random.default_rng(5)
    kp = np.tile(_person_facing_camera(), (9, 1, 1))
    kp[..., :2] += rng.uniform(-60, 60, (9, 1, 2))  # some people end up off the image
    kp[3, :, 2] = 0  # annotated without keypoints
    people = _people(kp.astype(np.float32), hw)
    people.masks = (rng.random(people.masks.shape) > 0.8).astype(np.uint8)
    people.masks[5] = 0  # no segmentation
    people.crowd[70:, 100:] = 1
    transform = TrainTransform(S, COCO_PERSON, {"color_jitter": 0.0}) if train else ValTransform(S)
    image = np.zeros(hw + (3,), np.uint8)
    for seed in range(4):
        each = transform(image, people, np.random.default_rng(seed))
        merged = transform(image, people, np.random.default_rng(seed), merge_masks=True)
        labelled = labelled_keypoints(torch.from_numpy(each.keypoints), (S, S)).any(-1).numpy()
        assert 0 < labelled.sum() < len(labelled)
        np.testing.assert_array_equal(merged.body_mask, each.masks[labelled].any(0))
        np.testing.assert_array_equal(merged.ignore_mask, each.masks[~labelled].any(0) | each.crowd)
        np.testing.assert_array_equal(merged.has_mask, [True] * 5 + [False] + [True] * 3)


@pytest.mark.parametrize("flip", [False, True])
def test_a_box_moves_with_its_mask_in_the_coco_edge_convention(flip):
    """A COCO box [x, y, w, h] spans pixel edges x .. x + w (pixel centres x - 0.5 .. x + w - 0.5): moved, it
    still spans the moved mask's pixels (it sat half a pixel off, right and below, or left when mirrored)."""
    h, w = 60, 80
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, 20:40, 10:40] = 1  # columns 10..39, rows 20..39: the box [10, 20, 30, 20]
    people = ImageAnnotations(keypoints=np.zeros((1, 17, 3), np.float32), masks=mask,
                              crowd=np.zeros((h, w), np.uint8), boxes=np.array([[10.0, 20.0, 30.0, 20.0]], np.float32))
    to_input = np.array([[-1.0 if flip else 1.0, 0.0, w - 1.0 if flip else 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sample = _sample(np.zeros((h, w, 3), np.uint8), people, to_input, size=max(h, w))
    cols = np.flatnonzero(sample.masks[0].any(0))
    x, _, bw, _ = sample.boxes[0]
    assert (x, x + bw) == (cols[0], cols[-1] + 1)  # pixel edges of the moved mask's columns


BLUR = {"_target_": "albumentations.GaussianBlur", "blur_limit": [3, 5], "p": 1.0}


def test_pixel_transforms_change_pixels_and_leave_the_geometry(sample, codec) -> None:
    plain = COCOKeypointDataset(*sample, codec=codec, input_size=128, train=True)
    augment = OmegaConf.create({"pixel": [BLUR, {"_target_": "albumentations.ToGray", "p": 1.0}]})  # as Hydra gives it
    blurred = COCOKeypointDataset(*sample, codec=codec, input_size=128, train=True, augment=augment)
    a, b = plain.transformed(4, epoch=1), blurred.transformed(4, epoch=1)
    for field in ("keypoints", "masks", "crowd", "boxes", "affine"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image, b.image)
    assert (b.image[..., 0] == b.image[..., 1]).all()  # ToGray ran after the blur
    again = pickle.loads(pickle.dumps(blurred.transform))  # what the loader's workers get
    np.testing.assert_array_equal(again(*_image_and_people(blurred, 4), np.random.default_rng(5)).image,
                                  blurred.transform(*_image_and_people(blurred, 4), np.random.default_rng(5)).image)


def _image_and_people(ds, index):
    image_id = ds.image_ids[index]
    image = read_image(ds.images_dir / ds.coco.imgs[image_id]["file_name"])
    return image, image_annotations(ds.coco, image_id, ds.category_id, K)


@pytest.mark.parametrize("spec, message", [
    ({"_target_": "albumentations.HorizontalFlip", "p": 1.0}, r"pixel\[0\]: HorizontalFlip is not a pixel-level"),
    ({"_target_": "albumentations.NoSuchBlur"}, r"data.augment.pixel\[0\]: .*NoSuchBlur"),
    ("blur", r"pixel\[0\]: 'blur' is not an albumentations transform"),
    ({"_target_": "albumentations.Normalize"}, r"pixel\[0\]: Normalize turns a uint8 RGB image into float32"),
])
def test_a_transform_that_moves_pixels_or_is_no_transform_is_refused(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainTransform(S, COCO_PERSON, {"pixel": [spec]})


def test_a_string_for_the_list_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="data.augment.pixel must be a list of transforms"):
        TrainTransform(S, COCO_PERSON, {"pixel": "GaussianBlur"})
