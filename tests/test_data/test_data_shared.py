"""On the shared coco-mini set (skipped when ../shared is absent): every image loads and encodes."""

from __future__ import annotations

import pytest

from strongpose.data import COCOKeypointDataset

pytestmark = pytest.mark.shared


def test_every_coco_mini_image_loads(coco_mini, codec) -> None:
    ds = COCOKeypointDataset(*coco_mini, codec=codec, input_size=96, train=False)
    assert len(ds) == 80
    assert all(isinstance(ds[i], dict) for i in range(len(ds)))  # a bad sample is a SkippedSample
    train = COCOKeypointDataset(*coco_mini, codec=codec, input_size=96, train=True)
    assert all(isinstance(train[(i, 1)], dict) for i in range(len(train)))
