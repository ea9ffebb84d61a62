"""Fixtures for the data tests: the embedded sample, a writable copy of it, a codec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from strongpose import StrongPoseCodec
from strongpose.data import sample_paths

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def codec() -> StrongPoseCodec:
    return StrongPoseCodec(stride=8, disk_radius=16.0)


@pytest.fixture(scope="session")
def sample() -> tuple[Path, Path]:
    return sample_paths()


@pytest.fixture
def sample_copy(tmp_path: Path, sample: tuple[Path, Path]) -> tuple[Path, Path, dict]:
    """A temporary copy of the sample: (images_dir, annotations_json, parsed json) to break things in."""
    images = tmp_path / "images"
    shutil.copytree(sample[0], images)
    annotations = tmp_path / "annotations.json"
    shutil.copyfile(sample[1], annotations)
    return images, annotations, json.loads(annotations.read_text())


@pytest.fixture
def coco_mini() -> tuple[Path, Path]:
    root = SHARED / "coco-mini"
    if not root.is_dir():
        pytest.skip(f"needs ../shared/data/coco-mini (not found at {root})")
    return root / "train2017", root / "annotations" / "person_keypoints_train2017.json"
