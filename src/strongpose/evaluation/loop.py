"""Evaluate a model over a data loader: forward, decode, COCOKeypointAP; with network / decoding times."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch
from pycocotools.coco import COCO

from strongpose.evaluation.coco_eval import coco_keypoint_stats
from strongpose.evaluation.metric import COCOKeypointAP


@torch.no_grad()
def evaluate_loader(module: torch.nn.Module, loader: Iterable[Mapping], coco: COCO,
                    device: torch.device | str = "cpu", verbose: bool = False) -> dict[str, float]:
    """Run ``module`` (a StrongPoseModule: ``forward`` + ``decode``) over ``loader`` and evaluate.

    Also reports network and decoding time per image (``net_ms``, ``decode_ms``) and the counts.
    """
    was_training = module.training
    module.eval()
    metric = COCOKeypointAP(coco, sigmas=module.codec.skeleton.sigmas, keypoints=module.codec.skeleton.keypoints)
    net_t = dec_t = 0.0
    for batch in loader:
        if len(batch["image"]) == 0:
            continue
        images = batch["image"].to(device)
        t0 = time.perf_counter()
        outputs = module(images)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        t1 = time.perf_counter()
        poses = module.decode(outputs)
        dec_t += time.perf_counter() - t1
        net_t += t1 - t0
        metric.update(poses, batch["meta"])
    module.train(was_training)
    results, image_ids = metric.results()  # what metric.compute() evaluates; the counts come from it too
    stats = coco_keypoint_stats(coco, results, image_ids, metric.sigmas, category_id=metric.category_id)
    if verbose:
        print(" ".join(f"{name}={value:.3f}" for name, value in stats.items()))
    n = max(len(image_ids), 1)
    stats.update(net_ms=1e3 * net_t / n, decode_ms=1e3 * dec_t / n, images=len(image_ids), people=len(results))
    return stats
