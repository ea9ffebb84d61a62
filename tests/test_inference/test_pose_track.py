"""PoseTracker: ids that follow people across frames, through reordering, short absences and newcomers."""

import numpy as np
import pytest
import torch

from strongpose.inference.pose_track import PoseTracker
from strongpose.skeleton import COCO_PERSON
from strongpose.structures import Poses

# (x, y) of a standing person 1 unit tall
TEMPLATE = np.array([[0.0, 0.0], [-0.03, -0.02], [0.03, -0.02], [-0.07, 0.0], [0.07, 0.0], [-0.15, 0.15],
                     [0.15, 0.15], [-0.22, 0.35], [0.22, 0.35], [-0.25, 0.52], [0.25, 0.52], [-0.1, 0.55],
                     [0.1, 0.55], [-0.11, 0.78], [0.11, 0.78], [-0.12, 1.0], [0.12, 1.0]])


def frame(people: list[tuple[float, float, float]]) -> Poses:
    """Poses of people at (centre x, top y, height), all keypoints found."""
    kps = torch.zeros(len(people), 17, 3)
    for n, (x, y, h) in enumerate(people):
        kps[n, :, 0] = torch.from_numpy(x + TEMPLATE[:, 0] * h).float()
        kps[n, :, 1] = torch.from_numpy(y + TEMPLATE[:, 1] * h).float()
        kps[n, :, 2] = 0.9
    return Poses(kps, torch.full((len(people),), 0.9))


def test_ids_follow_people_who_move_and_change_order():
    tracker = PoseTracker(COCO_PERSON.sigmas)
    assert tracker.update(frame([(100, 50, 200), (300, 60, 180), (500, 40, 150)])) == [0, 1, 2]
    rng = np.random.default_rng(0)
    for step in range(1, 8):  # each walks 4 px a frame; the decoder lists them in any order
        people = [(100 + 4 * step, 50, 200), (300 - 4 * step, 60, 180), (500 + 4 * step, 40, 150)]
        order = rng.permutation(3)
        ids = tracker.update(frame([people[i] for i in order]))
        assert ids == order.tolist()


def test_a_short_absence_keeps_the_id_and_a_long_one_ends_it():
    tracker = PoseTracker(COCO_PERSON.sigmas, max_age=2)
    a, b = (100, 50, 200), (400, 50, 200)
    assert tracker.update(frame([a, b])) == [0, 1]
    assert tracker.update(frame([a])) == [0]
    assert tracker.update(frame([a])) == [0]
    assert tracker.update(frame([a, b])) == [0, 1]  # b missed 2 frames: max_age
    for _ in range(3):
        tracker.update(frame([a]))
    assert tracker.update(frame([a, b])) == [0, 2]  # missed 3: a new track, never an old id again
    tracker.reset()
    assert tracker.update(frame([b])) == [0]


def test_someone_else_in_the_same_place_is_not_matched_below_the_threshold():
    tracker = PoseTracker(COCO_PERSON.sigmas, oks_threshold=0.5)
    assert tracker.update(frame([(100, 50, 200)])) == [0]
    assert tracker.update(frame([(160, 50, 200)])) == [1]  # 60 px away: OKS far below 0.5
    assert tracker.update(frame([])) == []
    unfound = frame([(160, 50, 200)])
    unfound.keypoints[..., 2] = 0.0  # no keypoint to compare: a new track, not a match
    assert tracker.update(unfound) == [2]
    weak = frame([(160, 50, 200)])
    weak.keypoints[..., 2] = 0.02  # found, weakly: still compared, and the person at 160 two frames ago
    assert tracker.update(weak) == [1]
    with pytest.raises(ValueError, match="oks_threshold"):
        PoseTracker(COCO_PERSON.sigmas, oks_threshold=2)
    with pytest.raises(ValueError, match="of 17 keypoints .* got people of shape \\(1, 14, 3\\)"):
        tracker.update(Poses(torch.zeros(1, 14, 3), torch.ones(1)))
