"""Inputs of the predictor: image files, arrays, tensors and video frames, as (H, W, 3) uint8 RGB arrays.

Bad files raise :class:`strongpose.data.BadSample` (file name and reason), so that the entry points can
report and skip them; :class:`ImageFiles` does that per item inside a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from strongpose.config_check import InputError
from strongpose.data.annotations import BadSample, read_image

# what cv2.imdecode reads (and cv2.imwrite writes back for the drawn copies)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")

ImageLike = str | Path | np.ndarray | torch.Tensor


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """A path (read with the data pipeline's reader, turned upright as its EXIF orientation says, as image
    viewers and OpenCV's videos do: results are in the pixels of the image as it is shown), an (H, W, 3)
    uint8 RGB array or a (3, H, W) uint8 tensor -> (H, W, 3) uint8 RGB array."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image), upright=True)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3 or not image[0].numel():
            raise ValueError(f"image tensors must be (3, H, W) uint8 RGB with H, W > 0, got {tuple(image.shape)} "
                             f"{image.dtype}")
        return np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image[..., 0].size:
            raise ValueError(f"image arrays must be (H, W, 3) uint8 RGB with H, W > 0, got {image.shape} {image.dtype}")
        return image
    raise TypeError(f"an image must be a path, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor, "
                    f"got {type(image).__name__}")


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (by suffix), sorted by name; other files are not images to predict on."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFiles(Dataset):
    """``read(key)`` for each key, as ``{"key", "image", "error"}``: a bad file gives image None and the
    reason instead of raising, so that a DataLoader (with workers) goes on with the others."""

    def __init__(self, keys: Sequence[Any], read: Callable[[Any], np.ndarray] = as_rgb_array) -> None:
        self.keys = list(keys)
        self.read = read

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index]
        try:
            return {"key": key, "image": self.read(key), "error": None}
        except BadSample as err:
            return {"key": key, "image": None, "error": str(err)}


def image_batches(files: ImageFiles, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Lists of :class:`ImageFiles` items (images of any sizes), read by ``num_workers`` processes."""
    return DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=list)


class VideoFrames:
    """RGB frames of a video file read with OpenCV (torchvision's video reader is gone)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video {self.path} does not exist")
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise InputError(f"cannot open video {self.path}: not a video, or a codec OpenCV lacks")
            self.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            self.size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # from the container: may be approximate
        finally:
            capture.release()
        if min(self.size) <= 0:  # a container whose video stream OpenCV cannot decode
            raise InputError(f"video {self.path}: no decodable video stream (frame size "
                             f"{self.size[0]}x{self.size[1]})")

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


def video_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """An mp4 (``mp4v``) writer of (width, height) frames; raises when OpenCV cannot write there."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cannot write video {path} (mp4v, {size[0]}x{size[1]} at {fps:g} fps)")
    return writer
