"""Which keypoint errors cost AP: Ronchi & Perona's error types ("Benchmarking and Error Diagnosis in Multi-Instance
Pose Estimation", ICCV 2017, the coco-analyze tool) and the AP each would give back if corrected.

Each detection COCOeval matches to a ground-truth person at OKS 0.1 (its greedy matching by score, so also the
people that miss the AP's 0.5) has each labelled keypoint sorted as coco-analyze sorts it, by its best keypoint
similarity ``ks`` (COCO's per-keypoint term of the OKS) over the person, the person mirrored (left / right
exchanged) and the image's other people, as they are and mirrored:

* ``good``: the person's own keypoint best, ks >= 0.85;  ``jitter``: the same, 0.5 <= ks < 0.85;
* ``inversion``: the person's mirror keypoint best, ks >= 0.5 (left / right confused);
* ``swap``: another person's same or mirror keypoint best, ks >= 0.5;
* ``miss``: every ks below 0.5 (a keypoint placed nowhere near any).

The opportunity of each type: COCO's AP (OKS 0.50:0.95, all areas) again with every keypoint of that type moved to
its own ground truth (and with all four), other detections as they were; ``scoring``: the poses as they are with
coco-analyze's optimal scores (each image's poses and people paired one to one for the largest total OKS, a paired
pose scoring its OKS, the others 0). What stays below 1 with all four corrected is the scoring, the people not
found and the poses of no one. Differences from coco-analyze, on purpose: it moves a corrected keypoint to a
similarity (0.85 for jitter, 0.5 for a miss, the wrong part's for an inversion or swap) rather than onto the ground
truth, and reports the AP at OKS 0.5 for people above 32^2 px; here the opportunities are upper bounds, in the
AP everyone reports. Written by hand: coco-analyze is a Python 2 fork of the COCO API and not a package.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from strongpose.evaluation.coco_eval import coco_keypoint_stats, complete_ground_truth, evaluated_category

ERRORS = ("jitter", "inversion", "swap", "miss")
CATEGORIES = ("good", *ERRORS)
GOOD, NEAR = 0.85, 0.5   # keypoint similarity bounds of good, and of jitter / inversion / swap
MATCH_OKS = 0.1          # the OKS a detection needs to be analysed as the matched person's (coco-analyze's)


def _similarity(dt: np.ndarray, gt: np.ndarray, area: np.ndarray, var: np.ndarray) -> np.ndarray:
    """ks of (..., K, 2) detected points to (..., K, 2) ground truth of ``area`` (..., 1): COCOeval's computeOks."""
    d2 = ((dt - gt) ** 2).sum(-1)
    return np.exp(-d2 / var / (area + np.spacing(1)) / 2)


def _matches(coco: COCO, results: list[dict], image_ids: list[int], category_id: int, sigmas: np.ndarray
             ) -> tuple[list[tuple[int, int]], COCOeval]:
    """(ground-truth id, result index) of each detection COCOeval matches at OKS :data:`MATCH_OKS`, all areas;
    detections of ignored or crowd ground truth left out."""
    indexed = [dict(r, _index=i) for i, r in enumerate(results)]  # loadRes renumbers: the index comes along
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(indexed), "keypoints")
        ev.params.imgIds, ev.params.catIds = image_ids, [category_id]
        ev.params.kpt_oks_sigmas = sigmas
        ev.params.iouThrs = np.array([MATCH_OKS])
        ev.evaluate()
    pairs = [(int(gt), int(ev.cocoDt.anns[dt]["_index"])) for e in ev.evalImgs
             if e is not None and e["aRng"] == ev.params.areaRng[0]
             for dt, gt, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]) if gt > 0 and not ignored]
    return pairs, ev


def _people(coco: COCO, image: int, category_id: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (P,), keypoints (P, K, 3), areas (P, 1)) of an image's non-crowd people with labelled keypoints."""
    anns = [a for a in coco.imgToAnns.get(image, []) if a.get("category_id") == category_id
            and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
    return (np.array([a["id"] for a in anns], np.int64),
            np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3),
            np.array([a["area"] for a in anns], np.float64)[:, None])


def _oks(dt: np.ndarray, kps: np.ndarray, areas: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(D, P) COCOeval OKS of (D, K, 2) poses with (P, K, 3) people of ``areas`` (P, 1) (labelled keypoints)."""
    ks = _similarity(dt[:, None], kps[None, :, :, :2], areas[None], var)
    labelled = kps[None, :, :, 2] > 0
    return (ks * labelled).sum(-1) / labelled.sum(-1)


def _one_to_one(oks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pose rows, person columns) of the assignment of the largest total OKS, each pose and person once (coco-analyze's
    optimal scoring: scipy's Hungarian method); pairs below OKS :data:`MATCH_OKS` (no one's pose) left out."""
    from scipy.optimize import linear_sum_assignment  # scipy comes with albumentations

    rows, cols = linear_sum_assignment(oks, maximize=True)
    keep = oks[rows, cols] >= MATCH_OKS
    return rows[keep], cols[keep]


def classify_keypoints(coco: COCO, results: list[dict], image_ids: Iterable[int], sigmas: Sequence[float],
                       mirror: Sequence[int], category_id: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the matched detections: (result index (N,), ground-truth id (N,), category (N, K)) with the category an
    index into :data:`CATEGORIES`, -1 where the ground truth's keypoint is unlabelled (not in the OKS).

    As coco-analyze: each keypoint's best similarity over its person, that person mirrored (left / right
    exchanged) and the image's other people, as they are and mirrored (their own areas); the person's own wins
    ties. Good (>= 0.85) and jitter (0.5-0.85) need the person's own keypoint to be the best, inversion its mirror,
    swap another person's; below 0.5 it is a miss."""
    image_ids = sorted(set(int(i) for i in image_ids))
    category_id = evaluated_category(coco) if category_id is None else int(category_id)
    k = len(sigmas)
    if not results:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, k), int)
    complete_ground_truth(coco, category_id)
    sigmas = np.asarray(sigmas, np.float64)
    pairs, _ = _matches(coco, results, image_ids, category_id, sigmas)
    if not pairs:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, k), int)
    var = (2 * sigmas) ** 2
    mirror = np.asarray(mirror)
    gt_ids = np.array([g for g, _ in pairs])
    index = np.array([i for _, i in pairs])
    category = np.full((len(pairs), k), -1)
    people: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for row, (g, i) in enumerate(pairs):
        image = coco.anns[g]["image_id"]
        if image not in people:
            people[image] = _people(coco, image, category_id, k)
        ids, kps, areas = people[image]
        order = np.r_[np.flatnonzero(ids == g), np.flatnonzero(ids != g)]  # the matched person first
        kps, areas = kps[order], areas[order]
        dt = np.asarray(results[i]["keypoints"], np.float64).reshape(k, 3)[None, :, :2]
        # candidates: every person as they are, then mirrored; -1 where that keypoint is unlabelled
        candidates = np.concatenate([kps, kps[:, mirror]])
        ks = np.where(candidates[..., 2] > 0, _similarity(dt, candidates[..., :2], np.r_[areas, areas], var), -1.0)
        best, where = ks.max(0), ks.argmax(0)  # argmax: the first of equals, the person's own first
        own, inverted = where == 0, where == len(kps)
        cat = np.where(best < NEAR, CATEGORIES.index("miss"),
                       np.where(own, np.where(best >= GOOD, CATEGORIES.index("good"), CATEGORIES.index("jitter")),
                                np.where(inverted, CATEGORIES.index("inversion"), CATEGORIES.index("swap"))))
        category[row] = np.where(kps[0, :, 2] > 0, cat, -1)
    return index, gt_ids, category


def oracle_scores(coco: COCO, results: list[dict], sigmas: Sequence[float], category_id: int) -> list[dict]:
    """``results`` (copies) scored as a perfect scorer would (coco-analyze's optimal scores): in each image the
    poses and people are paired one to one for the largest total OKS (:func:`_one_to_one`), a paired pose scores its
    OKS, the rest (duplicates, poses of no one) 0."""
    var = (2 * np.asarray(sigmas, np.float64)) ** 2
    k = len(var)
    complete_ground_truth(coco, category_id)
    rescored = [dict(r, score=0.0) for r in results]
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(results):
        if r.get("category_id") == category_id:
            by_image.setdefault(int(r["image_id"]), []).append(i)
    for image, rows in by_image.items():
        _, kps, areas = _people(coco, image, category_id, k)
        if not len(kps):
            continue
        dt = np.array([results[i]["keypoints"] for i in rows], np.float64).reshape(-1, k, 3)[..., :2]
        oks = _oks(dt, kps, areas, var)
        for row, col in zip(*_one_to_one(oks)):
            rescored[rows[row]]["score"] = float(oks[row, col])
    return rescored


def image_oks(coco: COCO, results: list[dict], image_ids: Iterable[int], sigmas: Sequence[float],
              category_id: int) -> dict[int, dict[str, float | int]]:
    """Per image with annotated people (non-crowd, labelled keypoints): ``oks`` the mean over them of the OKS of
    the pose paired with each one (one to one, :func:`_one_to_one`; 0 for a person no pose comes near),
    ``people``, ``results`` and ``unpaired`` (poses paired with no one: duplicates, poses of no one) counts.
    The lowest are the images a model fails on (evaluate's ``draw_worst``)."""
    var = (2 * np.asarray(sigmas, np.float64)) ** 2
    k = len(var)
    complete_ground_truth(coco, category_id)
    by_image: dict[int, list[np.ndarray]] = {}
    for r in results:
        if r.get("category_id") == category_id:
            by_image.setdefault(int(r["image_id"]), []).append(np.asarray(r["keypoints"], np.float64).reshape(k, 3))
    out = {}
    for image in image_ids:
        _, kps, areas = _people(coco, image, category_id, k)
        if not len(kps):
            continue
        found = by_image.get(int(image), [])
        total, paired = 0.0, 0
        if found:
            oks = _oks(np.stack(found)[..., :2], kps, areas, var)
            rows, cols = _one_to_one(oks)
            total, paired = float(oks[rows, cols].sum()), len(rows)
        out[int(image)] = {"oks": total / len(kps), "people": len(kps), "results": len(found),
                           "unpaired": len(found) - paired}
    return out


def error_analysis(coco: COCO, results: list[dict], image_ids: Iterable[int], keypoints: Sequence[str],
                   sigmas: Sequence[float], flip_pairs: Sequence[tuple[str, str]] = (),
                   category_id: int | None = None, backend: str = "pycocotools") -> dict[str, Any]:
    """The share of each keypoint category (:data:`CATEGORIES`) over the matched detections' labelled keypoints,
    overall and per keypoint type, and the AP with each error type corrected:
    ``{"matched": N, "keypoints": n, "shares": {...}, "per_keypoint": {name: {...}}, "AP": {"as is": ...,
    "jitter": ..., "inversion": ..., "swap": ..., "miss": ..., "all": ..., "scoring": ...}}`` (shares None where
    nothing counted; ``scoring``: the poses as they are with :func:`oracle_scores`)."""
    image_ids = sorted(set(int(i) for i in image_ids))
    category_id = evaluated_category(coco, keypoints) if category_id is None else int(category_id)
    position = {name: i for i, name in enumerate(keypoints)}
    mirror = np.arange(len(keypoints))
    for a, b in flip_pairs:
        mirror[position[a]], mirror[position[b]] = position[b], position[a]
    index, gt_ids, category = classify_keypoints(coco, results, image_ids, sigmas, mirror, category_id)
    counted = category >= 0

    def shares(cells: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
        total = int(mask.sum())
        return {name: (float(((cells == c) & mask).sum() / total) if total else None)
                for c, name in enumerate(CATEGORIES)}

    def ap(rows: list[dict]) -> float:
        return coco_keypoint_stats(coco, rows, image_ids, sigmas=sigmas, backend=backend,
                                   category_id=category_id)["AP"]

    gt = (np.array([coco.anns[g]["keypoints"] for g in gt_ids], np.float64).reshape(len(gt_ids), -1, 3)
          if len(gt_ids) else np.zeros((0, len(keypoints), 3)))

    def corrected(kinds: Sequence[str]) -> list[dict]:
        fixed = [dict(r) for r in results]
        move = np.isin(category, [CATEGORIES.index(kind) for kind in kinds])
        for row, i in enumerate(index):
            if move[row].any():
                kps = np.asarray(fixed[i]["keypoints"], np.float64).reshape(-1, 3)
                kps[move[row], :2] = gt[row, move[row], :2]
                fixed[i]["keypoints"] = kps.reshape(-1).tolist()
        return fixed

    return {
        "matched": int(len(index)),
        "keypoints": int(counted.sum()),
        "shares": shares(category, counted),
        "per_keypoint": {name: shares(category[:, j], counted[:, j]) for j, name in enumerate(keypoints)},
        "AP": {"as is": ap(results), **{kind: ap(corrected([kind])) for kind in ERRORS},
               "all": ap(corrected(ERRORS)), "scoring": ap(oracle_scores(coco, results, sigmas, category_id))},
    }


def error_table(analysis: dict[str, Any]) -> str:
    """:func:`error_analysis` as text: the shares, the AP each correction gives, and the shares per keypoint."""
    def cell(value: float | None) -> str:
        return f"{'-' if value is None else f'{value:.3f}':>10}"

    ap = analysis["AP"]
    lines = [f"Keypoint errors (Ronchi & Perona) of {analysis['keypoints']} labelled keypoints of the "
             f"{analysis['matched']} people matched at OKS {MATCH_OKS}:",
             "  " + "  ".join(f"{name} {cell(share).strip()}" for name, share in analysis["shares"].items()),
             f"AP {ap['as is']:.3f}; with every keypoint of a type at its ground truth: "
             + ", ".join(f"{kind} {ap[kind]:.3f} ({ap[kind] - ap['as is']:+.3f})" for kind in (*ERRORS, "all"))
             + f"; with optimal scores {ap['scoring']:.3f} ({ap['scoring'] - ap['as is']:+.3f})",
             f"{'keypoint':<16}" + "".join(f"{name:>10}" for name in CATEGORIES)]
    for name, row in analysis["per_keypoint"].items():
        lines.append(f"{name:<16}" + "".join(cell(row[c]) for c in CATEGORIES))
    return "\n".join(lines)
