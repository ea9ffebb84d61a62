"""COCO keypoint evaluation of decoded poses."""

from strongpose.evaluation.callback import COCOEvalCallback
from strongpose.evaluation.coco_eval import CROWD_STAT_NAMES, STAT_NAMES, coco_keypoint_stats, poses_to_coco, stat_names
from strongpose.evaluation.loop import evaluate_loader
from strongpose.evaluation.metric import COCOKeypointAP

__all__ = ["CROWD_STAT_NAMES", "STAT_NAMES", "COCOEvalCallback", "COCOKeypointAP", "coco_keypoint_stats",
           "evaluate_loader", "poses_to_coco", "stat_names"]
