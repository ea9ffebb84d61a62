import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import as_tensor, match_people, person
from strongpose.codec import StrongPoseCodec
from strongpose.codec import grouping
from strongpose.codec.codec import LINK_CALL_COST, link_groups


def assert_recovered(codec, people, image_size, tol=1.0):
    gt = np.stack(people)
    poses = codec.decode(codec.encode(torch.from_numpy(gt), image_size))[0]
    pred = poses.keypoints.numpy()
    assert len(pred) >= len(gt)
    rows, cols = match_people(pred, gt)
    assert len(cols) == len(gt)
    for r, c in zip(rows, cols):
        lab = gt[c, :, 2] > 0
        err = np.linalg.norm(pred[r, lab, :2] - gt[c, lab, :2], axis=-1)
        assert err.max() <= tol, f"person {c}: keypoint errors {err.round(2)}"
        assert (pred[r, lab, 2] > 0).all()
    # whole people outrank fragments
    assert set(rows.tolist()) == set(range(len(gt)))


@pytest.mark.parametrize("stride", [4, 8, 16])
@pytest.mark.parametrize("long_range", [True, False])
def test_round_trip_well_separated_people(stride, long_range):
    codec = StrongPoseCodec(stride=stride, long_range=long_range)
    people = [person(80, 30, 200), person(260, 50, 160), person(420, 20, 240)]
    assert_recovered(codec, people, (300, 520))


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_a_clean_keypoints_score_is_near_1(stride):
    """Scores are the smoothed vote mass over its value for a perfect keypoint: 0.65 at a cell's corner to 1 at
    its centre (a score normaliser off by 2 would halve them, and rank people the same: AP would not see it)."""
    codec = StrongPoseCodec(stride=stride)
    poses = codec.decode(codec.encode(as_tensor([person(140, 30, 200)]), (256, 320)))[0]
    scores = poses.keypoints[0, :, 2]
    assert len(poses) >= 1 and bool((scores > 0.6).all()) and bool((scores <= 1.0).all()), scores


def test_long_range_bridges_a_missing_shoulder():
    vis = np.ones(17, bool)
    vis[[5, 6, 11, 12]] = False  # no shoulders, no hips: the tree is cut into pieces
    people = [person(100, 30, 220, vis), person(330, 30, 220, vis)]
    with_long = StrongPoseCodec(stride=8)
    assert_recovered(with_long, people, (280, 448))
    tree_only = StrongPoseCodec(stride=8, long_range=False)
    poses = tree_only.decode(tree_only.encode(as_tensor(people), (280, 448)))[0]
    assert len(poses) > 2  # the arms and legs come out as fragments


@pytest.mark.parametrize("call_cost", [None, 0.0, 64.0])  # one group, one per count, as the CPU decides
@pytest.mark.parametrize("snap_radius", [None, float("inf")])
@pytest.mark.parametrize("bucket_min_slots", [0, grouping.BUCKET_MIN_SLOTS])  # links found through buckets or not
def test_batch_decode_equals_single_decode(monkeypatch, call_cost, snap_radius, bucket_min_slots):
    """Also when the images have different numbers of detections (linked in groups of their own size)."""
    monkeypatch.setitem(LINK_CALL_COST, "cpu", call_cost)
    monkeypatch.setattr(grouping, "BUCKET_MIN_SLOTS", bucket_min_slots)
    codec = StrongPoseCodec(stride=8, decode_snap_radius=snap_radius)
    a = codec.encode(as_tensor([person(80, 30, 200), person(200, 40, 150)]), (256, 320))
    b = codec.encode(as_tensor([person(150, 20, 220)]), (256, 320))
    c = codec.encode(as_tensor([person(25 + 55 * i, 10 + 60 * (i % 2), 90) for i in range(5)]), (256, 320))
    d = codec.encode(as_tensor([person(90, 20, 200), person(215, 40, 150)]), (256, 320))  # in a's group
    images = [a, b, c, d]
    together = codec.decode({key: torch.stack([image[key] for image in images]) for key in a})
    assert codec.last_timing["images"] == 4 and [len(p) for p in together] == [2, 1, 5, 2]
    alone = [codec.decode(image)[0] for image in images]
    for single, joint in zip(alone, together):
        assert torch.allclose(single.keypoints, joint.keypoints) and torch.allclose(single.scores, joint.scores)
    for single, joint in zip(alone, codec.decode({key: torch.stack([a[key], b[key]]) for key in a})):  # one group
        assert torch.allclose(single.keypoints, joint.keypoints) and torch.allclose(single.scores, joint.scores)


def test_a_busy_image_is_linked_apart_when_padding_the_others_would_cost_more():
    # 15 images of 3 detections and one of 32: 16 x 32^2 in one call, or 15 x 3^2 + 32^2 and one call more
    assert link_groups([3] * 7 + [32] + [3] * 8, call_cost=64) == [([*range(7), *range(8, 16)], 3), ([7], 32)]
    assert link_groups([3, 4, 2, 0], call_cost=64) == [([3, 2, 0, 1], 4)]  # a call more would cost more
    assert link_groups([3] * 7 + [32], call_cost=None) == [([*range(7), 7], 32)]  # on a GPU: one call
    assert link_groups([1, 5, 9, 13], call_cost=0) == [([0], 1), ([1], 5), ([2], 9), ([3], 13)]


def test_non_finite_outputs_are_dropped_not_decoded():
    """NaN / inf (a diverged network, a half-precision overflow) must not crash decoding (a NaN cast to an
    index) nor give NaN keypoints: such a cell casts no vote, such an offset is not followed."""
    codec = StrongPoseCodec(stride=8)
    people = [person(80, 30, 200), person(260, 50, 160)]
    clean = {k: v.float()[None] for k, v in codec.encode(as_tensor(people), (300, 400)).items() if k in codec.channels}
    expected = codec.decode(clean)[0]
    dirty = {k: v.clone() for k, v in clean.items()}
    # background cells (the people stand in rows y < 240 px, i.e. cells < 30 at stride 8)
    dirty["skhm"][0, :, 0, 0], dirty["short"][0, :, 0, 0] = 1.0, float("nan")  # votes, but to nowhere
    dirty["skhm"][0, :, -1, -1] = float("nan")
    dirty["mid"][0, :, -2:] = float("nan")
    dirty["long"][0, :, -3:] = float("-inf")
    dirty["bhm"][0, 0, -1, :] = float("nan")
    got = codec.decode(dirty)[0]
    assert len(got) == len(expected) and torch.isfinite(got.keypoints).all() and torch.isfinite(got.scores).all()
    assert torch.allclose(got.keypoints, expected.keypoints, atol=1e-4)
    # a peak whose own cell has no finite short offset (its neighbours voted there): found at the cell centre
    nose = people[0][0, :2]
    u, v = (int(round((c - 3.5) / 8)) for c in nose)  # the nose's own cell (map_to_input: u * 8 + 3.5)
    peak_cell = {k: v_.clone() for k, v_ in clean.items()}
    peak_cell["short"][0, 0:2, v, u] = float("nan")
    got = codec.decode(peak_cell)[0]
    assert len(got) == len(expected) and torch.isfinite(got.keypoints).all()
    for key in ("short", "skhm", "mid", "long"):
        nothing = {k: v.clone() for k, v in clean.items()}
        nothing[key][:] = float("nan")
        poses = codec.decode(nothing)[0]
        assert torch.isfinite(poses.keypoints).all() and torch.isfinite(poses.scores).all(), key
        assert len(poses) == 0 if key in ("short", "skhm") else len(poses) > 0, key


@pytest.mark.parametrize("who", [0, 1, 2])
def test_a_huge_offset_at_a_peak_loses_no_one(who):
    """A diverged network's 1e5 px short offset at a nose put that nose 1e5 px away; its person's box then
    covered everyone and OKS-NMS dropped another person. The refining step is at most the disk radius."""
    codec = StrongPoseCodec(stride=8)
    people = [person(80, 30, 200), person(260, 50, 160), person(420, 20, 240)]
    maps = {k: v.float()[None] for k, v in codec.encode(as_tensor(people), (300, 520)).items() if k in codec.channels}
    u, v = (int(round((c - 3.5) / 8)) for c in people[who][0, :2])
    maps["short"][0, 0:2, v - 2:v + 3, u - 2:u + 3] = 1e5
    poses = codec.decode(maps)[0]
    assert len(poses) >= 3
    rows, cols = match_people(poses.keypoints.numpy(), np.stack(people))
    assert sorted(cols.tolist()) == [0, 1, 2]
    found = poses.keypoints[..., 2] > 0
    assert float(poses.keypoints[..., :2][found].abs().max()) <= 520 + codec.disk_radius
    for r, c in zip(rows, cols):  # everyone but the nose of the spoiled one where they were
        err = np.linalg.norm(poses.keypoints[r, 1:, :2].numpy() - people[c][1:, :2], axis=-1)
        assert err.max() <= 1.0, (c, err.round(2))


def test_unfound_keypoints_guesses_stay_on_the_input():
    """A diverged network's long-range offsets (1e5 px) were each unfound keypoint's guess: kept on the input
    now, while the found keypoints stay where they were."""
    codec = StrongPoseCodec(stride=8)
    legs = np.arange(17) >= 13  # knees and ankles unlabelled: nothing to find there
    people = [person(80, 30, 200, ~legs), person(300, 50, 160, ~legs)]
    maps = {k: v.float()[None] for k, v in codec.encode(as_tensor(people), (300, 520)).items() if k in codec.channels}
    maps["long"].fill_(1e5)
    poses = codec.decode(maps)[0]
    rows, cols = match_people(poses.keypoints.numpy(), np.stack(people))
    assert sorted(cols.tolist()) == [0, 1]
    h, w = maps["skhm"].shape[-2:]
    xy = poses.keypoints[rows][..., :2]
    assert float(xy[..., 0].min()) >= -0.5 and float(xy[..., 0].max()) <= w * 8 - 0.5
    assert float(xy[..., 1].min()) >= -0.5 and float(xy[..., 1].max()) <= h * 8 - 0.5
    assert (poses.keypoints[rows][:, legs, 2] == 0).all()
    for r, c in zip(rows, cols):
        err = np.linalg.norm(poses.keypoints[r, ~legs, :2].numpy() - people[c][~legs, :2], axis=-1)
        assert err.max() <= 1.0, (c, err.round(2))


def test_an_empty_batch_decodes_to_no_images():
    codec = StrongPoseCodec(stride=8)
    maps = {k: torch.zeros(0, c, 8, 8) for k, c in codec.channels.items()}
    assert codec.decode(maps) == [] and codec.last_timing["images"] == 0


def test_decode_checks_channels():
    codec = StrongPoseCodec()
    with pytest.raises(KeyError, match="mid"):
        codec.decode({"skhm": torch.zeros(1, 17, 8, 8), "short": torch.zeros(1, 34, 8, 8)})
    with pytest.raises(ValueError, match="channels"):
        codec.decode({"skhm": torch.zeros(1, 17, 8, 8), "short": torch.zeros(1, 34, 8, 8), "mid": torch.zeros(1, 10, 8, 8)})
    # ONNX Runtime's outputs are NumPy arrays: named, not dropped and then reported missing
    with pytest.raises(TypeError, match="mid, short, skhm are NumPy arrays.*torch.from_numpy"):
        codec.decode({"skhm": np.zeros((1, 17, 8, 8), np.float32), "short": np.zeros((1, 34, 8, 8), np.float32),
                      "mid": np.zeros((1, 80, 8, 8), np.float32)})


def test_flipped_maps_decode_to_mirrored_people():
    codec = StrongPoseCodec(stride=8)
    width = 320
    people = [person(80, 30, 200), person(220, 40, 160)]
    maps = codec.encode(as_tensor(people), (256, width))
    direct = codec.decode(maps)[0]
    mirrored = codec.decode(codec.flip_maps(maps))[0]
    back = mirrored.keypoints[:, list(codec.skeleton.flip_index)].clone()
    back[..., 0] = width - 1 - back[..., 0]
    rows, cols = match_people(back.numpy(), direct.keypoints.numpy())
    assert np.allclose(back.numpy()[rows][..., :2], direct.keypoints.numpy()[cols][..., :2], atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_on_gpu_matches_cpu():
    codec = StrongPoseCodec()
    maps = codec.encode(as_tensor([person(80, 30, 200), person(220, 40, 160)]), (256, 320))
    cpu = codec.decode(maps)[0]
    gpu = codec.decode({k: v.cuda() for k, v in maps.items()})[0]
    assert torch.allclose(cpu.keypoints, gpu.keypoints, atol=1e-3)


@st.composite
def separated_people(draw):
    """1-4 people of random size and visibility in columns far enough apart not to share disks."""
    n = draw(st.integers(1, 4))
    height = draw(st.integers(8, 24)) * 16
    people = []
    x = 20.0
    for _ in range(n):
        size = draw(st.floats(80, height - 40))
        cx = x + 0.3 * size
        top = draw(st.floats(5, height - size - 5))
        vis = np.array(draw(st.lists(st.booleans(), min_size=17, max_size=17)))
        vis[draw(st.integers(0, 16))] = True
        people.append(person(cx, top, size, vis))
        x = cx + 0.3 * size + 72  # > 2 disk radii between neighbouring keypoints
    width = int(x) + 16
    return people, (height, width)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(separated_people(), st.sampled_from([4, 8, 16]))
def test_property_round_trip(case, stride):
    people, size = case
    codec = StrongPoseCodec(stride=stride)
    gt = np.stack(people)
    t = codec.encode(torch.from_numpy(gt), size)
    # invariants of the targets
    assert torch.equal(t["short_valid"], t["skhm"] > 0)
    radius = torch.linalg.vector_norm(t["short"].view(17, 2, *t["skhm"].shape[1:]), dim=1)
    assert (radius <= codec.disk_radius + 1e-3).all()
    src = codec.edges[:, 0]
    assert not (t["mid_valid"] & ~t["short_valid"][src]).any()
    # each labelled keypoint of a person with at least one comes back (alone it is a 1-keypoint person)
    poses = codec.decode(t)[0]
    pred = poses.keypoints.numpy()
    height, width = size
    for g in gt:
        # keypoints off the image (pixel centres span [-0.5, size - 0.5)) are unlabelled for the codec
        lab = (g[:, 2] > 0) & (g[:, 0] >= -0.5) & (g[:, 0] < width - 0.5) & (g[:, 1] >= -0.5) & (g[:, 1] < height - 0.5)
        if not lab.any():
            continue
        d = np.linalg.norm(pred[:, lab, :2] - g[None, lab, :2], axis=-1).max(1)
        assert d.min() <= 1.0


def test_body_map_weight_scales_person_scores():
    codec = StrongPoseCodec(stride=8, decode_bhm_weight=1.0)
    maps = codec.encode(as_tensor([person(80, 30, 200), person(220, 40, 160)]), (256, 320))
    full = codec.decode(maps)[0]
    half = codec.decode({**maps, "bhm": maps["bhm"] * 0.5})[0]
    assert torch.allclose(half.scores, full.scores * 0.5, atol=1e-5)
    no_bhm = {key: v for key, v in maps.items() if key != "bhm"}
    assert torch.allclose(StrongPoseCodec(stride=8).decode(no_bhm)[0].scores, codec.decode(no_bhm)[0].scores)


def test_vote_mean_refinement_averages_the_cells_offset_errors():
    """Noisy short offsets: a peak placed by its own cell's offset carries that cell's error; the mean of the
    votes within decode_refine_radius averages many cells' (clean targets stay exact: the round trips above)."""
    gt = person(140, 30, 200)
    targets = StrongPoseCodec(stride=8).encode(as_tensor([gt]), (256, 320))
    g = torch.Generator().manual_seed(0)
    noisy = dict(targets, short=targets["short"] + 2.0 * torch.randn(targets["short"].shape, generator=g))
    lab = np.asarray(gt)[:, 2] > 0
    errors = {}
    for radius in (0.0, 4.0):
        poses = StrongPoseCodec(stride=8, decode_refine_radius=radius).decode(noisy)[0]
        found = poses.keypoints[0].numpy()
        errors[radius] = np.linalg.norm(found[lab, :2] - np.asarray(gt)[lab, :2], axis=-1).mean()
    assert errors[4.0] < 0.5 * errors[0.0], errors


def test_logits_are_refused_by_name():
    """The network's raw heat maps decoded as they are gave other people, without a word."""
    codec = StrongPoseCodec(stride=8)
    maps = {name: torch.zeros(1, c, 8, 8) for name, c in codec.channels.items()}
    maps["skhm"][0, 0, 3, 3] = -4.0
    with pytest.raises(ValueError, match=r"decode: 'skhm' holds values from -4 to 0, not probabilities in 0\.\.1: "
                                         r"the network's raw heat maps are logits"):
        codec.decode(maps)
    maps["skhm"] = maps["skhm"].sigmoid()
    assert codec.decode(maps)[0].keypoints.shape[1:] == (17, 3)
    maps["skhm"][0, 1, 2, 2] = float("inf")  # non-finite cells are decoding's to drop, not a sign of logits
    codec.decode(maps)
    maps["skhm"][0, 2, 2, 2], maps["skhm"][0, 3, 3, 3] = float("nan"), -2.0  # a NaN does not hide the logit
    with pytest.raises(ValueError, match="holds values from -2"):
        codec.decode(maps)


@pytest.mark.parametrize("snap_radius", [8.0, None])  # the default; null: the disk radius
def test_a_crowd_decodes_the_same_with_links_found_through_buckets(monkeypatch, snap_radius):
    """Above BUCKET_MIN_SLOTS detections a type, links are searched within the snap radius only (buckets); the
    people are those of the search against every detection. Noisy offsets, so that linking has choices."""
    g = np.random.default_rng(2)
    people = [person(cx, top, h) for cx, top, h in zip(g.uniform(30, 480, 60), g.uniform(5, 300, 60),
                                                         g.uniform(40, 200, 60))]
    codec = StrongPoseCodec(stride=8, decode_max_people=100, decode_max_peaks=100, decode_snap_radius=snap_radius)
    maps = codec.encode(as_tensor(people), (512, 512))
    noisy = {key: maps[key] for key in ("skhm", "bhm")}
    for key in ("short", "mid", "long"):
        noisy[key] = maps[key] + torch.from_numpy(g.normal(0, 2.0, maps[key].shape).astype(np.float32))
    bucketed = codec.decode(noisy)[0]
    monkeypatch.setattr(grouping, "BUCKET_MIN_SLOTS", 10**9)
    dense = codec.decode(noisy)[0]
    assert len(bucketed) > 40 and torch.equal(bucketed.keypoints, dense.keypoints)
    assert torch.equal(bucketed.scores, dense.scores)
