"""COCO keypoint evaluation of decoded poses."""

from strongpose.evaluation.callback import COCOEvalCallback
from strongpose.evaluation.coco_eval import STAT_NAMES, coco_keypoint_stats, poses_to_coco
from strongpose.evaluation.loop import evaluate_loader
from strongpose.evaluation.metric import COCOKeypointAP

__all__ = ["STAT_NAMES", "COCOEvalCallback", "COCOKeypointAP", "coco_keypoint_stats", "evaluate_loader",
           "poses_to_coco"]
