"""ONNX export: ``python -m strongpose.export ckpt_path=CKPT output=model.onnx [input_size=512] [opset=18]
[dynamic=true]`` (Hydra, config ``strongpose/conf/export.yaml``).

Only the network is exported: one input ``images`` (B, 3, H, W) float32 RGB pixel values 0..255, resized
and padded as in validation (the network normalises them itself; float rather than uint8 input, which not
every runtime takes), and the raw outputs ``skhm``, ``bhm`` (logits), ``short``, ``mid``, ``long``
(offsets in input pixels).
Decoding (Hough voting, grouping) stays in Python: ``codec.decode(to_probabilities(outputs))``.
The exported file is then run with onnxruntime (CPU) on embedded-sample images and compared with PyTorch;
a missing dependency or a difference above the tolerance fails with a message saying what to do.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from strongpose.checkpoint import module_from_checkpoint
from strongpose.config_check import (CONFIG_DIR, ConfigError, check_types, report_input_errors, require_positive,
                                     run_with_key_hints)
from strongpose.inference.onnx import CATEGORY_KEY, CODEC_KEY, INPUT_SIZE_KEY, codec_metadata

log = logging.getLogger(__name__)

INPUT_NAME = "images"
INPUT_CONTRACT = {  # written into every exported file (describe_input)
    "strongpose.input": "images: (B, 3, H, W) float32 RGB pixel values 0..255, resized and padded as in "
                        "validation; the ImageNet normalisation is inside the graph",
    "strongpose.outputs": "skhm, bhm: logits; short, mid, long: offsets in input pixels",
}
EXPORTERS = ("auto", "dynamo", "torchscript")
INSTALL_HINT = "pip install 'strongpose[export]'"
DEFAULT_INPUT_SIZE = 512  # traced size when neither the config nor the checkpoint's run config gives one


class ExportError(RuntimeError):
    """Export impossible (missing dependency, the exporter fails) or its result differs from PyTorch: exit
    status 1. A mistake in what the command was given (checkpoint, option) is an ``InputError``: status 2."""


def require_onnx() -> None:
    """Fail early, with the install command, when the export extra is missing."""
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError as err:
            raise ExportError(f"ONNX export needs onnx, onnxruntime and onnxscript; {name} is missing "
                              f"({err}). Install them with: {INSTALL_HINT}") from err


class OutputTuple(nn.Module):
    """The network with its dict of outputs as a tuple in ``names`` order: ONNX outputs are positional."""

    def __init__(self, net: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.net = net
        self.names = list(names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.net(images)
        return tuple(outputs[name] for name in self.names)


def export_onnx(net: nn.Module, names: list[str], output: str | Path, example: torch.Tensor, opset: int = 18,
                dynamic: bool = True, exporter: str = "auto", metadata: dict[str, str] | None = None) -> str:
    """Write ``net`` (images -> dict of maps) to ``output`` with :data:`INPUT_CONTRACT` and ``metadata`` in its
    metadata; returns the exporter used (dynamo / torchscript).

    ``example`` is the traced input; with ``dynamic`` its batch should be > 1 (torch.export specialises
    dimensions of size 1). ``exporter="auto"`` tries the torch.export-based exporter and falls back to the
    TorchScript-based one when it fails.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    require_onnx()
    model = OutputTuple(net, names).eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    common = {"input_names": [INPUT_NAME], "output_names": list(names), "opset_version": int(opset), "verbose": False}
    if exporter in ("auto", "dynamo"):
        try:
            shapes = None
            if dynamic:
                dim = torch.export.Dim
                shapes = {INPUT_NAME: {0: dim("batch"), 2: dim("height"), 3: dim("width")}}
            # external_data=False: one self-contained file (the weights are far below ONNX's 2 GB limit)
            torch.onnx.export(model, (example,), str(output), dynamo=True, dynamic_shapes=shapes,
                              external_data=False, **common)
            describe_input(output, metadata)
            return "dynamo"
        except Exception as err:  # noqa: BLE001 - torch.export raises many error types
            if exporter == "dynamo" or isinstance(err, OSError):  # a file that cannot be written: no fallback
                raise ExportError(f"the dynamo (torch.export) ONNX exporter failed: {err}") from err
            log.warning("dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript exporter",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                **{name: {0: "batch", 2: "map_height", 3: "map_width"} for name in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (example,), str(output), dynamo=False, dynamic_axes=axes, **common)
    describe_input(output, metadata)
    return "torchscript"


def describe_input(path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write :data:`INPUT_CONTRACT` and ``metadata`` into the file's ``metadata_props``: the tensor types alone do
    not say whether ``images`` are pixels or normalised values (files exported before the network normalised
    itself took normalised ones), nor how to decode the outputs (``strongpose.inference.onnx`` reads the codec
    from there)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in {**INPUT_CONTRACT, **(metadata or {})}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def sample_images(input_size: int, count: int) -> torch.Tensor:
    """(count, 3, S, S) float32 embedded-sample images with people, resized and padded as in validation."""
    from strongpose.codec import StrongPoseCodec
    from strongpose.data import COCOKeypointDataset, sample_paths
    from strongpose.data.coco import to_chw

    images_dir, annotations = sample_paths()
    # the codec is unused here (no targets are encoded); the dataset only needs one to exist
    data = COCOKeypointDataset(images_dir, annotations, StrongPoseCodec(), input_size=input_size, train=False,
                               skip_empty=True, max_images=count)
    # the validation transform's image half alone: the people's masks are not needed here
    return torch.stack([to_chw(data.transform.image_only(data.load_image(i))[0]) for i in range(len(data))]).float()


def compare_with_onnxruntime(net: nn.Module, names: list[str], path: str | Path,
                             batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per output: max |onnxruntime - PyTorch| over ``batches`` and the largest |PyTorch| value."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = {name: {"max_abs_diff": 0.0, "max_abs": 0.0} for name in names}
    for images in batches:
        with torch.no_grad():
            expected = net(images)
        got = session.run(names, {INPUT_NAME: images.numpy()})
        for name, value in zip(names, got):
            ref = expected[name].numpy()
            if value.shape != ref.shape:
                raise ExportError(f"{path}: output {name!r} has shape {value.shape} in onnxruntime, "
                                  f"{ref.shape} in PyTorch, for input {tuple(images.shape)}")
            stats = result[name]
            stats["max_abs_diff"] = max(stats["max_abs_diff"], float(np.abs(value - ref).max()))
            stats["max_abs"] = max(stats["max_abs"], float(np.abs(ref).max()))
    return result


def check_batches(images: torch.Tensor, stride: int, dynamic: bool) -> list[torch.Tensor]:
    """One of the (B, 3, S, S) sample ``images``; with dynamic shapes also two cropped to a non-square size."""
    input_size = images.shape[-1]
    batches = [images[:1]]
    if dynamic and len(images) > 1:
        width = input_size // 2 + stride // 2  # not a multiple of the stride: maps round up
        batches.append(images[:, :, :, :width].contiguous())
    return batches


def check_output(output: Path) -> None:
    """Refuse an ``output`` that cannot be written (a folder, a folder that cannot be made), before exporting."""
    if output.is_dir():
        raise ConfigError(f"output={output} is a folder; name the file to write, e.g. output={output / 'model.onnx'}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output={output}: its folder cannot be made ({err})") from None


def export_input_size(requested: int | None, run_cfg: dict[str, Any]) -> tuple[int, str]:
    """The size to trace and check at, and where it comes from: ``input_size`` when set, else the
    checkpoint's ``data.input_size``, else :data:`DEFAULT_INPUT_SIZE` (with a warning saying how to choose)."""
    if requested:
        return int(requested), f"input_size={int(requested)}"
    trained = (run_cfg.get("data") or {}).get("input_size")
    if trained:
        return int(trained), "the checkpoint's data.input_size"
    log.warning("the checkpoint's run config has no data.input_size: tracing and checking at %d px; "
                "set input_size=N to choose the size", DEFAULT_INPUT_SIZE)
    return DEFAULT_INPUT_SIZE, "the default: the checkpoint has no data.input_size"


TYPES: dict[str, Any] = {
    "ckpt_path": Path, "output": Path, "input_size": int | None, "opset": int, "dynamic": bool, "exporter": str,
    "check": bool, "tolerance": float,
}


def run(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Export the checkpoint's network as ``cfg`` says (see ``conf/export.yaml``) and check it; returns a
    report: ``output``, ``exporter``, ``input_size`` and ``input_size_source`` (where it came from), ``diffs``
    ({output: max abs diff}), ``size_mb``."""
    check_types(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), TYPES)
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    require_positive("", input_size=cfg.get("input_size"), opset=cfg.get("opset"), tolerance=cfg.get("tolerance"))
    require_onnx()  # before the (slow) model build
    check_output(Path(cfg.get("output") or "model.onnx"))  # and before the (slow) export
    module, run_cfg = module_from_checkpoint(cfg["ckpt_path"], map_location="cpu")
    net = module.net.eval()
    names = list(module.codec.channels)
    input_size, size_source = export_input_size(cfg.get("input_size"), run_cfg)
    dynamic = bool(cfg.get("dynamic", True))
    images = sample_images(input_size, 2)  # read once: the traced example and the check's inputs
    example = images if dynamic else images[:1]  # batch 2 when dynamic: torch.export specialises size 1
    output = Path(cfg.get("output") or "model.onnx")
    # what decoding needs, so that the file alone makes a predictor (strongpose.load_onnx)
    metadata = {CODEC_KEY: codec_metadata(module.codec, run_cfg["codec"]), INPUT_SIZE_KEY: str(input_size)}
    if module.category_id is not None:
        metadata[CATEGORY_KEY] = str(int(module.category_id))
    exporter = export_onnx(net, names, output, example, opset=cfg.get("opset", 18), dynamic=dynamic,
                           exporter=cfg.get("exporter", "auto"), metadata=metadata)
    report = {"output": str(output), "exporter": exporter, "input_size": input_size,
              "input_size_source": size_source, "dynamic": dynamic,
              "size_mb": output.stat().st_size / 2**20, "diffs": {}}
    print(f"exported {cfg['ckpt_path']} -> {output} ({report['size_mb']:.1f} MB, {exporter} exporter, "
          f"opset {cfg.get('opset', 18)}, {'dynamic batch/height/width' if dynamic else 'fixed shape'}, "
          f"traced at {input_size} px: {size_source})", flush=True)
    if not cfg.get("check", True):
        return report
    batches = check_batches(images, module.codec.stride, dynamic)
    stats = compare_with_onnxruntime(net, names, output, batches)
    report["diffs"] = {name: s["max_abs_diff"] for name, s in stats.items()}
    shapes = ", ".join("x".join(map(str, b.shape)) for b in batches)
    print(f"onnxruntime (CPU) vs PyTorch on sample inputs {shapes}, max |diff|: "
          + " ".join(f"{name}={diff:.2e}" for name, diff in report["diffs"].items()), flush=True)
    tolerance = float(cfg.get("tolerance", 1e-3))
    bad = {name: s for name, s in stats.items() if s["max_abs_diff"] > tolerance * max(1.0, s["max_abs"])}
    if bad:
        details = ", ".join(f"{name} {s['max_abs_diff']:.3g} (outputs up to {s['max_abs']:.3g})"
                            for name, s in bad.items())
        raise ExportError(f"{output} was written but differs from PyTorch beyond tolerance {tolerance:g} "
                          f"(relative to max(1, max |output|)): {details}. Try another opset or "
                          f"exporter=torchscript / exporter=dynamo.")
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    for name in ("onnx_ir", "onnxscript"):  # Hydra's INFO root logger would print every graph-pass step
        logging.getLogger(name).setLevel(logging.WARNING)
    # like train / evaluate / predict: a wrong checkpoint or option is reported in a line, exit status 2 (the
    # ckpt_path=??? left unset too); an export that fails (exporter, onnxruntime differs) in a line, status 1
    with report_input_errors():
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise ConfigError("which checkpoint? python -m strongpose.export ckpt_path=CKPT output=model.onnx")
        try:
            run(cfg)
        except ExportError as err:
            print(f"strongpose.export: {err}", file=sys.stderr, flush=True)
            sys.exit(1)


def cli() -> None:
    """``python -m strongpose.export``: Hydra's ``main``, with the valid keys listed for an unknown one."""
    run_with_key_hints(main, "export")


if __name__ == "__main__":
    cli()
