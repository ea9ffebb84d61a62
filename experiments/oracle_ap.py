"""Oracle benchmark: the ceiling of the StrongPose representation.

Encodes every image's ground truth, decodes the targets as if they were perfect network outputs, and
evaluates the decoded people with pycocotools' COCOeval (keypoints). The last printed line is
``AP=... AP50=... AP75=... APM=... APL=... AR=... encode_ms=X decode_ms=Y`` (per image, mean).

    python experiments/oracle_ap.py --ann ../shared/data/coco-val-part/person_keypoints_val2017_part.json
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.config_check import ConfigError  # noqa: E402
from strongpose.skeleton import SKELETONS, Skeleton, load_skeleton  # noqa: E402
from strongpose.data.annotations import image_annotations, load_coco, person_category  # noqa: E402
from strongpose.evaluation import STAT_NAMES, coco_keypoint_stats  # noqa: E402


def image_people(coco: COCO, image_id: int, category_id: int, num_keypoints: int):
    """Ground truth of one image as codec inputs (keypoints, masks, crowd mask, boxes), read as training
    reads it (:func:`strongpose.data.annotations.image_annotations`)."""
    info = coco.imgs[image_id]
    people = image_annotations(coco, image_id, category_id, num_keypoints)
    return ((info["height"], info["width"]), torch.from_numpy(people.keypoints),
            torch.from_numpy(people.masks.astype(bool)), torch.from_numpy(people.crowd.astype(bool)),
            torch.from_numpy(people.boxes))


def pad_and_stack(maps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch targets of different map sizes: zero-pad right and bottom (no votes, no valid offsets)."""
    h = max(m["skhm"].shape[-2] for m in maps)
    w = max(m["skhm"].shape[-1] for m in maps)
    return {key: torch.stack([F.pad(m[key], (0, w - m[key].shape[-1], 0, h - m[key].shape[-2])) for m in maps])
            for key in maps[0]}


def run(ann: str, stride: int = 8, disk_radius: float = 32.0, long_range: bool = True, device: str = "cpu",
        max_images: int | None = None, quiet: bool = False, batch: int = 1, skeleton: str | Skeleton = "coco",
        **decode_kwargs) -> dict[str, float]:
    """Encode and decode every image; ``batch`` > 1 decodes that many (padded) images at a time."""
    coco = load_coco(ann)
    codec = StrongPoseCodec(skeleton=skeleton, stride=stride, disk_radius=disk_radius, long_range=long_range,
                            **decode_kwargs)
    category_id = person_category(coco, codec.skeleton.keypoints, ann)
    image_ids = sorted(coco.getImgIds(catIds=[category_id]))[:max_images]
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
            results.extend(p.to_coco(image_id, category_id))
        pending.clear()

    for image_id in order:
        size, kps, masks, crowd, boxes = image_people(coco, image_id, category_id, codec.num_keypoints)
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
    stats = coco_keypoint_stats(coco, results, image_ids, codec.skeleton.sigmas, verbose=not quiet,
                                category_id=category_id)
    stats["encode_ms"] = 1e3 * float(np.mean(enc_t))
    stats["decode_ms"] = 1e3 * float(np.sum(dec_t)) / len(image_ids)
    stats["images"] = len(image_ids)
    return stats


def skeleton_arg(value: str) -> str | Skeleton:
    """A built-in skeleton's name, or the :class:`Skeleton` of a YAML file (your own, README: "Your own
    skeleton, data and backbone"): the file's ``skeleton:`` node, or the file itself
    (:func:`strongpose.skeleton.load_skeleton`); a codec config that sets what the flags set is refused."""
    if value in SKELETONS:
        return value
    if os.path.isfile(value):
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(value)
        if "skeleton" in cfg and (ignored := sorted(k for k in ("stride", "disk_radius", "long_range") if k in cfg)):
            raise argparse.ArgumentTypeError(f"{value} sets {', '.join(ignored)}: give them as --stride / "
                                             f"--disk-radius / --no-long-range (only its skeleton is read)")
    try:
        skeleton = load_skeleton(value)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return skeleton.name if SKELETONS.get(skeleton.name) is skeleton else skeleton


def decode_arg(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` -> (``decode_NAME``, VALUE as YAML reads it), NAME a decoding setting of the codec."""
    name, sep, value = text.partition("=")
    settings = sorted(k[len("decode_"):] for k in inspect.signature(StrongPoseCodec).parameters if k.startswith("decode_"))
    if not sep or name not in settings:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(settings)}, got {text!r}")
    return f"decode_{name}", yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, help="COCO person keypoint annotation JSON")
    p.add_argument("--skeleton", default="coco", type=skeleton_arg,
                   help=f"the annotation file's skeleton: {', '.join(sorted(SKELETONS))}, or a YAML file holding a "
                        f"Skeleton (_target_: strongpose.skeleton.Skeleton) or a codec config with one under skeleton:")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--disk-radius", type=float, default=32.0)
    p.add_argument("--no-long-range", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch", type=int, default=1, help="decode this many images at a time (zero-padded)")
    # one thread by default: the codec's encode runs in single-threaded data workers, and timings with
    # several threads swing wildly when anything else shares the CPU
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--decode", action="append", default=[], type=decode_arg, metavar="NAME=VALUE",
                   help="a decoding setting of the codec without its decode_ prefix, e.g. --decode snap_radius=8 "
                        "(repeat for more)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.ann):
        sys.exit(f"oracle_ap: annotation file not found: {args.ann}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stats = run(args.ann, args.stride, args.disk_radius, not args.no_long_range, args.device, args.max_images,
                batch=args.batch, skeleton=args.skeleton, **dict(args.decode))
    print(" ".join(f"{k}={stats[k]:.3f}" for k in STAT_NAMES)
          + f" encode_ms={stats['encode_ms']:.2f} decode_ms={stats['decode_ms']:.2f}")


if __name__ == "__main__":
    main()
