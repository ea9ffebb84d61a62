"""A backbone class of the user's own, as a research project would write one: no ``pretrained`` argument."""

from strongpose.models.backbone import ResNetBackbone


class PlainResNet(ResNetBackbone):
    def __init__(self, arch: str, output_stride: int, neck_channels: int) -> None:
        super().__init__(arch, output_stride, neck_channels)
