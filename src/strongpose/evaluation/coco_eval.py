"""Decoded poses -> COCO results in original-image coordinates -> COCOeval keypoint statistics."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from strongpose.config_check import ConfigError
from strongpose.data.annotations import keypoint_category
from strongpose.data.transforms import poses_to_original
from strongpose.structures import Poses

# names of COCOeval's first six keypoint statistics, in order (logged as val/AP, val/AP50, ...)
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR")
# CrowdPose's AP over its images of low / middle / high crowd index (the ``crowdIndex`` of each image entry),
# added when every image of the ground truth has one; split at 0.2 and 0.8 as crowdposetools' evaluation
# (and xtcocotools', faster-coco-eval's ``keypoints_crowd``) does, which CrowdPose results are reported with
CROWD_STAT_NAMES = ("AP_easy", "AP_medium", "AP_hard")
CROWD_INDEX_SPLITS = (0.2, 0.8)
BACKENDS = ("pycocotools", "faster_coco_eval")
# a missing ground-truth area is 0.53 x the box area: the rule of xtcocotools' evaluation for datasets without
# masks (CrowdPose: COCOeval(..., use_area=False)); COCO's own annotations all have an area
AREA_PER_BOX_AREA = 0.53
log = logging.getLogger(__name__)


def has_crowd_index(coco: COCO | dict) -> bool:
    """Whether every image of the ground truth (a pycocotools COCO or its JSON dict) has a numeric ``crowdIndex``
    (CrowdPose's annotations)."""
    images = (coco.dataset if isinstance(coco, COCO) else coco).get("images", [])
    return bool(images) and all(isinstance(image.get("crowdIndex"), (int, float))
                                and not isinstance(image.get("crowdIndex"), bool) for image in images)


def stat_names(coco: COCO) -> tuple[str, ...]:
    """The statistics :func:`coco_keypoint_stats` returns for this ground truth, in order."""
    return STAT_NAMES + CROWD_STAT_NAMES if has_crowd_index(coco) else STAT_NAMES


def crowd_index_groups(coco: COCO, image_ids: Iterable[int]) -> dict[str, list[int]]:
    """``image_ids`` split by their images' ``crowdIndex``: easy below 0.2, medium below 0.8, hard the rest."""
    low, high = CROWD_INDEX_SPLITS
    groups: dict[str, list[int]] = {name: [] for name in CROWD_STAT_NAMES}
    for image_id in image_ids:
        index = coco.imgs[image_id]["crowdIndex"]
        groups[CROWD_STAT_NAMES[0 if index < low else 1 if index < high else 2]].append(image_id)
    return groups


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def poses_to_coco(poses: Sequence[Poses], meta: Mapping, category_id: int = 1) -> list[dict]:
    """A batch's decoded people (input pixels) -> COCO keypoint results in original-image pixels (people off
    the image, e.g. in the batch's padding, left out when ``meta`` has ``orig_size``)."""
    return [result for i, people in enumerate(poses_to_original(poses, meta))
            for result in people.to_coco(int(meta["image_id"][i]), category_id)]


def evaluated_category(coco: COCO, keypoints: Sequence[str] | None = None) -> int:
    """Id of the category that is evaluated: the one with keypoints that the skeleton's ``keypoints`` (names)
    choose, ``person`` preferred (the data loader's choice, :func:`strongpose.data.annotations.keypoint_category`)."""
    category = keypoint_category(coco.dataset.get("categories", []), keypoints)
    if category is None:
        raise ValueError("the ground truth has no category with keypoints: nothing to evaluate")
    return int(category["id"])


def complete_ground_truth(coco: COCO, category_id: int) -> None:
    """Fill in what COCOeval reads from each ground-truth annotation of ``category_id`` and some datasets
    leave out, in place: ``num_keypoints`` (the labelled keypoints) and ``area`` (the OKS scale:
    :data:`AREA_PER_BOX_AREA` x the box area). Logs how many were filled; nothing to do the next time."""
    counts = {"num_keypoints": 0, "area": 0}
    for ann in coco.dataset.get("annotations", []):
        if ann.get("category_id") != category_id:
            continue
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann.get("keypoints", []))[2::3] > 0))
            counts["num_keypoints"] += 1
        if "area" not in ann:
            box = ann.get("bbox")
            if not (isinstance(box, list) and len(box) == 4):
                raise ValueError(f"ground-truth annotation id {ann.get('id')} has neither an area nor a box "
                                 f"[x, y, w, h]: COCOeval needs one of them for the OKS")
            ann["area"] = AREA_PER_BOX_AREA * float(box[2]) * float(box[3])
            counts["area"] += 1
    if counts["area"]:
        log.warning("%d ground-truth annotations have no area: the OKS uses %.2f x their box area (as "
                    "xtcocotools for CrowdPose)", counts["area"], AREA_PER_BOX_AREA)
    if counts["num_keypoints"]:
        log.info("%d ground-truth annotations had no num_keypoints: counted from their keypoints",
                 counts["num_keypoints"])


def coco_keypoint_stats(coco: COCO, results: list[dict], image_ids: Iterable[int],
                        sigmas: Sequence[float] | None = None, verbose: bool = False,
                        backend: str = "pycocotools", category_id: int | None = None) -> dict[str, float]:
    """COCOeval (keypoints) of ``category_id`` (None: :func:`evaluated_category`), restricted to ``image_ids``;
    returns AP, AP50, AP75, APM, APL, AR, and for ground truth with a ``crowdIndex`` on every image (CrowdPose)
    AP_easy, AP_medium, AP_hard: the AP of the images in each crowd-index group (:func:`crowd_index_groups`;
    -1 for a group without ground truth, as COCOeval's statistics). Other categories of the ground truth (boxes
    without keypoints) are left out; a missing ``area`` or ``num_keypoints`` is filled in
    (:func:`complete_ground_truth`).

    ``backend="faster_coco_eval"`` runs faster-coco-eval's C++ COCOeval on the same ground truth
    (``coco.dataset``) instead of pycocotools' (the reference); the numbers are the same.
    """
    check_backend(backend)
    image_ids = sorted(set(int(i) for i in image_ids))
    category_id = evaluated_category(coco) if category_id is None else int(category_id)
    names = stat_names(coco)
    if not results:
        return {name: 0.0 for name in names}
    complete_ground_truth(coco, category_id)
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        if backend == "faster_coco_eval":
            ev = _faster_cocoeval(coco, results)
        else:
            # copies: loadRes writes id, area and bbox into each result (the caller's list is left as it was)
            ev = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "keypoints")
        ev.params.imgIds = image_ids
        ev.params.catIds = [category_id]
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
        table = buf.getvalue()  # the group evaluations below print their progress lines too: not shown
        if names != STAT_NAMES:
            for name, group in crowd_index_groups(coco, image_ids).items():
                stats[name] = _group_ap(ev, group)
    if verbose:
        print(table, end="")
        if names != STAT_NAMES:
            print(" Average Precision  (AP) by crowd index: "
                  + ", ".join(f"{name[3:]} {stats[name]:.3f}" for name in CROWD_STAT_NAMES))
    return stats


def _group_ap(ev, image_ids: list[int]) -> float:
    """AP (OKS 0.50:0.95, all areas, COCOeval's last maxDets) of ``ev``'s detections on ``image_ids`` alone."""
    if not image_ids:
        return -1.0
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # iou thresholds x recalls x categories, area "all"
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def _faster_cocoeval(coco: COCO, results: list[dict]):
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    # The ground truth is shared, not copied (a deep copy of COCO val's annotations on every compute cost
    # more than the evaluation): FasterCOCO copies only the top-level dict (use_deepcopy=False); for
    # keypoints (no RLEs) and without extra_calc (no match flags) the only key COCOeval_faster writes into
    # the annotations is "ignore", which pycocotools' COCOeval writes into the same dicts too.
    gt = FasterCOCO(coco.dataset)
    # each result is copied (not its keypoint list): loadRes writes id, area and bbox into the entries
    return COCOeval_faster(gt, gt.loadRes([dict(r) for r in results]), "keypoints", print_function=print)


def keypoint_breakdown(coco: COCO, results: list[dict], image_ids: Iterable[int], keypoints: Sequence[str],
                       sigmas: Sequence[float], flip_pairs: Sequence[tuple[str, str]] = (),
                       category_id: int | None = None) -> dict[str, dict[str, float | None]]:
    """Which keypoints fail: per keypoint type, over the people COCOeval (pycocotools, the same matching as the AP)
    matches to a ground-truth person at OKS 0.5 (all areas), and the ground truth's labelled keypoints:
    ``oks`` the mean keypoint similarity (COCO's per-keypoint term of the OKS), ``error_px`` the median distance
    in pixels, ``inverted`` the share closer to the mirror keypoint's ground truth than to its own with a similarity
    below 0.5 (a left / right swap within the person, as Ronchi & Perona's "inversion"; None for a keypoint without
    a flip partner), ``labelled`` how many were counted; None where nothing was counted (JSON's null, where NaN
    would not be JSON). AP says how many people are right; this says where."""
    image_ids = sorted(set(int(i) for i in image_ids))
    category_id = evaluated_category(coco, keypoints) if category_id is None else int(category_id)
    k = len(keypoints)
    rows: dict[str, dict[str, float | None]] = {name: {"oks": None, "error_px": None, "inverted": None, "labelled": 0}
                                                for name in keypoints}
    if not results:
        return rows
    complete_ground_truth(coco, category_id)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "keypoints")
        ev.params.imgIds, ev.params.catIds = image_ids, [category_id]
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
    pairs = [(int(gt), int(dt)) for e in ev.evalImgs if e is not None and e["aRng"] == ev.params.areaRng[0]
             for dt, gt, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]) if gt > 0 and not ignored]
    if not pairs:
        return rows
    gt = np.array([coco.anns[g]["keypoints"] for g, _ in pairs], np.float64).reshape(-1, k, 3)
    dt = np.array([ev.cocoDt.anns[d]["keypoints"] for _, d in pairs], np.float64).reshape(-1, k, 3)
    area = np.array([coco.anns[g]["area"] for g, _ in pairs], np.float64)[:, None]
    var = (2 * np.asarray(sigmas, np.float64)) ** 2
    labelled = gt[..., 2] > 0
    dist = np.linalg.norm(dt[..., :2] - gt[..., :2], axis=-1)
    similarity = np.exp(-dist ** 2 / var / (area + np.spacing(1)) / 2)  # as COCOeval's computeOks
    index = {name: i for i, name in enumerate(keypoints)}
    mirror = np.arange(k)
    for a, b in flip_pairs:
        mirror[index[a]], mirror[index[b]] = index[b], index[a]
    to_mirror = np.linalg.norm(dt[..., :2] - gt[:, mirror, :2], axis=-1)
    inverted = (to_mirror < dist) & (similarity < 0.5)
    for j, name in enumerate(keypoints):
        own = labelled[:, j]
        with_mirror = own & labelled[:, mirror[j]]
        rows[name] = {"oks": float(similarity[own, j].mean()) if own.any() else None,
                      "error_px": float(np.median(dist[own, j])) if own.any() else None,
                      "inverted": float(inverted[with_mirror, j].mean()) if mirror[j] != j and with_mirror.any()
                      else None,
                      "labelled": int(own.sum())}
    return rows


def breakdown_table(rows: Mapping[str, Mapping[str, float | None]]) -> str:
    """:func:`keypoint_breakdown` as a text table, one line per keypoint (``-``: nothing counted)."""
    def cell(value: float | None, width: int, digits: int) -> str:
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    lines = [f"{'keypoint':<16} {'OKS':>6} {'median px':>9} {'inverted':>8} {'labelled':>8}"]
    for name, row in rows.items():
        lines.append(f"{name:<16} {cell(row['oks'], 6, 3)} {cell(row['error_px'], 9, 1)} "
                     f"{cell(row['inverted'], 8, 3)} {row['labelled']:>8d}")
    return "\n".join(lines)
