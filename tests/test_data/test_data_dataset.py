"""COCOKeypointDataset on the embedded sample: shapes, dtypes, targets, image selection."""

from __future__ import annotations

import torch

from strongpose.data import COCOKeypointDataset

S = 128


def test_train_item_layout(sample, codec) -> None:
    ds = COCOKeypointDataset(*sample, codec=codec, input_size=S, train=True)
    item = ds[(0, 0)]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert -3 < float(item["image"].mean()) < 3  # ImageNet-normalised, not 0..255
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
