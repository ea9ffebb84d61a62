"""StrongPose: bottom-up multi-person 2D human pose estimation."""

import os

# albumentations calls the network at import time unless told not to (NO_ALBUMENTATIONS_UPDATE)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.skeleton import COCO_PERSON, CROWDPOSE, Skeleton, get_skeleton  # noqa: E402
from strongpose.structures import Poses  # noqa: E402

__version__ = "0.1.0"
__all__ = ["COCO_PERSON", "CROWDPOSE", "Poses", "Skeleton", "StrongPoseCodec", "get_skeleton", "load", "load_onnx"]


def __getattr__(name: str):
    # `strongpose.load` / `load_onnx` import the inference stack (albumentations; Lightning and Hydra when called) on
    # first use, so that `import strongpose` stays light
    if name in ("load", "load_onnx"):
        import strongpose.inference

        return getattr(strongpose.inference, name)
    raise AttributeError(f"module 'strongpose' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "load", "load_onnx"})  # tab completion finds the lazy ones too
