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
import torch.nn.functional as F  # noqa: E402
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


def pad_and_stack(maps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch targets of different map sizes: zero-pad right and bottom (no votes, no valid offsets)."""
    h = max(m["skhm"].shape[-2] for m in maps)
    w = max(m["skhm"].shape[-1] for m in maps)
    return {key: torch.stack([F.pad(m[key], (0, w - m[key].shape[-1], 0, h - m[key].shape[-2])) for m in maps])
            for key in maps[0]}


def run(ann: str, stride: int = 8, disk_radius: float = 32.0, long_range: bool = True, device: str = "cpu",
        max_images: int | None = None, quiet: bool = False, batch: int = 1, **decode_kwargs) -> dict[str, float]:
    """Encode and decode every image; ``batch`` > 1 decodes that many (padded) images at a time."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann)
    codec = StrongPoseCodec(stride=stride, disk_radius=disk_radius, long_range=long_range, **decode_kwargs)
    cat_ids = coco.getCatIds(catNms=["person"]) or coco.getCatIds()
    image_ids = sorted(coco.getImgIds(catIds=cat_ids))[:max_images]
    # batches of same-sized images (aspect-ratio bucketing), so that padding does not inflate the maps
    order = sorted(image_ids, key=lambda i: (coco.imgs[i]["height"], coco.imgs[i]["width"], i)) if batch > 1 else image_ids
    results, enc_t, dec_t = [], [], []
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def decode_pending() -> None:
        maps = pad_and_stack([m for _, m in pending]) if len(pending) > 1 else pending[0][1]
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        poses = codec.decode(maps)
        dec_t.append(time.perf_counter() - t0)
        for (image_id, _), p in zip(pending, poses):
            results.extend(p.to_coco(image_id, cat_ids[0]))
        pending.clear()

    for image_id in order:
        size, kps, masks, crowd, boxes = image_people(coco, image_id, codec.num_keypoints)
        kps, masks, crowd, boxes = kps.to(device), masks.to(device), crowd.to(device), boxes.to(device)
        t0 = time.perf_counter()
        targets = codec.encode(kps, size, masks=masks, ignore_mask=crowd, boxes=boxes)
        if device != "cpu":
            torch.cuda.synchronize()
        enc_t.append(time.perf_counter() - t0)
        pending.append((image_id, targets))
        if len(pending) == batch:
            decode_pending()
    if pending:
        decode_pending()
    stats = evaluate(coco, results, image_ids, quiet=quiet)
    stats["encode_ms"] = 1e3 * float(np.mean(enc_t))
    stats["decode_ms"] = 1e3 * float(np.sum(dec_t)) / len(image_ids)
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
    p.add_argument("--batch", type=int, default=1, help="decode this many images at a time (zero-padded)")
    # one thread by default: the codec's encode runs in single-threaded data workers, and timings with
    # several threads swing wildly when anything else shares the CPU
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.ann):
        sys.exit(f"oracle_ap: annotation file not found: {args.ann}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stats = run(args.ann, args.stride, args.disk_radius, not args.no_long_range, args.device, args.max_images,
                batch=args.batch)
    print(" ".join(f"{k}={stats[k]:.3f}" for k in STAT_NAMES)
          + f" encode_ms={stats['encode_ms']:.2f} decode_ms={stats['decode_ms']:.2f}")


if __name__ == "__main__":
    main()
