"""The StrongPose codec: targets <-> poses."""

from strongpose.codec.codec import StrongPoseCodec

__all__ = ["StrongPoseCodec"]
