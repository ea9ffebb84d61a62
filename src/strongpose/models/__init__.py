"""Network parts (plain nn.Modules) and losses; the LightningModule is ``strongpose.lit_module``."""

from strongpose.models.backbone import ResNetBackbone, imagenet_weights_file
from strongpose.models.heads import HEATMAP_HEADS, Heads
from strongpose.models.losses import heatmap_loss, offset_loss, strongpose_losses
from strongpose.models.network import StrongPoseNet, to_probabilities

__all__ = ["HEATMAP_HEADS", "Heads", "ResNetBackbone", "StrongPoseNet", "heatmap_loss", "imagenet_weights_file",
           "offset_loss", "strongpose_losses", "to_probabilities"]
