"""Inference: a :class:`Predictor` built from a checkpoint alone (``strongpose.load``) or an exported ONNX file
alone (``strongpose.load_onnx``), with test-time options."""

from strongpose.inference.onnx import load_onnx
from strongpose.inference.pose_track import PoseTracker
from strongpose.inference.predictor import Predictor, load

__all__ = ["PoseTracker", "Predictor", "load", "load_onnx"]
