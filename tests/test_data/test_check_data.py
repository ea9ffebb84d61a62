"""``python -m strongpose.check_data`` and :func:`validate_coco` on broken copies of the embedded sample."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from strongpose.check_data import main
from strongpose.data.validate import ERROR, WARNING, validate_coco


def _person(data: dict, index: int = 0) -> dict:
    """The index-th annotation with at least 5 labelled keypoints."""
    return [a for a in data["annotations"] if a["num_keypoints"] >= 5 and not a["iscrowd"]][index]


def _image(data: dict, image_id: int) -> dict:
    return next(i for i in data["images"] if i["id"] == image_id)


def _labelled(ann: dict) -> int:
    """Index of the first labelled keypoint."""
    return next(k for k in range(17) if ann["keypoints"][3 * k + 2] > 0)


# Each case breaks the copy (images folder, parsed JSON) and returns what check_data must report:
# (image index whose file the problem names, or None for the annotation file; annotation or None; kind; severity;
#  message excerpt).
def truncated_jpeg(images: Path, data: dict):
    path = images / data["images"][0]["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return data["images"][0], None, "corrupt_image", ERROR, "corrupt, truncated or not an image"


def png_named_jpg(images: Path, data: dict):
    path = images / data["images"][1]["file_name"]
    ok, png = cv2.imencode(".png", cv2.imread(str(path)))
    path.write_bytes(png.tobytes())
    return data["images"][1], None, "image_format", WARNING, "the file is a PNG but named .jpg"


def empty_file(images: Path, data: dict):
    (images / data["images"][2]["file_name"]).write_bytes(b"")
    return data["images"][2], None, "corrupt_image", ERROR, "empty image file"


def missing_image(images: Path, data: dict):
    (images / data["images"][3]["file_name"]).unlink()
    return data["images"][3], None, "missing_image", ERROR, "image file not found"


def wrong_image_size(images: Path, data: dict):
    with_rle = {a["image_id"] for a in data["annotations"] if isinstance(a["segmentation"], dict)}
    info = next(i for i in data["images"] if i["id"] not in with_rle)  # else its RLE's size differs too
    info["height"] += 7
    return info, None, "image_size", ERROR, f"the JSON says {info['width']}x{info['height']}"


def short_keypoints(images: Path, data: dict):
    ann = _person(data)
    ann["keypoints"] = ann["keypoints"][:-3]
    return _image(data, ann["image_id"]), ann, "keypoints_length", ERROR, "48 keypoint values, expected 51"


def nan_keypoint(images: Path, data: dict):
    ann = _person(data)
    ann["keypoints"][0] = math.nan  # json.dumps writes NaN, which json.loads (and COCO tools) read back
    return _image(data, ann["image_id"]), ann, "keypoints_nonfinite", ERROR, "NaN, infinite or beyond-float32 values at nose"


def negative_keypoint(images: Path, data: dict):
    ann = _person(data)
    k = _labelled(ann)
    ann["keypoints"][3 * k + 1] = -4
    return _image(data, ann["image_id"]), ann, "keypoints_negative", ERROR, "negative coordinates at"


def keypoint_far_outside(images: Path, data: dict):
    ann = _person(data)
    info = _image(data, ann["image_id"])
    ann["keypoints"][3 * _labelled(ann)] = info["width"] + 300
    return info, ann, "keypoints_outside", WARNING, f"beyond the {info['width']}x{info['height']} image"


def visibility_three(images: Path, data: dict):
    ann = _person(data)
    k = _labelled(ann)
    ann["keypoints"][3 * k + 2] = 3
    return _image(data, ann["image_id"]), ann, "visibility", ERROR, "visibility flags must be 0, 1 or 2"


def num_keypoints_disagrees(images: Path, data: dict):
    ann = _person(data)
    ann["num_keypoints"] += 2
    return _image(data, ann["image_id"]), ann, "num_keypoints", WARNING, f"num_keypoints is {ann['num_keypoints']}"


def box_outside_image(images: Path, data: dict):
    ann = _person(data)
    info = _image(data, ann["image_id"])
    ann["bbox"] = [info["width"] + 10.0, 5.0, 40.0, 80.0]
    return info, ann, "bbox", ERROR, "lies entirely outside"


def box_of_three_numbers(images: Path, data: dict):
    ann = _person(data)
    ann["bbox"] = ann["bbox"][:3]
    return _image(data, ann["image_id"]), ann, "bbox", ERROR, "bbox must be [x, y, width, height] numbers"


def box_of_zero_width(images: Path, data: dict):
    ann = _person(data)
    ann["bbox"][2] = 0
    return _image(data, ann["image_id"]), ann, "bbox", ERROR, "width and height must be positive"


def odd_polygon(images: Path, data: dict):
    ann = _person(data)
    ann["segmentation"] = [ann["segmentation"][0][:-1]]
    return _image(data, ann["image_id"]), ann, "segmentation", ERROR, "odd number of coordinates"


def two_point_polygon(images: Path, data: dict):
    ann = _person(data)
    ann["segmentation"] = [[10, 10, 20, 20]]
    return _image(data, ann["image_id"]), ann, "segmentation", ERROR, "polygon 0 has 2 points"


def polygon_far_outside(images: Path, data: dict):
    ann = _person(data)
    info = _image(data, ann["image_id"])
    ann["segmentation"] = [[0, 0, 1e9, 0, 1e9, 1e9]]  # pycocotools' rasteriser would ask for ~26 GB and crash
    return info, ann, "segmentation", ERROR, f"polygon 0 reaches far beyond the {info['width']}x{info['height']} image"


def unknown_category(images: Path, data: dict):
    ann = _person(data)
    ann["category_id"] = 0
    return _image(data, ann["image_id"]), ann, "unknown_category", ERROR, "category id 0 is not in categories[]"


def iscrowd_not_0_or_1(images: Path, data: dict):
    ann = _person(data)
    ann["iscrowd"] = "yes"
    return _image(data, ann["image_id"]), ann, "iscrowd", ERROR, "iscrowd must be 0 or 1, got 'yes'"


def rle_of_other_size(images: Path, data: dict):
    ann = _person(data)
    info = _image(data, ann["image_id"])
    taller = info["height"] + 1
    ann["segmentation"] = {"size": [taller, info["width"]], "counts": [taller * info["width"]]}
    return info, ann, "segmentation", ERROR, "differs from the image size"


def rle_undecodable(images: Path, data: dict):
    ann = _person(data)
    info = _image(data, ann["image_id"])
    ann["segmentation"] = {"size": [info["height"], info["width"]], "counts": "0\x7f"}
    return info, ann, "segmentation", ERROR, "RLE counts cannot be decoded"


def duplicate_image_id(images: Path, data: dict):
    data["images"].append({**data["images"][5], "file_name": "copy.jpg"})
    copy = {"file_name": "copy.jpg", "id": data["images"][5]["id"]}
    return copy, None, "duplicate_image_id", ERROR, "repeats image id"


def duplicate_annotation_id(images: Path, data: dict):
    first, second = _person(data, 0), _person(data, 1)
    second["id"] = first["id"]
    return _image(data, second["image_id"]), second, "duplicate_annotation_id", ERROR, "repeats annotation id"


def orphan_annotation(images: Path, data: dict):
    ann = _person(data)
    ann["image_id"] = 987654321
    return None, ann, "orphan_annotation", ERROR, "image id 987654321 is not in images[]"


def keypoints_in_another_order(images: Path, data: dict):
    names = data["categories"][0]["keypoints"]
    names[1], names[2] = names[2], names[1]  # the eyes swapped: every flip, edge and sigma would be wrong
    return None, None, "keypoint_names", ERROR, "in another order (1: 'right_eye' vs 'left_eye', 2: 'left_eye'"


def keypoints_of_other_names(images: Path, data: dict):
    data["categories"][0]["keypoints"][0] = "head"
    return None, None, "keypoint_names", WARNING, "names differ from the skeleton's (0: 'head' vs 'nose')"


CASES = [keypoints_in_another_order, keypoints_of_other_names, truncated_jpeg, png_named_jpg, empty_file, missing_image, wrong_image_size, short_keypoints, nan_keypoint,
         negative_keypoint, keypoint_far_outside, visibility_three, num_keypoints_disagrees, box_outside_image,
         box_of_three_numbers, box_of_zero_width, odd_polygon, two_point_polygon, polygon_far_outside, unknown_category, iscrowd_not_0_or_1,
         rle_of_other_size, rle_undecodable, duplicate_image_id, duplicate_annotation_id, orphan_annotation]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch) -> Path:
    """An empty working folder: check_data must leave it empty (no Hydra outputs, no log file)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_the_embedded_sample_is_clean(sample, cwd, capsys) -> None:
    assert main([f"annotations={sample[1]}", f"images={sample[0]}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("check_data: 13 images, 66 annotations, 0 problems (0 errors, 0 warnings) in ")
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_each_broken_input_is_reported_with_file_and_ids(case: Callable, sample_copy, cwd, capsys) -> None:
    images, annotations, data = sample_copy
    image, ann, kind, severity, excerpt = case(images, data)
    annotations.write_text(json.dumps(data))

    report = validate_coco(annotations, images)
    assert [(p.kind, p.severity) for p in report.problems] == [(kind, severity)], report.problems
    (problem,) = report.problems
    assert excerpt in problem.message
    assert problem.file == (image["file_name"] if image is not None else str(annotations))
    assert problem.image_id == (image["id"] if image is not None else ann["image_id"] if ann is not None else None)
    assert problem.annotation_id == (ann["id"] if ann is not None else None)

    assert main([f"annotations={annotations}", f"images={images}"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == str(problem) and f": {kind}: " in out[0] and out[0].startswith(f"{severity}: {problem.file}")
    counts = "1 error, 0 warnings" if severity == ERROR else "0 errors, 1 warning"
    summary, seconds = out[-1].rsplit(" [", 1)
    assert summary == (f"check_data: {len(data['images'])} images, {len(data['annotations'])} annotations, "
                       f"1 problem ({counts}) in {annotations}") and seconds.endswith(" s]")
    assert list(cwd.iterdir()) == []


def test_every_problem_is_listed_and_long_lists_are_cut(sample_copy, cwd, capsys) -> None:
    images, annotations, data = sample_copy
    for case in (truncated_jpeg, empty_file, missing_image, short_keypoints):
        case(images, data)
    for ann in data["annotations"][:6]:
        ann["bbox"] = [1.0, 2.0]
    annotations.write_text(json.dumps(data))
    serial = validate_coco(annotations, images, workers=1)
    assert sorted(map(str, serial.problems)) == sorted(map(str, validate_coco(annotations, images, workers=3).problems))
    assert serial.by_kind() == {"corrupt_image": 2, "missing_image": 1, "keypoints_length": 1, "bbox": 6}

    assert main([f"annotations={annotations}", f"images={images}", "max_problems_shown=3"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 + 3 and out[3].startswith("... and 7 more (")
    assert out[4].startswith("by kind: bbox 6, corrupt_image 2")
    assert "10 problems (10 errors, 0 warnings)" in out[5]


def test_annotations_only(sample_copy, cwd, capsys) -> None:
    """images=null (the default) checks the JSON alone: missing image files are not reported."""
    images, annotations, data = sample_copy
    missing_image(images, data)
    short_keypoints(images, data)
    annotations.write_text(json.dumps(data))
    assert main([f"annotations={annotations}"]) == 1
    out = capsys.readouterr().out
    assert "keypoints_length" in out and "missing_image" not in out and "image files not checked" in out


@pytest.mark.parametrize(("content", "excerpt"), [
    ('{"images": [1, 2,', "cannot parse COCO annotation file"),
    ("[]", "the top level is a list, not an object"),
    ('{"images": [], "annotations": {}}', "missing or non-list ['annotations', 'categories']"),
    (b"\xff\xfe\x00garbage", "cannot parse COCO annotation file"),
])
def test_unreadable_annotation_file_exits_2_with_path_and_cause(content, excerpt, tmp_path, cwd, capsys) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main([f"annotations={path}"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and excerpt in err
    if excerpt.startswith("cannot parse") and isinstance(content, str):
        assert "line 1 column" in err  # the JSON parser's position


def test_missing_annotation_file_and_bad_arguments_exit_2(tmp_path, cwd, capsys) -> None:
    assert main([f"annotations={tmp_path / 'nope.json'}"]) == 2
    assert f"not found: {tmp_path / 'nope.json'}" in capsys.readouterr().err
    assert main([f"annotations={tmp_path}"]) == 2
    assert f"{tmp_path} is a folder; name the COCO annotation file (.json) in it" in capsys.readouterr().err
    assert main([]) == 2
    assert "usage: python -m strongpose.check_data annotations=FILE" in capsys.readouterr().err
    assert main(["annotation=typo.json"]) == 2  # Hydra refuses unknown keys; the hint names the right one
    assert "the config has no key 'annotation' (did you mean 'annotations'?)" in capsys.readouterr().err
    assert main([f"annotations={tmp_path / 'nope.json'}", "skeleton=horse"]) == 2
    assert "unknown skeleton 'horse'" in capsys.readouterr().err
    assert main([f"annotations={tmp_path / 'nope.json'}", f"images={tmp_path / 'no-images'}"]) == 2
    assert f"images folder not found: {tmp_path / 'no-images'}" in capsys.readouterr().err
    assert main([f"annotations={tmp_path / 'nope.json'}", "workers=abc"]) == 2  # not a traceback from int()
    assert "workers='abc' (str): expected int" in capsys.readouterr().err
    assert main([f"annotations={tmp_path / 'nope.json'}", "workers=-1"]) == 2
    assert "workers=-1: must be >= 0" in capsys.readouterr().err
    assert list(cwd.iterdir()) == []


def test_skeleton_mismatch_is_one_problem(sample, cwd, capsys) -> None:
    assert main([f"annotations={sample[1]}", "skeleton=crowdpose"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and "category 'person' has 17 keypoints, the crowdpose skeleton has 14" in out[0]


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning: 5-20 s on the 2-core VM
def test_module_exit_codes_in_a_subprocess(sample_copy, tmp_path) -> None:
    images, annotations, data = sample_copy
    short_keypoints(images, data)
    annotations.write_text(json.dumps(data))
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-m", "strongpose.check_data", f"annotations={annotations}",
                           f"images={images}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "keypoints_length: 48 keypoint values, expected 51" in done.stdout
    assert "1 problem (1 error, 0 warnings)" in done.stdout.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "images"]  # nothing written


@pytest.mark.shared
def test_coco_mini_and_val_part_are_clean(coco_mini) -> None:
    images, annotations = coco_mini
    report = validate_coco(annotations, images)
    assert (report.num_images, report.num_annotations, report.problems) == (80, 172, [])
    val = annotations.parents[2] / "coco-val-part" / "person_keypoints_val2017_part.json"
    if not val.is_file():
        pytest.skip(f"needs {val}")
    report = validate_coco(val)  # annotations only: the val images are not shared
    assert (report.num_images, report.num_annotations, report.problems) == (322, 1193, [])


def test_people_of_another_keypoint_category_are_a_warning(sample_copy, cwd, capsys) -> None:
    images, annotations, data = sample_copy
    data["categories"].append({**data["categories"][0], "id": 8, "name": "hand"})
    next(a for a in data["annotations"] if any(v > 0 for v in a["keypoints"][2::3]))["category_id"] = 8
    annotations.write_text(json.dumps(data))
    report = validate_coco(annotations, None)
    found = [p for p in report.problems if p.kind == "other_category"]
    assert len(found) == 1 and found[0].severity == WARNING and "(1 of category id 8)" in found[0].message
