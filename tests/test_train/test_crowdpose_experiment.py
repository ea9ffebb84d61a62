"""experiment=crowdpose_resnet50 trains on a folder laid out as CrowdPose is distributed (images/, json/), with
CrowdPose's annotations: 14 keypoints, no ``area``, no segmentation (here made from the embedded COCO sample)."""

import json
import shutil

import numpy as np

from strongpose.data.sample import sample_paths
from strongpose.skeleton import COCO_PERSON, CROWDPOSE
from strongpose.train import train


def crowdpose_annotations(coco: dict) -> dict:
    """COCO person annotations as CrowdPose writes them: its 14 keypoints (head from the nose, neck between the
    shoulders when both are labelled), ``num_keypoints``, ``bbox``, ``iscrowd``; no ``area``, no segmentation."""
    index = {name: i for i, name in enumerate(COCO_PERSON.keypoints)}
    people = []
    for ann in coco["annotations"]:
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        rows = [kp[index[name]] for name in CROWDPOSE.keypoints[:12]]
        rows.append(kp[index["nose"]])
        left, right = kp[index["left_shoulder"]], kp[index["right_shoulder"]]
        rows.append(np.r_[(left[:2] + right[:2]) / 2, 2.0] if left[2] > 0 and right[2] > 0 else np.zeros(3))
        flat = np.stack(rows).reshape(-1)
        people.append({"id": ann["id"], "image_id": ann["image_id"], "category_id": 1, "bbox": ann["bbox"],
                       "iscrowd": 0, "keypoints": flat.tolist(), "num_keypoints": int((flat[2::3] > 0).sum())})
    return {"images": coco["images"], "annotations": people,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": list(CROWDPOSE.keypoints),
                            "skeleton": [[CROWDPOSE.keypoints.index(a) + 1, CROWDPOSE.keypoints.index(b) + 1]
                                         for a, b in CROWDPOSE.tree_edges]}]}


def test_the_crowdpose_experiment_trains_on_crowdpose_layout(train_config, tmp_path, monkeypatch):
    images, annotations = sample_paths()
    root = tmp_path / "CrowdPose"
    shutil.copytree(images, root / "images")
    (root / "json").mkdir()
    converted = crowdpose_annotations(json.loads(annotations.read_text()))
    assert converted["annotations"] and all("area" not in a for a in converted["annotations"])
    for split in ("trainval", "test"):
        (root / "json" / f"crowdpose_{split}.json").write_text(json.dumps(converted))
    monkeypatch.setenv("CROWDPOSE_ROOT", str(root))
    cfg = train_config(["experiment=crowdpose_resnet50", "trainer=cpu", "trainer.precision=32", "backbone=resnet18",
                        "backbone.pretrained=false", "trainer.fast_dev_run=true", "data.num_workers=0",
                        "data.pin_memory=false", "data.persistent_workers=false", "model.heads.width=32",
                        "callbacks.coco_eval.log_images=0"], output_dir=tmp_path / "run")
    assert cfg.codec.skeleton == "crowdpose" and cfg.data.val_annotations.endswith("json/crowdpose_test.json")
    metrics, objects = train(cfg)
    assert objects["model"].codec.num_keypoints == 14
    assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["val/loss"])
    assert 0.0 <= metrics["val/AP"] <= 1.0  # COCO's OKS AP with CrowdPose's sigmas, on area-less people
