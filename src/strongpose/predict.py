"""People in images or a video: ``python -m strongpose.predict ckpt_path=CKPT input=PATH [output=DIR]
[score_threshold=0.3] [batch_size=8] [test.flip=true]`` (Hydra, config ``strongpose/conf/predict.yaml``).

PATH is an image, a folder of images or a video (OpenCV reads it). Writes into DIR (default: the run
folder) ``results.json``: COCO keypoint results in original-image pixels, each with its ``file_name``
(``image_id`` is the file name's stem, as an integer when it is one, the file name where two files would
share one, or the frame number of a video; pixels of the image as shown: turned as its EXIF orientation says);
``summary.json`` (counts, skipped files and why, options, timing); and the drawn images (same file names)
or the drawn video (``<name>_poses.mp4``); with ``draw_maps=true`` also ``maps/<file name>``: the predicted
maps over each image. Unreadable images are reported and skipped; the others go on.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from strongpose.config_check import (CONFIG_DIR, ConfigError, InputError, check_types, report_input_errors,
                                     require_non_negative, require_positive, run_with_key_hints)
from strongpose.inference import Predictor
from strongpose.inference.cli import COMMON_TYPES, add_timing, predictor_from_config, timing_summary, write_json
from strongpose.inference.images import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, ImageFiles, VideoFrames, image_batches,
                                         list_images, video_writer)
from strongpose.inference.pose_track import PoseTracker
from strongpose.structures import Poses
from strongpose.tracking import say
from strongpose.viz import draw_poses, draw_targets

log = logging.getLogger(__name__)


def image_id(stem: str) -> int | str:
    """COCO image id of a file: its stem as an integer when it is one (COCO's ``000000000785.jpg`` -> 785)."""
    return int(stem) if stem.isascii() and stem.isdecimal() else stem  # not "12³": isdigit, but no int


def image_ids(paths: list[Path]) -> dict[Path, int | str]:
    """:func:`image_id` of each file, or its file name where two files would share one (``1.jpg`` and
    ``001.png`` are both 1; ``1.jpg.png``'s stem is the name ``1.jpg``): tools that key on image_id must not
    merge two images. The names of a folder's files differ, so each round that moves the sharing ones to their
    names leaves fewer shared, and it ends."""
    ids = {path: image_id(path.stem) for path in paths}
    while True:
        counts = Counter(ids.values())
        shared = [path for path, value in ids.items() if counts[value] > 1 and value != path.name]
        if not shared:
            return ids
        ids.update((path, path.name) for path in shared)


def coco_entries(poses: Poses, image_id: int | str, file_name: str, category_id: int = 1) -> list[dict]:
    """:meth:`Poses.to_coco`, with ids that need not be integers and the image's file name."""
    return [{**entry, "image_id": image_id, "file_name": file_name} for entry in poses.to_coco(0, category_id)]


def draw(image: np.ndarray, poses: Poses, predictor: Predictor, keypoint_threshold: float,
         labels: list[str] | None = None) -> np.ndarray:
    """(H, W, 3) RGB -> drawn (H, W, 3) BGR, ready for OpenCV's writers; ``labels``: one a person (track ids)."""
    drawn = draw_poses(torch.from_numpy(image).permute(2, 0, 1), poses, predictor.codec.skeleton,
                       score_threshold=keypoint_threshold, labels=labels)
    return cv2.cvtColor(drawn.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)


def draw_maps(image: np.ndarray, predictor: Predictor, mid_edge: int | None = None) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W, 3) BGR picture of the network's maps over it (:func:`strongpose.viz.draw_targets`:
    body map tint, keypoint heat maps in the skeleton's colours, short-range arrows where a heat map passes 0.5,
    mid-range arrows of the directed edge ``mid_edge`` (an index of ``codec.edges``)), drawn at the network's input and
    mapped back onto the image's own pixels. Its own network pass at ``input_size`` (the test scales are not run)."""
    network_input, maps, affine = predictor.maps(image)
    drawn = draw_targets(network_input, maps, predictor.codec, mid_edge=mid_edge).permute(1, 2, 0).numpy()
    height, width = image.shape[:2]
    # input -> original pixels; the border replicated: a constant one would darken the edge pixels (half outside)
    back = cv2.warpAffine(drawn, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(back, cv2.COLOR_RGB2BGR)


def draw_maps_edge(text: str, predictor: Predictor) -> int:
    """``draw_maps_edge`` ("left_shoulder-left_elbow") -> the index of that directed edge of the model's codec."""
    names = predictor.codec.skeleton.keypoints
    edges = [f"{names[a]}-{names[b]}" for a, b in predictor.codec.edges.tolist()]
    if text not in edges:
        raise ConfigError(f"draw_maps_edge={text!r} is not a directed edge of the model's skeleton; its edges: "
                          + ", ".join(edges))
    return edges.index(text)


def predict_images(predictor: Predictor, paths: list[Path], out: Path, cfg: DictConfig,
                   totals: dict, edge: int | None = None) -> tuple[list, list, int]:
    """Results of image files; returns (results, skipped [{file, reason}], images done). ``edge``: the directed
    edge whose mid-range offsets ``draw_maps`` draws."""
    results, skipped, done = [], [], 0
    ids = image_ids(paths)
    with tqdm(total=len(paths), unit="img", desc="predict", file=sys.stderr) as bar:
        for batch in image_batches(ImageFiles(paths), int(cfg.batch_size), int(cfg.num_workers)):
            good = [item for item in batch if item["image"] is not None]
            for item in batch:
                if item["image"] is None:
                    skipped.append({"file": str(item["key"]), "reason": item["error"]})
                    bar.write(f"skipped {item['key']}: {item['error']}", file=sys.stderr)
            poses = predictor.predict_batch([item["image"] for item in good], batch_size=int(cfg.batch_size))
            add_timing(totals, predictor.last_timing)
            for item, p in zip(good, poses):
                path: Path = item["key"]
                results += coco_entries(p, ids[path], path.name, predictor.category_id)
                if cfg.draw and not cv2.imwrite(str(out / path.name), draw(item["image"], p, predictor,
                                                                           cfg.draw_keypoint_threshold)):
                    raise OSError(f"cannot write the drawn image {out / path.name}")
                if cfg.draw_maps and not cv2.imwrite(str(out / "maps" / path.name),
                                                     draw_maps(item["image"], predictor, edge)):
                    raise OSError(f"cannot write the drawn maps {out / 'maps' / path.name}")
            done += len(good)
            bar.update(len(batch))
    return results, skipped, done


def predict_video(predictor: Predictor, path: Path, out: Path, cfg: DictConfig,
                  totals: dict) -> tuple[list, Path | None, int]:
    """Results of every frame (image id = frame number); returns (results, drawn video, frames)."""
    video = VideoFrames(path)
    drawn = out / f"{path.stem}_poses.mp4"
    writer = video_writer(drawn, video.fps, video.size) if cfg.draw else None
    results, frame = [], 0
    frames = iter(video)
    # every found keypoint compared (score > 0): a weak model's people would otherwise get a new id every frame
    tracker = PoseTracker(predictor.codec.skeleton.sigmas, oks_threshold=cfg.track_oks_threshold,
                          max_age=cfg.track_max_age) if cfg.track else None
    try:
        with tqdm(total=video.frame_count or None, unit="frame", desc="predict", file=sys.stderr) as bar:
            while chunk := list(itertools.islice(frames, int(cfg.batch_size))):
                poses = predictor.predict_batch(chunk, batch_size=int(cfg.batch_size))
                add_timing(totals, predictor.last_timing)
                for image, p in zip(chunk, poses):
                    entries = coco_entries(p, frame, path.name, predictor.category_id)
                    ids = tracker.update(p) if tracker is not None else None
                    results += [{**e, "track_id": i} for e, i in zip(entries, ids)] if ids is not None else entries
                    if writer is not None:
                        labels = [str(i) for i in ids] if ids is not None else None
                        writer.write(draw(image, p, predictor, cfg.draw_keypoint_threshold, labels))
                    frame += 1
                bar.update(len(chunk))
    finally:
        if writer is not None:
            writer.release()
    if frame == 0:  # nothing came out: a failure, as for a folder of unreadable images
        if writer is not None:
            drawn.unlink(missing_ok=True)
        raise InputError(f"no frame of video {path} could be read ({video.size[0]}x{video.size[1]}, "
                         f"{video.frame_count} frames by its header): corrupt, or a codec OpenCV lacks")
    if video.frame_count - frame > max(2, video.frame_count // 20):  # the header's count may be a little off
        log.warning("video %s: read %d frames of the %d its header gives (a damaged or truncated file?)",
                    path, frame, video.frame_count)
    return results, drawn if writer is not None else None, frame


TYPES: dict[str, Any] = {
    **COMMON_TYPES, "input": Path, "output": Path | None, "batch_size": int, "num_workers": int,
    "input_size": int | None, "score_threshold": float | None, "draw": bool, "draw_keypoint_threshold": float,
    "draw_maps": bool, "draw_maps_edge": str | None,
    "track": bool, "track_oks_threshold": float, "track_max_age": int,
}


def nested_images(folder: Path, most: int = 1000, leave_out: Path | None = None) -> str:
    """How many image files the subfolders of ``folder`` hold ("" for none; counted up to ``most``), those under
    ``leave_out`` (predict's own output folder, which may lie inside it) left out."""
    skip = leave_out.resolve() if leave_out is not None else None
    found = (p for p in folder.rglob("*") if p.parent != folder and p.suffix.lower() in IMAGE_SUFFIXES
             and p.is_file() and (skip is None or skip not in p.resolve().parents))
    count = sum(1 for _ in itertools.islice(found, most))
    return "" if not count else f"{count}{'+' if count == most else ''}"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Predict as ``cfg`` says; returns the summary (also written to ``summary.json``)."""
    check_types(cfg, TYPES)  # before the model is loaded
    require_positive("", batch_size=cfg.batch_size, input_size=cfg.input_size)
    require_non_negative("", num_workers=cfg.num_workers, track_max_age=cfg.track_max_age)
    if not 0.0 <= cfg.track_oks_threshold <= 1.0:
        raise ConfigError(f"track_oks_threshold={cfg.track_oks_threshold}: must be in 0..1")
    source = Path(cfg.input)
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    suffix = source.suffix.lower()
    if source.is_file() and suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise ConfigError(f"input {source}: unknown file type {suffix!r}; images: {' '.join(IMAGE_SUFFIXES)}, "
                         f"videos: {' '.join(VIDEO_SUFFIXES)}")
    out = Path(cfg.output if cfg.output is not None else cfg.paths.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file: it names the folder the results are written into")
    is_video = source.is_file() and suffix in VIDEO_SUFFIXES
    images_folder = source if source.is_dir() else source.parent  # drawn images keep the input's file names
    if cfg.draw and not is_video and out.resolve() == images_folder.resolve():
        raise ConfigError(f"output {out} is the input's folder: the drawn images would replace the originals")
    if cfg.draw_maps and is_video:
        raise ConfigError(f"draw_maps=true draws the maps of images; {source} is a video (a frame saved as an "
                          f"image can be given instead)")
    if cfg.draw_maps and (out / "maps").resolve() == images_folder.resolve():
        raise ConfigError(f"output {out}: its maps/ folder is the input's folder: the drawn maps would replace the "
                          f"originals")
    if cfg.draw_maps_edge and not cfg.draw_maps:  # it would be checked, then silently unused
        raise ConfigError(f"draw_maps_edge={cfg.draw_maps_edge!r} chooses the edge that draw_maps draws: it needs "
                          f"draw_maps=true")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.draw_maps:
        (out / "maps").mkdir(exist_ok=True)
    predictor = predictor_from_config(cfg, cfg.input_size)
    # a directed edge by its keypoints' names, checked before any image is predicted
    edge = draw_maps_edge(cfg.draw_maps_edge, predictor) if cfg.draw_maps_edge else None
    totals: dict[str, float] = {}
    skipped: list[dict] = []
    drawn: Path | None = out if cfg.draw else None
    start = time.perf_counter()
    if is_video:
        results, drawn, done = predict_video(predictor, source, out, cfg, totals)
    else:
        paths = list_images(source) if source.is_dir() else [source]
        nested = nested_images(source, leave_out=out) if source.is_dir() else 0
        if not paths:
            raise ConfigError(f"input folder {source} holds no images ({' '.join(IMAGE_SUFFIXES)})"
                              + (f"; {nested} in its subfolders, which are not searched: give a subfolder as "
                                 f"input" if nested else ""))
        if nested:
            log.warning("input folder %s: %s images in its subfolders are not predicted (subfolders are not "
                        "searched)", source, nested)
        results, skipped, done = predict_images(predictor, paths, out, cfg, totals, edge)
    wall = time.perf_counter() - start
    results_path = write_json(out / "results.json", results)
    summary = {
        "input": str(source),
        "checkpoint": str(cfg.ckpt_path),
        "images": done,
        "people": len(results),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "options": {**predictor.options, "device": str(predictor.device), "batch_size": int(cfg.batch_size),
                    **({"track": bool(cfg.track), "track_oks_threshold": float(cfg.track_oks_threshold),
                        "track_max_age": int(cfg.track_max_age)} if is_video else {})},
        "timing": timing_summary(totals, done, wall),
        "results": str(results_path),
        "drawn": str(drawn) if drawn is not None else None,
        "maps": str(out / "maps") if cfg.draw_maps else None,
    }
    write_json(out / "summary.json", summary)
    unit = "frames" if is_video else "images"
    say(f"Predicted {len(results)} people in {done} {unit} ({len(skipped)} skipped); results {results_path}"
          + (f", drawn in {drawn}" if drawn else "") + (f", maps in {out / 'maps'}" if cfg.draw_maps else ""))
    if skipped and not done:  # nothing came out: a failure, for scripts too (the summary lists why)
        raise InputError(f"no image of {source} could be read: all {len(skipped)} skipped, the first: "
                         f"{skipped[0]['file']}: {skipped[0]['reason']}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    with report_input_errors():
        run(cfg)


def cli() -> None:
    """``python -m strongpose.predict``: Hydra's ``main``, with the valid keys listed for an unknown one."""
    run_with_key_hints(main, "predict")


if __name__ == "__main__":
    cli()
