"""Ronchi & Perona's keypoint error types: each placed by hand is found as its type, the AP with every error
corrected is the perfect one, and evaluate reports them when asked."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from strongpose.evaluation.error_analysis import CATEGORIES, classify_keypoints, error_analysis, error_table
from strongpose.skeleton import COCO_PERSON

NAMES = list(COCO_PERSON.keypoints)
J = {name: i for i, name in enumerate(NAMES)}
MIRROR = np.arange(17)
for a, b in COCO_PERSON.flip_pairs:
    MIRROR[J[a]], MIRROR[J[b]] = J[b], J[a]


def person(x0: float, labelled=None) -> np.ndarray:
    """(17, 3) keypoints of a standing person 40 px wide starting at x0 (every keypoint apart from the others)."""
    kp = np.zeros((17, 3))
    kp[:, 0] = x0 + np.array([20, 17, 23, 14, 26, 10, 30, 6, 34, 2, 38, 13, 27, 12, 28, 11, 29])
    kp[:, 1] = np.array([10, 8, 8, 10, 10, 30, 30, 50, 50, 70, 70, 75, 75, 100, 100, 125, 125])
    kp[:, 2] = 2
    if labelled is not None:
        kp[~np.asarray(labelled), :] = 0
    return kp


def ground_truth(people: list[np.ndarray], crowd_box=None) -> COCO:
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 40.0 * 130,
             "bbox": [float(kp[:, 0].min()), 0.0, 40.0, 130.0], "keypoints": kp.reshape(-1).tolist(),
             "num_keypoints": int((kp[:, 2] > 0).sum())} for i, kp in enumerate(people)]
    if crowd_box is not None:
        anns.append({"id": 99, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 1000.0, "bbox": crowd_box,
                     "keypoints": [0] * 51, "num_keypoints": 0,
                     "segmentation": {"counts": [0, 100], "size": [300, 400]}})
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 400, "height": 300, "file_name": "a.jpg"}], "annotations": anns,
                    "categories": [{"id": 1, "name": "person", "keypoints": NAMES,
                                    "skeleton": []}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def result(kp: np.ndarray, score: float = 1.0) -> dict:
    out = kp.copy()
    out[:, 2] = 1.0
    return {"image_id": 1, "category_id": 1, "keypoints": out.reshape(-1).tolist(), "score": score}


def test_each_error_type_placed_by_hand_is_found():
    a, b = person(0), person(150, labelled=np.arange(17) != J["right_ankle"])
    coco = ground_truth([a, b])
    dt = a.copy()
    dt[J["left_shoulder"], 0] += 10.0                     # ks 0.68 at this size: jitter
    dt[J["left_wrist"], :2] = a[J["right_wrist"], :2]     # the same person's right wrist: inversion
    dt[J["left_knee"], :2] = b[J["left_knee"], :2]        # the other person's left knee: swap
    dt[J["left_ankle"], :2] = (380.0, 280.0)              # nowhere: miss
    results = [result(dt, 0.9), result(b, 0.8)]
    index, gt_ids, category = classify_keypoints(coco, results, [1], COCO_PERSON.sigmas, MIRROR)
    rows = dict(zip(index.tolist(), category))
    assert dict(zip(index.tolist(), gt_ids.tolist())) == {0: 1, 1: 2}
    named = {NAMES[j]: CATEGORIES[c] for j, c in enumerate(rows[0]) if CATEGORIES[c] != "good"}
    assert named == {"left_shoulder": "jitter", "left_wrist": "inversion", "left_knee": "swap", "left_ankle": "miss"}
    assert rows[1][J["right_ankle"]] == -1 and (np.delete(rows[1], J["right_ankle"]) == 0).all()  # unlabelled: out

    analysis = error_analysis(coco, results, [1], NAMES, COCO_PERSON.sigmas, COCO_PERSON.flip_pairs)
    assert analysis["matched"] == 2 and analysis["keypoints"] == 33
    assert analysis["shares"]["miss"] == pytest.approx(1 / 33) and analysis["shares"]["good"] == pytest.approx(29 / 33)
    assert analysis["per_keypoint"]["left_wrist"]["inversion"] == 0.5  # one of the two people
    assert analysis["per_keypoint"]["right_ankle"]["good"] == 1.0  # only the first person has it labelled
    ap = analysis["AP"]
    assert ap["as is"] < 1.0 and ap["all"] == pytest.approx(1.0)
    assert all(ap[kind] >= ap["as is"] for kind in ("jitter", "inversion", "swap", "miss"))
    assert ap["miss"] > ap["as is"]  # the far ankle alone costs AP at the strict thresholds
    table = error_table(analysis)
    assert "inversion" in table.splitlines()[3] and table.splitlines()[-1].startswith("right_ankle")


def test_people_in_crowds_or_unmatched_are_not_analysed():
    a = person(0)
    coco = ground_truth([a], crowd_box=[200.0, 0.0, 150.0, 150.0])
    far = person(260)  # inside the crowd region: ignored by COCOeval, so not analysed
    results = [result(a), result(far, 0.5), result(person(0) + [[0, 200, 0]], 0.4)]  # the last: OKS ~0 to anyone
    index, _, _ = classify_keypoints(coco, results, [1], COCO_PERSON.sigmas, MIRROR)
    assert index.tolist() == [0]
    assert error_analysis(coco, [], [1], NAMES, COCO_PERSON.sigmas)["shares"]["good"] is None


def test_oracle_scoring_ranks_the_better_pose_first():
    a = person(0)
    coco = ground_truth([a])
    loose = a.copy()
    loose[:, 0] += 6.0  # OKS ~0.6: a true positive at the low thresholds only
    results = [result(a, 0.1), result(loose, 0.9)]  # the worse pose scored higher
    ap = error_analysis(coco, results, [1], NAMES, COCO_PERSON.sigmas, COCO_PERSON.flip_pairs)["AP"]
    assert ap["as is"] < 0.9 and ap["scoring"] == pytest.approx(1.0)


def test_image_oks_is_the_mean_best_fit_of_each_annotated_person():
    from strongpose.evaluation.error_analysis import image_oks

    a, b = person(0), person(150)
    coco = ground_truth([a, b])
    assert image_oks(coco, [result(a), result(b)], [1], COCO_PERSON.sigmas, 1) == {
        1: {"oks": pytest.approx(1.0), "people": 2, "results": 2, "unpaired": 0}}
    half = image_oks(coco, [result(a), result(a, 0.5)], [1], COCO_PERSON.sigmas, 1)[1]
    # one to one: b is fitted by no pose (0), a perfectly; the copy of a fits no one else
    assert half["oks"] == pytest.approx(0.5, abs=1e-6) and half["unpaired"] == 1
    assert image_oks(coco, [], [1], COCO_PERSON.sigmas, 1)[1]["oks"] == 0.0


def test_oracle_scoring_leaves_duplicates_at_zero():
    """A bottom-up model's duplicates: each person's copy would have its original's OKS as a score, and the
    oracle ranking fell below the real one (0.836 -> 0.477 on coco-val-part). Paired one to one, copies score 0."""
    a, b = person(0), person(150)
    coco = ground_truth([a, b])
    rng = np.random.default_rng(0)
    noisy = [p + np.c_[rng.normal(0, 3, (17, 2)), np.zeros(17)] for p in (a, b)]
    results = [result(noisy[0], 0.9), result(noisy[1], 0.8), result(noisy[0], 0.2), result(noisy[1], 0.1)]
    analysis = error_analysis(coco, results, [1], NAMES, COCO_PERSON.sigmas, COCO_PERSON.flip_pairs)
    assert analysis["AP"]["scoring"] >= analysis["AP"]["as is"] - 1e-9
