"""Reading COCO keypoint files: the JSON (fails loudly, naming the path) and one image's people as arrays.

Shape letters: N non-crowd people, K keypoint types, H x W original image.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO

REQUIRED_KEYS = ("images", "annotations", "categories")


class BadSample(Exception):
    """A sample that cannot be used; says which image file and, when known, which annotation."""

    def __init__(self, file_name: str, reason: str, ann_id: int | None = None) -> None:
        where = f"{file_name}" + (f" (annotation id {ann_id})" if ann_id is not None else "")
        super().__init__(f"{where}: {reason}")
        self.file_name, self.reason, self.ann_id = file_name, reason, ann_id


def load_coco(path: str | Path) -> COCO:
    """pycocotools ``COCO`` for ``path``; missing or malformed files raise with the path and the cause."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot parse COCO annotation file {path}: {err}") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path} is not a COCO annotation file: missing or non-list {missing}")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed COCO annotation file {path}: an entry lacks {err}") from err
    return coco


def person_category(coco: COCO, num_keypoints: int, source: str | Path) -> int:
    """Id of the category with keypoints (``person`` preferred); its keypoint count must match the skeleton."""
    cats = [c for c in coco.dataset["categories"] if c.get("keypoints")]
    cats.sort(key=lambda c: c.get("name") != "person")
    if not cats:
        raise ValueError(f"{source}: no category has keypoints; is this a keypoint annotation file?")
    if len(cats[0]["keypoints"]) != num_keypoints:
        raise ValueError(f"{source}: category {cats[0].get('name')!r} has {len(cats[0]['keypoints'])} keypoints, "
                         f"the skeleton has {num_keypoints}")
    return int(cats[0]["id"])


@dataclass
class ImageAnnotations:
    """The people of one image at its original size.

    keypoints: (N, K, 3) float32 x, y, visibility of the non-crowd people (including those with no
        labelled keypoint: the codec turns them into ignore regions).
    boxes: (N, 4) float32 COCO xywh.
    masks: (N, H, W) uint8 instance masks (all zero where the annotation has no segmentation); each
        (H, W) slice is in Fortran order, as pycocotools decodes it (copying to C order costs more than
        the rest of the mask handling).
    crowd: (H, W) uint8 union of the crowd (``iscrowd``) masks, Fortran order.
    """

    keypoints: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    crowd: np.ndarray


def _mask(coco: COCO, ann: dict, height: int, width: int) -> np.ndarray:
    if not ann.get("segmentation"):  # some annotations have none; the codec falls back to the box
        return np.zeros((height, width), np.uint8, order="F")
    return coco.annToMask(ann)  # Fortran order, as pycocotools decodes


def image_annotations(coco: COCO, image_id: int, category_id: int, num_keypoints: int) -> ImageAnnotations:
    """Arrays for one image; a malformed annotation raises :class:`BadSample` naming its id."""
    info = coco.imgs[image_id]
    height, width = int(info["height"]), int(info["width"])
    keypoints, boxes, masks = [], [], []
    crowd = np.zeros((height, width), np.uint8, order="F")  # same layout as the decoded masks
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("category_id") != category_id:
            continue
        try:
            mask = _mask(coco, ann, height, width)
            if mask.shape != (height, width):
                raise ValueError(f"mask is {mask.shape}, image is {(height, width)}")
            if ann.get("iscrowd"):
                crowd |= mask
                continue
            kp = np.asarray(ann.get("keypoints") or [0.0] * (3 * num_keypoints), dtype=np.float32)
            if kp.size != 3 * num_keypoints:
                raise ValueError(f"{kp.size} keypoint values, expected {3 * num_keypoints}")
            box = np.asarray(ann.get("bbox", [0.0, 0.0, 0.0, 0.0]), dtype=np.float32)
            if box.shape != (4,) or not (np.isfinite(box).all() and np.isfinite(kp).all()):
                raise ValueError(f"bad bbox {ann.get('bbox')!r} or non-finite keypoints")
        except Exception as err:  # pycocotools raises assorted types on malformed segmentations
            file_name = info.get("file_name", str(image_id))
            raise BadSample(file_name, f"malformed annotation: {err}", ann.get("id")) from err
        keypoints.append(kp.reshape(num_keypoints, 3))
        boxes.append(box)
        masks.append(mask)
    return ImageAnnotations(
        keypoints=np.stack(keypoints) if keypoints else np.zeros((0, num_keypoints, 3), np.float32),
        boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
        masks=np.stack(masks) if masks else np.zeros((0, height, width), np.uint8),
        crowd=crowd,
    )


def read_image(path: Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing, undecodable or wrongly sized file raises :class:`BadSample`."""
    if not path.is_file():
        raise BadSample(path.name, f"image file not found ({path})")
    # annotations refer to the stored pixel grid, so EXIF orientation must not rotate it
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise BadSample(path.name, f"cannot decode image ({path})")
    if image.shape[:2] != tuple(expected_hw):
        raise BadSample(path.name, f"image is {image.shape[:2]}, annotations say {tuple(expected_hw)}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
