"""Oracle benchmark: the ceiling of the StrongPose representation.

Encodes every image's ground truth, decodes the targets as if they were perfect network outputs, and
evaluates the decoded people with pycocotools' COCOeval (keypoints). The last printed line is
``AP=... AP50=... AP75=... APM=... APL=... AR=... encode_ms=X decode_ms=Y`` (per image, mean).

    python experiments/oracle_ap.py --ann ../shared/data/coco-val-part/person_keypoints_val2017_part.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402

STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR")


def image_people(coco: COCO, image_id: int, num_keypoints: int):
    """Ground truth of one image as codec inputs: keypoints, masks, crowd mask, boxes."""
    info = coco.imgs[image_id]
    height, width = info["height"], info["width"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
    people = [a for a in anns if not a.get("iscrowd", 0)]
    kps = np.zeros((len(people), num_keypoints, 3), np.float32)
    masks = np.zeros((len(people), height, width), np.bool_)
    boxes = np.zeros((len(people), 4), np.float32)
    for i, ann in enumerate(people):
        kps[i] = np.asarray(ann["keypoints"], np.float32).reshape(num_keypoints, 3)
        boxes[i] = ann["bbox"]
        if ann.get("segmentation"):
            masks[i] = coco.annToMask(ann).astype(bool)
    crowd = np.zeros((height, width), np.bool_)
    for ann in anns:
        if ann.get("iscrowd", 0):
            crowd |= coco.annToMask(ann).astype(bool)
    return (height, width), torch.from_numpy(kps), torch.from_numpy(masks), torch.from_numpy(crowd), torch.from_numpy(boxes)


def evaluate(coco: COCO, results: list[dict], image_ids: list[int], quiet: bool = False) -> dict[str, float]:
    """COCO keypoint evaluation; returns the first stats by name."""
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        dets = coco.loadRes(results)
        ev = COCOeval(coco, dets, "keypoints")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if not quiet:
        print(buf.getvalue(), end="")
    stats = ev.stats
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "APM": stats[3], "APL": stats[4], "AR": stats[5]}


def run(ann: str, stride: int = 8, disk_radius: float = 32.0, long_range: bool = True, device: str = "cpu",
        max_images: int | None = None, quiet: bool = False, **decode_kwargs) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann)
    codec = StrongPoseCodec(stride=stride, disk_radius=disk_radius, long_range=long_range, **decode_kwargs)
    cat_ids = coco.getCatIds(catNms=["person"]) or coco.getCatIds()
    image_ids = sorted(coco.getImgIds(catIds=cat_ids))[:max_images]
    results, enc_t, dec_t = [], [], []
    for image_id in image_ids:
        size, kps, masks, crowd, boxes = image_people(coco, image_id, codec.num_keypoints)
        kps, masks, crowd, boxes = kps.to(device), masks.to(device), crowd.to(device), boxes.to(device)
        t0 = time.perf_counter()
        targets = codec.encode(kps, size, masks=masks, ignore_mask=crowd, boxes=boxes)
        if device != "cpu":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        poses = codec.decode(targets)[0]
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        results += poses.to_coco(image_id, cat_ids[0])
    stats = evaluate(coco, results, image_ids, quiet=quiet)
    stats["encode_ms"] = 1e3 * float(np.mean(enc_t))
    stats["decode_ms"] = 1e3 * float(np.mean(dec_t))
    stats["images"] = len(image_ids)
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, help="COCO person keypoint annotation JSON")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--disk-radius", type=float, default=32.0)
    p.add_argument("--no-long-range", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-images", type=int, default=None)
X
    args = p.parse_args(argv)
    if not os.path.isfile(args.ann):
        sys.exit(f"oracle_ap: annotation file not found: {args.ann}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stats = run(args.ann, args.stride, args.disk_radius, not args.no_long_range, args.device, args.max_images)
    print(" ".join(f"{k}={stats[k]:.3f}" for k in STAT_NAMES)
          + f" encode_ms={stats['encode_ms']:.2f} decode_ms={stats['decode_ms']:.2f}")


if __name__ == "__main__":
    main()
