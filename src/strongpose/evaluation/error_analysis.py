"""Which keypoint errors cost AP: Ronchi & Perona's error types ("Benchmarking and Error Diagnosis in Multi-Instance
Pose Estimation", ICCV 2017, the coco-analyze tool) and the AP each would give back if corrected.

Each detection COCOeval matches to a ground-truth person at OKS 0.1 (its greedy matching by score, so also the
people that miss the AP's 0.5) has its keypoints sorted by their keypoint similarity ``ks`` (COCO's per-keypoint
term of the OKS) to the labelled keypoints of that person:

* ``good``: ks >= 0.85;  ``jitter``: 0.5 <= ks < 0.85 (the right keypoint, placed loosely);
* ``inversion``: ks < 0.5 but >= 0.5 to the same person's mirror keypoint (left / right confused);
* ``swap``: ks < 0.5 but >= 0.5 to the same or mirror keypoint of another person of the image;
* ``miss``: none of these (a keypoint placed nowhere near any).

The opportunity of each type: the AP again with every keypoint of that type moved to its own ground truth
(and with all four), other detections as they were. What is left below 1 with all of them corrected is the
scoring, the people not found and the detections of no one; ``scoring`` is the AP of the results as they are,
each scored by its best OKS with a person of its image (the oracle ranking). Written by hand: coco-analyze is a Python 2 fork of
the COCO API and not a package; this follows its definitions with COCOeval's own matching and OKS.
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


def classify_keypoints(coco: COCO, results: list[dict], image_ids: Iterable[int], sigmas: Sequence[float],
                       mirror: Sequence[int], category_id: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the matched detections: (result index (N,), ground-truth id (N,), category (N, K)) with the category an
    index into :data:`CATEGORIES`, -1 where the ground truth's keypoint is unlabelled (not in the OKS)."""
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
    dt = np.array([results[i]["keypoints"] for i in index], np.float64).reshape(-1, k, 3)[..., :2]
    gt = np.array([coco.anns[g]["keypoints"] for g in gt_ids], np.float64).reshape(-1, k, 3)
    area = np.array([coco.anns[g]["area"] for g in gt_ids], np.float64)[:, None]
    labelled = gt[..., 2] > 0
    own = _similarity(dt, gt[..., :2], area, var)
    inverted = _similarity(dt, gt[:, mirror, :2], area, var) * (gt[:, mirror, 2] > 0)
    inverted[:, mirror == np.arange(k)] = 0.0  # a keypoint without a partner (the nose) cannot be inverted
    # the best ks of each keypoint to the same or mirror keypoint of another person of its image (their areas)
    others = np.zeros_like(own)
    people = {}  # image -> (ids, keypoints (P, K, 3), areas (P, 1)) of the non-crowd people with keypoints
    for row, g in enumerate(gt_ids):
        image = coco.anns[g]["image_id"]
        if image not in people:
            anns = [a for a in coco.imgToAnns[image] if a.get("category_id") == category_id
                    and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
            people[image] = (np.array([a["id"] for a in anns]),
                             np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3),
                             np.array([a["area"] for a in anns], np.float64)[:, None])
        ids, kps, areas = people[image]
        rest = ids != g
        if rest.any():
            same = _similarity(dt[row][None], kps[rest, :, :2], areas[rest], var) * (kps[rest, :, 2] > 0)
            flip = _similarity(dt[row][None], kps[rest][:, mirror, :2], areas[rest], var) * (kps[rest][:, mirror, 2] > 0)
            others[row] = np.maximum(same, flip).max(0)
    category = np.full(own.shape, CATEGORIES.index("miss"))
    category[others >= NEAR] = CATEGORIES.index("swap")
    category[inverted >= NEAR] = CATEGORIES.index("inversion")  # within the person before across people
    category[own >= NEAR] = CATEGORIES.index("jitter")
    category[own >= GOOD] = CATEGORIES.index("good")
    category[~labelled] = -1
    return index, gt_ids, category


def oracle_scores(coco: COCO, results: list[dict], sigmas: Sequence[float], category_id: int) -> list[dict]:
    """``results`` (copies) each scored by its best OKS with a non-crowd person of its image that has labelled
    keypoints (0 without one): the ranking a perfect scorer would give the same poses."""
    var = (2 * np.asarray(sigmas, np.float64)) ** 2
    k = len(var)
    people: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rescored = []
    for r in results:
        image = r["image_id"]
        if image not in people:
            anns = [a for a in coco.imgToAnns.get(image, []) if a.get("category_id") == category_id
                    and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
            people[image] = (np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3),
                             np.array([a["area"] for a in anns], np.float64)[:, None])
        kps, areas = people[image]
        score = 0.0
        if len(kps) and r.get("category_id") == category_id:
            dt = np.asarray(r["keypoints"], np.float64).reshape(k, 3)[None, :, :2]
            ks = _similarity(dt, kps[..., :2], areas, var)
            labelled = kps[..., 2] > 0
            score = float(((ks * labelled).sum(1) / labelled.sum(1)).max())  # COCOeval's OKS, the best person
        rescored.append(dict(r, score=score))
    return rescored


def image_oks(coco: COCO, results: list[dict], image_ids: Iterable[int], sigmas: Sequence[float],
              category_id: int) -> dict[int, dict[str, float | int]]:
    """Per image with annotated people (non-crowd, labelled keypoints): ``oks`` the mean over them of each one's
    best OKS with a result of the image (0 for a person no result comes near), ``people`` and ``results`` counts.
    The lowest are the images a model fails on (evaluate's ``draw_worst``)."""
    var = (2 * np.asarray(sigmas, np.float64)) ** 2
    k = len(var)
    by_image: dict[int, list[np.ndarray]] = {}
    for r in results:
        if r.get("category_id") == category_id:
            by_image.setdefault(int(r["image_id"]), []).append(np.asarray(r["keypoints"], np.float64).reshape(k, 3))
    out = {}
    for image in image_ids:
        anns = [a for a in coco.imgToAnns.get(image, []) if a.get("category_id") == category_id
                and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
        if not anns:
            continue
        gt = np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3)
        area = np.array([a.get("area", 0.0) for a in anns], np.float64)[:, None, None]
        found = by_image.get(int(image), [])
        best = np.zeros(len(anns))
        if found:
            dt = np.stack(found)[None, :, :, :2]  # (1, D, K, 2) against (P, 1, K, 2)
            ks = _similarity(dt, gt[:, None, :, :2], area, var)
            labelled = gt[:, None, :, 2] > 0
            best = ((ks * labelled).sum(-1) / labelled.sum(-1)).max(1)
        out[int(image)] = {"oks": float(best.mean()), "people": len(anns), "results": len(found)}
    return out


def error_analysis(coco: COCO, results: list[dict], image_ids: Iterable[int], keypoints: Sequence[str],
                   sigmas: Sequence[float], flip_pairs: Sequence[tuple[str, str]] = (),
                   category_id: int | None = None, backend: str = "pycocotools") -> dict[str, Any]:
    """The share of each keypoint category (:data:`CATEGORIES`) over the matched detections' labelled keypoints,
    overall and per keypoint type, and the AP with each error type corrected:
    ``{"matched": N, "keypoints": n, "shares": {...}, "per_keypoint": {name: {...}}, "AP": {"as is": ...,
    "jitter": ..., "inversion": ..., "swap": ..., "miss": ..., "all": ..., "scoring": ...}}`` (shares None where
    nothing counted; ``scoring``: the poses as they are, ranked by :func:`oracle_scores`)."""
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
             + f"; scored by their OKS (oracle ranking) {ap['scoring']:.3f} ({ap['scoring'] - ap['as is']:+.3f})",
             f"{'keypoint':<16}" + "".join(f"{name:>10}" for name in CATEGORIES)]
    for name, row in analysis["per_keypoint"].items():
        lines.append(f"{name:<16}" + "".join(cell(row[c]) for c in CATEGORIES))
    return "\n".join(lines)
