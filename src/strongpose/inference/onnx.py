"""People from an exported ONNX file (``python -m strongpose.export``): ONNX Runtime runs the network and an
:class:`OnnxPredictor` (a :class:`Predictor`) does everything else as it does for a checkpoint (validation resize and
pad, flip and multi-scale test, decoding, mapping back to the image), so that the file and its checkpoint find the
same people.

Export writes what decoding needs into the file's metadata (:data:`CODEC_KEY`: the codec's settings and its whole
skeleton; the traced input size; the people's COCO category): the file alone is enough, no checkpoint or config.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import numbers
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from strongpose.codec import StrongPoseCodec
from strongpose.config_check import ConfigError, InputError
from strongpose.inference.predictor import Predictor, decode_settings
from strongpose.skeleton import Skeleton

CODEC_KEY = "strongpose.codec"  # JSON: the codec's constructor arguments, the skeleton as its fields
INPUT_SIZE_KEY = "strongpose.input_size"  # the size the file was traced and checked at
CATEGORY_KEY = "strongpose.category_id"  # the training annotations' category of the people
EXPORT_KEY = "strongpose.input"  # written by every StrongPose export (export.INPUT_CONTRACT)
ONNX_HINT = "pip install 'strongpose[export]'"
# what a codec passed in place of the file's must share with it: what the network was trained to output
TRAINED_AS = ("stride", "disk_radius", "long_range", "num_edges", "skeleton")


class OnnxFileError(InputError, ValueError):
    """An ONNX file that cannot be used: not one onnxruntime loads, or not a StrongPose export (the entry points
    report it in one line, exit status 2, as a wrong checkpoint)."""


def codec_metadata(codec: StrongPoseCodec, codec_cfg: Mapping[str, Any]) -> str:
    """:data:`CODEC_KEY`'s value: the run config's codec arguments with the skeleton written out in full (a
    skeleton YAML file or a class of one's own need not exist where the file is used)."""
    args = {key: value for key, value in codec_cfg.items() if key != "skeleton"}
    return json.dumps({**args, "skeleton": dataclasses.asdict(codec.skeleton)})


def _codec_class(target: str, path: Path) -> type:
    """The codec class a file names. Only StrongPose's own modules, or ones the program has already imported (a
    codec class of one's own), are imported: a file's metadata must not run an arbitrary module's import."""
    module, _, name = str(target).rpartition(".")
    if not (module == "strongpose" or module.startswith("strongpose.") or module in sys.modules):
        raise OnnxFileError(f"{path}: its {CODEC_KEY} metadata names {target}, which is not StrongPose's: import "
                            f"{module or target} first if it is a codec of your own, or pass codec=")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError) as err:
        raise OnnxFileError(f"{path}: its {CODEC_KEY} metadata names {target}, which cannot be imported "
                            f"({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, StrongPoseCodec)):
        raise OnnxFileError(f"{path}: its {CODEC_KEY} metadata names {target}, which is not a StrongPoseCodec")
    return cls


def codec_from_metadata(text: str, changes: Mapping[str, Any], path: Path) -> StrongPoseCodec:
    """The codec :func:`codec_metadata` describes, with ``changes`` (decoding settings) applied."""
    try:
        args = json.loads(text)
        if not isinstance(args, dict):
            raise TypeError(f"a JSON {type(args).__name__}, not an object")
        cls = _codec_class(args.pop("_target_", "strongpose.codec.StrongPoseCodec"), path)
        skeleton = args.pop("skeleton")
        return cls(**{**args, **changes}, skeleton=Skeleton(**skeleton) if isinstance(skeleton, dict) else skeleton)
    except OnnxFileError:
        raise
    except Exception as err:  # noqa: BLE001 - damaged metadata fails in many ways; each is this file's problem
        raise OnnxFileError(f"{path}: its {CODEC_KEY} metadata does not make a codec ({type(err).__name__}: "
                            f"{err})") from err


def _decode_changes(codec: StrongPoseCodec, stored: StrongPoseCodec) -> dict[str, Any]:
    """The decoding settings in which ``codec`` differs from ``stored``."""
    names = [n for n in inspect.signature(StrongPoseCodec).parameters if n.startswith("decode_")]
    return {n: getattr(codec, n) for n in names if getattr(codec, n, None) != getattr(stored, n, None)}


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session as the network a :class:`Predictor` runs: uint8 (B, 3, H, W) pixels in, the
    raw maps (heat-map logits, offsets in input pixels) out as float32 tensors on the input's device."""

    def __init__(self, session: Any, codec: StrongPoseCodec, category_id: int | None = None,
                 path: Path | None = None) -> None:
        super().__init__()
        self.session, self.codec, self.category_id, self.path = session, codec, category_id, path
        self.input_name = session.get_inputs()[0].name
        shape = session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None  # an export with dynamic=false: 1
        self.fixed_size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        self.output_names = [o.name for o in session.get_outputs()]
        if missing := [name for name in codec.channels if name not in self.output_names]:
            raise OnnxFileError(f"ONNX file {path} has outputs {self.output_names}; its codec needs {missing} too")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fixed_size and tuple(images.shape[2:]) != self.fixed_size:
            raise ConfigError(f"{self.path} takes {self.fixed_size[0]} x {self.fixed_size[1]} px only (exported with "
                              f"dynamic=false), got {images.shape[2]} x {images.shape[3]}: keep input_size at its "
                              f"size and scales at [1.0], or export with dynamic=true")
        pixels = images.detach().to("cpu", torch.float32).numpy()  # the file takes 0..255 pixels as float32
        step = self.fixed_batch or len(pixels)
        parts = []
        for start in range(0, len(pixels), max(step, 1)):
            chunk = pixels[start:start + step]
            if self.fixed_batch and len(chunk) < step:  # the last, short chunk of a fixed-batch file: padded
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            parts.append(self.session.run(self.output_names, {self.input_name: chunk}))
        return {name: torch.from_numpy(np.concatenate([p[i] for p in parts])[:len(pixels)]).to(images.device)
                for i, name in enumerate(self.output_names) if name in self.codec.channels}


class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose network is an ONNX file (:func:`load_onnx`): ONNX Runtime runs it in float32."""

    @property
    def precision(self) -> str:
        return "32"

    @precision.setter
    def precision(self, value: str | int | None) -> None:
        if value is not None and str(value) not in ("32", "32-true"):
            raise ConfigError(f"precision={value}: an ONNX file runs in float32 (ONNX Runtime); precision is for "
                              f"checkpoints (leave it out)")
        self._autocast, self._precision = None, "32"

    def __repr__(self) -> str:
        return f"Onnx{super().__repr__()[:-1]}, file={self.checkpoint})"


def _providers(ort: Any, providers: list[str] | str | None) -> list[str]:
    """ONNX Runtime's execution providers, checked: one that is not there falls back to the CPU with only a
    warning from ONNX Runtime, and a string would be read letter by letter."""
    chosen = [providers] if isinstance(providers, str) else list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    if missing := [p for p in chosen if p not in available]:
        raise ConfigError(f"ONNX Runtime here has no {', '.join(map(str, missing))}; it has {', '.join(available)} "
                          f"(CUDAExecutionProvider needs the onnxruntime-gpu package)")
    return chosen


def load_onnx(path: str | Path, codec: StrongPoseCodec | Mapping[str, Any] | None = None,
              input_size: int | None = None, device: str | torch.device | None = "cpu", flip: bool = False,
              scales: Iterable[float] = (1.0,), keypoint_threshold: float | None = None,
              person_threshold: float | None = None, providers: list[str] | str | None = None,
              precision: str | int | None = "32") -> OnnxPredictor:
    """An :class:`OnnxPredictor` whose network is the ONNX file at ``path``, run by ONNX Runtime (``providers``,
    default its CPU one) in float32. ``codec``: decoding settings to change (as :func:`strongpose.load`'s, e.g.
    ``{"decode_max_people": 100}``), or a whole :class:`StrongPoseCodec` (it must be the file's as trained:
    stride, skeleton, disk radius; needed for files exported before 2026-11-28, which lack the codec metadata);
    ``input_size`` defaults to the size the file was exported at; ``device``: where decoding runs (default the
    CPU, where ONNX Runtime's outputs are); ``precision``: 32 only (refused otherwise, for the command lines that
    pass theirs). The other arguments are :class:`Predictor`'s."""
    path = Path(path)
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(f"running {path} needs onnxruntime ({err}); install it with: {ONNX_HINT}") from err
    if path.is_dir():
        raise OnnxFileError(f"{path} is a folder; name the .onnx file in it")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    if codec is not None and not isinstance(codec, (StrongPoseCodec, Mapping)):
        raise ConfigError(f"codec must be decoding settings {{name: value}} or a StrongPoseCodec, got "
                          f"{type(codec).__name__}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral)):
        raise ConfigError(f"input_size must be a whole number of pixels, got {input_size!r}")
    chosen = _providers(ort, providers)
    try:
        session = ort.InferenceSession(str(path), providers=chosen)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own classes for every kind of bad file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxFileError(f"{path} is not an ONNX file that onnxruntime can load: {first}") from err
    meta = session.get_modelmeta().custom_metadata_map
    outputs = [o.name for o in session.get_outputs()]
    if EXPORT_KEY not in meta and not isinstance(codec, StrongPoseCodec):
        raise OnnxFileError(f"{path} is not a StrongPose export (no strongpose.* metadata; its outputs are "
                            f"{outputs}): export a checkpoint with python -m strongpose.export")
    changes = {} if isinstance(codec, StrongPoseCodec) else decode_settings(codec)
    stored = codec_from_metadata(meta[CODEC_KEY], changes, path) if CODEC_KEY in meta else None
    if isinstance(codec, StrongPoseCodec):
        if stored is not None:  # the file's codec as trained, with this one's decoding settings
            if differ := [n for n in TRAINED_AS if getattr(codec, n) != getattr(stored, n)]:
                raise ConfigError(f"the codec passed differs from {path}'s in {', '.join(differ)}, which the network "
                                  f"was trained for; pass only decoding settings, codec={{'decode_...': ...}}")
            changes = _decode_changes(codec, stored)
        built = codec
    elif stored is not None:
        built = stored
    else:
        raise ConfigError(f"{path} does not say which codec it was trained with (no {CODEC_KEY} metadata: exported "
                          f"before 2026-11-28): pass codec=StrongPoseCodec(...) with its training settings, or "
                          f"export the checkpoint again")
    try:
        category = int(meta[CATEGORY_KEY]) if CATEGORY_KEY in meta else None
        exported_size = int(meta[INPUT_SIZE_KEY]) if INPUT_SIZE_KEY in meta else None
    except ValueError as err:
        raise OnnxFileError(f"{path}: its metadata holds a non-integer size or category ({err})") from err
    network = OnnxNetwork(session, built, category, path)
    if input_size is None:
        input_size = exported_size or (max(network.fixed_size) if network.fixed_size else None)
        if input_size is None:
            raise ConfigError(f"{path} does not say the input size it was exported at: pass input_size")
    padded = flip and int(input_size) % built.stride  # the flip test pads the input to a multiple of the stride
    if network.fixed_size and (network.fixed_size != (input_size, input_size) or tuple(scales) != (1.0,) or padded):
        raise ConfigError(f"{path} was exported with a fixed input of {network.fixed_size[0]} x "
                          f"{network.fixed_size[1]} px (dynamic=false): it runs at that size only (input_size="
                          f"{input_size}, scales={list(scales)}" + (", flip pads to a multiple of the stride"
                                                                     if padded else "")
                          + "); export with dynamic=true for other sizes")
    predictor = OnnxPredictor(network, input_size, device, flip=flip, scales=scales, precision=precision,
                              keypoint_threshold=keypoint_threshold, person_threshold=person_threshold)
    predictor.checkpoint, predictor.codec_changes = path, changes
    return predictor
