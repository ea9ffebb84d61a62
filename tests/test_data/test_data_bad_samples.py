"""Bad samples are skipped and reported; bad annotation files fail at construction, naming the path."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from strongpose.data import COCOKeypointDataModule, COCOKeypointDataset, load_coco
from strongpose.data.annotations import AnnotationFileError, outside_image
from strongpose.data.collate import SkipBadCollate, SkippedSample
from strongpose.structures import inside_image

S = 96


def test_corrupt_jpeg_is_skipped_and_named(sample_copy, codec, caplog) -> None:
    images, annotations, data = sample_copy
    victim = data["images"][0]["file_name"]
    (images / victim).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = COCOKeypointDataset(images, annotations, codec=codec, input_size=S, train=False)
    index = ds.image_ids.index(data["images"][0]["id"])
    item = ds[index]
    assert isinstance(item, SkippedSample) and item.file_name == victim and item.image_id == data["images"][0]["id"]
    assert "cannot decode" in item.reason
    dm = COCOKeypointDataModule(codec, val_images=images, val_annotations=annotations, input_size=S,
                                batch_size=len(ds))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["num_skipped"] == 1 and batch["image"].shape[0] == len(ds) - 1
    assert batch["skipped"] == [item]
    with caplog.at_level(logging.WARNING, logger="strongpose.data.datamodule"):
        dm.on_after_batch_transfer(batch, 0)  # the main process names it (no trainer: no file)
    assert victim in caplog.text and f"image id {item.image_id}" in caplog.text


def test_missing_image_is_skipped(sample_copy, codec) -> None:
    images, annotations, data = sample_copy
    (images / data["images"][1]["file_name"]).unlink()
    ds = COCOKeypointDataset(images, annotations, codec=codec, input_size=S)
    item = ds[ds.image_ids.index(data["images"][1]["id"])]
    assert item.file_name == data["images"][1]["file_name"] and "not found" in item.reason


def test_malformed_annotation_names_its_id(sample_copy, codec) -> None:
    images, annotations, data = sample_copy
    ann = next(a for a in data["annotations"] if a["num_keypoints"] > 0)
    ann["keypoints"] = ann["keypoints"][:-3]  # 16 keypoints instead of 17
    annotations.write_text(json.dumps(data))
    ds = COCOKeypointDataset(images, annotations, codec=codec, input_size=S)
    item = ds[ds.image_ids.index(ann["image_id"])]
    assert isinstance(item, SkippedSample) and f"annotation id {ann['id']}" in item.reason


@pytest.mark.parametrize("field, index, value", [("keypoints", 0, 1e39), ("bbox", 2, float("inf")),
                                                ("keypoints", 1, 10**400)])
def test_a_non_finite_or_float32_overflowing_value_names_its_field(sample_copy, codec, field, index, value) -> None:
    images, annotations, data = sample_copy
    ann = next(a for a in data["annotations"] if a["num_keypoints"] > 0)
    ann[field][index] = value  # 1e39 is finite in the JSON but not in float32; 10**400 not even in float64
    annotations.write_text(json.dumps(data))
    item = COCOKeypointDataset(images, annotations, codec=codec, input_size=S)[data["images"].index(
        next(i for i in data["images"] if i["id"] == ann["image_id"]))]
    assert isinstance(item, SkippedSample)
    assert f"annotation id {ann['id']}" in item.reason and f"beyond-float32 values in {field}" in item.reason


def test_all_bad_batch_has_size_zero_and_the_usual_keys(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=S)
    from functools import partial

    from strongpose.data.coco import empty_sample

    good = SkipBadCollate(partial(empty_sample, codec, S))([ds[0]])
    empty = SkipBadCollate(partial(empty_sample, codec, S))([None, None])
    assert empty["num_skipped"] == 2 and empty["image"].shape == (0, 3, S, S)
    assert set(empty["targets"]) == set(good["targets"]) and set(empty["meta"]) == set(good["meta"])
    for key, value in good["targets"].items():
        assert empty["targets"][key].shape[1:] == value.shape[1:] and empty["targets"][key].dtype == value.dtype


def test_too_many_bad_samples_stop_training(codec) -> None:
    dm = COCOKeypointDataModule(codec, max_bad_fraction=0.1)
    batch = {"image": torch.zeros(2, 3, 4, 4), "num_skipped": 2}
    for _ in range(2):
        dm.on_after_batch_transfer(batch, 0)  # 4 bad of 8 seen: within 10% of the 50-sample floor
    with pytest.raises(RuntimeError, match="max_bad_fraction"):
        for _ in range(3):
            dm.on_after_batch_transfer(batch, 0)


def test_malformed_json_fails_with_path(tmp_path, codec) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [1, 2,')
    with pytest.raises(ValueError, match="broken.json"):
        COCOKeypointDataset(tmp_path, broken, codec=codec)
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text('{"images": []}')
    with pytest.raises(ValueError, match="not_coco.json.*annotations"):
        load_coco(not_coco)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        COCOKeypointDataset(tmp_path, tmp_path / "missing.json", codec=codec)


def test_datamodule_setup_fails_on_bad_json(tmp_path, codec) -> None:
    broken = tmp_path / "train.json"
    broken.write_text("not json")
    dm = COCOKeypointDataModule(codec, train_images=tmp_path, train_annotations=broken, val_images=tmp_path,
                                val_annotations=broken)
    with pytest.raises(ValueError, match="train.json"):
        dm.setup("fit")


def test_wrong_skeleton_fails_at_construction(sample, codec) -> None:
    from strongpose import StrongPoseCodec

    with pytest.raises(ValueError, match="17 keypoints, the skeleton has 14 .the embedded COCO sample, used where no "
                                         "data paths are given"):
        COCOKeypointDataset(*sample, codec=StrongPoseCodec("crowdpose"))


def test_all_bad_batch_encoded_on_the_device_has_size_zero_and_the_usual_targets(sample, codec) -> None:
    from functools import partial

    from strongpose.data.coco import empty_sample

    dm = COCOKeypointDataModule(codec, *sample, *sample, input_size=S, encode_on="device")
    good = dm.finish_targets(SkipBadCollate(partial(empty_sample, codec, S, "device"))(
        [COCOKeypointDataset(*sample, codec=codec, input_size=S, encode_on="device")[0]]))
    empty = SkipBadCollate(partial(empty_sample, codec, S, "device"))([None, None])
    assert empty["people"].shape == (0, 1, codec.num_keypoints, 3) and empty["image"].shape == (0, 3, S, S)
    empty = dm.finish_targets(empty)
    assert set(empty["targets"]) == set(good["targets"])
    for key, value in good["targets"].items():
        assert empty["targets"][key].shape == (0, *value.shape[1:]) and empty["targets"][key].dtype == value.dtype


def _first_person(data: dict) -> dict:
    return next(a for a in data["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"])


def test_a_polygon_far_beyond_the_image_is_a_named_bad_sample(sample_copy, codec) -> None:
    """pycocotools rasterises a polygon at its full extent: a vertex at 1e9 crashed the worker (segfault)."""
    images, annotations, data = sample_copy
    ann = _first_person(data)
    ann["segmentation"] = [[0, 0, 1e9, 0, 1e9, 1e9]]
    annotations.write_text(json.dumps(data))
    ds = COCOKeypointDataset(images, annotations, codec=codec, input_size=S, train=True)
    item = ds[ds.image_ids.index(ann["image_id"])]
    assert isinstance(item, SkippedSample) and f"annotation id {ann['id']}" in item.reason
    assert "polygon 0 reaches far beyond the" in item.reason


def _repeated_id(section: str):
    def repeat(data: dict) -> str:
        data[section][4]["id"] = data[section][1]["id"]
        return rf"{section}\[4\] repeats the id {data[section][1]['id']} of {section}\[1\]"
    return repeat


def _no_person_of_the_keypoint_category(data: dict) -> str:
    for ann in data["annotations"]:
        ann["category_id"] = 0
    return r"none of its 13 images has an annotation of the keypoint category \(id 1\); the annotations name category ids \[0\]"


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("break_file", [_repeated_id("images"), _repeated_id("annotations"),
                                        _no_person_of_the_keypoint_category], ids=["image_id", "ann_id", "category"])
def test_an_annotation_file_that_cannot_be_used_is_refused(sample_copy, codec, break_file, train) -> None:
    """Repeated ids: pycocotools keeps one entry per id (another image's people on these pixels, another ground
    truth). No person of the keypoint category: nothing to train on, no ground truth to evaluate against."""
    images, annotations, data = sample_copy
    expected = break_file(data)
    annotations.write_text(json.dumps(data))
    with pytest.raises(AnnotationFileError, match=expected):  # training: before the images without people go
        COCOKeypointDataset(images, annotations, codec=codec, input_size=S, train=train)


def test_a_visibility_flag_other_than_0_1_2_is_a_named_bad_sample(sample_copy, codec) -> None:
    images, annotations, data = sample_copy
    ann = _first_person(data)
    ann["keypoints"][2] = 3
    annotations.write_text(json.dumps(data))
    ds = COCOKeypointDataset(images, annotations, codec=codec, input_size=S)
    item = ds[ds.image_ids.index(ann["image_id"])]
    assert isinstance(item, SkippedSample) and "visibility flags must be 0, 1 or 2, got [0.0, 2.0, 3.0]" in item.reason


def test_labelled_keypoints_outside_the_image_are_unlabelled_and_counted(sample_copy, codec, caplog) -> None:
    images, annotations, data = sample_copy
    ann = _first_person(data)
    info = next(i for i in data["images"] if i["id"] == ann["image_id"])
    labelled = [k for k in range(17) if ann["keypoints"][3 * k + 2] > 0]
    ann["keypoints"][3 * labelled[0]] = info["width"] + 40.0  # past the right edge
    ann["keypoints"][3 * labelled[1] + 1] = -30.0  # above the top
    annotations.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="strongpose.data.coco"):
        ds = COCOKeypointDataset(images, annotations, codec=codec, input_size=S, train=True)
    assert f"2 labelled keypoints of 1 annotations (ids {ann['id']}) lie outside their image" in caplog.text
    people = ds.load(ds.image_ids.index(ann["image_id"]))[1]
    person = next(p for p in people.keypoints if p[labelled[2], 0] == ann["keypoints"][3 * labelled[2]])
    assert person[labelled[0], 2] == 0 and person[labelled[1], 2] == 0 and person[labelled[2], 2] > 0


def test_outside_image_uses_the_encoders_pixel_convention() -> None:
    # the image spans -0.5 .. W - 0.5 (pixel centres at integers) for the dataset's check as for the transforms
    # and the encoder: a half-pixel band inside on the left is inside on the right too
    width, height = 10, 6
    xs = [-0.75, -0.25, 0.0, 9.0, 9.25, 9.5, 9.75, 3.0, 3.0, 3.0]
    ys = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, -0.25, 5.25, 5.5]
    keypoints = np.array([[x, y, 2.0] for x, y in zip(xs, ys)], np.float32)
    outside = outside_image(keypoints, height, width)
    inside = inside_image(torch.from_numpy(keypoints[:, :2]), (height, width)).numpy()
    assert outside.tolist() == (~inside).tolist()
    assert outside.tolist() == [True, False, False, False, False, True, True, False, False, True]
    keypoints[:, 2] = 0  # unlabelled keypoints are never reported
    assert not outside_image(keypoints, height, width).any()
    # check_data lists the same keypoints (negative or beyond the border) as the dataset takes as unlabelled
    from strongpose.data.validate import _check_keypoints

    keypoints[:, 2] = 2
    names = [f"k{i}" for i in range(len(keypoints))]
    problems = list(_check_keypoints({"keypoints": keypoints.reshape(-1).tolist()}, height, width, names,
                                     lambda kind, message, *level: (kind, message)))
    listed = {name for _, message in problems for name in names if f"{name} " in message or f"{name}," in message
              or message.endswith(name)}
    assert listed == {names[i] for i in np.flatnonzero(outside)}, problems


def test_a_file_whose_people_are_on_images_it_does_not_list_is_refused_by_name(sample_copy, codec) -> None:
    images, annotations, data = sample_copy
    for ann in data["annotations"]:
        ann["image_id"] += 10_000  # ids the file does not list: training would keep none of its images
    annotations.write_text(json.dumps(data))
    with pytest.raises(AnnotationFileError, match=rf"none of its {len(data['images'])} images has a person"):
        COCOKeypointDataset(images, annotations, codec=codec, input_size=S, train=True)
    empty = {**data, "images": [], "annotations": []}
    annotations.write_text(json.dumps(empty))
    with pytest.raises(AnnotationFileError, match="annotations.json: it lists no images"):
        COCOKeypointDataset(images, annotations, codec=codec, input_size=S, train=False)


def test_a_restarted_run_lists_a_bad_sample_once(tmp_path, codec, caplog) -> None:
    """A requeued job resumes in its folder: the bad images its first start listed are not listed again."""
    from strongpose.data.datamodule import BAD_SAMPLES_COLUMNS

    listed = tmp_path / "bad_samples.tsv"
    first, second = SkippedSample(7, "a.jpg", "cannot decode image"), SkippedSample(9, "b.jpg", "empty image file")
    for start in range(2):
        data = COCOKeypointDataModule(codec, bad_samples_file=listed)  # a new process each start
        with caplog.at_level(logging.WARNING, logger="strongpose.data.datamodule"):
            data._name_bad_sample("train", first)
            data._name_bad_sample("train", first)  # again in the same process
            if start:
                data._name_bad_sample("train", second)
                data._name_bad_sample("val", first)  # another split: its own row
    header, *rows = listed.read_text().splitlines()
    assert tuple(header.split("\t")) == BAD_SAMPLES_COLUMNS
    assert [tuple(row.split("\t")[:3]) for row in rows] == [("train", "0", "7"), ("train", "0", "9"), ("val", "0", "7")]
    assert caplog.text.count("a.jpg (image id 7)") == 3  # each start still says it in its log (train twice, val)
