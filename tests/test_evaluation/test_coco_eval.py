"""Decoded targets of the embedded sample, mapped back to original pixels, score near-perfect AP."""

import functools

import pytest
import torch
from torch.utils.data import DataLoader

from strongpose.codec import StrongPoseCodec
from strongpose.data import COCOKeypointDataset, SkipBadCollate, sample_paths
from strongpose.data.coco import empty_sample
from strongpose.data.annotations import load_coco
from strongpose.evaluation import COCOKeypointAP, coco_keypoint_stats, poses_to_coco
from strongpose.evaluation.coco_eval import AREA_PER_BOX_AREA, evaluated_category
from strongpose.structures import Poses


def test_targets_decode_to_ground_truth_in_original_pixels():
    codec = StrongPoseCodec(stride=4)
    data = COCOKeypointDataset(*sample_paths(), codec, input_size=384)
    loader = DataLoader(data, batch_size=4, collate_fn=SkipBadCollate(functools.partial(empty_sample, codec, 384)))
    results, ids = [], []
    for batch in loader:
        results += poses_to_coco(codec.decode(batch["targets"]), batch["meta"])
        ids += batch["meta"]["image_id"].tolist()
    stats = coco_keypoint_stats(data.coco, results, ids, codec.skeleton.sigmas)
    assert stats["AP"] > 0.85, stats
    # the same people without mapping back to the original image are far off
    shifted = [dict(r, keypoints=[v * 0.5 if i % 3 != 2 else v for i, v in enumerate(r["keypoints"])]) for r in results]
    assert coco_keypoint_stats(data.coco, shifted, ids)["AP"] < stats["AP"] - 0.3


def test_empty_results_give_zero():
    codec = StrongPoseCodec()
    data = COCOKeypointDataset(*sample_paths(), codec, input_size=128)
    assert coco_keypoint_stats(data.coco, [], data.image_ids)["AP"] == 0.0
    assert torch.is_tensor(data[0]["image"])


def ground_truth_as_results(coco, category_id):
    """Each labelled person of ``category_id`` as a result of score 1 (AP 1 when the evaluation is right)."""
    anns = [a for a in coco.dataset["annotations"] if a["category_id"] == category_id and not a.get("iscrowd")
            and a["num_keypoints"] > 0]
    return [{"image_id": a["image_id"], "category_id": category_id, "keypoints": a["keypoints"], "score": 1.0}
            for a in anns], sorted({a["image_id"] for a in anns})


def edited_sample(edit):
    """The embedded sample's ground truth with ``edit(dataset)`` applied, as a pycocotools COCO."""
    coco = load_coco(sample_paths()[1])
    edit(coco.dataset)
    coco.createIndex()
    return coco


def test_the_skeleton_chooses_the_evaluated_category_as_the_data_loader_does():
    def add_first(data):  # an unused 'person' of other keypoints before the category that lists the skeleton's
        data["categories"] = [{"id": 9, "name": "person", "keypoints": ["a", "b"]},
                              {**data["categories"][0], "name": "human"}]
    coco = edited_sample(add_first)
    names = StrongPoseCodec().skeleton.keypoints
    assert evaluated_category(coco) == 9 and evaluated_category(coco, names) == 1
    assert COCOKeypointAP(coco, keypoints=names).category_id == 1


def test_the_keypoint_category_is_evaluated_whatever_its_id_and_other_categories_are_left_out():
    def renumber(data):  # person = category 2, and a category 1 of boxes without keypoints (a car)
        data["categories"] = [{"id": 1, "name": "car"}, {**data["categories"][0], "id": 2}]
        for a in data["annotations"]:
            a["category_id"] = 2
        data["annotations"].append({"id": 1, "image_id": data["images"][0]["id"], "category_id": 1,
                                    "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0})
    coco = edited_sample(renumber)
    results, ids = ground_truth_as_results(coco, 2)
    assert evaluated_category(coco) == 2
    assert coco_keypoint_stats(coco, results, ids)["AP"] == 1.0
    metric = COCOKeypointAP(coco)  # the training callback's metric takes the same category
    assert metric.category_id == 2
    for image_id in ids:  # one update per image (a second one would count as the sampler's padding)
        kps = [r["keypoints"] for r in results if r["image_id"] == image_id]
        people = Poses(torch.tensor(kps, dtype=torch.float32).view(-1, 17, 3), torch.ones(len(kps)))
        metric.update([people], {"image_id": torch.tensor([image_id]), "affine": torch.eye(2, 3)[None]})
    assert float(metric.compute()["AP"]) == 1.0


def test_a_ground_truth_without_areas_gets_them_from_its_boxes():
    """CrowdPose's annotations have boxes but no area (nor, in some versions, num_keypoints)."""
    def strip(data):
        for a in data["annotations"]:
            a.pop("area"), a.pop("num_keypoints")
    coco = edited_sample(strip)
    results, ids = ground_truth_as_results(edited_sample(lambda data: None), 1)
    assert coco_keypoint_stats(coco, results, ids)["AP"] == 1.0
    first = coco.dataset["annotations"][0]
    assert first["area"] == pytest.approx(AREA_PER_BOX_AREA * first["bbox"][2] * first["bbox"][3])
    assert first["num_keypoints"] == sum(v > 0 for v in first["keypoints"][2::3])
    boxless = edited_sample(lambda data: [a.pop(k) for a in data["annotations"][:1] for k in ("area", "bbox")])
    with pytest.raises(ValueError, match=r"annotation id \d+ has neither an area nor a box"):
        coco_keypoint_stats(boxless, results, ids)
