"""Fuzzing the annotation reader and the validator: any JSON gives a report or a documented error, never a
crash; valid datasets are reported clean and read back exactly."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from strongpose import COCO_PERSON, StrongPoseCodec
from strongpose.data import COCOKeypointDataset
from strongpose.data.annotations import (BadSample, image_annotations, load_coco, person_category, rle_string_counts,
                                         segmentation_error)
from strongpose.data.collate import SkippedSample
from strongpose.data.validate import KINDS, validate_coco

K = COCO_PERSON.num_keypoints
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
small_ints = st.integers(-2, 6)
numbers = st.integers(-5, 80) | st.floats(-5, 80) | st.sampled_from([float("nan"), float("inf"), 2**80])


def maybe(valid, weight: int = 3):
    """Plausible values ``weight`` times as often as anything (one_of would merge repeated branches)."""
    return st.sampled_from([True] * weight + [False]).flatmap(lambda plausible: valid if plausible else json_values)


keypoint_lists = st.one_of(
    st.lists(st.integers(-1, 12), min_size=3 * K, max_size=3 * K),  # visibility 3, negative, outside
    st.lists(st.sampled_from([0, 1, 2, 3, -1]) | numbers, min_size=3 * K, max_size=3 * K),
    st.lists(numbers, max_size=3 * K + 3))
segmentations = st.one_of(
    st.none(), st.just([]),
    st.lists(st.lists(numbers, max_size=9), max_size=2),
    st.fixed_dictionaries({"size": maybe(st.lists(small_ints, min_size=2, max_size=2)),
                           "counts": maybe(st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=112),
                                                   max_size=6) | st.lists(st.integers(-1, 30), max_size=4))}))
def image_entries(ids, weight: int = 3):
    return st.fixed_dictionaries({"id": ids, "file_name": maybe(st.sampled_from(["a.jpg", "b.png"]), weight),
                                  "height": maybe(st.integers(1, 9), weight),
                                  "width": maybe(st.integers(1, 9), weight)})


def annotation_entries(ids, category_ids, with_content: bool = False):
    content = {"keypoints": maybe(keypoint_lists), "bbox": maybe(st.lists(numbers, max_size=5)),
               "segmentation": maybe(segmentations)}
    return st.fixed_dictionaries(
        {"id": ids, "image_id": ids, "category_id": category_ids, **(content if with_content else {})},
        optional={**({} if with_content else content), "iscrowd": maybe(st.sampled_from([0, 1])),
                  "num_keypoints": maybe(small_ints)})


PERSON = {"id": 1, "name": "person", "keypoints": list(COCO_PERSON.keypoints)}
categories = st.fixed_dictionaries(
    {"id": maybe(st.sampled_from([1, 2])), "name": maybe(st.sampled_from(["person", "dog"])),
     "keypoints": maybe(st.just(list(COCO_PERSON.keypoints)) | st.lists(st.text(max_size=3), max_size=3))})
coco_like = st.one_of(
    json_values,
    # anything may be wrong, the file's structure included
    st.fixed_dictionaries({"images": maybe(st.lists(maybe(image_entries(maybe(small_ints))), max_size=4)),
                           "annotations": maybe(st.lists(maybe(annotation_entries(maybe(small_ints), maybe(
                               st.sampled_from([1, 2])))), max_size=6)),
                           "categories": maybe(st.lists(maybe(categories), max_size=2))}),
    # the structure pycocotools indexes is right (integer ids, a person category), the contents are not
    st.fixed_dictionaries({"images": st.lists(image_entries(st.integers(0, 3), weight=12), max_size=4),
                           "annotations": st.lists(annotation_entries(st.integers(0, 3), st.sampled_from([1, 2]),
                                                                      with_content=True), max_size=6),
                           "categories": st.lists(categories, max_size=1).map(lambda c: [PERSON, *c])}),
)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:  # one per module: hypothesis reruns the test body
        yield Path(folder)


def _write(folder: Path, data: object) -> Path:
    path = folder / "annotations.json"
    path.write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them (and COCO tools read)
    return path


@FUZZ
@given(data=coco_like)
def test_validator_reports_or_refuses_the_file_never_crashes(data, scratch) -> None:
    path = _write(scratch, data)
    try:
        report = validate_coco(path, scratch)  # no image files there: every valid image entry is missing
    except ValueError as err:
        assert str(path) in str(err)
        assert not (isinstance(data, dict) and all(isinstance(data.get(k), list)
                                                   for k in ("images", "annotations", "categories")))
        return
    assert report.num_images == len(data["images"]) and report.num_annotations == len(data["annotations"])
    assert all(p.kind in KINDS and p.severity in ("error", "warning") and p.message for p in report.problems)


@FUZZ
@given(data=coco_like)
def test_reader_raises_only_documented_errors(data, scratch) -> None:
    """load_coco: ValueError naming the file; a sample: BadSample (the dataset skips and names it)."""
    path = _write(scratch, data)
    try:
        coco = load_coco(path)
        category = person_category(coco, COCO_PERSON.keypoints, path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    report = validate_coco(path)
    flagged = {p.image_id for p in report.problems if p.severity == "error"}
    for image_id in coco.imgs:
        try:
            image_annotations(coco, image_id, category, K)
        except BadSample as err:
            # anything the reader refuses, the validator reports (for that image or the file as a whole)
            assert image_id in flagged or None in flagged, (err, report.problems)


@settings(max_examples=40, deadline=None)
@given(data=coco_like)
def test_dataset_items_are_samples_or_named_skips(data, scratch) -> None:
    path = _write(scratch, data)
    try:
        ds = COCOKeypointDataset(scratch / "no_images", path, StrongPoseCodec(stride=8, disk_radius=6.0),
                                 input_size=16)
    except ValueError as err:
        assert str(path) in str(err)
        return
    for i in range(len(ds)):
        item = ds[i]  # no image files: every sample is skipped, with a reason
        assert isinstance(item, SkippedSample) and item.image_id == ds.image_ids[i] and item.reason


@FUZZ
@given(seg=json_values | segmentations, height=st.integers(1, 6), width=st.integers(1, 6))
def test_segmentation_check_never_raises(seg, height, width) -> None:
    problem = segmentation_error(seg, height, width)
    assert problem is None or (isinstance(problem, str) and problem)


@FUZZ
@given(bits=st.lists(st.booleans(), min_size=1, max_size=120), height=st.integers(1, 12))
def test_rle_strings_decode_like_pycocotools(bits, height) -> None:
    width = max(1, len(bits) // height)
    mask = np.asfortranarray(np.resize(np.array(bits, np.uint8), (height, width)))
    rle = mask_utils.encode(mask)
    counts = rle_string_counts(rle["counts"].decode())
    flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)  # runs alternate 0, 1, 0, ...
    assert np.array_equal(flat.reshape(width, height).T, mask)  # column-major, as COCO stores masks
    assert segmentation_error({"size": [height, width], "counts": rle["counts"].decode()}, height, width) is None


@st.composite
def valid_datasets(draw):
    """A small COCO keypoint dataset that satisfies every check."""
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person",
                                                             "keypoints": list(COCO_PERSON.keypoints)}]}
    for image_id in range(1, draw(st.integers(1, 3)) + 1):
        h, w = draw(st.integers(8, 40)), draw(st.integers(8, 40))
        data["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        for _ in range(draw(st.integers(0, 3))):
            vis = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=K, max_size=K))
            xs = draw(st.lists(st.integers(0, w - 1), min_size=K, max_size=K))
            ys = draw(st.lists(st.integers(0, h - 1), min_size=K, max_size=K))
            kps = [c for x, y, v in zip(xs, ys, vis) for c in ((x, y, v) if v else (0, 0, 0))]
            x0, y0 = draw(st.integers(0, w - 2)), draw(st.integers(0, h - 2))
            box = [x0, y0, draw(st.integers(1, w - x0)), draw(st.integers(1, h - y0))]
            if draw(st.booleans()):
                seg = [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3]]]
            else:
                mask = np.zeros((h, w), np.uint8, order="F")
                mask[y0:y0 + box[3], x0:x0 + box[2]] = 1
                rle = mask_utils.encode(mask)
                seg = {"size": [h, w], "counts": rle["counts"].decode()}
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                        "iscrowd": 0, "keypoints": kps, "num_keypoints": sum(v > 0 for v in vis),
                                        "bbox": box, "segmentation": seg, "area": box[2] * box[3]})
    return data


@settings(max_examples=40, deadline=None)
@given(data=valid_datasets())
def test_valid_datasets_are_clean_and_read_back_exactly(data, scratch) -> None:
    path = _write(scratch, data)
    assert validate_coco(path).problems == []
    coco = load_coco(path)
    for info in data["images"]:
        people = image_annotations(coco, info["id"], person_category(coco, COCO_PERSON.keypoints, path), K)
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        expected = np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), K, 3)
        np.testing.assert_array_equal(people.keypoints, expected)
        np.testing.assert_array_equal(people.boxes, np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4))
        assert people.masks.shape == (len(anns), info["height"], info["width"])
        for mask, ann in zip(people.masks, anns):
            if isinstance(ann["segmentation"], dict):  # the RLE of the box, decoded
                x, y, w, h = ann["bbox"]
                assert mask.sum() == w * h and mask[y:y + h, x:x + w].all()
        # undecoded (what training reads): the unions it decodes instead are those of the masks above
        lazy = image_annotations(coco, info["id"], person_category(coco, COCO_PERSON.keypoints, path), K, decode=False)
        assert lazy.masks is None and lazy.crowd is None
        np.testing.assert_array_equal(lazy.has_mask(), [m.any() for m in people.masks])
        for pick in (np.arange(len(anns)) % 2 == 0, np.ones(len(anns), bool), np.zeros(len(anns), bool)):
            expected = np.maximum.reduce([*people.masks[pick], people.crowd])
            np.testing.assert_array_equal(lazy.union(pick, crowd=True), expected)


def test_an_absurd_image_size_is_refused_not_allocated(scratch) -> None:
    """A height x width typo (found by the fuzzer: 1 x 25_276_514_281) is a reported problem, not a 23 GiB
    mask allocation."""
    data = {"images": [{"id": 0, "file_name": "a.jpg", "height": 1, "width": 25_276_514_281}], "annotations": [],
            "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(K)], "skeleton": []}]}
    path = _write(scratch, data)
    coco = load_coco(path)
    with pytest.raises(BadSample, match="exceeds"):
        image_annotations(coco, 0, person_category(coco, COCO_PERSON.keypoints, path), K)
    assert any(p.kind == "image_entry" and "exceeds" in p.message for p in validate_coco(path).problems)


def test_undecoded_masks_know_who_has_one_and_merge_with_the_crowd(scratch) -> None:
    """Read undecoded (training's way), the people without a segmentation (none, [], an empty RLE) are the ones
    without a mask (their boxes stand in), and the unions decoded from merged RLEs are those of the decoded
    masks, crowd regions included."""
    h, w = 30, 40
    box_rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((10, 12), np.uint8), ((5, 15), (3, 25)))))
    empty_rle = mask_utils.encode(np.asfortranarray(np.zeros((h, w), np.uint8)))
    segmentations = [[[2, 2, 20, 2, 20, 20, 2, 20]], None, [], {"size": [h, w], "counts": empty_rle["counts"].decode()},
                     {"size": [h, w], "counts": box_rle["counts"].decode()}]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": [10, 10, 2] * K,
             "num_keypoints": K, "bbox": [2, 2, 18, 18], "area": 1.0, "segmentation": seg}
            for i, seg in enumerate(segmentations)]
    anns = [{k: v for k, v in a.items() if v is not None} for a in anns]
    anns.append({"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [30, 20, 8, 8], "area": 64.0,
                 "segmentation": [[30, 20, 38, 20, 38, 28, 30, 28]], "keypoints": [0] * 3 * K, "num_keypoints": 0})
    data = {"images": [{"id": 1, "file_name": "1.jpg", "height": h, "width": w}], "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_PERSON.keypoints), "skeleton": []}]}
    path = _write(scratch, data)
    coco = load_coco(path)
    lazy = image_annotations(coco, 1, 1, K, decode=False)
    people = image_annotations(coco, 1, 1, K)
    assert lazy.masks is None and people.rles is None  # one form or the other
    np.testing.assert_array_equal(lazy.has_mask(), [True, False, False, False, True])
    np.testing.assert_array_equal(people.has_mask(), [True, False, False, False, True])
    assert people.crowd.sum() > 0
    for pick in ([True, False, True, False, True], [False, True, True, True, False]):
        pick = np.array(pick)
        for crowd in (False, True):
            expected = np.maximum.reduce([*people.masks[pick]] + ([people.crowd] if crowd else []))
            np.testing.assert_array_equal(lazy.union(pick, crowd), expected)
            np.testing.assert_array_equal(people.union(pick, crowd), expected)
    with pytest.raises(ValueError, match="select must be"):
        lazy.union(np.ones(4, bool))
    with pytest.raises(ValueError, match="select must be"):
        people.union(np.ones(5, int))
