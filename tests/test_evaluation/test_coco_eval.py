"""Decoded targets of the embedded sample, mapped back to original pixels, score near-perfect AP."""

import functools

import torch
from torch.utils.data import DataLoader

from strongpose.codec import StrongPoseCodec
from strongpose.data import COCOKeypointDataset, SkipBadCollate, sample_paths
from strongpose.data.coco import empty_sample
from strongpose.evaluation import coco_keypoint_stats, poses_to_coco


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
