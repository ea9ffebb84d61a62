"""Poses: selecting people keeps the (N, K, 3) / (N,) shapes, whatever the index."""

import pytest
import torch

from strongpose.structures import Poses


@pytest.fixture
def three() -> Poses:
    keypoints = torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(3, 2, 3)
    return Poses(keypoints, torch.tensor([0.9, 0.6, 0.2]))


def test_an_index_selects_people_as_poses(three):
    assert three[0].keypoints.shape == (1, 2, 3) and three[0].scores.tolist() == pytest.approx([0.9])
    assert three[-1].scores.tolist() == pytest.approx([0.2])  # the last, not an empty slice
    kept = three[three.scores > 0.5]
    assert len(kept) == 2 and torch.equal(kept.keypoints, three.keypoints[:2])
    assert three[1:].scores.tolist() == pytest.approx([0.6, 0.2])
    assert three[[2, 0]].scores.tolist() == pytest.approx([0.2, 0.9])
    assert len(three[three.scores > 1]) == 0 and three[three.scores > 1].keypoints.shape == (0, 2, 3)
    assert [p.scores.item() for p in three] == pytest.approx([0.9, 0.6, 0.2])  # iteration: one person each
    assert three[0].to_coco(7)[0]["score"] == pytest.approx(0.9)
    with pytest.raises(IndexError):
        three[3]
