"""COCOKeypointDataset on the embedded sample: shapes, dtypes, targets, image selection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from strongpose.codec import OFFSET_MAPS
from strongpose.data import COCOKeypointDataset, sample_paths

S = 128


def test_train_item_layout(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=True)
    item = ds[(0, 0)]
    # uint8 RGB pixels, the transformed image's channels first (the network normalises on the device)
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.uint8
    assert torch.equal(item["image"], torch.from_numpy(ds.transformed(0, 0).image).permute(2, 0, 1))
    h = w = S // codec.stride
    for key, channels in codec.channels.items():
        assert item["targets"][key].shape == (channels, h, w), key
    assert item["targets"]["weight"].shape == (1, h, w)
    meta = item["meta"]
    assert isinstance(meta["image_id"], int) and meta["image_id"] == ds.image_ids[0]
    assert meta["orig_size"].dtype == torch.long and meta["orig_size"].shape == (2,)
    assert meta["affine"].shape == (2, 3) and meta["affine"].dtype == torch.float32


def test_people_become_targets_and_crowds_are_ignored(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=False)
    crowd_ids = {a["image_id"] for a in ds.coco.dataset["annotations"] if a["iscrowd"]}
    saw_crowd = saw_people = False
    for index, image_id in enumerate(ds.image_ids):
        targets = ds[index]["targets"]
        if image_id in crowd_ids:
            assert float(targets["weight"].min()) < 1.0  # some cell is ignored
            saw_crowd = True
        people = [a for a in ds.coco.imgToAnns[image_id] if a["num_keypoints"] > 0 and not a["iscrowd"]]
        if people:
            assert float(targets["skhm"].sum()) > 0 and float(targets["bhm"].sum()) > 0
            saw_people = True
    assert saw_crowd and saw_people


def test_image_selection(sample, codec) -> None:
    train = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=True)
    val = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=False)
    assert len(val) == len(val.coco.imgs)  # evaluation sees every image
    assert 0 < len(train) < len(val)  # training skips images without people
    assert all(train.coco.imgToAnns[i] for i in train.image_ids)
    assert len(COCOKeypointDataset(*sample, codec=codec, input_size=S, max_images=3)) == 3


def test_offsets_travel_as_float16_within_rounding(sample, codec) -> None:
    """The dataset's targets are the codec's, offsets rounded to float16 (half the bytes the workers put
    through shared memory): each offset within 2**-11 of itself, everything else exact."""
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=True)
    item = ds[(0, 0)]
    s = ds.transformed(0, 0)
    exact = codec.encode(torch.from_numpy(s.keypoints), (S, S), masks=torch.from_numpy(s.masks),
                         ignore_mask=torch.from_numpy(s.crowd), boxes=torch.from_numpy(s.boxes),
                         has_mask=torch.from_numpy(s.has_mask))
    assert set(item["targets"]) == set(exact)
    for key, value in exact.items():
        got = item["targets"][key]
        if key in OFFSET_MAPS:
            assert got.dtype == torch.float16 and value.abs().max() > 1  # real offsets, not all zero
            assert ((got.float() - value).abs() <= value.abs() * 2**-11 + 1e-6).all(), key
        else:
            assert got.dtype == value.dtype and torch.equal(got, value), key


def test_load_image_reads_in_workers_and_reports_bad_files(tmp_path, sample, codec) -> None:
    """``evaluate`` hands ``dataset.load_image`` (a bound method) to DataLoader workers: it must pickle,
    give the RGB image, and let a bad file come back as an error rather than end the loop."""
    import shutil

    from strongpose.inference.images import ImageFiles, image_batches

    images = tmp_path / "images"
    shutil.copytree(sample[0], images)
    ds = COCOKeypointDataset(images, sample[1], codec=codec, input_size=S, train=False, max_images=3)
    (images / ds.coco.imgs[ds.image_ids[1]]["file_name"]).write_bytes(b"not a jpeg")
    items = [item for batch in image_batches(ImageFiles(range(3), read=ds.load_image), 2, num_workers=1)
             for item in batch]
    assert [item["key"] for item in items] == [0, 1, 2]
    assert items[1]["image"] is None and "decode" in items[1]["error"]
    for i in (0, 2):
        assert items[i]["image"].dtype == np.uint8 and items[i]["image"].shape[2] == 3
        assert np.array_equal(items[i]["image"], ds.load(i)[0])


def _merged_items_equal_per_person_ones(ds, codec, epochs, monkeypatch) -> int:
    """Items (encoded from the masks merged by role: warping each person's mask fails in them) against each
    person's mask encoded by the codec, for every image and epoch; returns how many people were compared."""
    from strongpose.data import transforms

    def no_per_person_masks(*args):
        raise AssertionError("an item warped each person's mask")

    people = 0
    for epoch in epochs:
        for index in range(len(ds)):
            s = ds.transformed(index, epoch)
            per_person = ds.encode(s)
            regions = ds.encode_regions(s)
            with monkeypatch.context() as patch:
                patch.setattr(transforms, "_warp_masks", no_per_person_masks)
                item = ds[(index, epoch)]
                merged = ds.transformed(index, epoch, merge_masks=True)
            assert merged.masks is None and merged.crowd is None
            np.testing.assert_array_equal(merged.image, s.image)
            np.testing.assert_array_equal(merged.keypoints, s.keypoints)
            np.testing.assert_array_equal(merged.has_mask, s.has_mask)
            for key, value in per_person.items():
                assert torch.equal(item["targets"][key], value), (index, epoch, key)
            for key, value in ds.encode_regions(merged).items():
                assert torch.equal(value, regions[key]), (index, epoch, key)
            people += len(s.keypoints)
    return people


@pytest.mark.parametrize("train", [True, False])
def test_items_from_merged_masks_equal_each_persons_masks(sample, codec, train, monkeypatch) -> None:
    """Training items decode and warp two unions of masks (labelled people; the others with the crowd)
    instead of each person's: the targets are the same as from each person's mask, bit for bit."""
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=train)
    assert _merged_items_equal_per_person_ones(ds, codec, range(3) if train else [0], monkeypatch) > 20


@pytest.mark.shared
def test_items_from_merged_masks_on_coco_mini(coco_mini, codec, monkeypatch) -> None:
    ds = COCOKeypointDataset(*coco_mini, codec=codec, input_size=S, train=True)
    assert _merged_items_equal_per_person_ones(ds, codec, range(2), monkeypatch) > 100


def test_keypoint_names_of_the_file_are_checked_against_the_skeleton(tmp_path, codec, caplog):
    """Only the count was compared: a file listing the skeleton's keypoints in another order trained every
    channel, flip pair and edge on another keypoint without a word."""
    images, annotations = sample_paths()
    data = json.loads(Path(annotations).read_text())
    names = data["categories"][0]["keypoints"]
    names[5], names[6] = names[6], names[5]
    (tmp_path / "swapped.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"swapped\.json: the file lists the skeleton's keypoints in another order"):
        COCOKeypointDataset(images, tmp_path / "swapped.json", codec, input_size=128)
    names[5], names[6] = names[6], "shoulder_r"
    (tmp_path / "renamed.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        COCOKeypointDataset(images, tmp_path / "renamed.json", codec, input_size=128)
    assert "keypoint names differ from the skeleton's (6: 'shoulder_r' vs 'right_shoulder')" in caplog.text


def _two_keypoint_categories(tmp_path, unused_first: bool) -> tuple[Path, dict]:
    """The sample with a second category: its people of the first image moved to a 'hand' category of 17
    keypoints (or, ``unused_first``, an unused 'person' of 5 keypoints first and the sample's renamed 'people')."""
    data = json.loads(Path(sample_paths()[1]).read_text())
    person = data["categories"][0]
    if unused_first:
        person["name"] = "people"
        data["categories"] = [{"id": 9, "name": "person", "keypoints": ["a", "b", "c", "d", "e"]}, person]
    else:
        data["categories"].append({**person, "id": 8, "name": "hand"})
        first = data["images"][0]["id"]
        for ann in data["annotations"]:
            if ann["image_id"] == first:
                ann["category_id"] = 8
    path = tmp_path / "two_categories.json"
    path.write_text(json.dumps(data))
    return path, data


def test_the_skeleton_chooses_the_category_and_other_keypoint_people_are_named(tmp_path, codec, caplog):
    """With several keypoint categories the first or 'person' was taken whatever the skeleton: a file with an
    unused 'person' of other keypoints was refused, and people of another category became background unsaid."""
    images = sample_paths()[0]
    path, data = _two_keypoint_categories(tmp_path, unused_first=True)
    dataset = COCOKeypointDataset(images, path, codec, input_size=S)
    assert dataset.category_id == 1 and len(dataset) > 0  # the category listing the skeleton's keypoints
    path, data = _two_keypoint_categories(tmp_path, unused_first=False)
    moved = sum(a["category_id"] == 8 and any(v > 0 for v in a["keypoints"][2::3]) for a in data["annotations"])
    with caplog.at_level(logging.WARNING):
        dataset = COCOKeypointDataset(images, path, codec, input_size=S)
    assert dataset.category_id == 1 and moved > 0  # 'person' preferred among those that list them
    assert (f"only category 'person' (id 1) is trained and evaluated; the people with keypoints of other "
            f"categories ({moved} of category id 8) are not") in caplog.text
