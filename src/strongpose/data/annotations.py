"""Reading COCO keypoint files: the JSON (fails loudly, naming the path) and one image's people as arrays.

Shape letters: N non-crowd people, K keypoint types, H x W original image.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from strongpose.config_check import InputError

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("images", "annotations", "categories")


class BadSample(Exception):
    """A sample that cannot be used; says which image file and, when known, which annotation."""

    def __init__(self, file_name: str, reason: str, ann_id: int | None = None) -> None:
        where = f"{file_name}" + (f" (annotation id {ann_id})" if ann_id is not None else "")
        super().__init__(f"{where}: {reason}")
        self.file_name, self.reason, self.ann_id = file_name, reason, ann_id


class AnnotationFileError(InputError, ValueError):
    """An annotation file that cannot be used as a whole (not JSON, wrong structure, duplicate ids, no keypoint
    category, another skeleton): the entry points report it in a line (exit 2); it names the file."""


def read_coco_json(path: str | Path) -> dict:
    """The parsed JSON of a COCO file with list-valued ``images``, ``annotations`` and ``categories``.

    Raises FileNotFoundError (no such file) or :class:`AnnotationFileError` (unreadable, not JSON, wrong
    top-level structure), each naming the path and the cause.
    """
    path = Path(path)
    if path.is_dir():
        raise AnnotationFileError(f"{path} is a folder; name the COCO annotation file (.json) in it")
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 and a byte-order mark
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise AnnotationFileError(f"cannot parse COCO annotation file {path}: {err}") from err
    if not isinstance(data, dict):
        raise AnnotationFileError(f"{path} is not a COCO annotation file: the top level is a {type(data).__name__}, "
                         "not an object")
    missing = [k for k in REQUIRED_KEYS if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationFileError(f"{path} is not a COCO annotation file: missing or non-list {missing}")
    return data


def is_int(value: object) -> bool:
    """A JSON integer (``true``/``false`` are not ids)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A JSON number (``true``/``false`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# the integer fields pycocotools indexes by (and the data module puts image ids into tensors)
INDEX_KEYS = {"images": ("id",), "annotations": ("id", "image_id", "category_id"), "categories": ("id",)}


def load_coco(path: str | Path) -> COCO:
    """pycocotools ``COCO`` for ``path``; missing or malformed files raise with the path and the cause.

    Repeated image or annotation ids are refused: pycocotools indexes by id and keeps one entry of each, so
    one image's people would be trained on another's pixels, and evaluated against another's ground truth."""
    data = read_coco_json(path)
    check = f"`python -m strongpose.check_data annotations={path}` lists every problem"
    for section, keys in INDEX_KEYS.items():
        seen: dict[int, int] = {}
        for i, entry in enumerate(data[section]):
            if not isinstance(entry, dict) or not all(is_int(entry.get(k)) for k in keys):
                raise AnnotationFileError(f"malformed COCO annotation file {path}: {section}[{i}] = "
                                          f"{excerpt(entry)} is not an object with integer {list(keys)}; {check}")
            if section != "categories" and seen.setdefault(entry["id"], i) != i:
                raise AnnotationFileError(f"malformed COCO annotation file {path}: {section}[{i}] repeats the id "
                                          f"{entry['id']} of {section}[{seen[entry['id']]}]; {check}")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise AnnotationFileError(f"malformed COCO annotation file {path}: an entry lacks {err}") from err
    return coco


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.6g}..{max(values):.6g}"


def excerpt(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def person_category(coco: COCO, keypoints: Sequence[str], source: str | Path) -> int:
    """Id of the category with keypoints that the skeleton's ``keypoints`` (names) choose
    (:func:`keypoint_category`). Its keypoints must be the skeleton's: another count or the same names in another
    order are an error, other names a logged warning (:func:`keypoint_names_problem`), and so are people of other
    categories with keypoints (not trained on: where they are is background)."""
    cat = keypoint_category(coco.dataset["categories"], keypoints)
    if cat is None:
        raise AnnotationFileError(f"{source}: no category has keypoints; is this a keypoint annotation file?")
    if len(cat["keypoints"]) != len(keypoints):
        raise AnnotationFileError(f"{source}: category {cat.get('name')!r} has {len(cat['keypoints'])} keypoints, "
                                  f"the skeleton has {len(keypoints)}")
    found = keypoint_names_problem(cat["keypoints"], keypoints)
    if found is not None and found[0] == "error":
        raise AnnotationFileError(f"{source}: {found[1]}")
    if found is not None:
        log.warning("%s: %s", source, found[1])
    others = other_keypoint_categories(coco.dataset, cat["id"])
    if others:
        log.warning("%s: %s", source, other_categories_warning(cat, others))
    return cat["id"]


def other_categories_warning(category: dict, others: dict[int, int]) -> str:
    listed = ", ".join(f"{n} of category id {i}" for i, n in sorted(others.items()))
    return (f"only category {category.get('name')!r} (id {category['id']}) is trained and evaluated; the people "
            f"with keypoints of other categories ({listed}) are not, and where they are counts as background")


def keypoint_names_problem(names: Sequence, skeleton_names: Sequence[str]) -> tuple[str, str] | None:
    """The keypoint names of an annotation file against the skeleton's (same count): None when equal;
    ``("error", why)`` for the same names in another order (every channel, flip pair, edge and OKS sigma
    would belong to another keypoint); ``("warning", why)`` for other names (kept in file order: only the
    order can say which is which)."""
    names, skeleton_names = [str(n) for n in names], list(skeleton_names)
    if names == skeleton_names:
        return None
    differ = [i for i, (a, b) in enumerate(zip(names, skeleton_names)) if a != b]
    pairs = ", ".join(f"{i}: {names[i]!r} vs {skeleton_names[i]!r}" for i in differ[:4])
    more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    if sorted(names) == sorted(skeleton_names):
        return "error", (f"the file lists the skeleton's keypoints in another order ({pairs}{more}): keypoint i "
                         f"of the file is trained as the skeleton's keypoint i; reorder the skeleton's keypoints")
    return "warning", (f"keypoint names differ from the skeleton's ({pairs}{more}): keypoint i of the file is "
                       f"taken as the skeleton's keypoint i")


def keypoint_category(categories: list, keypoints: Sequence[str] | None = None) -> dict | None:
    """The category the keypoints belong to, among those with an integer id and keypoint names: with the
    skeleton's ``keypoints`` (names), the first that lists exactly them, else the first with as many (``person``
    preferred); without, or when none has as many, the first, ``person`` preferred (then the count is the
    caller's error). None when no category has keypoints. The loader, the validator and the evaluation pick it
    the same way."""
    cats = [c for c in categories if isinstance(c, dict) and is_int(c.get("id"))
            and isinstance(c.get("keypoints"), list) and c["keypoints"]]
    if keypoints is not None:
        names = list(keypoints)
        same = [c for c in cats if [str(n) for n in c["keypoints"]] == names]
        cats = same or [c for c in cats if len(c["keypoints"]) == len(names)] or cats
    return min(cats, key=lambda c: c.get("name") != "person", default=None)  # min keeps the first of ties


def other_keypoint_categories(data: dict, category_id: int) -> dict[int, int]:
    """{category id: its annotations with a labelled keypoint}, for the categories with keypoints other than
    ``category_id`` (which alone is trained and evaluated), of a COCO-format dict."""
    others = {int(c["id"]) for c in data.get("categories", []) if isinstance(c, dict)
              and is_int(c.get("id")) and c.get("keypoints") and c["id"] != category_id}
    counts: dict[int, int] = {}
    for ann in data.get("annotations", []):  # malformed entries are the validator's to report, not to count
        if not isinstance(ann, dict) or not is_int(ann.get("category_id")) or ann["category_id"] not in others:
            continue
        kps = ann.get("keypoints")
        if isinstance(kps, list) and any(isinstance(v, (int, float)) and v > 0 for v in kps[2::3]):
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    return counts


@dataclass
class MaskRLEs:
    """One image's masks as pycocotools' compressed RLEs, decoded on demand: a training sample needs only two
    unions of them (:meth:`union`: the people with a labelled keypoint, the others with the crowd), and
    merging RLEs then decoding two masks costs less than decoding each person's.

    people: one RLE per non-crowd person (an empty one where the annotation has no segmentation).
    crowd: the ``iscrowd`` regions' RLEs.
    """

    people: list[dict]
    crowd: list[dict]
    height: int
    width: int

    def nonempty(self) -> np.ndarray:
        """(N,) bool: whose segmentation covers a pixel."""
        return np.asarray(mask_utils.area(self.people), np.int64).reshape(-1) > 0 if self.people \
            else np.zeros(0, bool)

    def union(self, select: np.ndarray, crowd: bool = False) -> np.ndarray:
        """(H, W) uint8 union of the selected people's masks (and the crowd regions when ``crowd``), in
        Fortran order as pycocotools decodes."""
        rles = [rle for rle, keep in zip(self.people, _selection(select, len(self.people))) if keep]
        rles += self.crowd if crowd else []
        if not rles:
            return np.zeros((self.height, self.width), np.uint8, order="F")
        return mask_utils.decode(mask_utils.merge(rles) if len(rles) > 1 else rles[0])

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) person masks and the (H, W) crowd union, as :class:`ImageAnnotations` holds them."""
        return _decode(self.people, self.height, self.width), self.union(np.zeros(len(self.people), bool), crowd=True)


@dataclass
class ImageAnnotations:
    """The people of one image at its original size.

    keypoints: (N, K, 3) float32 x, y, visibility of the non-crowd people (including those with no
        labelled keypoint: the codec turns them into ignore regions).
    boxes: (N, 4) float32 COCO xywh.
    masks: (N, H, W) uint8 instance masks (all zero where the annotation has no segmentation); each
        (H, W) slice is in Fortran order, as pycocotools decodes it (copying to C order costs more than
        the rest of the mask handling): the loader's masks are one (H, W, N) Fortran array, transposed.
        None when the masks were read undecoded (``image_annotations(..., decode=False)``): then ``rles``
        holds them (:meth:`decoded` decodes).
    crowd: (H, W) uint8 union of the crowd (``iscrowd``) masks, Fortran order (None with ``masks``).
    rles: the masks undecoded, or None when ``masks`` holds them (one of the two, so that they cannot disagree).
    """

    keypoints: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | None
    crowd: np.ndarray | None
    rles: MaskRLEs | None = None

    def decoded(self) -> "ImageAnnotations":
        """These annotations with ``masks`` and ``crowd`` decoded (self when they are)."""
        if self.masks is not None:
            return self
        masks, crowd = self.rles.decode()
        return ImageAnnotations(self.keypoints, self.boxes, masks, crowd)

    def has_mask(self) -> np.ndarray:
        """(N,) bool: whose segmentation covers a pixel of the image; the codec falls back to boxes for the
        others."""
        if self.rles is not None:
            return self.rles.nonempty()
        return self.masks.any(axis=(1, 2))

    def union(self, select: np.ndarray, crowd: bool = False) -> np.ndarray:
        """(H, W) uint8 union of the people selected by the (N,) bool ``select`` (and the crowd regions when
        ``crowd``)."""
        if self.rles is not None:
            return self.rles.union(select, crowd)
        select = _selection(select, len(self.masks))
        layers = [m for m, keep in zip(self.masks, select) if keep] + ([self.crowd] if crowd else [])
        return (np.maximum.reduce(layers) if layers else np.zeros_like(self.crowd)).astype(np.uint8, copy=False)


def _selection(select: np.ndarray, n: int) -> np.ndarray:
    select = np.asarray(select)
    if select.dtype != bool or select.shape != (n,):
        raise ValueError(f"select must be an (N,) = ({n},) bool array, got {select.dtype} {select.shape}")
    return select


# 2**28 pixels (16384 x 16384): far beyond any photograph, and the full-size masks of such an image (bytes per
# pixel per person) would already take gigabytes; a larger height x width is a typo, not an image
MAX_IMAGE_PIXELS = 2**28


def image_entry(info: object) -> tuple[str, int, int]:
    """(file_name, height, width) of an ``images`` entry; raises ValueError when one is missing or invalid."""
    file_name = info.get("file_name") if isinstance(info, dict) else None
    height, width = (info.get("height"), info.get("width")) if isinstance(info, dict) else (None, None)
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"image entry has no file_name: {excerpt(info)}")
    if not (is_int(height) and is_int(width) and height > 0 and width > 0):
        raise ValueError(f"image height/width must be positive integers, got {height!r} x {width!r}")
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"image height x width {height} x {width} exceeds {MAX_IMAGE_PIXELS} pixels")
    return file_name, height, width


def segmentation_error(seg: object, height: int, width: int) -> str | None:
    """Why ``seg`` is not a valid COCO segmentation of an ``height`` x ``width`` image, or None.

    Checked here because pycocotools' C code does not validate: odd-length or short polygons are read as
    boxes or fail deep inside, and RLE counts that do not cover the image decode to garbage.
    """
    if seg is None or seg == [] or seg == {}:
        return None  # no mask: the codec falls back to the box
    if isinstance(seg, list):
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(is_number(v) for v in poly):
                return f"polygon {i} is not a list of numbers"
            if len(poly) % 2:
                return f"polygon {i} has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon {i} has {len(poly) // 2} points, at least 3 are needed"
            if not all(isinstance(v, int) or math.isfinite(v) for v in poly):  # big ints overflow numpy
                return f"polygon {i} has non-finite coordinates"
            # pycocotools rasterises a polygon at its full extent (clipping after): a vertex at 1e9 asks for
            # gigabytes and crashes the process (a segfault in a worker). A polygon may leave the image a little.
            xs, ys = poly[0::2], poly[1::2]
            if not (-width <= min(xs) and max(xs) <= 2 * width and -height <= min(ys) and max(ys) <= 2 * height):
                return (f"polygon {i} reaches far beyond the {width}x{height} image (x {_span(xs)}, y {_span(ys)}; "
                        f"at most one image size outside)")
        return None
    if not isinstance(seg, dict):
        return f"segmentation is a {type(seg).__name__}, expected a list of polygons or an RLE object"
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"RLE size {excerpt(size)} is not [height, width]"
    if size != [height, width]:
        return f"RLE size {size} differs from the image size [{height}, {width}]"
    if isinstance(counts, str):
        try:
            counts = rle_string_counts(counts)
        except ValueError as err:
            return f"RLE counts cannot be decoded: {err}"
    elif not (isinstance(counts, list) and all(is_int(v) for v in counts)):
        return "RLE counts must be a list of integers or a compressed string"
    if any(c < 0 for c in counts):
        return "RLE counts has negative run lengths"
    if sum(counts) != height * width:
        return f"RLE counts cover {sum(counts)} pixels, the image has {height * width}"
    return None


# training reads float32: a finite JSON number beyond its range would become infinite there
FLOAT32_MAX = float(np.finfo(np.float32).max)


def keypoint_array(kps: object, num_keypoints: int) -> np.ndarray:
    """(K, 3) float64 x, y, v of an annotation's ``keypoints`` (None or [], nothing labelled: zeros). NaN,
    infinite and beyond-float32 values come back non-finite, for the caller to refuse or report. Raises
    ValueError when ``kps`` is not a list of 3 x K numbers."""
    if kps is None or kps == []:
        return np.zeros((num_keypoints, 3))
    if not (isinstance(kps, list) and all(is_number(v) for v in kps)):
        raise ValueError(f"keypoints is not a list of numbers: {excerpt(kps)}")
    if len(kps) != 3 * num_keypoints:
        raise ValueError(f"{len(kps)} keypoint values, expected {3 * num_keypoints} "
                         f"({num_keypoints} keypoints x (x, y, v))")
    return _float_array(kps).reshape(num_keypoints, 3)


def box_array(box: object) -> np.ndarray:
    """(4,) float64 COCO xywh of an annotation's ``bbox`` (None, no box: zeros), non-finite values as in
    :func:`keypoint_array`. Raises ValueError when ``box`` is not 4 numbers."""
    if box is None:
        return np.zeros(4)
    if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
        raise ValueError(f"bbox must be [x, y, width, height] numbers, got {excerpt(box)}")
    return _float_array(box)


def _float_array(values: list) -> np.ndarray:
    # a JSON integer beyond float64's range would overflow np.array: infinite, as a float beyond float32 becomes
    values = [(math.inf if v > 0 else -math.inf) if isinstance(v, int) and abs(v) > FLOAT32_MAX else v for v in values]
    array = np.array(values, np.float64)
    return np.where(np.abs(array) > FLOAT32_MAX, np.copysign(np.inf, array), array)


def rle_string_counts(text: str) -> list[int]:
    """Run lengths of a compressed RLE string (pycocotools' ``rleFrString`` in Python, with the bounds
    checks the C version lacks); raises ValueError on a malformed string."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError("the string ends inside a number")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {text[p]!r} at {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _rle(coco: COCO, ann: dict, height: int, width: int) -> dict:
    """Compressed RLE of an annotation's segmentation; none (some annotations): an empty mask, for which the
    codec falls back to the box."""
    if not ann.get("segmentation"):
        return mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)
    # the size matches the image's: segmentation_error checked an RLE's size, and annToRLE sizes polygons by
    # the same image entry
    return coco.annToRLE(ann)


def _decode(rles: list[dict], height: int, width: int) -> np.ndarray:
    """(M, H, W) uint8 masks, each (H, W) slice in Fortran order, as pycocotools decodes: the masks are
    copied whole into one (M, W, H) C-order array and transposed (``np.stack`` to C order transposes
    every pixel, ~0.15 ms a mask; pycocotools' own list decoding is slower than one mask at a time)."""
    masks = np.empty((len(rles), width, height), np.uint8)
    for out, rle in zip(masks, rles):
        out[...] = mask_utils.decode(rle).T  # Fortran (H, W) = C-order (W, H): a plain copy
    return masks.transpose(0, 2, 1)


def image_annotations(coco: COCO, image_id: int, category_id: int, num_keypoints: int,
                      decode: bool = True) -> ImageAnnotations:
    """Arrays for one image (masks decoded unless ``decode=False``: then only their RLEs, which training merges
    before decoding); a malformed annotation raises :class:`BadSample` naming its id."""
    info = coco.imgs[image_id]
    try:
        file_name, height, width = image_entry(info)
    except ValueError as err:
        raise BadSample(str(info.get("file_name") or f"image id {image_id}"), str(err)) from err
    keypoints, boxes, rles, crowd_rles = [], [], [], []
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("category_id") != category_id:
            continue
        try:
            problem = segmentation_error(ann.get("segmentation"), height, width)
            if problem:
                raise ValueError(problem)
            rle = _rle(coco, ann, height, width)
            if ann.get("iscrowd"):
                crowd_rles.append(rle)
                continue
            # the validator's structural checks; it reports more (visibility, boxes outside) that training tolerates
            kp, box = keypoint_array(ann.get("keypoints"), num_keypoints), box_array(ann.get("bbox"))
            nonfinite = [name for name, values in (("bbox", box), ("keypoints", kp)) if not np.isfinite(values).all()]
            if nonfinite:
                raise ValueError(f"NaN, infinite or beyond-float32 values in {' and '.join(nonfinite)}"
                                 + (f" {excerpt(ann.get('bbox'))}" if nonfinite[0] == "bbox" else ""))
            if not np.isin(kp[:, 2], (0, 1, 2)).all():  # 3 or -1 would be taken as labelled / unlabelled
                raise ValueError(f"visibility flags must be 0, 1 or 2, got {sorted(set(kp[:, 2].tolist()))}")
            kp[outside_image(kp, height, width), 2] = 0  # no pixels there: unlabelled (the dataset counts them)
        except Exception as err:  # pycocotools raises assorted types on malformed segmentations
            raise BadSample(file_name, f"malformed annotation: {err}", ann.get("id")) from err
        keypoints.append(kp.astype(np.float32))
        boxes.append(box.astype(np.float32))
        rles.append(rle)
    rles = MaskRLEs(rles, crowd_rles, height, width)
    people = ImageAnnotations(
        keypoints=np.stack(keypoints) if keypoints else np.zeros((0, num_keypoints, 3), np.float32),
        boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
        masks=None, crowd=None, rles=rles)
    return people.decoded() if decode else people


def outside_image(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """Which of the (..., 3) labelled ``keypoints`` lie outside the ``width`` x ``height`` image: a labelling
    mistake, with no pixels to learn from; training takes them as unlabelled. Pixel centres at integers, the
    image from -0.5 to W - 0.5, as :func:`strongpose.structures.inside_image` (the transforms and the encoder)
    has it: on both sides the same half-pixel band is inside."""
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    return (v > 0) & ((x < -0.5) | (y < -0.5) | (x >= width - 0.5) | (y >= height - 0.5))


def count_keypoints_outside(coco: COCO, image_ids: Sequence[int], category_id: int) -> tuple[int, list[int]]:
    """Labelled keypoints of the images' people that lie outside their image, and the ids of their
    annotations (well-formed ones; the others are reported as bad samples when read)."""
    count, ann_ids = 0, []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        height, width = info.get("height"), info.get("width")
        if not (is_number(height) and is_number(width)):
            continue
        for ann in coco.imgToAnns.get(image_id, []):
            kps = ann.get("keypoints")
            if ann.get("category_id") != category_id or not isinstance(kps, list) or len(kps) % 3:
                continue
            try:
                outside = int(outside_image(np.asarray(kps, np.float64).reshape(-1, 3), height, width).sum())
            except (TypeError, ValueError, OverflowError):
                continue
            if outside:
                count += outside
                ann_ids.append(ann.get("id"))
    return count, ann_ids


def read_image(path: Path, expected_hw: tuple[int, int] | None = None, upright: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing, empty, undecodable or truncated file, or one whose size is not
    ``expected_hw``, raises :class:`BadSample`. ``upright``: turned as its EXIF orientation says (a phone's
    portrait photo as it is shown; for prediction), else the stored pixel grid (annotations refer to it)."""
    image = decode_image(path, upright)
    if expected_hw is not None and image.shape[:2] != tuple(expected_hw):
        raise BadSample(path.name, f"image is {image.shape[:2]}, annotations say {tuple(expected_hw)}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(path: Path, upright: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 BGR of the file's stored pixel grid (no EXIF rotation: annotations refer to it), or with
    ``upright`` turned as its EXIF orientation says."""
    if not path.is_file():
        raise BadSample(path.name, f"image file not found ({path})")
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise BadSample(path.name, f"cannot read image file ({err})") from err
    if data.size == 0:
        raise BadSample(path.name, f"empty image file ({path})")
    try:
        # imdecode, unlike imread (which returns the decoded part, grey below), fails on a truncated JPEG
        image = cv2.imdecode(data, cv2.IMREAD_COLOR if upright else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as err:
        raise BadSample(path.name, f"cannot decode image ({path}): {err}") from err
    if image is None:
        raise BadSample(path.name, f"cannot decode image: corrupt, truncated or not an image ({path})")
    return image
