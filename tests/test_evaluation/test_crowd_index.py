"""CrowdPose's AP by crowd index (AP_easy / AP_medium / AP_hard) for ground truth whose images have ``crowdIndex``."""

import json

import numpy as np
import pytest
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster

from strongpose.callbacks import monitor_mode
from strongpose.data.annotations import load_coco
from strongpose.data.sample import sample_paths
from strongpose.evaluation import CROWD_STAT_NAMES, STAT_NAMES, COCOKeypointAP, coco_keypoint_stats, stat_names
from strongpose.evaluation.coco_eval import crowd_index_groups
from strongpose.skeleton import CROWDPOSE


@pytest.fixture
def crowdpose_file(crowdpose_annotations, tmp_path):
    path = tmp_path / "crowdpose_test.json"
    path.write_text(json.dumps(crowdpose_annotations(json.loads(sample_paths()[1].read_text()))))
    return path


def noisy_results(coco, seed: int = 0) -> list[dict]:
    """Each labelled person with noise of a few pixels on its keypoints and a random score; a fifth left out, and
    one false person per image: AP well away from both 0 and 1, different per crowd-index group."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in coco.dataset["annotations"]:
        if ann["num_keypoints"] == 0 or rng.random() < 0.2:
            continue
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kp[:, :2] += rng.normal(0.0, 2.0 + 6.0 * rng.random(), size=(len(kp), 2))
        kp[:, 2] = 1.0
        results.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                        "score": float(rng.random())})
    for image in coco.dataset["images"]:
        kp = np.c_[rng.random((14, 2)) * [image["width"], image["height"]], np.ones(14)]
        results.append({"image_id": image["id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                        "score": float(rng.random())})
    return results


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_crowd_index_ap_equals_faster_coco_evals_crowdpose_evaluation(crowdpose_file, backend):
    coco = load_coco(crowdpose_file)
    results = noisy_results(coco)
    stats = coco_keypoint_stats(coco, results, coco.getImgIds(), CROWDPOSE.sigmas, backend=backend)
    assert list(stats) == list(STAT_NAMES + CROWD_STAT_NAMES) == list(stat_names(coco))
    # the reference: faster-coco-eval's "keypoints_crowd" mode (crowdposetools' and xtcocotools' evaluation),
    # which reads crowdIndex from the file and takes CrowdPose's area-less people at 0.53 x their box
    gt = FasterCOCO(str(crowdpose_file))
    ev = COCOeval_faster(gt, gt.loadRes(results), "keypoints_crowd", kpt_oks_sigmas=list(CROWDPOSE.sigmas),
                         use_area=False, print_function=lambda *args: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    reference = ev.stats_as_dict
    for name in ("AP", "AP50", "AP75", "AR"):
        assert stats[name] == pytest.approx(reference[{"AP": "AP_all", "AR": "AR_all"}.get(name, name.replace("AP", "AP_"))])
    for name in CROWD_STAT_NAMES:
        # the reference rounds these to 4 decimals
        assert stats[name] == pytest.approx(reference[name], abs=5e-5), name
    values = [stats[name] for name in CROWD_STAT_NAMES]
    assert all(0.05 < v < 0.95 for v in values) and len(set(np.round(values, 3))) == 3, values


def test_each_group_is_the_ap_of_its_images_alone(crowdpose_file):
    coco = load_coco(crowdpose_file)
    results = noisy_results(coco, seed=1)
    evaluated = coco.getImgIds()[1:]  # a subset (max_val_images): groups hold only evaluated images
    groups = crowd_index_groups(coco, evaluated)
    assert sorted(sum(groups.values(), [])) == sorted(evaluated)
    assert all(coco.imgs[i]["crowdIndex"] < 0.2 for i in groups["AP_easy"])
    assert all(0.2 <= coco.imgs[i]["crowdIndex"] < 0.8 for i in groups["AP_medium"])
    assert all(coco.imgs[i]["crowdIndex"] >= 0.8 for i in groups["AP_hard"])
    stats = coco_keypoint_stats(coco, results, evaluated, CROWDPOSE.sigmas)
    for name, ids in groups.items():
        assert stats[name] == pytest.approx(coco_keypoint_stats(coco, results, ids, CROWDPOSE.sigmas)["AP"]), name
    # a group without images has no AP (-1, as COCOeval's statistics without ground truth)
    only_easy = coco_keypoint_stats(coco, results, groups["AP_easy"], CROWDPOSE.sigmas)
    assert only_easy["AP_medium"] == only_easy["AP_hard"] == -1.0 and only_easy["AP_easy"] > 0
    # no results: every statistic 0, as for COCO
    assert coco_keypoint_stats(coco, [], evaluated) == {name: 0.0 for name in stat_names(coco)}


def test_crowd_statistics_only_when_every_image_has_a_crowd_index(crowdpose_file):
    data = json.loads(crowdpose_file.read_text())
    del data["images"][0]["crowdIndex"]
    crowdpose_file.write_text(json.dumps(data))
    coco = load_coco(crowdpose_file)
    assert stat_names(coco) == STAT_NAMES
    assert list(coco_keypoint_stats(coco, noisy_results(coco), coco.getImgIds(), CROWDPOSE.sigmas)) == list(STAT_NAMES)


def test_the_metric_returns_and_checkpoints_maximise_the_crowd_statistics(crowdpose_file):
    metric = COCOKeypointAP(crowdpose_file, sigmas=CROWDPOSE.sigmas)
    metric.update([], {"image_id": []})
    assert list(metric.compute()) == list(STAT_NAMES + CROWD_STAT_NAMES)
    assert [monitor_mode(f"val/{name}") for name in CROWD_STAT_NAMES] == ["max"] * 3
