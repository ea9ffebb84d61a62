"""Reading StrongPose checkpoints safely (``weights_only=True``) and explaining what is wrong with them
(writing them atomically: :mod:`strongpose.checkpoint_io`)."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any

import torch

from strongpose.config_check import InputError
from strongpose.models.heads import adapt_heads

# key under which train() stores the run's resolved Hydra config in every checkpoint, so that a
# checkpoint file alone is enough to rebuild codec, backbone and heads (strongpose.load, evaluate, predict)
CONFIG_KEY = "strongpose_config"


class CheckpointError(InputError, ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model it is loaded into."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a message that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(2)
    # torch.save writes a zip archive ("PK"; a pickle, 0x80, before torch 1.6): anything else (an image, a
    # JSON or YAML file) is not a checkpoint, whatever torch.load would make of it (a KeyError for a text file)
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} ({size} bytes) is not a PyTorch checkpoint (starts with {head!r}; "
                              f"strongpose.train writes checkpoints/last.ckpt)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses arbitrary objects
        # torch's own message goes on to suggest weights_only=False: not for a file of unknown origin
        why = next((line.strip() for line in str(err).splitlines() if "WeightsUnpickler error" in line), "")
        raise CheckpointError(f"checkpoint {path} holds objects that weights_only=True refuses to load: not "
                              f"a checkpoint of strongpose.train" + (f" ({why})" if why else "")) from err
    except Exception as err:  # noqa: BLE001 - whatever the loader trips on, the file is the problem
        raise CheckpointError(f"checkpoint {path} ({size} bytes) cannot be read: truncated, still being "
                              f"written, or not a PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a StrongPose (Lightning) checkpoint: no 'state_dict' (found {keys})")
    return checkpoint


def spec_mismatch(saved: dict[str, Any], current: dict[str, Any], what: str) -> list[str]:
    """Human-readable differences between two specs, e.g. ``["codec stride: checkpoint 16, model 8"]``. Only
    the keys both have are compared: a checkpoint from before a key was added to the spec still loads. Lists of
    the same items in another order are shown whole, other lists by what only one side has."""
    return [_difference(f"{what} {key}", saved[key], current[key])
            for key in sorted(set(saved) & set(current)) if saved[key] != current[key]]


def _difference(name: str, saved: Any, current: Any) -> str:
    if isinstance(saved, list) and isinstance(current, list) and sorted(map(str, saved)) != sorted(map(str, current)):
        only = [[x for x in a if x not in b] for a, b in ((saved, current), (current, saved))]
        return f"{name}: only the checkpoint has {only[0]}, only the model {only[1]}"
    return f"{name}: checkpoint {saved!r}, model {current!r}"


def _has_parameter(target: Any, name: str) -> bool:
    """Whether the class or function a ``_target_`` names takes an argument ``name`` (False when it cannot
    be told: instantiate then reports the target as it would)."""
    from hydra.utils import get_object

    try:
        return name in inspect.signature(get_object(target)).parameters
    except Exception:  # noqa: BLE001 - an unknown or odd target: instantiate says what is wrong with it
        return False


def check_targets(node: Any, where: str, path: str | Path) -> None:
    """Raise :class:`CheckpointError` for a ``_target_`` under ``node`` (a run config section) that cannot be
    imported here: a backbone, skeleton or module of one's own whose module is not on ``PYTHONPATH``."""
    from hydra.utils import get_object

    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str):
            try:
                get_object(target)
            except Exception as err:  # noqa: BLE001 - Hydra's ImportError wording varies; the cause is kept
                raise CheckpointError(f"checkpoint {path}: {where}._target_={target} cannot be imported here "
                                      f"({type(err).__name__}): put the module that defines it on PYTHONPATH, "
                                      f"as when the run was trained") from None
        for key, value in node.items():
            if key != "_target_":
                check_targets(value, f"{where}.{key}", path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]", path)


def module_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                           codec: dict[str, Any] | None = None):
    """Rebuild the :class:`~strongpose.lit_module.StrongPoseModule` a checkpoint was trained as (codec,
    backbone, heads from the run config stored in it) and load its weights (the EMA ones when EMA was
    on); returns ``(module in eval mode, run config dict)``. No ImageNet weights are read. ``codec``:
    arguments of the codec to change (decoding settings; the run config returned is as stored)."""
    from hydra.utils import instantiate  # here: keeps `import strongpose.checkpoint` light

    checkpoint = read_checkpoint(path, map_location)
    cfg = checkpoint.get(CONFIG_KEY)
    if not isinstance(cfg, dict) or not all(key in cfg for key in ("codec", "backbone", "model")):
        raise CheckpointError(f"checkpoint {path} has no run config ({CONFIG_KEY!r}): it was not written by "
                              f"strongpose.train, or by a version before configs were stored in checkpoints")
    for key in ("codec", "backbone", "model"):
        check_targets(cfg[key], key, path)
    codec = instantiate({**cfg["codec"], **(codec or {})})
    # the checkpoint has the weights: no ImageNet ones (a custom backbone without the argument is built as is)
    backbone_cfg = dict(cfg["backbone"])
    if "pretrained" in backbone_cfg or _has_parameter(backbone_cfg.get("_target_"), "pretrained"):
        backbone_cfg["pretrained"] = False
    backbone = instantiate(backbone_cfg)
    model_cfg = {key: value for key, value in cfg["model"].items() if key != "backbone"}
    module = instantiate(model_cfg, codec=codec, backbone=backbone)
    module.on_load_checkpoint(checkpoint)  # codec / backbone spec check, with names
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit the model its own config builds: missing "
                              f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    return module.to(map_location).eval(), cfg


def init_from_checkpoint(module: torch.nn.Module, path: str | Path) -> tuple[list[str], list[str], str]:
    """Start ``module`` (a new run: fresh optimiser, schedule, step count) from the weights of the checkpoint
    at ``path`` (its ``state_dict``: the EMA weights when EMA was on), for fine-tuning or a run with another
    global batch. Every tensor whose name and shape match is copied, except where the checkpoint's specs say
    the same shape means something else: another backbone architecture (a ResNet-18's 3x3 block convolution
    is not a ResNet-50's), another skeleton (the heads' output channels are other keypoints and edges). The
    others keep their initial values. Returns (loaded, kept) names and why some were kept; a checkpoint that
    fits nothing raises :class:`CheckpointError`."""
    checkpoint = read_checkpoint(path)
    specs = checkpoint.get("hyper_parameters", {})
    heads = _heads_of(module)
    # a checkpoint from before the heads were fused, or with other heads (codec.long_range): a head it lacks keeps
    # its initial channels of the heads' shared layers, the others load theirs
    saved = checkpoint["state_dict"]
    if heads is not None:
        saved = adapt_heads(saved, "net.heads.", module.net.heads)
    own = module.state_dict()
    fresh, why = set(), ["no tensor of that name and shape in the checkpoint"]
    hparams = getattr(module, "hparams", {})
    backbone, codec = hparams.get("backbone") or {}, hparams.get("codec") or {}
    if _another_kind_of_backbone(specs.get("backbone") or {}, backbone):
        fresh |= {name for name in own if name.startswith("net.backbone.")}
        why.append(f"another kind of backbone: {specs['backbone'].get('arch')} -> {backbone.get('arch')}")
    if spec_mismatch(specs.get("codec") or {},
                     {k: v for k, v in codec.items() if k in ("skeleton", "keypoints", "edges")}, "codec"):
        fresh |= _skeleton_layers(module)
        why.append("another skeleton: the heads' output layers")
    loaded = [name for name, value in own.items() if name not in fresh and name in saved
              and isinstance(saved[name], torch.Tensor) and saved[name].shape == value.shape]
    if not loaded:
        raise CheckpointError(f"init_from={path}: none of its {len(saved)} tensors fits this model (names or "
                              f"shapes differ: another backbone?)")
    module.load_state_dict({name: saved[name] for name in loaded}, strict=False)
    lacking = [head for head in (heads or ()) if f"net.heads.heads.{head}.weight" not in saved]
    if lacking:
        why.append(f"heads the checkpoint lacks ({', '.join(lacking)}): their output layers and their channels of "
                   f"the heads' shared layers")
    kept = own.keys() - set(loaded)
    return loaded, [name for name in own if name in kept], "; ".join(why)


# torchvision ResNets by block: a ResNet-34 starts with a ResNet-18's blocks (fine-tuning one from the other
# loads those), a ResNet-50's bottleneck blocks hold other tensors under the same names and shapes. Wide
# ResNets' doubled bottlenecks are a kind of their own shared by 50 and 101 layers; each ResNeXt (its groups
# and widths) stays a kind of its own, by its arch name
RESNET_BLOCKS = {"resnet18": "basic", "resnet34": "basic", "resnet50": "bottleneck", "resnet101": "bottleneck",
                 "resnet152": "bottleneck", "wide_resnet50_2": "wide_bottleneck",
                 "wide_resnet101_2": "wide_bottleneck"}


def _another_kind_of_backbone(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Another backbone class, or a ResNet of the other block type (unknown specs: the same kind)."""
    if not saved or not current:
        return False
    kind = [(spec.get("class"), RESNET_BLOCKS.get(spec.get("arch"), spec.get("arch"))) for spec in (saved, current)]
    return kind[0] != kind[1]


def _heads_of(module: torch.nn.Module) -> torch.nn.ModuleDict | None:
    """A StrongPose module's output layers by head (``net.heads.heads``), or None for another module."""
    return getattr(getattr(getattr(module, "net", None), "heads", None), "heads", None)


def _skeleton_layers(module: torch.nn.Module) -> set[str]:
    """Names of the heads' output layers whose channels are keypoints or edges (all but the body map's)."""
    heads = _heads_of(module)
    return {f"net.heads.heads.{head}.{name}" for head, layer in (heads.items() if heads is not None else ())
            if head != "bhm" for name, _ in layer.named_parameters()}
