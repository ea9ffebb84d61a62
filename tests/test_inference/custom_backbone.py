"""A backbone class of the user's own, as a research project would write one: no ``pretrained`` argument."""

from strongpose.models.backbone import ResNetBackbone


class PlainResNet(ResNetBackbone):
    def __init__(self, arch: str, output_stride: int, neck_channels: int) -> None:
        super().__init__(arch, output_stride, neck_channels)


class HubResNet(ResNetBackbone):
    """ImageNet weights by default: rebuilt from a checkpoint, it must get ``pretrained=False`` all the same."""

    def __init__(self, arch: str, output_stride: int, neck_channels: int, pretrained: bool = True) -> None:
        if pretrained:
            raise RuntimeError("HubResNet would load ImageNet weights")
        super().__init__(arch, output_stride, neck_channels)
