"""Reading StrongPose checkpoints safely (``weights_only=True``) and explaining what is wrong with them
(writing them atomically: :mod:`strongpose.checkpoint_io`)."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any

import torch

from strongpose.config_check import InputError

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
    the keys both have are compared: a checkpoint from before a key was added to the spec still loads."""
    return [f"{what} {key}: checkpoint {saved[key]!r}, model {current[key]!r}"
            for key in sorted(set(saved) & set(current)) if saved[key] != current[key]]


def _has_parameter(target: Any, name: str) -> bool:
    """Whether the class or function a ``_target_`` names takes an argument ``name`` (False when it cannot
    be told: instantiate then reports the target as it would)."""
    from hydra.utils import get_object

    try:
        return name in inspect.signature(get_object(target)).parameters
    except Exception:  # noqa: BLE001 - an unknown or odd target: instantiate says what is wrong with it
        return False


def module_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the :class:`~strongpose.lit_module.StrongPoseModule` a checkpoint was trained as (codec,
    backbone, heads from the run config stored in it) and load its weights (the EMA ones when EMA was
    on); returns ``(module in eval mode, run config dict)``. No ImageNet weights are read."""
    from hydra.utils import instantiate  # here: keeps `import strongpose.checkpoint` light

    checkpoint = read_checkpoint(path, map_location)
    cfg = checkpoint.get(CONFIG_KEY)
    if not isinstance(cfg, dict) or not all(key in cfg for key in ("codec", "backbone", "model")):
        raise CheckpointError(f"checkpoint {path} has no run config ({CONFIG_KEY!r}): it was not written by "
                              f"strongpose.train, or by a version before configs were stored in checkpoints")
    codec = instantiate(cfg["codec"])
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


def init_from_checkpoint(module: torch.nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Start ``module`` (a new run: fresh optimiser, schedule, step count) from the weights of the checkpoint
    at ``path`` (its ``state_dict``: the EMA weights when EMA was on), for fine-tuning or a run with another
    global batch. Every tensor whose name and shape match is copied; the others keep their initial values (the
    heads' last layers of another skeleton, a neck of another width). Returns (loaded, kept) names; a
    checkpoint that fits nothing raises :class:`CheckpointError`."""
    saved = read_checkpoint(path)["state_dict"]
    own = module.state_dict()
    loaded = [name for name, value in own.items()
              if name in saved and isinstance(saved[name], torch.Tensor) and saved[name].shape == value.shape]
    if not loaded:
        raise CheckpointError(f"init_from={path}: none of its {len(saved)} tensors fits this model (names or "
                              f"shapes differ: another backbone?)")
    module.load_state_dict({name: saved[name] for name in loaded}, strict=False)
    return loaded, [name for name in own if name not in set(loaded)]
