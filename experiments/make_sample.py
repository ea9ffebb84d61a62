"""Build the embedded sample dataset ``src/strongpose/sample/`` from ``../shared/data/coco-mini``.

Keeps only images whose Flickr licence lets us redistribute them commercially (COCO licence ids 4, 5, 6:
CC BY, CC BY-SA, CC BY-ND 2.0), preferring images with several people with keypoints, and writes
``annotations.json`` (only those images; info, licenses and categories kept) and ``CREDITS.md``.

Images are copied byte for byte unless ``--max-side`` asks for downscaling; then the annotations
(keypoints, boxes, areas, polygons and RLE masks) are scaled with them. CC BY-ND images are never
re-encoded (a resized copy could count as a derivative), so they are always copied unchanged.

    python experiments/make_sample.py [--count 13] [--max-side 480 --quality 85]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "coco-mini"
TARGET = ROOT / "src" / "strongpose" / "sample"
ALLOWED_LICENSES = (4, 5, 6)
NO_DERIVATIVES = (6,)
MAX_BYTES = 4 * 1024 * 1024


def choose_images(data: dict, count: int) -> list[dict]:
    """Licence-filtered images, those with the most labelled people first (ties: most annotations)."""
    people: dict[int, int] = {}
    anns: dict[int, int] = {}
    for ann in data["annotations"]:
        anns[ann["image_id"]] = anns.get(ann["image_id"], 0) + 1
        if not ann.get("iscrowd") and ann.get("num_keypoints", 0) > 0:
            people[ann["image_id"]] = people.get(ann["image_id"], 0) + 1
    allowed = [im for im in data["images"] if im["license"] in ALLOWED_LICENSES]
    allowed.sort(key=lambda im: (-people.get(im["id"], 0), -anns.get(im["id"], 0), im["id"]))
    return sorted(allowed[:count], key=lambda im: im["id"])


def scale_annotation(ann: dict, sx: float, sy: float, new_hw: tuple[int, int], old_hw: tuple[int, int]) -> dict:
    """Scale one annotation to a resized image (pixel centres: x' = (x + 0.5) * s - 0.5)."""
    ann = copy.deepcopy(ann)
    if ann.get("keypoints"):
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        labelled = kp[:, 2] > 0  # unlabelled keypoints stay (0, 0, 0)
        kp[labelled, 0] = (kp[labelled, 0] + 0.5) * sx - 0.5
        kp[labelled, 1] = (kp[labelled, 1] + 0.5) * sy - 0.5
        ann["keypoints"] = [round(float(v), 2) if i % 3 < 2 else int(v) for i, v in enumerate(kp.reshape(-1))]
    x, y, w, h = ann["bbox"]  # box and polygon edges are continuous: plain scaling
    ann["bbox"] = [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)]
    ann["area"] = round(float(ann["area"]) * sx * sy, 4)
    seg = ann["segmentation"]
    if isinstance(seg, list):
        ann["segmentation"] = [[round(v * (sx if i % 2 == 0 else sy), 2) for i, v in enumerate(poly)] for poly in seg]
    else:  # RLE: decode at the old size, resize with nearest, re-encode (compressed counts, as JSON text)
        rle = mask_utils.frPyObjects(seg, *old_hw) if isinstance(seg["counts"], list) else seg
        mask = mask_utils.decode(rle)
        mask = cv2.resize(mask, (new_hw[1], new_hw[0]), interpolation=cv2.INTER_NEAREST)
        new = mask_utils.encode(np.asfortranarray(mask))
        ann["segmentation"] = {"size": list(new["size"]), "counts": new["counts"].decode("ascii")}
        ann["area"] = float(mask_utils.area(new))
    return ann


def credit_lines(images: list[dict], licenses: dict[int, dict]) -> list[str]:
    lines = ["# Credits", "",
             "Images: Flickr photographs distributed with COCO train2017, each under the licence named below",
             "(the credit line is the photo's Flickr page / file URL). Annotations: COCO Consortium, CC BY 4.0",
             "(https://cocodataset.org/#termsofuse), re-scaled where an image was downscaled.", "",
             "| file | licence | licence URL | credit (flickr_url) | coco_url |", "|---|---|---|---|---|"]
    for im in images:
        lic = licenses[im["license"]]
        lines.append(f"| {im['file_name']} | {lic['name']} | {lic['url']} | {im.get('flickr_url', '')} "
                     f"| {im.get('coco_url', '')} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--target", type=Path, default=TARGET)
    parser.add_argument("--count", type=int, default=13, help="number of images (12-20)")
    parser.add_argument("--max-side", type=int, default=0, help="downscale longer sides above this (0: keep)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality when re-encoding")
    args = parser.parse_args()

    ann_path = args.source / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(ann_path.read_text())
    images = choose_images(data, args.count)
    licenses = {lic["id"]: lic for lic in data["licenses"]}
    keep = {im["id"] for im in images}
    annotations = [a for a in data["annotations"] if a["image_id"] in keep]

    out_images = args.target / "images"
    if out_images.exists():
        shutil.rmtree(out_images)
    out_images.mkdir(parents=True)
    for im in images:
        src = args.source / "train2017" / im["file_name"]
        old_hw = (im["height"], im["width"])
        scale = args.max_side / max(old_hw) if args.max_side else 1.0
        if scale >= 1.0 or im["license"] in NO_DERIVATIVES:
            shutil.copyfile(src, out_images / im["file_name"])
            continue
        pixels = cv2.imread(str(src), cv2.IMREAD_COLOR)
        new_hw = (round(old_hw[0] * scale), round(old_hw[1] * scale))
        pixels = cv2.resize(pixels, (new_hw[1], new_hw[0]), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out_images / im["file_name"]), pixels, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
        sx, sy = new_hw[1] / old_hw[1], new_hw[0] / old_hw[0]
        annotations = [scale_annotation(a, sx, sy, new_hw, old_hw) if a["image_id"] == im["id"] else a
                       for a in annotations]
        im["height"], im["width"] = new_hw

    sample = {"info": {**data["info"], "description": "StrongPose embedded sample of COCO 2017 train "
                       "(licences 4-6 only; see CREDITS.md)"},
              "licenses": data["licenses"], "images": images,
              "annotations": annotations, "categories": data["categories"]}
    (args.target / "annotations.json").write_text(json.dumps(sample, separators=(",", ":")))
    (args.target / "CREDITS.md").write_text("\n".join(credit_lines(images, licenses)))

    total = sum(p.stat().st_size for p in args.target.rglob("*") if p.is_file())
    people = sum(1 for a in annotations if not a["iscrowd"] and a["num_keypoints"] > 0)
    print(f"{len(images)} images, {len(annotations)} annotations ({people} people with keypoints), "
          f"{total / 2**20:.2f} MiB in {args.target}")
    if total > MAX_BYTES:
        raise SystemExit(f"sample is {total / 2**20:.2f} MiB > 4 MiB: rerun with --max-side 480")


if __name__ == "__main__":
    main()
