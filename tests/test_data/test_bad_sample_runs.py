"""Training over a dataset with broken samples: a few are skipped, named in the log and listed in the run
folder's bad_samples.tsv; a mostly broken dataset stops the run with the share and the file."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from strongpose.data import sample_paths
from strongpose.data.datamodule import BAD_SAMPLES_COLUMNS, BAD_SAMPLES_FILE
from strongpose.train import train


def _break(images: Path, annotations: Path, data: dict, count: int) -> dict[int, tuple[str, str]]:
    """Break the first ``count`` images with people (by id) in turn: truncated JPEG, missing file, malformed
    annotation, empty file; returns image id -> (file name, reason excerpt)."""
    broken = {}
    people = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    for n, info in enumerate(sorted((i for i in data["images"] if i["id"] in people), key=lambda i: i["id"])[:count]):
        path = images / info["file_name"]
        kind = n % 4
        if kind == 0:
            path.write_bytes(path.read_bytes()[:2000])
            broken[info["id"]] = (info["file_name"], "cannot decode image")
        elif kind == 1:
            path.unlink()
            broken[info["id"]] = (info["file_name"], "image file not found")
        elif kind == 2:
            ann = next(a for a in data["annotations"] if a["image_id"] == info["id"] and not a["iscrowd"])
            ann["keypoints"] = ann["keypoints"][:-3]
            broken[info["id"]] = (info["file_name"], f"annotation id {ann['id']}: malformed annotation: 48 keypoint")
        else:
            path.write_bytes(b"")
            broken[info["id"]] = (info["file_name"], "empty image file")
    annotations.write_text(json.dumps(data))
    return broken


def _rows(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    assert tuple(header.split("\t")) == BAD_SAMPLES_COLUMNS
    return [dict(zip(BAD_SAMPLES_COLUMNS, line.split("\t"), strict=True)) for line in lines]


def _data_overrides(images: Path, annotations: Path) -> list[str]:
    return [f"data.train_images={images}", f"data.train_annotations={annotations}", f"data.val_images={images}",
            f"data.val_annotations={annotations}", "data.max_train_images=null", "data.max_val_images=4",
            "data.batch_size=4", "data.val_batch_size=4"]


@pytest.mark.slow
def test_a_few_bad_samples_are_skipped_named_and_listed(sample_copy, tmp_path, train_config, caplog) -> None:
    images, annotations, data = sample_copy
    broken = _break(images, annotations, data, 3)
    run = tmp_path / "run"
    cfg = train_config([*_data_overrides(images, annotations), "data.max_train_images=8", "data.num_workers=2"],
                       output_dir=run)
    with caplog.at_level(logging.WARNING, logger="strongpose.data.datamodule"):
        _, objects = train(cfg)

    assert len(objects["datamodule"].train_dataset) == 8
    assert objects["datamodule"].bad_counts["train"] == [3, 8]  # the 5 good samples were used
    assert objects["trainer"].global_step == 2
    rows = _rows(run / BAD_SAMPLES_FILE)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert sorted(int(r["image_id"]) for r in train_rows) == sorted(broken)  # each once, although 2 workers
    for row in rows:
        file_name, reason = broken[int(row["image_id"])]
        assert row["file"] == file_name and reason in row["reason"] and row["rank"] == "0"
        assert f"{file_name} (image id {row['image_id']})" in caplog.text
    # validation took the first 4 images by id: the broken ones among them are listed for it too
    first_four = sorted(i["id"] for i in data["images"])[:4]
    assert sorted(int(r["image_id"]) for r in rows if r["split"] == "val") == sorted(set(broken) & set(first_four))


@pytest.mark.slow
def test_a_mostly_bad_dataset_stops_the_run(sample_copy, tmp_path, train_config) -> None:
    images, annotations, data = sample_copy
    _break(images, annotations, data, 10)
    run = tmp_path / "run"
    cfg = train_config(_data_overrides(images, annotations), output_dir=run)
    with pytest.raises(RuntimeError, match=r"too many bad train samples: \d+ of the \d+ seen so far \(\d+%\)") as err:
        train(cfg)
    listed = run / BAD_SAMPLES_FILE
    assert f"they are listed in {listed}" in str(err.value) and "max_bad_fraction=0.1" in str(err.value)
    assert len({r["image_id"] for r in _rows(listed)}) > 5  # more than 10% of the 50-sample floor


def test_missing_or_malformed_annotation_file_fails_at_start_up(sample_copy, tmp_path, train_config) -> None:
    """Before any step (and before the model is built, for a missing file), naming the path and the cause."""
    images, annotations, _ = sample_copy
    missing = tmp_path / "missing.json"
    val = [f"data.val_images={images}", f"data.val_annotations={annotations}"]
    # hydra.utils.instantiate wraps the data module's FileNotFoundError, keeping its message
    with pytest.raises(InstantiationException, match=re.escape(f"train_annotations: COCO annotation file not found: "
                                                               f"{missing}")):
        train(train_config([f"data.train_images={images}", f"data.train_annotations={missing}", *val],
                           output_dir=tmp_path))
    annotations.write_text('{"images": [], "annotations": [')
    with pytest.raises(ValueError, match=re.escape(f"cannot parse COCO annotation file {annotations}: Expecting")):
        train(train_config([f"data.train_images={images}", f"data.train_annotations={annotations}",
                            f"data.val_images={images}", f"data.val_annotations={sample_paths()[1]}"],
                           output_dir=tmp_path))
    assert not (tmp_path / "checkpoints").exists()
