"""Pose Plot grouping's last stage on hand-made detections: OKS-NMS, min_keypoints, max_people and the guess
for keypoints that were not found (the round-trip tests decode clean targets, where none of these acts)."""

import math

import numpy as np
import pytest
import torch

from strongpose.codec.grouping import _nearest, _nearest_within, group_image, oks_nms

SIGMAS = np.array([0.1, 0.1])
EDGES = np.array([[0, 1], [1, 0]])  # two keypoint types, one skeleton edge both ways


def detections(second_person_has_type_1: bool = True, shift: float = 1.0) -> dict:
    """Two people of 2 keypoints, A at (10, 10) - (30, 40), B the same moved ``shift`` px right (a duplicate
    detection); slot l of each type is person l's; mid links join the slots of the same person."""
    pos = np.array([[[10.0, 10.0], [10.0 + shift, 10.0]], [[30.0, 40.0], [30.0 + shift, 40.0]]], np.float32)
    score = np.array([[0.9, 0.8], [0.9, 0.7]], np.float32)
    valid = np.ones((2, 2), bool)
    valid[1, 1] = second_person_has_type_1
    mid_idx = np.array([[[0], [1]], [[0], [1]]])  # (E, L, T): slot l links to slot l of the other type
    mid_dist = np.zeros((2, 2, 1), np.float32)
    return dict(pos=pos, score=score, valid=valid, edges=EDGES, mid_dist=mid_dist, mid_idx=mid_idx,
                snap_radius=5.0, sigmas=SIGMAS)


def test_oks_nms_uses_cocos_formula_at_the_kept_persons_scale():
    kps = np.array([[[10.0, 10.0], [30.0, 40.0]], [[11.0, 10.0], [31.0, 40.0]], [[12.0, 10.0], [32.0, 40.0]]])
    found = np.ones((3, 2), bool)
    # d^2 = 1 for each keypoint, area = 20 x 30 (the kept person's keypoint box), var = (2 sigma)^2
    oks = math.exp(-1 / (2 * 600 * 0.2**2))
    assert oks_nms(kps[:2], found[:2], SIGMAS, oks - 1e-6, max_people=5) == [0]
    assert oks_nms(kps[:2], found[:2], SIGMAS, oks + 1e-6, max_people=5) == [0, 1]
    # person 2 is compared with the kept person 0 (d^2 = 4), not with the dropped person 1 (d^2 = 1)
    assert oks_nms(kps, found, SIGMAS, math.exp(-4 / (2 * 600 * 0.2**2)) + 1e-6, max_people=5) == [0, 2]
    assert oks_nms(kps, found, SIGMAS, 0.99, max_people=2) == [0, 1]  # stops at max_people
    assert oks_nms(kps, found, SIGMAS, 0.99, max_people=0) == []
    disjoint = np.array([[True, False], [False, True], [True, False]])
    assert oks_nms(kps, disjoint, SIGMAS, 0.0, max_people=5) == [0, 1]  # no keypoint in common: OKS 0


def test_oks_nms_drops_a_duplicate_and_keeps_distinct_people():
    kps, scores = group_image(**detections(), nms_oks=0.5)
    assert len(kps) == 1 and scores[0] == pytest.approx(0.9)  # the stronger of the two duplicates
    assert len(group_image(**detections(), nms_oks=1.0)[0]) == 2  # NMS off
    assert len(group_image(**detections(shift=40.0), nms_oks=0.5)[0]) == 2  # far apart: two people


def test_min_keypoints_and_max_people():
    args = detections(second_person_has_type_1=False, shift=40.0)
    kps, scores = group_image(**args, nms_oks=1.0)
    assert len(kps) == 2 and scores.tolist() == pytest.approx([0.9, 0.4])  # mean over K of the scores found
    assert len(group_image(**args, nms_oks=1.0, min_keypoints=2)[0]) == 1
    assert len(group_image(**args, nms_oks=1.0, min_keypoints=3)[0]) == 0
    kept, kept_scores = group_image(**detections(shift=40.0), nms_oks=1.0, max_people=1)
    assert len(kept) == 1 and kept_scores[0] == pytest.approx(0.9)


def test_the_body_map_scales_person_scores_and_a_nan_in_it_is_skipped():
    plain = group_image(**detections(shift=40.0), nms_oks=1.0)[1]
    bhm_at = np.array([[0.5, 1.0], [0.5, 1.0]], np.float32)  # (K, L): person 0 stands on 0.5, person 1 on 1
    scaled = group_image(**detections(shift=40.0), nms_oks=1.0, bhm_at=bhm_at, bhm_weight=2.0)[1]
    assert scaled.tolist() == pytest.approx([plain[1], plain[0] * 0.25])  # re-ranked
    bhm_at[0, 0] = np.nan  # person 0's first keypoint: its second one alone counts
    assert group_image(**detections(shift=40.0), nms_oks=1.0, bhm_at=bhm_at, bhm_weight=2.0)[1].tolist() == \
        pytest.approx(scaled.tolist())
    bhm_at[1, 0] = np.nan  # none known: unscaled, not 1e-6
    assert group_image(**detections(shift=40.0), nms_oks=1.0, bhm_at=bhm_at, bhm_weight=2.0)[1].tolist() == \
        pytest.approx(sorted([plain[0], plain[1]], reverse=True))


def test_a_keypoint_not_found_goes_where_the_long_range_offsets_say():
    args = detections(second_person_has_type_1=False, shift=40.0)
    long_pred = np.zeros((2, 2, 2, 2), np.float32)  # (K, L, K, 2): where detection (type, slot) puts each type
    long_pred[0, 1, 1] = (77.0, 88.0)
    kps, _ = group_image(**args, nms_oks=1.0, long_pred=long_pred)
    assert kps[1, 1].tolist() == [77.0, 88.0, 0.0]  # position guessed, score 0: not found
    kps, _ = group_image(**args, nms_oks=1.0)
    assert kps[1, 1].tolist() == [50.0, 10.0, 0.0]  # without long-range offsets: the mean of its found ones


@pytest.mark.parametrize("radius", [3.0, 8.0, 40.0])
def test_nearest_within_equals_the_dense_search_within_the_radius(radius):
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(2, 3, 60, 2, generator=g) * 140 - 20  # some beyond every detection's bucket
    pred[0, 1, :5] = float("inf")  # a non-finite offset points nowhere
    pred[1, 2, 5:8, 0] = -float("inf")
    cand = torch.rand(2, 3, 40, 2, generator=g) * 100
    cand[1, 0, 10:14] = cand[1, 0, 10:11] + torch.rand(4, 2, generator=g)  # a cluster in one bucket
    valid = torch.rand(2, 3, 40, generator=g) < 0.8
    valid[0, 2] = False  # a type with no detection
    dist, idx = _nearest_within(pred, cand, valid, 3, radius)
    dense_dist, dense_idx = _nearest(pred, cand, valid, 3)
    within = dense_dist <= radius
    assert within.any() and (~within).any()
    assert torch.equal(dist, torch.where(within, dense_dist, float("inf")))
    assert torch.equal(idx, torch.where(within, dense_idx, 40))


@pytest.mark.parametrize("threshold", [0.3, 0.7])
@pytest.mark.parametrize("max_people", [4, 30, 1000])
def test_oks_nms_in_blocks_equals_one_person_at_a_time(threshold, max_people):
    g = np.random.default_rng(7)
    centres = g.uniform(0, 200, (40, 1, 2))  # 300 people around 40 places: many overlap
    kps = centres[g.integers(0, 40, 300)] + g.normal(0, 6, (300, 17, 2)) + g.uniform(-30, 30, (300, 1, 2))
    found = g.random((300, 17)) < 0.7
    sigmas = np.full(17, 0.07)
    one_at_a_time = oks_nms(kps, found, sigmas, threshold, max_people, block=1)
    assert 1 < len(one_at_a_time) <= max_people
    for block in (3, 64, 512):
        assert oks_nms(kps, found, sigmas, threshold, max_people, block=block) == one_at_a_time


@pytest.mark.parametrize("case", ["far", "huge radius", "on the radius", "ties"])
def test_nearest_within_stays_exact_and_small_in_odd_cases(case, monkeypatch):
    """A stray detection 1e30 px away (its bucket table must not follow its spread), a radius wider than the image
    (the dense search), a pair exactly ``radius`` apart after rounding, equal distances (the lower slot first)."""
    g = torch.Generator().manual_seed(4)
    cand = torch.rand(1, 2, 40, 2, generator=g) * 500
    pred = torch.rand(1, 2, 90, 2, generator=g) * 500
    valid = torch.ones(1, 2, 40, dtype=torch.bool)
    radius = 8.0
    if case == "far":
        cand[0, 0, 3] = 1e30
    elif case == "huge radius":
        radius = 5000.0
    elif case == "on the radius":
        radius = 3.0
        cand[0, 0, 0], pred[0, 0, 0] = torch.tensor([3.0, 10.0]), torch.tensor([-1e-8, 10.0])
    else:  # one prediction between two detections, 5 px each way
        cand[0, 1, 7], cand[0, 1, 2], pred[0, 1, 0] = torch.tensor([5.0, 0.0]), torch.tensor([-5.0, 0.0]), 0.0
    sizes = []
    bincount = torch.bincount
    monkeypatch.setattr(torch, "bincount",
                        lambda x, minlength=0: sizes.append(minlength) or bincount(x, minlength=minlength))
    dist, idx = _nearest_within(pred, cand, valid, 3, radius)
    assert all(size <= 2 * 4096 * 1.2 for size in sizes)  # a few buckets per detection, at most ~MIN_BUCKETS a group
    dense_dist, dense_idx = _nearest(pred, cand, valid, 3)
    within = dense_dist <= radius
    assert torch.equal(dist, torch.where(within, dense_dist, float("inf")))
    if case == "ties":
        assert idx[0, 1, 0, :2].tolist() == [2, 7]
    else:
        assert torch.equal(idx, torch.where(within, dense_idx, 40))


def test_long_range_ties_go_to_the_lower_slot():
    """Two unclaimed detections of type 1 equally far (5 px) from where type 0 says it is, listed slot 1 first:
    grouping takes slot 0 (the stronger peak), as it did when it searched every detection."""
    k, num, t = 2, 2, 2
    pos = np.array([[[0, 0], [0, 0]], [[10, 0], [-10, 0]]], np.float32)
    score = np.array([[0.9, 0.0], [0.5, 0.4]], np.float32)
    valid = np.array([[True, False], [True, True]])
    mid_dist, mid_idx = np.full((2, num, t), np.inf, np.float32), np.full((2, num, t), num)
    long_dist, long_idx = np.full((k, num, k, t), np.inf, np.float32), np.full((k, num, k, t), num)
    long_dist[0, 0, 1], long_idx[0, 0, 1] = [5.0, 5.0], [1, 0]
    kps, _ = group_image(pos, score, valid, EDGES, mid_dist, mid_idx, 8.0, SIGMAS, long_dist=long_dist,
                         long_idx=long_idx, nms_oks=1.0)
    assert kps[0, 1].tolist() == [10.0, 0.0, 0.5]
