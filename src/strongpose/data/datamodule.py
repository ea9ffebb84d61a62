"""LightningDataModule for any COCO-format keypoint dataset (the embedded sample when no paths are given)."""

from __future__ import annotations

import functools
import math
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import torch
from torch.utils.data import DataLoader

from strongpose.codec import StrongPoseCodec
from strongpose.config_check import ConfigError, InputError, require_non_negative, require_positive
from strongpose.data.coco import ENCODE_ON, COCOKeypointDataset, empty_sample
from strongpose.data.collate import SkipBadCollate, SkippedSample
from strongpose.data.resumable import ResumableDataLoader, epoch_inside, position_state
from strongpose.data.sample import sample_paths
from strongpose.data.sampling import EndlessSampler, SeededSampler, init_worker
from strongpose.data.transforms import AugmentConfig

log = logging.getLogger(__name__)

BAD_SAMPLES_FILE = "bad_samples.tsv"
BAD_SAMPLES_COLUMNS = ("split", "rank", "image_id", "file", "reason")

# below this many samples seen, the bad-sample budget is taken as a fraction of this number, so that a
# single bad image early on (or in a tiny dataset) does not stop training
MIN_SAMPLES_FOR_BAD_FRACTION = 50


class BadDataError(InputError, RuntimeError):
    """Too many samples of a dataset could not be used: a broken dataset rather than a few bad files."""


class COCOKeypointDataModule(L.LightningDataModule):
    """Train / val dataloaders of COCO-format keypoint data with StrongPose targets.

    Args:
        codec: encodes targets in the workers (and sets the skeleton for flips).
        train_images, train_annotations, val_images, val_annotations: image folders and COCO JSON files;
            a pair left as None means the embedded sample (:func:`strongpose.data.sample_paths`).
        input_size: square network input size S.
        batch_size: training batch size; ``val_batch_size`` defaults to it.
        num_workers, pin_memory, persistent_workers: passed to the DataLoaders.
        seed: shuffling and augmentation seed (batches are identical for any ``num_workers``).
        augment: :class:`AugmentConfig` fields (``scale_range``, ``rotation``, ``translate``,
            ``flip_prob``, ``color_jitter``); unknown keys fail.
        max_train_images, max_val_images: use only the first this many images (by id).
        max_bad_fraction: stop with an error when more than this fraction of the samples seen so far
            (counted as at least 50) were bad.
        bad_samples_file: where bad samples are listed (tab-separated: split, rank, image id, file,
            reason; appended as found, once per sample, also over restarts in the run folder: a resumed run
            reads the rows there before it appends); None: ``bad_samples.tsv`` in the trainer's
            ``default_root_dir`` (the run folder), nothing when there is no trainer.
        encode_on: ``"worker"`` (default): the workers encode all the targets; ``"device"``: they encode only
            the mask-derived maps and send the people; :meth:`on_after_batch_transfer` encodes the rest of
            each batch on the training device (:meth:`finish_targets`; 0.8 instead of 2.6 MB an image at
            512 px through shared memory, less work per worker, some more for the training process).

    Missing annotation files or image folders fail here, a malformed annotation file in :meth:`setup`
    (both in the main process, naming the path). A bad sample (unreadable image, malformed annotation)
    is skipped, named once in the log (image file, image id, reason) and listed in ``bad_samples_file``.

    Batches are dicts: ``image`` (B, 3, S, S) uint8 RGB (the network normalises it on the device);
    ``targets`` the codec's maps with a batch dim (offsets float16); ``meta`` with ``image_id`` (B,),
    ``orig_size`` (B, 2) as (H, W), ``affine`` (B, 2, 3); and ``num_skipped`` (int, bad samples dropped
    from this batch; B may be 0 when all were bad). With ``encode_on="device"`` the loader's batches hold
    ``people`` (B, N, K, 3) and ``regions`` instead of ``targets``, which :meth:`on_after_batch_transfer`
    (Lightning calls it) or :meth:`finish_targets` puts in (offsets float32 then).
    The val dataset's pycocotools COCO object is ``datamodule.val_dataset.coco``.
    """

    def __init__(
        self,
        codec: StrongPoseCodec,
        train_images: str | Path | None = None,
        train_annotations: str | Path | None = None,
        val_images: str | Path | None = None,
        val_annotations: str | Path | None = None,
        input_size: int = 512,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        augment: Mapping[str, Any] | AugmentConfig | None = None,
        max_train_images: int | None = None,
        max_val_images: int | None = None,
        max_bad_fraction: float = 0.1,
        bad_samples_file: str | Path | None = None,
        encode_on: str = "worker",
    ) -> None:
        super().__init__()
        if encode_on not in ENCODE_ON:
            raise ValueError(f"data.encode_on must be one of {ENCODE_ON}, got {encode_on!r}")
        require_positive("data", input_size=input_size, batch_size=batch_size, val_batch_size=val_batch_size,
                         max_train_images=max_train_images, max_val_images=max_val_images)
        require_non_negative("data", num_workers=num_workers)
        self.encode_on = encode_on
        self.save_hyperparameters(ignore=["codec"], logger=False)
        self.codec = codec
        sample_images, sample_annotations = sample_paths()
        self.train_paths = data_paths(train_images, train_annotations, sample_images, sample_annotations, "train")
        self.val_paths = data_paths(val_images, val_annotations, sample_images, sample_annotations, "val")
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.seed = int(seed)
        self.augment = AugmentConfig.from_dict(augment)  # fail on typos now, not in a worker
        self.max_train_images, self.max_val_images = max_train_images, max_val_images
        self.max_bad_fraction = float(max_bad_fraction)
        self.train_dataset: COCOKeypointDataset | None = None
        self.val_dataset: COCOKeypointDataset | None = None
        self.bad_counts = {"train": [0, 0], "val": [0, 0]}  # stage -> [skipped, seen]
        self.bad_samples_file = Path(bad_samples_file) if bad_samples_file is not None else None
        self._named: set[tuple[str, int]] = set()  # (stage, image id) already logged and listed
        self._listed: set[tuple[str, str]] | None = None  # (stage, image id) in the file: read at the first bad one
        self._resume_at: dict[str, int] = {}  # train position from a checkpoint, for the next train loader

    def setup(self, stage: str | None = None) -> None:
        """Reads the annotation files (a missing or malformed one raises here, naming its path)."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = COCOKeypointDataset(
                *self.train_paths, codec=self.codec, input_size=self.input_size, train=True,
                augment=self.augment, max_images=self.max_train_images, seed=self.seed, encode_on=self.encode_on)
        if stage in (None, "fit", "validate", "test") and self.val_dataset is None:
            self.val_dataset = COCOKeypointDataset(
                *self.val_paths, codec=self.codec, input_size=self.input_size, train=False,
                max_images=self.max_val_images, encode_on=self.encode_on)

    def _loader(self, dataset: COCOKeypointDataset, batch_size: int, sampler: SeededSampler | None,
                loader_class: type[DataLoader] = DataLoader, count_loss_terms: bool = False, **extra: Any) -> DataLoader:
        if self.num_workers > 0:
            # OpenCV's thread pool is not fork-safe (a test run here once hung with both workers in a
            # futex); with one thread OpenCV runs loops inline instead of through the pool, and the
            # workers parallelise anyway (mmengine does the same). Affects this whole process.
            cv2.setNumThreads(0)
        return loader_class(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
            collate_fn=SkipBadCollate(functools.partial(empty_sample, self.codec, self.input_size, self.encode_on),
                                      count_loss_terms=count_loss_terms),
            # the loader draws each epoch's worker base seed from this generator (see init_worker)
            worker_init_fn=init_worker, generator=torch.Generator().manual_seed(self.seed), **extra)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        sampler = SeededSampler(len(self.train_dataset), seed=self.seed, shuffle=True)
        # resumable mid-epoch: a checkpoint records the position, a resume skips what was trained on
        accumulate = getattr(self.trainer, "accumulate_grad_batches", 1)  # (no trainer: 1)
        loader = self._loader(self.train_dataset, self.batch_size, sampler, ResumableDataLoader, accumulate > 1,
                              position=self._train_position, accumulate_grad_batches=accumulate,
                              epoch_length=self._epoch_length)
        if self._resume_at:
            loader.load_state_dict(self._resume_at)
            self._resume_at = {}
        return loader

    def endless_train_dataloader(self, collate: Callable[[list], dict] | None = None) -> DataLoader:
        """The training loader (workers, collate, pinned memory as configured) over :class:`EndlessSampler`
        keys, for throughput benchmarks: batches never end and never wait at an epoch boundary. ``collate``
        stacks the good samples instead of the packed collate (e.g. ``torch.utils.data.default_collate``)."""
        if self.train_dataset is None:
            self.setup("fit")
        loader = self._loader(self.train_dataset, self.batch_size, EndlessSampler(len(self.train_dataset)))
        if collate is not None:
            loader.collate_fn.collate = collate
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where training is in its epoch (see :class:`ResumableDataLoader`)."""
        trainer = self.trainer
        state = position_state(self._train_position(), self.batch_size, trainer.world_size if trainer else 1)
        return {"train_position": state} if state else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the loader's own state only if it builds the loader after restoring the loops,
        # but configure_optimizers (trainer.estimated_stepping_batches) builds it, and starts iterating it,
        # before; the data module is restored first, so the loader is built resumed
        self._resume_at = dict(state_dict.get("train_position", {}))

    def _epoch_length(self) -> float:
        """The batches Lightning trains of an epoch (limit_train_batches, overfit_batches); inf: unknown."""
        return getattr(self.trainer, "num_training_batches", math.inf)

    def _train_position(self) -> tuple[int, int] | None:
        """(epoch of the next training batch, batches of it done) from the trainer's loop progress.

        ``processed`` is exactly how many batches Lightning counts as done when it resumes: a checkpoint
        from ``on_train_batch_end`` includes that batch, one from an exception mid-step does not."""
        trainer = self.trainer
        if trainer is None:
            return None
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if (inside := epoch_inside(trainer)) is not None:  # (the loops are saved so too)
            return inside, done
        if done >= trainer.num_training_batches:  # the epoch is over (also with limit_train_batches)
            # the next one's index: the epochs started so far (at the epoch's end, and when training has ended,
            # when current_epoch is already the next one)
            return trainer.fit_loop.epoch_progress.current.started, 0
        return trainer.current_epoch, 0  # before the epoch's first batch

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset, self.val_batch_size, None)  # in order; Lightning may shard it

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @property
    def bad_samples_path(self) -> Path | None:
        """The file bad samples are listed in (see ``bad_samples_file``)."""
        if self.bad_samples_file is not None:
            return self.bad_samples_file
        root = getattr(self.trainer, "default_root_dir", None)
        return Path(root) / BAD_SAMPLES_FILE if root else None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Name and count dropped samples; too many means a broken dataset rather than a few bad files."""
        if isinstance(batch, dict) and "num_skipped" in batch:
            stage = "train" if self.trainer is not None and self.trainer.training else "val"
            for item in batch.get("skipped", ()):
                self._name_bad_sample(stage, SkippedSample(*item))
            counts = self.bad_counts[stage]
            counts[0] += int(batch["num_skipped"])
            counts[1] += int(batch["num_skipped"]) + int(batch["image"].shape[0])
            if counts[0] > self.max_bad_fraction * max(counts[1], MIN_SAMPLES_FOR_BAD_FRACTION):
                path = self.bad_samples_path
                raise BadDataError(
                    f"too many bad {stage} samples: {counts[0]} of the {counts[1]} seen so far "
                    f"({counts[0] / counts[1]:.0%}) could not be used, more than max_bad_fraction="
                    f"{self.max_bad_fraction} (of at least {MIN_SAMPLES_FOR_BAD_FRACTION} samples); "
                    + (f"they are listed in {path}" if path else "see the warnings above")
                    + ". `python -m strongpose.check_data annotations=FILE images=DIR` lists every problem of a "
                    "dataset; data.max_bad_fraction raises the limit")
        return self.finish_targets(batch)

    def finish_targets(self, batch: Any) -> Any:
        """``encode_on="device"``: the batch's ``targets`` from its ``people`` and ``regions``, encoded where
        the batch is (:meth:`StrongPoseCodec.encode_batch`: no host synchronisation on a CUDA device); other
        batches are returned as they are."""
        if isinstance(batch, dict) and "people" in batch:
            batch = dict(batch)
            people, regions = batch.pop("people"), batch.pop("regions")
            if people.dtype != torch.float32:  # e.g. trainer.precision=bf16-true casts every float in the batch
                raise TypeError(f"data.encode_on=device: the batch's keypoints arrived as {people.dtype}, not "
                                "float32 (bfloat16 would move them by up to 2 px at 512 px); use a *-mixed "
                                "trainer.precision, or data.encode_on=worker")
            batch["targets"] = self.codec.encode_batch(people, regions, tuple(batch["image"].shape[-2:]))
        return batch

    def _name_bad_sample(self, stage: str, item: SkippedSample) -> None:
        """Log ``item`` and append it to :attr:`bad_samples_path`, once per (stage, image) in this process."""
        if (stage, item.image_id) in self._named:
            return
        self._named.add((stage, item.image_id))
        path = self.bad_samples_path
        log.warning("skipping bad %s sample %s (image id %d): %s%s", stage, item.file_name, item.image_id,
                    item.reason, f" [listed in {path}]" if path else "")
        if path is None:
            return
        if self._listed is None:  # a run resumed in its folder (a requeued job) found these before: listed once
            self._listed = _listed_samples(path)
        if (stage, str(item.image_id)) not in self._listed:
            rank = getattr(self.trainer, "global_rank", 0)
            _append_row(path, (stage, rank, item.image_id, item.file_name, item.reason))
            self._listed.add((stage, str(item.image_id)))


_ONE_LINE = str.maketrans("\t\r\n", "   ")  # a tab or newline in a reason would break the row


def _listed_samples(path: Path) -> set[tuple[str, str]]:
    """(split, image id) of the rows already in a bad-samples file (none when there is no file)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
    except FileNotFoundError:
        return set()
    return {(fields[0], fields[2]) for fields in (line.split("\t") for line in lines) if len(fields) >= 3}


def _append_row(path: Path, fields: tuple) -> None:
    """One tab-separated line; the header comes with the file's creation (O_EXCL: one DDP rank writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        os.write(fd, ("\t".join(BAD_SAMPLES_COLUMNS) + "\n").encode())
        os.close(fd)
    except FileExistsError:
        pass
    line = "\t".join(str(f).translate(_ONE_LINE) for f in fields) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # one write per line: appends from several ranks interleave whole
        f.write(line)


def data_paths(images, annotations, default_images: Path, default_annotations: Path, split: str) -> tuple[Path, Path]:
    """(images folder, annotation file) of a split: both given and existing, or neither (the defaults)."""
    if (images is None) != (annotations is None):
        raise ConfigError(f"give both {split}_images and {split}_annotations, or neither (= embedded sample)")
    if images is None:
        return default_images, default_annotations
    # fail before the model is built, not minutes later in setup (or in a worker)
    if not Path(annotations).is_file():
        raise FileNotFoundError(f"{split}_annotations: COCO annotation file not found: {annotations}")
    if not Path(images).is_dir():
        raise FileNotFoundError(f"{split}_images: image folder not found: {images}")
    return Path(images), Path(annotations)
