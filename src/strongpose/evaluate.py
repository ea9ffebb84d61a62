"""COCO keypoint evaluation of a checkpoint: ``python -m strongpose.evaluate ckpt_path=CKPT
[data.val_images=DIR data.val_annotations=JSON] [test.flip=true] [test.scales=[1,1.5]]`` (Hydra, config
``strongpose/conf/evaluate.yaml``; no data paths = the embedded sample).

Runs :class:`strongpose.inference.Predictor` (validation preprocessing and the test-time options of the
``test`` group) over the validation images, prints COCOeval's table and writes into the run folder
``results.json`` (COCO keypoint results in original-image pixels) and ``summary.json`` (AP ... AR, options,
checkpoint, timing, skipped images).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from strongpose.config_check import (CONFIG_DIR, InputError, check_types, report_input_errors, require_non_negative,
                                     require_positive, run_with_key_hints)
from strongpose.data.coco import COCOKeypointDataset
from strongpose.data.datamodule import data_paths
from strongpose.data.sample import sample_paths
from strongpose.evaluation.coco_eval import check_backend, coco_keypoint_stats
from strongpose.inference.cli import COMMON_TYPES, add_timing, predictor_from_config, timing_summary, write_json
from strongpose.inference.images import ImageFiles, image_batches
from strongpose.structures import Poses
from strongpose.tracking import say


def files_head(files: ImageFiles, count: int) -> list[dict]:
    return [files[i] for i in range(min(count, len(files)))]


# evaluate's options and the data.* keys it reads (the data group's other keys are training's)
TYPES: dict[str, Any] = {
    **COMMON_TYPES, "backend": str, "warmup": bool, "seed": int | None,
    "data.val_images": Path | None, "data.val_annotations": Path | None, "data.max_val_images": int | None,
    "data.input_size": int | None, "data.batch_size": int, "data.val_batch_size": int | None, "data.num_workers": int,
}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as ``cfg`` says; returns the summary (also written to ``summary.json``)."""
    check_types(cfg, TYPES)
    check_backend(cfg.backend)  # before predicting every image, not after
    data = cfg.data
    require_positive("data", max_val_images=data.max_val_images, input_size=data.input_size,
                     batch_size=data.batch_size, val_batch_size=data.val_batch_size)
    require_non_negative("data", num_workers=data.num_workers)
    # as training checks them: both or neither (the embedded sample), and there
    images_dir, annotations = data_paths(data.val_images, data.val_annotations, *sample_paths(), "data.val")
    predictor = predictor_from_config(cfg, data.input_size)
    dataset = COCOKeypointDataset(images_dir, annotations, predictor.codec, input_size=predictor.input_size,
                                  train=False, max_images=data.max_val_images)
    # load_image skips an image as training's validation loop does (unreadable, wrong size, malformed
    # annotations), so that both score the same images; a bound method pickles for the workers
    files = ImageFiles(range(len(dataset)), read=dataset.load_image)
    batch_size = int(data.val_batch_size or data.batch_size)
    results, evaluated, skipped, totals = [], [], [], {}
    if cfg.warmup:  # first calls set things up (allocations, kernels): time the steady state
        warm = [item["image"] for item in files_head(files, batch_size) if item["image"] is not None]
        predictor.predict_batch(warm, batch_size=batch_size)
    start = time.perf_counter()
    for batch in image_batches(files, batch_size, int(data.num_workers)):
        good = [item for item in batch if item["image"] is not None]
        skipped += [{"image_id": dataset.image_ids[item["key"]], "reason": item["error"]} for item in batch
                    if item["image"] is None]
        poses: list[Poses] = predictor.predict_batch([item["image"] for item in good], batch_size=batch_size)
        add_timing(totals, predictor.last_timing)
        for item, p in zip(good, poses):
            image_id = dataset.image_ids[item["key"]]
            evaluated.append(image_id)
            results += p.to_coco(image_id, dataset.category_id)
    wall = time.perf_counter() - start
    for item in skipped:
        print(f"skipped image {item['image_id']}: {item['reason']}")
    if skipped and not evaluated:  # an AP of 0 would look like a result
        raise InputError(f"no image of {annotations} could be used from {images_dir}: all {len(skipped)} "
                         f"skipped, the first: {skipped[0]['reason']}")
    stats = coco_keypoint_stats(dataset.coco, results, evaluated, sigmas=predictor.codec.skeleton.sigmas,
                                verbose=True, backend=cfg.backend, category_id=dataset.category_id)
    if not results:
        print("no people found in any image: every statistic is 0")
    out = Path(cfg.paths.output_dir)
    results_path = write_json(out / "results.json", results)
    summary = {
        "stats": stats,
        "checkpoint": str(cfg.ckpt_path),
        "annotations": str(annotations),
        "images": len(evaluated),
        "people": len(results),
        "skipped": skipped,
        "options": {**predictor.options, "device": str(predictor.device), "batch_size": batch_size,
                    "warmup": bool(cfg.warmup)},
        "timing": timing_summary(totals, len(evaluated), wall),
        "results": str(results_path),
    }
    summary_path = write_json(out / "summary.json", summary)
    say(" ".join(f"{name}={value:.4f}" for name, value in stats.items()))  # printed, and in evaluate.log
    say(f"Evaluated {len(evaluated)} images ({len(skipped)} skipped); results {results_path}, "
          f"summary {summary_path}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> float:
    """Returns AP, so that a Hydra sweep over test options can maximise it."""
    with report_input_errors():
        return run(cfg)["stats"]["AP"]


def cli() -> None:
    """``python -m strongpose.evaluate``: Hydra's ``main``, with the valid keys listed for an unknown one."""
    run_with_key_hints(main, "evaluate")


if __name__ == "__main__":
    cli()
