"""`evaluate results=FILE` scores a COCO results file without a network, and the per-keypoint breakdown says which
keypoints fail (OKS, pixel error, left / right inversions)."""

import json
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from strongpose import evaluate
from strongpose.config_check import ConfigError, InputError
from strongpose.data.annotations import load_coco
from strongpose.data.sample import sample_paths
from strongpose.evaluation.coco_eval import keypoint_breakdown
from strongpose.skeleton import COCO_PERSON
from strongpose.train import CONFIG_DIR


def config(overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("evaluate", overrides=overrides)


def ground_truth_results(change=None):
    """The embedded sample's people as results (score 1), each (17, 3) keypoint array through ``change``."""
    data = json.loads(sample_paths()[1].read_text())
    results = []
    for a in data["annotations"]:
        if a.get("num_keypoints") and not a.get("iscrowd"):
            k = np.array(a["keypoints"], float).reshape(17, 3)
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "keypoints": (change(k) if change else k).ravel().tolist(), "score": 1.0})
    return results


def score(tmp_path, results, *overrides):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return evaluate.run(config([f"results={path}", f"paths.output_dir={tmp_path / 'out'}", *overrides]))


def test_ground_truth_as_results_scores_1_and_a_swap_shows_where(tmp_path):
    summary = score(tmp_path, ground_truth_results())
    assert summary["stats"]["AP"] == 1.0 and summary["images"] == 13 and summary["skeleton"] == "coco"
    assert all(row["oks"] == 1.0 and row["error_px"] == 0.0 for row in summary["per_keypoint"].values())
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["stats"] == summary["stats"]

    def swap_knees(k):
        k[[13, 14]] = k[[14, 13]]
        return k
    swapped = score(tmp_path, ground_truth_results(swap_knees))
    assert swapped["stats"]["AP"] < 1.0
    rows = swapped["per_keypoint"]
    assert rows["left_knee"]["inverted"] > 0.5 and rows["left_knee"]["oks"] < 0.6
    assert all(rows[name]["oks"] == 1.0 and rows[name]["inverted"] == 0.0 for name in ("left_hip", "left_ankle"))
    assert rows["nose"]["inverted"] is None  # no mirror keypoint


def test_keypoint_breakdown_is_cocos_per_keypoint_term():
    coco = load_coco(sample_paths()[1])
    results = ground_truth_results()
    first = results[0]
    moved = np.array(first["keypoints"]).reshape(17, 3)
    moved[0, 0] += 3.0  # the nose 3 px off in one person
    first["keypoints"] = moved.ravel().tolist()
    rows = keypoint_breakdown(coco, results, coco.getImgIds(), COCO_PERSON.keypoints, COCO_PERSON.sigmas,
                              COCO_PERSON.flip_pairs)
    gt = next(a for a in coco.dataset["annotations"] if a["image_id"] == first["image_id"] and a["num_keypoints"]
              and a["keypoints"][2] > 0 and np.allclose(np.array(a["keypoints"]).reshape(17, 3)[1:],
                                                        moved[1:]))
    similarity = math.exp(-9.0 / (2 * 0.026) ** 2 / (gt["area"] + np.spacing(1)) / 2)
    noses = rows["nose"]["labelled"]
    assert rows["nose"]["oks"] == pytest.approx((noses - 1 + similarity) / noses)
    assert rows["nose"]["error_px"] == 0.0  # the median of one 3 px error among many 0s
    assert rows["left_eye"]["oks"] == 1.0


@pytest.mark.parametrize("content, message", [
    ({"image_id": 1}, "not a list of results"),
    ([{"image_id": 1, "category_id": 1, "keypoints": [1, 2], "score": 1}], r"results\[0\] .*keypoints must be"),
    ([{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 2] * 17, "score": "high"}], "score missing or not a"),
    ([{"image_id": "photo_a", "category_id": 1, "keypoints": [1, 2, 2] * 17, "score": 1}], "image_id missing.*stem"),
    ([{"image_id": 1, "category_id": 1, "keypoints": [float("nan"), 2, 2] * 17, "score": 1}], "finite numbers"),
])
def test_a_malformed_results_file_is_named(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        score(tmp_path, content)


def test_results_of_other_images_or_keypoint_counts_are_refused(tmp_path):
    results = ground_truth_results()
    with pytest.raises(InputError, match="1 image ids of its results are not in"):
        score(tmp_path, [*results, {**results[0], "image_id": 999999}])
    with pytest.raises(InputError, match=r"results\[1\] has 5 keypoints, results\[0\] 17"):
        score(tmp_path, [results[0], {**results[1], "keypoints": [1.0, 2.0, 1.0] * 5}])
    five = [{**r, "keypoints": r["keypoints"][:15]} for r in results]
    with pytest.raises(ConfigError, match="which skeleton\\? its results have 5 keypoints"):
        score(tmp_path, five)
    with pytest.raises(ConfigError, match="skeleton 'crowdpose' 14"):
        score(tmp_path, results, "skeleton=crowdpose")
    fourteen = [{**r, "keypoints": r["keypoints"][:42]} for r in results]
    with pytest.raises(InputError, match="skeleton 'crowdpose' chosen by the results' 14 keypoints"):
        score(tmp_path, fourteen)
    with pytest.raises(ConfigError, match="holds no results"):
        score(tmp_path, [])
    assert score(tmp_path, [], "skeleton=coco")["stats"]["AP"] == 0.0
    with pytest.raises(ConfigError, match="results= and ckpt_path= both set"):
        score(tmp_path, results, "ckpt_path=x.ckpt")


def test_results_of_some_images_only_are_said(tmp_path, caplog):
    results = ground_truth_results()
    first = results[0]["image_id"]
    score(tmp_path, [r for r in results if r["image_id"] == first])
    assert "has no result for" in caplog.text and "count as missed people" in caplog.text
    caplog.clear()
    score(tmp_path, results, "data.max_val_images=2")
    assert "are of images beyond the 2 scored" in caplog.text


def test_evaluate_needs_a_checkpoint_or_results(tmp_path):
    with pytest.raises(ConfigError, match="which checkpoint\\?.*results=FILE"):
        evaluate.run(config([f"paths.output_dir={tmp_path}"]))


def test_error_analysis_is_reported_when_asked(tmp_path):
    """Ronchi & Perona's error types (tests/test_evaluation/test_error_analysis.py): ground truth as results is all
    good, left / right confused wrists are inversions, and correcting them gives the AP back."""
    plain = score(tmp_path, ground_truth_results())
    assert plain["error_analysis"] is None  # off by default
    exact = score(tmp_path, ground_truth_results(), "error_analysis=true")["error_analysis"]
    assert exact["shares"]["good"] == 1.0 and exact["AP"]["as is"] == exact["AP"]["all"] == pytest.approx(1.0)

    def swap_wrists(k):
        k[[9, 10]] = k[[10, 9]]
        return k

    summary = score(tmp_path, ground_truth_results(swap_wrists), "error_analysis=true")
    errors = summary["error_analysis"]
    assert errors["AP"]["as is"] == pytest.approx(summary["stats"]["AP"]) and errors["AP"]["as is"] < 1.0
    # most of the loss is the inversions (close wrists are jitter, one without its partner labelled a miss)
    assert errors["AP"]["inversion"] - errors["AP"]["as is"] > 0.5 * (1.0 - errors["AP"]["as is"])
    assert errors["AP"]["all"] == pytest.approx(1.0)
    assert errors["per_keypoint"]["left_wrist"]["inversion"] > 0.5 and errors["per_keypoint"]["nose"]["good"] == 1.0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["error_analysis"] == errors
