"""experiment=crowdpose_resnet50 trains on a folder laid out as CrowdPose is distributed (images/, json/), with
CrowdPose's annotations: 14 keypoints, no ``area``, no segmentation, a ``crowdIndex`` per image (here made from the
embedded COCO sample)."""

import json
import shutil

import numpy as np

from strongpose.data.sample import sample_paths
from strongpose.train import train


def test_the_crowdpose_experiment_trains_on_crowdpose_layout(train_config, crowdpose_annotations, tmp_path,
                                                             monkeypatch):
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
    # and CrowdPose's AP by crowd index (the converted images have one of each group in turn)
    assert all(0.0 <= metrics[f"val/AP_{group}"] <= 1.0 for group in ("easy", "medium", "hard")), metrics
