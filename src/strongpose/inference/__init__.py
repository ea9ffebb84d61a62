"""Inference: a :class:`Predictor` built from a checkpoint alone (``strongpose.load``), with test-time options."""

from strongpose.inference.predictor import Predictor, load

__all__ = ["Predictor", "load"]
