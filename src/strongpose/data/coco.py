"""COCO-format keypoint dataset: decode, transform, encode targets with the codec (inside the workers)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from strongpose.codec import StrongPoseCodec
from strongpose.codec.encode import labelled_keypoints
from strongpose.config_check import ConfigError
from strongpose.data.annotations import (AnnotationFileError, BadSample, ImageAnnotations, count_keypoints_outside,
                                         image_annotations, load_coco, person_category, read_image)
from strongpose.data.collate import SkippedSample
from strongpose.data.sample import sample_paths
from strongpose.data.transforms import AugmentConfig, PoseSample, TrainTransform, ValTransform

log = logging.getLogger(__name__)

# Offset targets travel from the workers as float16: the collated batch goes through shared memory, where
# each MB per image costs a worker ~1.2-1.5 ms on the 2-core VM (fresh pages; experiments/RESULTS.md), and
# the float32 offsets were 2.4 of a sample's 6.2 MB. Rounding moves an offset by at most 2**-11 of itself
# (0.03 px at 64 px, 0.25 px at 512 px), far below what the L1 loss sees; the loss computes in float32.
OFFSET_DTYPE = torch.float16

# where the keypoint part of the targets is encoded: in the data workers (the batch carries every map), or
# on the training device after the batch is copied there (the batch carries the people and two (1, h, w)
# bool region maps: 0.8 instead of 2.6 MB an image at 512 px, and the workers skip the keypoint encoding)
ENCODE_ON = ("worker", "device")


def to_chw(image: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 RGB -> (3, S, S) uint8 tensor. Pixels stay uint8 up to the device, where the network
    normalises them (:class:`strongpose.models.network.PixelNormalize`)."""
    # OpenCV's split + one stack: ~0.13 ms at 512 px, 2.5x faster than numpy's strided transpose copy
    return torch.from_numpy(np.stack(cv2.split(image)))


class COCOKeypointDataset(Dataset):
    """People of a COCO keypoint file, as network inputs and StrongPose targets.

    Args:
        images_dir: folder holding the images named by ``file_name``.
        annotations: COCO keypoint JSON; a missing or malformed file raises here, naming the path.
        codec: encodes the transformed people into targets.
        input_size: square network input size S.
        train: random augmentation (``augment`` knobs) if True, else resize + pad (:class:`ValTransform`).
        augment: :class:`AugmentConfig` or a dict of its fields.
        skip_empty: drop images without any person annotation (default: when training).
        max_images: keep only the first this many images (by id).
        seed: base seed of the per-sample augmentation streams.
        encode_on: ``"worker"``: items hold all the targets; ``"device"``: only what needs the full-resolution
            masks (``regions``, :meth:`StrongPoseCodec.encode_regions`) and the ``people``, for
            :meth:`StrongPoseCodec.encode_batch` to finish on the device (the data module does).

    Items are ``dataset[index]`` or ``dataset[(index, epoch)]`` (what :class:`SeededSampler` yields): the
    augmentation of a sample depends only on (seed, epoch, index), not on the worker that draws it.
    ``__getitem__`` returns ``{"image": (3, S, S) uint8 RGB, "targets": codec.encode(...) with float16
    offsets, "meta": {"image_id": int, "orig_size": (2,) long (H, W), "affine": (2, 3) float32 input ->
    original}}`` (with ``encode_on="device"``, ``"people"``: (N, K, 3) float32 keypoints in input pixels of
    the people with a labelled keypoint, and ``"regions"`` instead of ``"targets"``), or a
    :class:`SkippedSample` (image id, file, reason) for a bad sample (missing, empty,
    truncated or undecodable image, wrong image size, malformed annotation); the data module names it in
    the main process (log and the run's ``bad_samples.tsv``), where logging works with any worker start
    method.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotations: str | Path,
        codec: StrongPoseCodec,
        input_size: int = 512,
        train: bool = False,
        augment: AugmentConfig | Mapping | None = None,
        skip_empty: bool | None = None,
        max_images: int | None = None,
        seed: int = 0,
        encode_on: str = "worker",
    ) -> None:
        if encode_on not in ENCODE_ON:
            raise ValueError(f"encode_on must be one of {ENCODE_ON}, got {encode_on!r}")
        self.encode_on = encode_on
        self.images_dir = Path(images_dir)
        self.annotations_path = Path(annotations)
        self.codec = codec
        self.input_size = int(input_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.coco = load_coco(self.annotations_path)
        try:
            self.category_id = person_category(self.coco, codec.skeleton.keypoints, self.annotations_path)
        except AnnotationFileError as error:
            if self.annotations_path.resolve() != sample_paths()[1].resolve():
                raise
            raise AnnotationFileError(f"{error} (the embedded COCO sample, used where no data paths are given: give "
                                      f"data.val_images / data.val_annotations, and the train ones to train)") from None
        ids = sorted(self.coco.imgs)
        with_people = {a["image_id"] for a in self.coco.dataset["annotations"]
                       if a.get("category_id") == self.category_id}
        self._check_people(ids, with_people)
        listed = len(ids)
        if self.train if skip_empty is None else skip_empty:
            ids = [i for i in ids if i in with_people]
        if max_images is not None and max_images < 1:  # ids[:0] or ids[:-1]: none, or all but the last
            raise ConfigError(f"max_images={max_images!r} for {self.annotations_path}: must be >= 1 (None: all)")
        self.image_ids = ids[:max_images] if max_images is not None else ids
        if not self.image_ids:  # an epoch of nothing, or an AP of 0, would look like a result
            raise AnnotationFileError(
                f"{self.annotations_path}: it lists no images" if not listed else
                f"{self.annotations_path}: none of its {listed} images has a person (its person annotations name "
                f"image ids it does not list)")
        self.transform = (TrainTransform(self.input_size, codec.skeleton, augment) if self.train
                          else ValTransform(self.input_size))

    def _check_people(self, image_ids: list[int], with_people: set[int]) -> None:
        """Refuse a file whose images (all of them, before ``skip_empty`` and ``max_images``) have no person of
        the keypoint category (e.g. annotations under another category id): training would have nothing to
        learn, evaluation no ground truth. Say how many labelled keypoints lie outside their image: they are
        taken as unlabelled."""
        if image_ids and not with_people:
            others = sorted({a.get("category_id") for a in self.coco.dataset["annotations"]})
            raise AnnotationFileError(
                f"{self.annotations_path}: none of its {len(image_ids)} images has an annotation of the keypoint "
                f"category (id {self.category_id})" + (f"; the annotations name category ids {others[:10]}" if others
                                                       else ": it has no annotations"))
        count, ann_ids = count_keypoints_outside(self.coco, image_ids, self.category_id)
        if count:
            log.warning("%s: %d labelled keypoints of %d annotations (ids %s%s) lie outside their image: taken as "
                        "unlabelled; `python -m strongpose.check_data annotations=%s` lists them",
                        self.annotations_path, count, len(ann_ids), ", ".join(map(str, ann_ids[:5])),
                        ", ..." if len(ann_ids) > 5 else "", self.annotations_path)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return (f"COCOKeypointDataset({self.annotations_path}, images={len(self)}, input_size={self.input_size}, "
                f"train={self.train})")

    def load(self, index: int, decode_masks: bool = True) -> tuple[np.ndarray, ImageAnnotations]:
        """Original RGB image and its people (raises :class:`BadSample`); ``decode_masks=False`` leaves the
        masks as RLEs (``people.rles``) for the transform to merge before decoding."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        people = image_annotations(self.coco, image_id, self.category_id, self.codec.num_keypoints,
                                   decode=decode_masks)
        image = read_image(self.images_dir / info["file_name"], (info["height"], info["width"]))
        return image, people

    def load_image(self, index: int) -> np.ndarray:
        """The original RGB image alone, checked as :meth:`load` checks it (its annotations included:
        raises :class:`BadSample` for a sample that training would skip)."""
        return self.load(index, decode_masks=False)[0]  # the same checks; the masks are not needed

    def transformed(self, index: int, epoch: int = 0, merge_masks: bool = False) -> PoseSample:
        """The sample after the pipeline, before encoding (for inspection, tests and drawing: each person's
        mask), or in the merged form that items are encoded from (``merge_masks``, :class:`PoseSample`);
        both encode to the same targets (tested)."""
        image, people = self.load(index, decode_masks=not merge_masks)
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        return self.transform(image, people, rng, merge_masks=merge_masks)

    def encode(self, sample: PoseSample) -> dict[str, torch.Tensor]:
        return _encode(self.codec, sample, self.input_size)

    def encode_regions(self, sample: PoseSample) -> dict[str, torch.Tensor]:
        """What a worker encodes with ``encode_on="device"``: the mask-derived maps."""
        return _encode_regions(self.codec, sample, self.input_size)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | SkippedSample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        index = int(index)
        image_id = self.image_ids[index]
        try:
            sample = self.transformed(index, int(epoch), merge_masks=True)
        except BadSample as err:
            log.debug("bad sample %s", err)
            where = f"annotation id {err.ann_id}: " if err.ann_id is not None else ""
            return SkippedSample(int(image_id), err.file_name, where + err.reason)
        info = self.coco.imgs[image_id]
        return _item(self.codec, sample, self.input_size, self.encode_on, int(image_id), (info["height"], info["width"]))


def empty_sample(codec: StrongPoseCodec, input_size: int, encode_on: str = "worker") -> dict:
    """A well-formed sample with no people: the shapes for a batch whose samples were all bad."""
    s = int(input_size)
    blank = PoseSample(image=np.zeros((s, s, 3), np.uint8), keypoints=np.zeros((0, codec.num_keypoints, 3), np.float32),
                       masks=np.zeros((0, s, s), bool), crowd=np.zeros((s, s), bool),
                       boxes=np.zeros((0, 4), np.float32), affine=np.eye(3)[:2], has_mask=np.zeros(0, bool))
    return _item(codec, blank, s, encode_on, -1, (s, s))


def _item(codec: StrongPoseCodec, sample: PoseSample, input_size: int, encode_on: str, image_id: int,
          orig_size: tuple[int, int]) -> dict:
    item = {"image": to_chw(sample.image)}
    if encode_on == "worker":
        item["targets"] = _encode(codec, sample, input_size)
    else:
        item["regions"] = _encode_regions(codec, sample, input_size)
        # the regions took the others into account; only people with a labelled keypoint reach the keypoint
        # maps, and each person sent costs the device encoder memory (order kept: ties go by person index)
        people = torch.from_numpy(sample.keypoints)
        item["people"] = people[labelled_keypoints(people, (input_size, input_size)).any(-1)]
    item["meta"] = {"image_id": image_id, "orig_size": torch.tensor(orig_size, dtype=torch.long),
                    "affine": torch.from_numpy(sample.affine.astype(np.float32))}
    return item


def _region_inputs(sample: PoseSample) -> dict[str, torch.Tensor]:
    """The codec's mask inputs of either form of a sample."""
    inputs = {"boxes": torch.from_numpy(sample.boxes)}
    if sample.has_mask is not None:
        inputs["has_mask"] = torch.from_numpy(sample.has_mask)
    if sample.masks is None:  # merged form
        return {**inputs, "body_mask": torch.from_numpy(sample.body_mask),
                "ignore_mask": torch.from_numpy(sample.ignore_mask)}
    return {**inputs, "masks": torch.from_numpy(sample.masks), "ignore_mask": torch.from_numpy(sample.crowd)}


def _encode_regions(codec: StrongPoseCodec, sample: PoseSample, input_size: int) -> dict[str, torch.Tensor]:
    return codec.encode_regions(torch.from_numpy(sample.keypoints), (input_size, input_size), **_region_inputs(sample))


def _encode(codec: StrongPoseCodec, sample: PoseSample, input_size: int) -> dict[str, torch.Tensor]:
    return codec.encode(torch.from_numpy(sample.keypoints), (input_size, input_size), **_region_inputs(sample),
                        offset_dtype=OFFSET_DTYPE)
