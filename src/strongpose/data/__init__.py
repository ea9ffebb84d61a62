"""Data: COCO-format keypoint datasets, albumentations pipelines, the datamodule and the embedded sample."""

from strongpose.data.annotations import BadSample, load_coco
from strongpose.data.coco import COCOKeypointDataset
from strongpose.data.collate import SkipBadCollate
from strongpose.data.datamodule import COCOKeypointDataModule
from strongpose.data.sample import sample_paths
from strongpose.data.sampling import SeededSampler, init_worker
from strongpose.data.transforms import AugmentConfig, TrainTransform, ValTransform, to_original

__all__ = [
    "AugmentConfig", "BadSample", "COCOKeypointDataModule", "COCOKeypointDataset", "SeededSampler",
    "SkipBadCollate", "TrainTransform", "ValTransform", "init_worker", "load_coco", "sample_paths", "to_original",
]
