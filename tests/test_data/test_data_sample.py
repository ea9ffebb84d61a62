"""The embedded sample: licences, size, credits, consistency."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

ALLOWED_LICENSES = {4, 5, 6}  # CC BY, BY-SA, BY-ND 2.0


def test_sample_is_small_licensed_and_credited(sample: tuple[Path, Path]) -> None:
    images_dir, annotations = sample
    data = json.loads(annotations.read_text())
    assert 12 <= len(data["images"]) <= 20
    assert {im["license"] for im in data["images"]} <= ALLOWED_LICENSES
    assert data["info"] and data["licenses"] and data["categories"][0]["name"] == "person"
    root = annotations.parent
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= 4 * 1024 * 1024, f"sample is {total / 2**20:.2f} MiB"
    credits = (root / "CREDITS.md").read_text()
    for im in data["images"]:
        assert im["file_name"] in credits and im["flickr_url"] in credits
        pixels = cv2.imread(str(images_dir / im["file_name"]))
        assert pixels is not None and pixels.shape[:2] == (im["height"], im["width"])
    ids = {im["id"] for im in data["images"]}
    assert all(a["image_id"] in ids for a in data["annotations"])
    people = sum(1 for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0)
    assert people >= 20 and any(a["iscrowd"] for a in data["annotations"])
