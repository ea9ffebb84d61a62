"""COCO keypoint evaluation of a checkpoint: ``python -m strongpose.evaluate ckpt_path=CKPT
[data.val_images=DIR data.val_annotations=JSON] [test.flip=true] [test.scales=[1,1.5]]`` (Hydra, config
``strongpose/conf/evaluate.yaml``; no data paths = the embedded sample).

Runs :class:`strongpose.inference.Predictor` (validation preprocessing and the test-time options of the
``test`` group) over the validation images, prints COCOeval's table and writes into the run folder
``results.json`` (COCO keypoint results in original-image pixels) and ``summary.json`` (AP ... AR, options,
checkpoint, timing, skipped images).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from strongpose.config_check import (CONFIG_DIR, ConfigError, InputError, check_types, report_input_errors,
                                     require_non_negative, require_positive, run_with_key_hints)
from strongpose.data.annotations import load_coco, person_category
from strongpose.data.coco import COCOKeypointDataset
from strongpose.data.datamodule import data_paths
from strongpose.data.sample import sample_paths
from strongpose.evaluation.coco_eval import breakdown_table, check_backend, coco_keypoint_stats, keypoint_breakdown
from strongpose.evaluation.error_analysis import error_analysis, error_table, image_oks
from strongpose.inference.cli import COMMON_TYPES, add_timing, predictor_from_config, timing_summary, write_json
from strongpose.inference.images import ImageFiles, image_batches
from strongpose.skeleton import SKELETONS, Skeleton, load_skeleton
from strongpose.structures import Poses
from strongpose.tracking import say
from strongpose.viz import draw_ground_truth, draw_poses

log = logging.getLogger(__name__)


def files_head(files: ImageFiles, count: int) -> list[dict]:
    return [files[i] for i in range(min(count, len(files)))]


# evaluate's options and the data.* keys it reads (the data group's other keys are training's)
TYPES: dict[str, Any] = {
    **COMMON_TYPES, "ckpt_path": Path | None, "results": Path | None, "skeleton": str | None, "per_keypoint": bool,
    "error_analysis": bool, "draw_worst": int, "backend": str, "warmup": bool, "seed": int | None,
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
    require_non_negative("", draw_worst=cfg.get("draw_worst", 0))
    if cfg.get("results") is not None:
        if cfg.get("draw_worst", 0):
            raise ConfigError("draw_worst draws the images a checkpoint is evaluated on; with results=FILE no "
                              "images are read (evaluate the checkpoint, or predict on the images to draw them)")
        return score_results(cfg)
    if cfg.ckpt_path is None:
        raise ConfigError("which checkpoint? python -m strongpose.evaluate ckpt_path=CKPT (a .ckpt or an exported "
                          ".onnx), or results=FILE to score a COCO results file")
    if cfg.get("skeleton") is not None:
        raise ConfigError("skeleton= is for results=FILE: a checkpoint holds its skeleton")
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
    per_keypoint = print_breakdown(cfg, dataset.coco, results, evaluated, predictor.codec.skeleton,
                                   dataset.category_id)
    errors = print_errors(cfg, dataset.coco, results, evaluated, predictor.codec.skeleton, dataset.category_id)
    out = Path(cfg.paths.output_dir)
    worst = draw_worst(cfg, dataset, results, evaluated, out / "worst", predictor.codec.skeleton)
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
        "per_keypoint": per_keypoint,
        "error_analysis": errors,
        "worst": worst,
    }
    summary_path = write_json(out / "summary.json", summary)
    say(" ".join(f"{name}={value:.4f}" for name, value in stats.items()))  # printed, and in evaluate.log
    say(f"Evaluated {len(evaluated)} images ({len(skipped)} skipped); results {results_path}, "
          f"summary {summary_path}")
    return summary


def print_breakdown(cfg: DictConfig, coco: Any, results: list[dict], image_ids: list[int], skeleton: Skeleton,
                    category_id: int) -> dict[str, dict[str, float | None]] | None:
    """:func:`keypoint_breakdown` printed as a table (``per_keypoint=true``), for the summary."""
    if not cfg.get("per_keypoint", True):
        return None
    rows = keypoint_breakdown(coco, results, image_ids, skeleton.keypoints, skeleton.sigmas, skeleton.flip_pairs,
                              category_id)
    print("Per keypoint, over the people matched at OKS 0.5:\n" + breakdown_table(rows))
    return rows


def read_results(path: Path) -> list[dict]:
    """A COCO keypoint results file (``predict``'s or ``evaluate``'s ``results.json``, another code's), checked:
    a list of ``{"image_id", "category_id", "keypoints": [x, y, v] * K, "score"}`` with one K throughout."""
    if path.is_dir():
        raise InputError(f"results={path} is a folder; name the results file (.json) in it")
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"cannot parse results file {path}: {err}") from err
    if not isinstance(data, list):
        raise InputError(f"{path} is not a COCO results file: the top level is a {type(data).__name__}, not a list "
                         f"of results")
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    count = None
    for i, r in enumerate(data):
        entry = f"{path}: results[{i}] = {str(r)[:100]}"
        if not isinstance(r, dict):
            raise InputError(f"{entry} is not a keypoint result {{image_id, category_id, keypoints: [x, y, v] * K, "
                             f"score}}")
        if wrong := [key for key in ("image_id", "category_id", "score") if not number(r.get(key))]:
            raise InputError(f"{entry}: {', '.join(wrong)} missing or not a finite number" + (
                " (predict names images by file stem where it is no number: results of images named by their COCO "
                "id score here)" if "image_id" in wrong and isinstance(r.get("image_id"), str) else ""))
        keypoints = r.get("keypoints")
        if not (isinstance(keypoints, list) and keypoints and len(keypoints) % 3 == 0
                and all(number(v) for v in keypoints)):
            raise InputError(f"{entry}: keypoints must be [x, y, v] * K finite numbers")
        if count is not None and len(keypoints) != count:
            raise InputError(f"{path}: results[{i}] has {len(keypoints) // 3} keypoints, results[0] {count // 3}")
        count = len(keypoints)
    return data


def print_errors(cfg: DictConfig, coco: Any, results: list[dict], image_ids: list[int], skeleton: Skeleton,
                 category_id: int) -> dict[str, Any] | None:
    """:func:`error_analysis` printed (``error_analysis=true``), for the summary."""
    if not cfg.get("error_analysis", False):
        return None
    analysis = error_analysis(coco, results, image_ids, skeleton.keypoints, skeleton.sigmas, skeleton.flip_pairs,
                              category_id, backend=cfg.backend)
    print(error_table(analysis))
    return analysis


def draw_worst(cfg: DictConfig, dataset: COCOKeypointDataset, results: list[dict], image_ids: list[int], folder: Path,
               skeleton: Skeleton) -> list[dict] | None:
    """``draw_worst=N``: the N evaluated images whose annotated people the results fit worst (the lowest mean best
    OKS, :func:`image_oks`), drawn into ``folder`` as ``<rank>_<file name>``: the ground truth thin in green, the
    predictions over it with every keypoint (the unfound ones' guesses too, which the OKS counts). Returns them,
    worst first, for the summary."""
    count = int(cfg.get("draw_worst", 0))
    if not count:
        return None
    scored = image_oks(dataset.coco, results, image_ids, skeleton.sigmas, dataset.category_id)
    chosen = sorted(scored.items(), key=lambda item: (item[1]["oks"], item[0]))[:count]
    folder.mkdir(parents=True, exist_ok=True)
    index = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    k = skeleton.num_keypoints
    drawn = []
    for rank, (image_id, row) in enumerate(chosen):
        image = torch.from_numpy(np.ascontiguousarray(dataset.load_image(index[image_id]))).permute(2, 0, 1)
        people = [a["keypoints"] for a in dataset.coco.imgToAnns.get(image_id, [])
                  if a.get("category_id") == dataset.category_id and not a.get("iscrowd", 0)
                  and a.get("num_keypoints", 0) > 0]
        image = draw_ground_truth(image, np.array(people, np.float32).reshape(-1, k, 3), skeleton)
        found = [r for r in results if r["image_id"] == image_id and r["category_id"] == dataset.category_id]
        poses = Poses(torch.tensor([r["keypoints"] for r in found], dtype=torch.float32).reshape(-1, k, 3),
                      torch.tensor([r["score"] for r in found], dtype=torch.float32))
        image = draw_poses(image, poses, skeleton, score_threshold=0.0)  # unfound guesses too: COCOeval counts them
        name = f"{rank:02d}_{Path(dataset.coco.imgs[image_id]['file_name']).name}"
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(image.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {folder / name}")
        drawn.append({"image_id": image_id, "file": str(folder / name), **row})
    print(f"The {len(drawn)} images fitted worst (mean best OKS of their people), drawn in {folder}: "
          + ", ".join(f"{d['image_id']} {d['oks']:.2f}" for d in drawn))
    return drawn


def score_results(cfg: DictConfig) -> dict[str, Any]:
    """``results=FILE``: COCO keypoint AP of a results file against ``data.val_annotations`` (default: the
    embedded sample's), on its first ``data.max_val_images`` images as a checkpoint's evaluation would; no network.
    The skeleton (OKS sigmas, keypoint names, flip pairs) is ``skeleton=`` or the built-in one with the results'
    keypoint count."""
    path = Path(cfg.results)
    if cfg.get("ckpt_path") is not None:
        raise ConfigError("results= and ckpt_path= both set: results=FILE scores a results file without a network; "
                          "ckpt_path=CKPT runs one; give one")
    results = read_results(path)
    annotations = Path(cfg.data.val_annotations) if cfg.data.val_annotations is not None else sample_paths()[1]
    inferred = ""
    if cfg.get("skeleton") is not None:
        skeleton = load_skeleton(str(cfg.skeleton))
    else:
        if not results:
            raise ConfigError(f"{path} holds no results (an empty list): give skeleton=NAME to score it (AP 0)")
        count = len(results[0]["keypoints"]) // 3
        matching = [s for s in SKELETONS.values() if s.num_keypoints == count]
        if len(matching) != 1:
            raise ConfigError(f"{path}: which skeleton? its results have {count} keypoints; give skeleton=NAME "
                              f"({', '.join(sorted(SKELETONS))}) or skeleton=YAML")
        skeleton = matching[0]
        inferred = f" (skeleton {skeleton.name!r} chosen by the results' {count} keypoints; skeleton= to choose)"
    if results and len(results[0]["keypoints"]) != 3 * skeleton.num_keypoints:
        raise ConfigError(f"{path}: its results have {len(results[0]['keypoints']) // 3} keypoints, skeleton "
                          f"{skeleton.name!r} {skeleton.num_keypoints}")
    coco = load_coco(annotations)
    try:
        category_id = person_category(coco, skeleton.keypoints, annotations)
    except InputError as err:
        raise type(err)(f"{err}{inferred}") from None
    image_ids = sorted(coco.imgs)[:cfg.data.max_val_images]
    if unknown := sorted({r["image_id"] for r in results} - set(coco.imgs)):
        raise InputError(f"{path}: {len(unknown)} image ids of its results are not in {annotations} (e.g. "
                         f"{unknown[:5]}): another annotation file?")
    others = sum(r["category_id"] != category_id for r in results)
    if others:
        log.warning("%d of %d results in %s are of another category than %d (the keypoint category of %s): not "
                    "scored", others, len(results), path, category_id, annotations)
    scored, covered = set(image_ids), {r["image_id"] for r in results}
    if outside := sum(r["image_id"] not in scored for r in results):
        log.warning("%d of %d results in %s are of images beyond the %d scored (data.max_val_images): not scored",
                    outside, len(results), path, len(image_ids))
    with_people = {a["image_id"] for a in coco.dataset["annotations"] if a.get("category_id") == category_id
                   and not a.get("iscrowd")} & scored
    if missed := len(with_people - covered):  # a model misses some; most missing looks like a part of the results
        (log.warning if missed * 2 > len(with_people) else log.info)(
            "%s has no result for %d of the %d scored images with people: they count as missed people",
            path, missed, len(with_people))
    stats = coco_keypoint_stats(coco, results, image_ids, sigmas=skeleton.sigmas, verbose=True, backend=cfg.backend,
                                category_id=category_id)
    per_keypoint = print_breakdown(cfg, coco, results, image_ids, skeleton, category_id)
    errors = print_errors(cfg, coco, results, image_ids, skeleton, category_id)
    summary = {"stats": stats, "results": str(path), "annotations": str(annotations), "images": len(image_ids),
               "people": sum(r["image_id"] in scored and r["category_id"] == category_id for r in results),
               "skeleton": skeleton.name, "per_keypoint": per_keypoint, "error_analysis": errors}
    summary_path = write_json(Path(cfg.paths.output_dir) / "summary.json", summary)
    say(" ".join(f"{name}={value:.4f}" for name, value in stats.items()))
    say(f"Scored {path} on {len(image_ids)} images of {annotations}; summary {summary_path}")
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
