"""Predictor: images in, people in original-image pixels out, batched on the device; ``load`` builds it from a
checkpoint alone (README: Evaluation and prediction)."""

from __future__ import annotations

import inspect
import itertools
import numbers
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from strongpose.codec import StrongPoseCodec
from strongpose.config_check import ConfigError, require_positive
from strongpose.data.coco import to_chw
from strongpose.data.transforms import ValTransform, poses_to_original
from strongpose.inference.images import ImageFiles, ImageLike, as_rgb_array
from strongpose.inference.test_time import flip_average, fuse_scales, scale_sizes, threshold_poses
from strongpose.models.network import to_probabilities
from strongpose.structures import Poses


# the network's precision: full float32, or autocast to bfloat16 / float16 (Lightning's names accepted too); the
# maps are decoded in float32 either way
PRECISIONS = {"32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "16": torch.float16, "16-mixed": torch.float16}


def autocast_dtype(precision: str | int | None) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` (None: float32 throughout)."""
    key = "32" if precision is None else str(precision)
    if key not in PRECISIONS:
        raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None: the first CUDA device when there is one, else the CPU. A CUDA device that torch cannot see is
    refused here (loading a checkpoint onto it would fail as if the file were broken)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:  # e.g. "gpu": torch lists the device types it knows
        raise ConfigError(f"device={device!r} is not a device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: torch sees no CUDA device here (torch.cuda.is_available() is False; "
                          f"torch {torch.__version__}); use device=cpu, or null for the best one there is")
    return device


class Predictor:
    """Runs a trained StrongPose module on images: validation preprocessing, network, decoding, results
    in original-image pixels.

    Args:
        module: a :class:`~strongpose.lit_module.StrongPoseModule` (or anything with ``codec`` and a
            ``forward(images) -> raw outputs``, heat-map logits and offsets in input pixels; ``images``
            are (B, 3, H, W) uint8 RGB pixels, which the module normalises itself).
        input_size: square input size S (the longer image side is resized to S, the rest padded).
        device: where the network and decoding run (None: CUDA when available).
        flip: flip test: also run the mirrored image and average the maps mapped back.
        scales: multi-scale test: run at input sizes S x s and fuse the maps on the S grid.
        keypoint_threshold: keypoints scoring below get score 0.
        person_threshold: people scoring below are dropped.
        precision: ``32`` (default), ``bf16`` or ``16``: the network runs under autocast to that dtype (as
            validation does in a ``bf16-mixed`` training run; on a GPU about twice as fast), its outputs are
            decoded in float32.
    """

    def __init__(self, module: torch.nn.Module, input_size: int, device: str | torch.device | None = None,
                 flip: bool = False, scales: Iterable[float] = (1.0,), keypoint_threshold: float | None = None,
                 person_threshold: float | None = None, precision: str | int | None = "32") -> None:
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self._scales = (1.0,)
        self.precision = precision  # the properties below check and derive what the calls use
        self.input_size = input_size
        self.scales = scales
        if not isinstance(flip, (bool, np.bool_)):  # bool("no") is True: twice the network time, another AP
            raise ConfigError(f"flip must be True or False, got {flip!r} ({type(flip).__name__})")
        self.flip = bool(flip)
        self.keypoint_threshold = threshold("keypoint_threshold", keypoint_threshold)
        self.person_threshold = threshold("person_threshold", person_threshold)
        self.last_timing: dict[str, float] = {}
        self.last_skipped: list[tuple[int, str]] = []  # predict_batch(..., skip_bad=True): (index, reason)
        self.checkpoint: Path | None = None
        self.run_config: dict | None = None
        self.codec_changes: dict[str, Any] = {}  # load(codec=...): the decoding settings changed from the run's

    # Options that the calls derive something from (input sizes, transforms, autocast dtype) are properties, so that
    # setting one on a Predictor (a sweep over scales) takes effect and ``options`` reports what runs.
    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str | int | None) -> None:
        self._autocast = autocast_dtype(value)  # checks it
        self._precision = "32" if value is None else str(value)

    @property
    def input_size(self) -> int:
        return self._input_size

    @input_size.setter
    def input_size(self, value: int) -> None:
        require_positive("", input_size=value)
        self._derive_sizes(int(value), self._scales)

    @property
    def scales(self) -> tuple[float, ...]:
        return self._scales

    @scales.setter
    def scales(self, value: Iterable[float]) -> None:
        self._derive_sizes(self._input_size, tuple(float(s) for s in value))

    def _derive_sizes(self, input_size: int, scales: tuple[float, ...]) -> None:
        sizes = scale_sizes(input_size, scales, self.codec.stride)  # checks the scales, before anything changes
        self._input_size, self._scales, self.sizes = input_size, scales, sizes
        # the reference grid the scales are fused on is scale 1 (input_size), run or not
        self._transforms = {size: ValTransform(size) for size in {*sizes, input_size}}

    @property
    def codec(self) -> StrongPoseCodec:
        return self.module.codec

    @property
    def category_id(self) -> int:
        """COCO category id of the people found: the training annotations' (kept in the checkpoint), else 1."""
        category = getattr(self.module, "category_id", None)
        return 1 if category is None else int(category)

    @property
    def options(self) -> dict:
        """The test-time options, as the ``test`` config group spells them."""
        return {"flip": self.flip, "scales": list(self.scales), "keypoint_threshold": self.keypoint_threshold,
                "person_threshold": self.person_threshold, "input_size": self.input_size, "precision": self.precision,
                "codec": dict(self.codec_changes)}

    def __repr__(self) -> str:
        return (f"Predictor({self.codec}, input_size={self.input_size}, device={self.device}, "
                f"flip={self.flip}, scales={list(self.scales)})")

    # ------------------------------------------------------------------ public
    def predict(self, image: ImageLike) -> Poses:
        """People of one image (a path, an (H, W, 3) uint8 RGB array or a (3, H, W) uint8 tensor)."""
        return self.predict_batch([image], batch_size=1)[0]

    def predict_batch(self, images: Iterable[ImageLike], batch_size: int = 8,
                      skip_bad: bool = False) -> list[Poses | None]:
        """People of each image, in order, ``batch_size`` images per network call. ``last_timing`` gets
        this call's totals: ``preprocess_ms`` (reading, resizing), ``network_ms``, ``decode_ms`` (fusion,
        decoding, mapping back) and ``images``. A file that cannot be read (missing, empty, corrupt) raises
        :class:`~strongpose.data.BadSample`, or with ``skip_bad`` gives None in its place and goes into
        ``last_skipped`` as (index, reason), so that one bad file does not lose the others' results.
        ``last_timing`` and ``last_skipped`` belong to the Predictor: threads that share one see each other's."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(images, (str, Path)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3):
            # a path would be read as its characters, an image as its rows
            raise TypeError(f"predict_batch takes a list of images, got one {type(images).__name__}: use "
                            f"predict(image) or predict_batch([image])")
        timing = {"preprocess_ms": 0.0, "network_ms": 0.0, "decode_ms": 0.0, "images": 0}
        results: list[Poses | None] = []
        self.last_skipped = []
        iterator = iter(images)
        while chunk := list(itertools.islice(iterator, batch_size)):
            arrays = self._read(chunk, len(results), skip_bad, timing)
            good = [a for a in arrays if a is not None]
            poses = iter(self._predict_arrays(good, timing) if good else [])
            results += [None if a is None else next(poses) for a in arrays]
        self.last_timing = timing
        return results

    def maps(self, image: ImageLike) -> tuple[torch.Tensor, dict[str, torch.Tensor], np.ndarray]:
        """What the network sees and says about one image, for drawing (:func:`strongpose.viz.draw_targets`): the
        (3, S, S) uint8 network input at ``input_size`` (resized and padded as for prediction), its decode-ready
        maps (probabilities and offsets, (C, h, w), flip-averaged when flipping; other ``scales`` are not run) on
        the CPU, and the (2, 3) affine from input to original pixels. One network pass of its own."""
        array = as_rgb_array(image)
        with torch.inference_mode():
            batch, affines = self.preprocess([array], self.input_size)
            maps = self.network(batch)
        # cloned outside inference mode: ordinary tensors, which the caller may change in place
        return batch[0].cpu().clone(), {key: value[0].float().cpu().clone() for key, value in maps.items()}, \
            affines[0].numpy()

    # ------------------------------------------------------------------ steps
    def preprocess(self, images: list[np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S', S') uint8 batch on the device (S' = ``size``, padded up to a multiple of the stride
        when flipping, so that the mirror is exact) and the (B, 2, 3) input -> original affines."""
        transform = self._transforms[size]
        tensors, affines = [], []
        for image in images:
            resized, affine = transform.image_only(image)  # the validation transform itself, not a copy of it
            tensors.append(to_chw(resized))
            affines.append(torch.from_numpy(affine))
        batch = torch.stack(tensors).to(self.device, non_blocking=True)
        stride = self.codec.stride
        extra = -size % stride
        if self.flip and extra:
            batch = F.pad(batch, (0, extra, 0, extra))  # black, as the transform pads
        return batch, torch.stack(affines)

    def network(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode-ready maps (probabilities, offsets) of a uint8 batch, flip-averaged when flipping."""
        if not self.flip:
            return to_probabilities(self._forward(batch))
        both = to_probabilities(self._forward(torch.cat([batch, batch.flip(-1)])))
        n = len(batch)
        return flip_average({k: v[:n] for k, v in both.items()}, {k: v[n:] for k, v in both.items()}, self.codec)

    def _read(self, chunk: list[ImageLike], first: int, skip_bad: bool, timing: dict) -> list[np.ndarray | None]:
        """The chunk's RGB arrays; with ``skip_bad``, None for a file that cannot be read (ImageFiles' error
        entry, as predict and evaluate read folders), noted in ``last_skipped``; else its BadSample raises."""
        t0 = time.perf_counter()
        if skip_bad:
            files = ImageFiles(chunk)
            items = [files[i] for i in range(len(files))]
            self.last_skipped += [(first + i, item["error"]) for i, item in enumerate(items) if item["error"]]
            arrays = [item["image"] for item in items]
        else:
            arrays = [as_rgb_array(image) for image in chunk]
        timing["preprocess_ms"] += 1e3 * (time.perf_counter() - t0)
        return arrays

    def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The module's raw outputs in float32, computed in ``precision``."""
        if self._autocast is None:
            return self.module(batch)
        with torch.autocast(self.device.type, dtype=self._autocast):
            outputs = self.module(batch)
        return {name: value.float() for name, value in outputs.items()}

    def _predict_arrays(self, arrays: list[np.ndarray], timing: dict) -> list[Poses]:
        # inference mode for the network and the fusion only: the codec makes the Poses outside it, so that the
        # caller gets ordinary tensors, which it may change in place (inference tensors refuse that)
        with torch.inference_mode():
            per_scale = []
            for size in self.sizes:
                t1 = time.perf_counter()
                batch, affines = self.preprocess(arrays, size)
                t2 = time.perf_counter()
                per_scale.append((self.network(batch), affines))
                self._sync()
                timing["preprocess_ms"] += 1e3 * (t2 - t1)
                timing["network_ms"] += 1e3 * (time.perf_counter() - t2)
            t3 = time.perf_counter()
            scores = None
            if self.sizes == [self.input_size]:
                ref_affines, maps = per_scale[0][1], per_scale[0][0]
            else:
                ref_affines = self._reference_affines(arrays, per_scale)
                ref_hw = self.codec.map_size((self.input_size, self.input_size))
                maps, scores = fuse_scales(per_scale, ref_affines, ref_hw, self.codec)
        poses = self.codec.decode(maps, keypoint_scores=scores)
        originals = poses_to_original(poses, {"affine": ref_affines, "orig_size": [a.shape[:2] for a in arrays]})
        poses = [threshold_poses(p, self.keypoint_threshold, self.person_threshold) for p in originals]
        timing["decode_ms"] += 1e3 * (time.perf_counter() - t3)
        timing["images"] += len(arrays)
        return poses

    def _reference_affines(self, arrays: list[np.ndarray], per_scale: list) -> torch.Tensor:
        if self.input_size in self.sizes:
            return per_scale[self.sizes.index(self.input_size)][1]
        transform = self._transforms[self.input_size]  # the affines alone: no resize of the whole batch
        return torch.stack([torch.from_numpy(transform.from_input(a.shape[:2])) for a in arrays])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def threshold(name: str, value: Any) -> float | None:
    """``value`` as a float (a NumPy or 0-d torch number too), None kept; a string or a bool raises
    :class:`ConfigError` naming ``name`` (it would fail at the first prediction otherwise)."""
    if value is None:
        return None
    if isinstance(value, (str, bool)) or not isinstance(value, (numbers.Real, np.ndarray, torch.Tensor)):
        raise ConfigError(f"{name} must be a number or None, got {value!r} ({type(value).__name__})")
    try:
        return float(value)
    except (TypeError, ValueError):  # an array of more than one number
        raise ConfigError(f"{name} must be a number or None, got {value!r}") from None


def decode_settings(codec: Mapping[str, Any] | None, where: str = "codec") -> dict[str, Any]:
    """The codec's ``decode_*`` arguments to change after training, ``{name: value}`` (None: as trained), checked:
    another name, or a value of the wrong type, raises :class:`ConfigError` naming ``<where>.<name>``. The
    other arguments (stride, skeleton, disk radius, ...) describe what the network was trained to output."""
    from omegaconf import OmegaConf

    from strongpose.config_check import type_errors

    names = [name for name in inspect.signature(StrongPoseCodec).parameters if name.startswith("decode_")]
    given = {str(key): value for key, value in (codec or {}).items() if value is not None}
    if unknown := [key for key in given if key not in names]:
        raise ConfigError(f"{where}: {', '.join(unknown)} cannot change after training (the network was trained "
                          f"for it) or is not a codec setting; the decoding settings are: {', '.join(names)}")
    node = OmegaConf.create({"_target_": f"{StrongPoseCodec.__module__}.{StrongPoseCodec.__name__}", **given})
    if errors := type_errors(node, where):
        raise ConfigError("wrong type:\n  " + "\n  ".join(errors))
    return given


def load(checkpoint: str | Path, device: str | torch.device | None = None, flip: bool = False,
         scales: Iterable[float] = (1.0,), keypoint_threshold: float | None = None,
         person_threshold: float | None = None, input_size: int | None = None,
         precision: str | int | None = "32", codec: Mapping[str, Any] | None = None) -> Predictor:
    """A :class:`Predictor` of a checkpoint written by ``strongpose.train`` (the checkpoint alone: codec,
    backbone and heads come from the run config stored in it). ``input_size`` defaults to the training
    run's ``data.input_size``; ``codec``: decoding settings to use instead of the run's, e.g.
    ``{"decode_nms_oks": 0.3, "decode_max_people": 100}`` (:func:`decode_settings`); the other arguments
    are :class:`Predictor`'s."""
    from strongpose.checkpoint import CheckpointError, module_from_checkpoint

    autocast_dtype(precision)  # a wrong value before the checkpoint is read
    changed = decode_settings(codec)
    device = resolve_device(device)
    module, cfg = module_from_checkpoint(checkpoint, map_location=device, codec=changed)
    if input_size is None:
        input_size = (cfg.get("data") or {}).get("input_size")
        if input_size is None:
            raise CheckpointError(f"checkpoint {checkpoint} has no data.input_size in its run config: "
                                  f"pass input_size")
    predictor = Predictor(module, int(input_size), device, flip=flip, scales=scales,
                          keypoint_threshold=keypoint_threshold, person_threshold=person_threshold, precision=precision)
    predictor.checkpoint, predictor.run_config, predictor.codec_changes = Path(checkpoint), cfg, changed
    return predictor
