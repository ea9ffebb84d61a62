"""People from an exported ONNX file (``python -m strongpose.export``): ONNX Runtime runs the network and a
:class:`Predictor` does everything else as it does for a checkpoint (validation resize and pad, flip and
multi-scale test, decoding, mapping back to the image), so that the file and its checkpoint find the same people.

Export writes what decoding needs into the file's metadata (:data:`CODEC_KEY`: the codec's settings and its whole
skeleton; the traced input size; the people's COCO category): the file alone is enough, no checkpoint or config.
"""

from __future__ import annotations

import dataclasses
import json
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
ONNX_HINT = "pip install 'strongpose[export]'"


class OnnxFileError(InputError, ValueError):
    """An ONNX file that cannot be used: not one onnxruntime loads, or not a StrongPose export (the entry points
    report it in one line, exit status 2, as a wrong checkpoint)."""


def codec_metadata(codec: StrongPoseCodec, codec_cfg: Mapping[str, Any]) -> str:
    """:data:`CODEC_KEY`'s value: the run config's codec arguments with the skeleton written out in full (a
    skeleton YAML file or a class of one's own need not exist where the file is used)."""
    args = {key: value for key, value in codec_cfg.items() if key != "skeleton"}
    return json.dumps({**args, "skeleton": dataclasses.asdict(codec.skeleton)})


def codec_from_metadata(text: str, changes: Mapping[str, Any], path: Path) -> StrongPoseCodec:
    """The codec :func:`codec_metadata` describes, with ``changes`` (decoding settings) applied."""
    from hydra.utils import get_class

    try:
        args = json.loads(text)
        target = args.pop("_target_", "strongpose.codec.StrongPoseCodec")
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - any failure here is one unreadable metadata entry
        raise OnnxFileError(f"{path}: its {CODEC_KEY} metadata cannot be read ({type(err).__name__}: {err})") from err
    if not (isinstance(cls, type) and issubclass(cls, StrongPoseCodec)):  # not an arbitrary callable from a file
        raise OnnxFileError(f"{path}: its {CODEC_KEY} metadata names {target}, which is not a StrongPoseCodec")
    skeleton = args.pop("skeleton")
    return cls(**{**args, **changes}, skeleton=Skeleton(**skeleton) if isinstance(skeleton, dict) else skeleton)


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session as the network a :class:`Predictor` runs: uint8 (B, 3, H, W) pixels in, the
    raw maps (heat-map logits, offsets in input pixels) out as float32 tensors on the input's device."""

    def __init__(self, session: Any, codec: StrongPoseCodec, category_id: int | None = None,
                 path: Path | None = None) -> None:
        super().__init__()
        self.session, self.codec, self.category_id = session, codec, category_id
        self.input_name = session.get_inputs()[0].name
        shape = session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None  # an export with dynamic=false: 1
        self.fixed_size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None
        self.output_names = [o.name for o in session.get_outputs()]
        if missing := [name for name in codec.channels if name not in self.output_names]:
            raise OnnxFileError(f"ONNX file {path} has outputs {self.output_names}; its codec needs {missing} too")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
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


def load_onnx(path: str | Path, codec: StrongPoseCodec | Mapping[str, Any] | None = None,
              input_size: int | None = None, device: str | torch.device | None = "cpu", flip: bool = False,
              scales: Iterable[float] = (1.0,), keypoint_threshold: float | None = None,
              person_threshold: float | None = None, providers: list[str] | None = None) -> Predictor:
    """A :class:`Predictor` whose network is the ONNX file at ``path``, run by ONNX Runtime (``providers``,
    default its CPU one). ``codec``: decoding settings to change (as :func:`strongpose.load`'s, e.g.
    ``{"decode_max_people": 100}``), or a whole :class:`StrongPoseCodec` for files exported without the codec
    metadata (before 2026-11-28); ``input_size`` defaults to the size the file was exported at; ``device``: where
    decoding runs. The other arguments are :class:`Predictor`'s."""
    path = Path(path)
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(f"running {path} needs onnxruntime ({err}); install it with: {ONNX_HINT}") from err
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own classes for every kind of bad file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxFileError(f"{path} is not an ONNX file that onnxruntime can load: {first}") from err
    meta = session.get_modelmeta().custom_metadata_map
    if isinstance(codec, StrongPoseCodec):
        built = codec
    elif CODEC_KEY in meta:
        built = codec_from_metadata(meta[CODEC_KEY], decode_settings(codec), path)
    else:
        raise ConfigError(f"{path} does not say which codec it was trained with (no {CODEC_KEY} metadata: exported "
                          f"before 2026-11-28): pass codec=StrongPoseCodec(...) with its training settings, or "
                          f"export the checkpoint again")
    category = int(meta[CATEGORY_KEY]) if CATEGORY_KEY in meta else None
    network = OnnxNetwork(session, built, category, path)
    if input_size is None:
        if INPUT_SIZE_KEY in meta:
            input_size = int(meta[INPUT_SIZE_KEY])
        elif network.fixed_size:
            input_size = max(network.fixed_size)
        else:
            raise ConfigError(f"{path} does not say the input size it was exported at: pass input_size")
    if network.fixed_size and (network.fixed_size != (input_size, input_size) or tuple(scales) != (1.0,)):
        raise ConfigError(f"{path} was exported with a fixed input of {network.fixed_size[0]} x "
                          f"{network.fixed_size[1]} px (dynamic=false): it runs at input_size={input_size} and "
                          f"scales={list(scales)} only when those are {max(network.fixed_size)} and [1.0]; export "
                          f"with dynamic=true for other sizes")
    predictor = Predictor(network, int(input_size), device, flip=flip, scales=scales,
                          keypoint_threshold=keypoint_threshold, person_threshold=person_threshold)
    predictor.checkpoint = path
    predictor.codec_changes = {} if isinstance(codec, StrongPoseCodec) else decode_settings(codec)
    return predictor
