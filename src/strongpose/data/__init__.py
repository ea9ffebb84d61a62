"""Data: COCO-format keypoint datasets, albumentations pipelines, the datamodule and the embedded sample.

Names are imported on first use: the datamodule pulls in Lightning, which ``check_data`` and the
dataset workers do not need (it was most of ``python -m strongpose.check_data``'s start-up time).
"""

from importlib import import_module

_WHERE = {
    "BadSample": "annotations", "load_coco": "annotations",
    "COCOKeypointDataset": "coco",
    "SkipBadCollate": "collate",
    "COCOKeypointDataModule": "datamodule",
    "sample_paths": "sample",
    "SeededSampler": "sampling", "EndlessSampler": "sampling", "init_worker": "sampling",
    "AugmentConfig": "transforms", "TrainTransform": "transforms", "ValTransform": "transforms",
    "to_original": "transforms",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
