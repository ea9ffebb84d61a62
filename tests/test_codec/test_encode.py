import math

import numpy as np
import pytest
import torch

from helpers import as_tensor, person
from strongpose.codec import OFFSET_MAPS, StrongPoseCodec
from strongpose.codec.encode import labelled_keypoints
from strongpose.config_check import ConfigError
from strongpose.structures import map_to_input


@pytest.fixture(scope="module")
def codec():
    return StrongPoseCodec(stride=8, disk_radius=32)


def test_shapes_and_dtypes(codec):
    kp = as_tensor([person(100, 40, 200), person(300, 60, 150)])
    t = codec.encode(kp, (250, 410))
    h, w = math.ceil(250 / 8), math.ceil(410 / 8)
    k, e = 17, codec.num_edges
    expect = {"skhm": (k, h, w), "bhm": (1, h, w), "weight": (1, h, w), "short": (2 * k, h, w),
              "short_valid": (k, h, w), "mid": (2 * e, h, w), "mid_valid": (e, h, w),
              "long": (2 * k, h, w), "long_valid": (k, h, w)}
    assert {key: tuple(v.shape) for key, v in t.items()} == expect
    for key, v in t.items():
        assert v.dtype == (torch.bool if key.endswith("_valid") else torch.float32), key
    assert codec.channels == {"skhm": k, "bhm": 1, "short": 2 * k, "mid": 2 * e, "long": 2 * k}
    assert "long" not in StrongPoseCodec(long_range=False).encode(kp, (250, 410))


def test_offsets_in_another_dtype_are_the_float32_ones_rounded(codec):
    kp = as_tensor([person(100, 40, 200), person(300, 60, 150)])
    kp[..., :2] += torch.rand(kp[..., :2].shape, generator=torch.Generator().manual_seed(0))  # off the grid
    exact, half = codec.encode(kp, (250, 410)), codec.encode(kp, (250, 410), offset_dtype=torch.float16)
    for key, value in exact.items():
        if key in OFFSET_MAPS:
            assert half[key].dtype == torch.float16 and torch.equal(half[key], value.half()), key
            assert not torch.equal(half[key].float(), value), key  # the rounding happened
        else:
            assert torch.equal(half[key], value), key


def test_disk_and_short_offsets_point_at_the_keypoint(codec):
    kp = as_tensor([person(100, 40, 200)])
    t = codec.encode(kp, (256, 256))
    h, w = t["skhm"].shape[1:]
    ys, xs = map_to_input(torch.arange(h).float(), 8), map_to_input(torch.arange(w).float(), 8)
    for k in range(17):
        x, y = kp[0, k, :2]
        d2 = (xs[None] - x) ** 2 + (ys[:, None] - y) ** 2
        assert torch.equal(t["skhm"][k] > 0, d2 <= 32**2)
        m = t["short_valid"][k]
        assert torch.allclose(t["short"][2 * k][m], (x - xs[None].expand(h, w))[m], atol=1e-4)
        assert torch.allclose(t["short"][2 * k + 1][m], (y - ys[:, None].expand(h, w))[m], atol=1e-4)
        assert (t["short"][2 * k : 2 * k + 2][:, ~m] == 0).all()


def test_a_cell_exactly_one_radius_away_is_in_the_disk(codec):
    """Cell centres lie at 8 i + 3.5 (stride 8): a nose at (43.5, 43.5) has the cell centre (75.5, 43.5) at
    exactly R = 32, inside the closed disk d <= R, and (83.5, 43.5) outside."""
    kp = torch.zeros(1, 17, 3)
    kp[0, 0] = torch.tensor([43.5, 43.5, 2.0])
    disk = codec.encode(kp, (128, 128))["skhm"][0] > 0
    assert disk[5, 9] and not disk[5, 10] and disk[5, 1]


def test_the_body_map_takes_cells_at_least_half_covered(codec):
    kp = torch.zeros(1, 17, 3)
    kp[0, 0] = torch.tensor([20.0, 20.0, 2.0])  # a labelled person
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 16:24, 22:30] = True  # cell (2, 2) spans pixels 16..23: 2 of its 8 columns; cell (2, 3): 6 of 8
    bhm = codec.encode(kp, (64, 64), masks=mask)["bhm"][0]
    assert not bhm[2, 2] and bhm[2, 3] and int(bhm.sum()) == 1


def test_overlapping_disks_belong_to_the_nearer_keypoint(codec):
    a, b = person(100, 40, 200), person(130, 40, 200)  # same pose, 30 px apart
    t = codec.encode(as_tensor([a, b]), (256, 256))
    h, w = t["skhm"].shape[1:]
    xs = map_to_input(torch.arange(w).float(), 8)
    for k in range(17):
        m = t["short_valid"][k]
        target_x = t["short"][2 * k] + xs[None]  # where each cell points
        nearer_a = (xs[None] - a[k, 0]) ** 2 < (xs[None] - b[k, 0]) ** 2  # same y, so x decides
        assert torch.allclose(target_x[m & nearer_a.expand(h, w)], torch.tensor(float(a[k, 0])), atol=1e-4)
        assert torch.allclose(target_x[m & ~nearer_a.expand(h, w)], torch.tensor(float(b[k, 0])), atol=1e-4)


def test_mid_and_long_offsets_reach_the_same_person(codec):
    a, b = person(60, 30, 180), person(200, 30, 180)
    t = codec.encode(as_tensor([a, b]), (224, 256))
    h, w = t["skhm"].shape[1:]
    xs, ys = map_to_input(torch.arange(w).float(), 8), map_to_input(torch.arange(h).float(), 8)
    for e, (src, dst) in enumerate(codec.edges.tolist()):
        m = t["mid_valid"][e]
        assert torch.equal(m, t["skhm"][src] > 0)  # everyone is fully labelled here
        tx = (t["mid"][2 * e] + xs[None])[m]
        ty = (t["mid"][2 * e + 1] + ys[:, None])[m]
        owner_is_a = ((t["short"][2 * src] + xs[None])[m] - a[src, 0]).abs() < 1e-3
        assert torch.allclose(tx[owner_is_a], torch.tensor(float(a[dst, 0])), atol=1e-3)
        assert torch.allclose(ty[~owner_is_a], torch.tensor(float(b[dst, 1])), atol=1e-3)
    assert torch.equal(t["long_valid"].any(0), t["skhm"].amax(0) > 0)


def test_unlabelled_keypoints_have_no_targets(codec):
    vis = np.ones(17, bool)
    vis[[0, 9]] = False
    t = codec.encode(as_tensor([person(100, 40, 200, vis)]), (256, 256))
    assert t["skhm"][0].sum() == 0 and t["skhm"][9].sum() == 0
    for e, (src, dst) in enumerate(codec.edges.tolist()):
        if dst in (0, 9) or src in (0, 9):
            assert not t["mid_valid"][e].any()
    assert not t["long_valid"][[0, 9]].any()


def test_crowd_and_unlabelled_people_are_ignored(codec):
    crowd = torch.zeros(256, 256, dtype=torch.bool)
    crowd[:, 192:] = True
    nobody = person(60, 30, 100)
    nobody[:, 2] = 0  # an annotated person without keypoints
    masks = torch.zeros(2, 256, 256, dtype=torch.bool)
    masks[0, 30:140, 40:90] = True
    masks[1, 40:240, 100:160] = True
    t = codec.encode(as_tensor([nobody, person(130, 40, 200)]), (256, 256), masks=masks, ignore_mask=crowd)
    weight, disks = t["weight"][0], t["skhm"].amax(0) > 0
    assert (weight[:, 25:][~disks[:, 25:]] == 0).all()  # crowd columns
    region = (slice(5, 16), slice(6, 10))  # inside the unlabelled person's mask
    assert (weight[region][~disks[region]] == 0).all() and (~disks[region]).sum() > 10
    assert (weight == 0)[disks].any()  # a labelled disk reaches into the crowd: the loss counts it, in its channel
    assert t["bhm"][0, 6:29, 13:19].all() and t["bhm"][0, :, :11].sum() == 0


def test_body_map_falls_back_to_boxes_without_masks(codec):
    kp = as_tensor([person(100, 40, 160)])
    t = codec.encode(kp, (256, 256), boxes=torch.tensor([[40.0, 20.0, 120.0, 200.0]]))
    h, w = t["bhm"].shape[1:]
    xs, ys = map_to_input(torch.arange(w).float(), 8), map_to_input(torch.arange(h).float(), 8)
    # the COCO box spans pixel edges 40 .. 160 x 20 .. 220: pixel centres 39.5 .. 159.5 x 19.5 .. 219.5 (the cell
    # centres of row 2 lie at y = 19.5)
    inside = ((xs[None] >= 39.5) & (xs[None] <= 159.5) & (ys[:, None] >= 19.5) & (ys[:, None] <= 219.5))
    assert torch.equal(t["bhm"][0] > 0, inside)
    hull = codec.encode(kp, (256, 256))["bhm"][0]  # keypoints' box grown by R / 2
    assert hull[int(0.5 * h), int(100 / 8)] == 1 and hull[0, -1] == 0


def test_edge_cases(codec):
    empty = codec.encode(torch.zeros(0, 17, 3), (64, 48))
    assert empty["skhm"].sum() == 0 and empty["weight"].all() and empty["bhm"].sum() == 0
    one = np.zeros((1, 17, 3), np.float32)
    one[0, 5] = (20, 30, 2)
    t = codec.encode(torch.from_numpy(one), (64, 48))
    assert t["skhm"][5].sum() > 0 and t["skhm"].sum() == t["skhm"][5].sum()
    assert not t["mid_valid"].any() and t["long_valid"][5].sum() == t["skhm"][5].sum()
    # outside the image (and NaN) = unlabelled; on the border pixel = labelled
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, 0] = (-3, 10, 2)
    kp[0, 1] = (10, 64.2, 2)
    kp[0, 2] = (np.nan, 5, 2)
    kp[0, 3] = (47, 63, 2)
    t = codec.encode(torch.from_numpy(kp), (64, 48))
    assert t["skhm"][:3].sum() == 0 and t["skhm"][3].sum() > 0
    tiny = codec.encode(torch.from_numpy(np.array([[[0, 0, 2]] * 17], np.float32)), (1, 1))
    assert tiny["skhm"].shape == (17, 1, 1) and tiny["skhm"].all()
    assert len(codec.decode(tiny)[0]) <= 1  # one cell holds little of a disk: may fall under the threshold
    poses = StrongPoseCodec(stride=8, decode_peak_threshold=1e-3).decode(tiny)
    assert len(poses[0]) == 1 and torch.allclose(poses[0].keypoints[0, :, :2], torch.zeros(17, 2), atol=1e-4)


def test_bad_inputs_raise(codec):
    with pytest.raises(ValueError, match="keypoints must be"):
        codec.encode(torch.zeros(2, 16, 3), (64, 64))
    with pytest.raises(ValueError, match="masks must be"):
        codec.encode(torch.zeros(1, 17, 3), (64, 64), masks=torch.zeros(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_size"):
        codec.encode(torch.zeros(1, 17, 3), (0, 64))


@pytest.mark.parametrize("stride", [8, 16])
def test_a_disk_too_small_to_hold_a_cell_is_refused(stride):
    """Below stride / sqrt(2), a keypoint near a cell's corner has no cell centre in its disk: no target."""
    smallest = stride / math.sqrt(2)
    corner = 3 * stride - 0.5  # as far from the four nearest cell centres (u * stride + (stride - 1) / 2) as can be
    keypoints = torch.tensor([[[corner, corner, 2.0]] * 17])
    skhm = StrongPoseCodec(stride=stride, disk_radius=smallest + 1e-6).encode(keypoints, (128, 128))["skhm"]
    assert skhm.flatten(1).sum(1).tolist() == [4.0] * 17  # at the bound: the four cells around the corner
    with pytest.raises(ConfigError, match=rf"disk_radius {smallest - 0.1:g} is below stride / sqrt\(2\)"):
        StrongPoseCodec(stride=stride, disk_radius=smallest - 0.1)


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_flip_consistency(stride):
    codec = StrongPoseCodec(stride=stride)
    width, height = 32 * stride, 20 * stride
    people = [person(70, 20, 120), person(150, 30, 100), person(190, 10, 60)]
    kp = as_tensor(people)
    masks = torch.zeros(3, height, width, dtype=torch.bool)
    masks[0, 10:150, 30:110] = True
    crowd = torch.zeros(height, width, dtype=torch.bool)
    crowd[100:, 200:] = True
    flipped = kp.clone()
    flipped[..., 0] = width - 1 - kp[..., 0]  # albumentations' convention
    flipped = flipped[:, list(codec.skeleton.flip_index)]
    direct = codec.encode(flipped, (height, width), masks=masks.flip(-1), ignore_mask=crowd.flip(-1))
    mirrored = codec.flip_maps(codec.encode(kp, (height, width), masks=masks, ignore_mask=crowd))
    for key in direct:
        assert torch.allclose(direct[key].float(), mirrored[key].float(), atol=1e-4), key


def _batch_of(codec, people: list[torch.Tensor], size):
    """(B, N, K, 3) zero-padded people and the stacked regions of each image."""
    most = max([1] + [len(p) for p in people])
    padded = torch.stack([torch.cat((p, p.new_zeros(most - len(p), 17, 3))) for p in people]) if people else \
        torch.zeros(0, 1, 17, 3)
    regions = [codec.encode_regions(p, size) for p in people]
    stacked = {key: torch.stack([r[key] for r in regions]) if regions else torch.zeros(0, 1, *codec.map_size(size),
                                                                                        dtype=torch.bool)
               for key in ("bhm", "ignore")}
    return padded, stacked


@pytest.mark.parametrize("compact", [True, False])
def test_batch_encoding_equals_encoding_each_image(codec, compact):
    from strongpose.codec.encode import encode_keypoint_maps

    gen = torch.Generator().manual_seed(1)
    size = (120, 200)
    people = [as_tensor([person(60, 10, 100), person(140, 20, 90)]), torch.zeros(0, 17, 3),
              as_tensor([person(100, 15, 110)])]
    people[0][1, 3:9, 2] = 0  # unlabelled keypoints
    people[2][..., :2] += torch.rand(people[2][..., :2].shape, generator=gen)
    padded, regions = _batch_of(codec, people, size)
    batch = encode_keypoint_maps(padded, regions, size, stride=codec.stride, disk_radius=codec.disk_radius,
                                 directed_edges=codec.edges, out_edges=codec.out_edges,
                                 long_range=codec.long_range, compact=compact)
    assert torch.equal(batch["short"], codec.encode_batch(padded, regions, size)["short"])
    for i, p in enumerate(people):
        alone = codec.encode(p, size)
        assert list(alone) == list(batch)
        for key, value in alone.items():
            assert torch.equal(batch[key][i], value), (i, key)
    assert batch["skhm"][0].any() and not batch["skhm"][1].any()


def test_random_batches_encode_the_same_compacted_fixed_and_alone(codec):
    from strongpose.codec.encode import encode_keypoint_maps

    gen = torch.Generator().manual_seed(2)
    for trial in range(20):
        height, width = (int(v) for v in torch.randint(8, 120, (2,), generator=gen))
        b, n = int(torch.randint(0, 4, (1,), generator=gen)), int(torch.randint(0, 5, (1,), generator=gen))
        kp = torch.rand(b, n, 17, 3, generator=gen) * torch.tensor([width * 1.2, height * 1.2, 3.0])
        kp[..., :2] -= torch.tensor([width * 0.1, height * 0.1])
        kp[..., 2] = kp[..., 2].floor()
        if b and n > 1:
            kp[0, 1] = kp[0, 0]  # two people on the same spot: ties go to the lower index
        regions = {key: torch.rand(b, 1, *codec.map_size((height, width)), generator=gen) > 0.7
                   for key in ("bhm", "ignore")}
        maps = [encode_keypoint_maps(kp, regions, (height, width), stride=codec.stride, disk_radius=codec.disk_radius,
                                     directed_edges=codec.edges, out_edges=codec.out_edges,
                                     long_range=codec.long_range, compact=compact) for compact in (True, False)]
        for key in maps[0]:
            assert torch.equal(maps[0][key], maps[1][key]), (trial, key)
        for i in range(b):
            alone = codec.encode(kp[i], (height, width))
            for key in ("skhm", "short", "mid", "mid_valid", "long", "long_valid"):
                assert torch.equal(maps[1][key][i], alone[key]), (trial, key)


def test_batch_encoding_of_no_images_and_bad_shapes(codec):
    padded, regions = _batch_of(codec, [], (64, 64))
    empty = codec.encode_batch(padded, regions, (64, 64))
    assert empty["mid"].shape == (0, 2 * codec.num_edges, 8, 8) and empty["weight"].shape == (0, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, N, K, 3\)"):
        codec.encode_batch(torch.zeros(2, 17, 3), regions, (64, 64))
    with pytest.raises(ValueError, match=r"regions\['ignore'\] must be \(1, 1, 8, 8\)"):
        codec.encode_batch(torch.zeros(1, 2, 17, 3), {"bhm": torch.zeros(1, 1, 8, 8, dtype=torch.bool),
                                                       "ignore": torch.zeros(1, 8, 8, dtype=torch.bool)}, (64, 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_encoding_on_the_gpu_equals_the_cpu(codec):
    size = (120, 200)
    people = [as_tensor([person(60, 10, 100), person(140, 20, 90)]), as_tensor([person(100, 15, 110)])]
    padded, regions = _batch_of(codec, people, size)
    cpu = codec.encode_batch(padded, regions, size)
    args = padded.cuda(), {key: v.cuda() for key, v in regions.items()}, size
    codec.encode_batch(*args)  # the first call copies the edge tables to the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # then nothing may wait for the device
    try:
        gpu = codec.encode_batch(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda" and torch.equal(gpu[key].cpu(), value), key


def test_the_fixed_shape_path_calls_nothing_that_reads_the_device(codec):
    """On a CPU, the ops that make a GPU wait for a host read (nonzero, boolean-mask indexing, .item()) are
    recorded while the fixed-shape (GPU) path runs: there must be none (the GPU test checks the rest)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from strongpose.codec.encode import encode_keypoint_maps

    host_reads = {"aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select", "aten::unique",
                  "aten::_unique2", "aten::nonzero_static"}

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name
            tensors = [a for a in torch.utils._pytree.tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
            mask_index = name == "aten::index" and any(t.dtype == torch.bool for t in tensors[1:])
            if name in host_reads or mask_index:
                self.bad.append(name)
            return func(*args, **(kwargs or {}))

    size = (120, 200)
    padded, regions = _batch_of(codec, [as_tensor([person(60, 10, 100), person(140, 20, 90)]),
                                        as_tensor([person(100, 15, 110)])], size)
    for compact, expect_reads in ((False, False), (True, True)):  # the CPU path reads, as it may
        with Record() as record:
            encode_keypoint_maps(padded, regions, size, stride=codec.stride, disk_radius=codec.disk_radius,
                                 directed_edges=codec.edges, out_edges=codec.out_edges,
                                 long_range=codec.long_range, compact=compact)
        assert bool(record.bad) is expect_reads, record.bad


def test_merged_masks_give_the_per_person_maps(codec):
    """``body_mask`` (the labelled people's masks merged) with the others' masks in ``ignore_mask`` gives the
    maps of each person's mask, with and without crowd regions, boxes and people without a mask."""
    gen = torch.Generator().manual_seed(3)
    size = (96, 136)
    bodies = 0
    for trial in range(12):
        n = trial % 5
        kp = torch.rand(n, 17, 3, generator=gen) * torch.tensor([size[1] + 20.0, size[0] + 20.0, 2.5])
        kp[..., :2] -= 10  # some keypoints off the image
        kp[..., 2] = kp[..., 2].floor()
        if n > 1:
            kp[1, :, 2] = 0  # a person without labelled keypoints: an ignore region
        masks = torch.rand(n, *size, generator=gen) > 0.45  # cells about half covered: the 0.5 threshold matters
        if n > 2:
            masks[2] = False  # no segmentation: its box counts
        crowd = torch.zeros(size, dtype=torch.bool)
        crowd[: trial * 3, : trial * 5] = True
        boxes = torch.rand(n, 4, generator=gen) * 60
        has_mask = masks.flatten(1).any(1)
        labelled = labelled_keypoints(kp, size).any(-1)
        assert n < 2 or 0 < labelled.sum() < n
        per_person = codec.encode_regions(kp, size, masks=masks, ignore_mask=crowd, boxes=boxes)
        body = masks[labelled].any(0) if n else torch.zeros(size, dtype=torch.bool)
        others = masks[~labelled].any(0) | crowd if n else crowd
        if trial % 2:  # any nonzero value is the mask, as in masks=
            body, others = body.to(torch.uint8) * 255, others.to(torch.uint8) * 7
        merged = codec.encode_regions(kp, size, body_mask=body, ignore_mask=others, boxes=boxes, has_mask=has_mask)
        for key in per_person:
            assert torch.equal(per_person[key], merged[key]), (trial, key)
        bodies += int(per_person["bhm"].sum())
    assert bodies > 0


def test_has_mask_decides_the_box_fallback(codec):
    """A person marked as having a mask whose mask is empty here (moved off the image) leaves nothing; marked
    without one, the box stands in."""
    kp = as_tensor([person(100, 40, 160)])
    box = torch.tensor([[40.0, 20.0, 120.0, 200.0]])
    empty = torch.zeros(1, 256, 256, dtype=torch.bool)
    assert codec.encode(kp, (256, 256), masks=empty, boxes=box)["bhm"].any()  # default: the mask is empty
    assert not codec.encode(kp, (256, 256), masks=empty, boxes=box, has_mask=torch.tensor([True]))["bhm"].any()
    assert not codec.encode(kp, (256, 256), body_mask=empty[0], boxes=box,
                            has_mask=torch.tensor([True]))["bhm"].any()
    assert codec.encode(kp, (256, 256), body_mask=empty[0], boxes=box, has_mask=torch.tensor([False]))["bhm"].any()


def test_merged_mask_inputs_are_checked(codec):
    kp = as_tensor([person(100, 40, 160)])
    mask = torch.zeros(64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="body_mask replaces masks"):
        codec.encode(kp, (64, 64), body_mask=mask)
    with pytest.raises(ValueError, match="body_mask replaces masks"):
        codec.encode(kp, (64, 64), masks=mask[None], body_mask=mask, has_mask=torch.tensor([True]))
    with pytest.raises(ValueError, match="has_mask must be"):
        codec.encode(kp, (64, 64), body_mask=mask, has_mask=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="body_mask must be"):
        codec.encode(kp, (64, 64), body_mask=mask[:32], has_mask=torch.tensor([True]))
    with pytest.raises(ValueError, match="has_mask needs"):
        codec.encode(kp, (64, 64), has_mask=torch.tensor([True]))
