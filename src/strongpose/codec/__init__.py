"""The StrongPose codec: targets <-> poses."""

from strongpose.codec.codec import HEATMAP_MAPS, OFFSET_MAPS, StrongPoseCodec

__all__ = ["HEATMAP_MAPS", "OFFSET_MAPS", "StrongPoseCodec"]
