"""Checks of a COCO keypoint dataset (the annotation file and, optionally, its images).

:func:`validate_coco` returns every problem as a :class:`Problem` naming the image file, the image id and
the annotation id; ``python -m strongpose.check_data`` prints them. It never raises on the contents of a
file, only when the file itself cannot be read (FileNotFoundError, ValueError from
:func:`strongpose.data.annotations.read_coco_json`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from strongpose.data.annotations import (INDEX_KEYS, BadSample, box_array, decode_image, excerpt, image_entry, is_int,
                                         keypoint_array, keypoint_category, keypoint_names_problem,
                                         other_categories_warning, other_keypoint_categories, read_coco_json,
                                         segmentation_error)
from strongpose.skeleton import COCO_PERSON, Skeleton

ERROR, WARNING = "error", "warning"

# kind -> what it means; errors are values that cannot be right (some make the training pipeline skip the
# sample, e.g. visibility 3; some make it refuse the file, e.g. duplicate ids; labelled keypoints outside the
# image it takes as unlabelled), warnings are usable but suspicious (the README's "Checking a dataset" lists
# the same)
KINDS = {
    "image_entry": "an images[] entry without an integer id, a file_name or positive integer height/width "
                   "(at most 2**28 pixels)",
    "duplicate_image_id": "two images[] entries with the same id",
    "duplicate_file_name": "(warning) two images[] entries with the same file_name",
    "category": "no keypoint category, or its keypoint count differs from the skeleton",
    "keypoint_names": "the keypoint category lists the skeleton's names in another order (warning: other names)",
    "other_category": "(warning) people with keypoints in a category other than the trained one (not trained on: "
                      "where they are counts as background)",
    "annotation_entry": "an annotations[] entry that is not an object with integer id, image_id, category_id",
    "duplicate_annotation_id": "two annotations with the same id",
    "orphan_annotation": "an annotation whose image_id has no images[] entry",
    "unknown_category": "an annotation whose category_id has no categories[] entry (its person would be "
                        "background)",
    "iscrowd": "iscrowd other than 0 or 1 (anything else that is true makes the person a crowd region)",
    "keypoints_length": "keypoints is not a list of 3 x K numbers",
    "keypoints_nonfinite": "NaN, infinite or beyond-float32 keypoint values",
    "keypoints_negative": "a labelled keypoint (v > 0) with a negative coordinate",
    "keypoints_outside": "(warning) a labelled keypoint beyond the image's right or bottom border",
    "visibility": "a visibility flag other than 0, 1 or 2",
    "num_keypoints": "(warning) num_keypoints differs from the number of labelled keypoints",
    "bbox": "bbox not 4 finite numbers, non-positive width/height or entirely outside the image "
            "(warning: missing, or partly outside)",
    "segmentation": "odd-length or < 3-point polygon, a polygon more than an image size outside the image, RLE "
                    "size differing from the image, undecodable RLE counts",
    "missing_image": "the image file does not exist",
    "corrupt_image": "the image file is empty, truncated or cannot be decoded",
    "image_size": "the decoded image's size differs from the JSON's height/width",
    "image_format": "(warning) the file's content (JPEG/PNG) does not match its extension",
}

# a box may stick out of the image by this many pixels (rounding in converted datasets) before a warning
BOX_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    """One finding. ``file`` is the image's file name (the annotation file for file-level problems)."""

    file: str
    image_id: int | None
    annotation_id: int | None
    kind: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        ids = ", ".join(f"{name} {value}" for name, value in (("image id", self.image_id),
                                                              ("annotation id", self.annotation_id))
                        if value is not None)
        return f"{self.severity}: {self.file}" + (f" ({ids})" if ids else "") + f": {self.kind}: {self.message}"


@dataclass
class Report:
    """All problems of one annotation file, with what was scanned."""

    annotations_path: Path
    images_dir: Path | None
    num_images: int
    num_annotations: int
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(p.severity == ERROR for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity == WARNING for p in self.problems)

    def by_kind(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def summary(self) -> str:
        n = len(self.problems)
        files = "" if self.images_dir is not None else ", image files not checked"
        return (f"check_data: {self.num_images} images, {self.num_annotations} annotations, {n} "
                f"{_plural(n, 'problem')} ({self.errors} {_plural(self.errors, 'error')}, {self.warnings} "
                f"{_plural(self.warnings, 'warning')}) in {self.annotations_path}{files} [{self.seconds:.1f} s]")


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def validate_coco(annotations: str | Path, images_dir: str | Path | None = None,
                  skeleton: Skeleton = COCO_PERSON, workers: int = 4) -> Report:
    """Every problem of the COCO keypoint file ``annotations`` and (unless ``images_dir`` is None) of the
    image files it names, decoded in ``workers`` threads (OpenCV releases the GIL while decoding)."""
    start = time.perf_counter()
    path = Path(annotations)
    data = read_coco_json(path)
    report = Report(path, Path(images_dir) if images_dir is not None else None, len(data["images"]),
                    len(data["annotations"]))
    images, known = _check_images(data["images"], str(path), report.problems)
    category = _keypoint_category(data, skeleton, str(path), report.problems)
    seen_ids: set[int] = set()
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict) and is_int(c.get("id"))}
    for i, ann in enumerate(data["annotations"]):
        report.problems.extend(_check_annotation(i, ann, images, known, category, category_ids, seen_ids, str(path)))
    if images_dir is not None:
        with ThreadPoolExecutor(max(1, int(workers))) as pool:
            jobs = [(image_id, *entry) for image_id, entry in images.items()]
            for found in pool.map(lambda job: _check_image_file(Path(images_dir), *job), jobs):
                report.problems.extend(found)
    report.seconds = time.perf_counter() - start
    return report


def _check_images(entries: list, source: str,
                  problems: list[Problem]) -> tuple[dict[int, tuple[str, int, int]], set[int]]:
    """image id -> (file_name, height, width) of the valid entries, and every integer image id (an annotation
    of an invalid entry is not an orphan); appends the problems of the entries."""
    images: dict[int, tuple[str, int, int]] = {}
    known: set[int] = set()
    names: dict[str, int] = {}
    for i, info in enumerate(entries):
        image_id = info.get("id") if isinstance(info, dict) else None
        name = info.get("file_name") if isinstance(info, dict) and isinstance(info.get("file_name"), str) else None
        if not is_int(image_id):
            problems.append(Problem(name or source, None, None, "image_entry",
                                    f"images[{i}] has no integer id: {excerpt(info)}"))
            continue
        known.add(image_id)
        try:
            entry = image_entry(info)
        except ValueError as err:
            problems.append(Problem(name or source, image_id, None, "image_entry", f"images[{i}]: {err}"))
            continue
        if image_id in images:
            problems.append(Problem(entry[0], image_id, None, "duplicate_image_id",
                                    f"images[{i}] repeats image id {image_id} (also {images[image_id][0]})"))
            continue
        if entry[0] in names:
            problems.append(Problem(entry[0], image_id, None, "duplicate_file_name",
                                    f"file also used by image id {names[entry[0]]}", WARNING))
        names.setdefault(entry[0], image_id)
        images[image_id] = entry
    return images, known


def _keypoint_category(data: dict, skeleton: Skeleton, source: str,
                       problems: list[Problem]) -> tuple[int, list[str]] | None:
    """(id, keypoint names) of the keypoint category (chosen by the skeleton, as the dataset picks it), or None.
    Annotations are checked against its keypoint count: a skeleton mismatch is one problem, not one each."""
    cat = keypoint_category(data["categories"], skeleton.keypoints)
    if cat is None:
        problems.append(Problem(source, None, None, "category", "no category with an integer id has keypoints"))
        return None
    if len(cat["keypoints"]) != skeleton.num_keypoints:
        problems.append(Problem(source, None, None, "category",
                                f"category {excerpt(cat.get('name'))} has {len(cat['keypoints'])} "
                                f"keypoints, the {skeleton.name} skeleton has {skeleton.num_keypoints}"))
    elif (found := keypoint_names_problem(cat["keypoints"], skeleton.keypoints)) is not None:
        problems.append(Problem(source, None, None, "keypoint_names", f"the {skeleton.name} skeleton: {found[1]}",
                                severity=ERROR if found[0] == "error" else WARNING))
    others = other_keypoint_categories(data, cat["id"])
    if others:
        problems.append(Problem(source, None, None, "other_category", other_categories_warning(cat, others), WARNING))
    return cat["id"], [str(name) for name in cat["keypoints"]]


def _check_annotation(i: int, ann: object, images: dict, known: set[int], category: tuple[int, list[str]] | None,
                      category_ids: set[int], seen_ids: set[int], source: str) -> Iterator[Problem]:
    if not isinstance(ann, dict) or not all(is_int(ann.get(k)) for k in INDEX_KEYS["annotations"]):
        ids = [ann.get(k) if isinstance(ann, dict) and is_int(ann.get(k)) else None for k in ("image_id", "id")]
        yield Problem(source, *ids, "annotation_entry",
                      f"annotations[{i}] is not an object with integer id, image_id, category_id: {excerpt(ann)}")
        return
    ann_id, image_id = ann["id"], ann["image_id"]
    file_name = images[image_id][0] if image_id in images else source
    if ann_id in seen_ids:
        yield Problem(file_name, image_id, ann_id, "duplicate_annotation_id",
                      f"annotations[{i}] repeats annotation id {ann_id}")
    seen_ids.add(ann_id)
    if image_id not in known:
        yield Problem(source, image_id, ann_id, "orphan_annotation", f"image id {image_id} is not in images[]")
    if ann["category_id"] not in category_ids:  # its person would be background: not trained, not evaluated
        yield Problem(file_name, image_id, ann_id, "unknown_category",
                      f"category id {ann['category_id']} is not in categories[]")
    if image_id not in images:
        return  # size unknown: nothing else can be checked against the image
    _, height, width = images[image_id]

    def problem(kind: str, message: str, severity: str = ERROR) -> Problem:
        return Problem(file_name, image_id, ann_id, kind, message, severity)

    if ann.get("iscrowd", 0) not in (0, 1):  # True / False are 1 / 0; "yes" or 2 would be read as a crowd
        yield problem("iscrowd", f"iscrowd must be 0 or 1, got {excerpt(ann['iscrowd'])}")
    yield from _check_box(ann, height, width, problem)
    seg = segmentation_error(ann.get("segmentation"), height, width)
    if seg:
        yield problem("segmentation", seg)
    if category is not None and ann["category_id"] == category[0]:
        yield from _check_keypoints(ann, height, width, category[1], problem)


def _check_keypoints(ann: dict, height: int, width: int, names: list[str], problem) -> Iterator[Problem]:
    kps = ann.get("keypoints")
    if kps is None or kps == []:
        return  # the data module treats the person as unlabelled
    try:  # the loader's own check: what it refuses is reported here
        values = keypoint_array(kps, len(names))
    except ValueError as err:
        yield problem("keypoints_length", str(err))
        return
    nonfinite = [names[k] for k in np.flatnonzero(~np.isfinite(values).all(axis=1))]
    if nonfinite:
        yield problem("keypoints_nonfinite", f"NaN, infinite or beyond-float32 values at {_names(nonfinite)}")
        return
    xs, ys, vs = values.T.tolist()
    bad_v = [f"{names[k]}={_number(v)}" for k, v in enumerate(vs) if v not in (0.0, 1.0, 2.0)]
    if bad_v:
        yield problem("visibility", f"visibility flags must be 0, 1 or 2: {_names(bad_v)}")
    labelled = [k for k, v in enumerate(vs) if v > 0]
    # pixel centres at integers, the image from -0.5 to W - 0.5, as the dataset (outside_image) and the encoder
    # have it: what is listed here is what training takes as unlabelled
    negative = [names[k] for k in labelled if xs[k] < -0.5 or ys[k] < -0.5]
    if negative:
        yield problem("keypoints_negative", f"negative coordinates at {_names(negative)}")
    outside = [f"{names[k]} ({_number(xs[k])}, {_number(ys[k])})" for k in labelled
               if xs[k] >= width - 0.5 or ys[k] >= height - 0.5]
    if outside:
        yield problem("keypoints_outside", f"beyond the {width}x{height} image: {_names(outside)}", WARNING)
    stated = ann.get("num_keypoints")
    if stated is not None and stated != len(labelled):
        yield problem("num_keypoints", f"num_keypoints is {excerpt(stated)}, {len(labelled)} keypoints are labelled",
                      WARNING)


def _check_box(ann: dict, height: int, width: int, problem) -> Iterator[Problem]:
    box = ann.get("bbox")
    if box is None:
        yield problem("bbox", "no bbox", WARNING)
        return
    try:  # the loader's own check, as for keypoints
        x, y, w, h = box_array(box).tolist()
    except ValueError as err:
        yield problem("bbox", str(err))
        return
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        yield problem("bbox", f"bbox has NaN, infinite or beyond-float32 values: {excerpt(box)}")
    elif w <= 0 or h <= 0:
        yield problem("bbox", f"bbox width and height must be positive, got {excerpt(box)}")
    elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
        yield problem("bbox", f"bbox {excerpt(box)} lies entirely outside the {width}x{height} image")
    elif min(x, y) < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        yield problem("bbox", f"bbox {excerpt(box)} extends beyond the {width}x{height} image", WARNING)


# first bytes of the formats COCO datasets use, to catch e.g. a PNG saved under a .jpg name
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def _check_image_file(images_dir: Path, image_id: int, file_name: str, height: int, width: int) -> list[Problem]:
    path = images_dir / file_name
    if not path.is_file():
        return [Problem(file_name, image_id, None, "missing_image", f"image file not found ({path})")]
    try:
        image = decode_image(path)
    except BadSample as err:
        return [Problem(file_name, image_id, None, "corrupt_image", err.reason)]
    found = []
    if image.shape[:2] != (height, width):
        found.append(Problem(file_name, image_id, None, "image_size",
                             f"image is {image.shape[1]}x{image.shape[0]} (width x height), the JSON says "
                             f"{width}x{height}"))
    with open(path, "rb") as f:
        head = f.read(8)
    content = next((fmt for sig, fmt in SIGNATURES.items() if head.startswith(sig)), None)
    named = EXTENSIONS.get(path.suffix.lower())
    if content and named and content != named:
        found.append(Problem(file_name, image_id, None, "image_format",
                             f"the file is a {content} but named {path.suffix}", WARNING))
    return found


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:g}"


def _names(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
