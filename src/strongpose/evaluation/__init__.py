"""COCO keypoint evaluation of decoded poses."""

from strongpose.evaluation.coco_eval import coco_keypoint_stats, evaluate_loader, poses_to_coco

__all__ = ["coco_keypoint_stats", "evaluate_loader", "poses_to_coco"]
