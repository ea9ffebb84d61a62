"""A LightningModule whose "network outputs" are the batch's targets: validation decodes (nearly) the ground truth.

Shared by the in-process callback tests and the DDP subprocess script of test_metric.py.
"""

import lightning as L
import torch


class GroundTruthModule(L.LightningModule):
    def __init__(self, codec) -> None:
        super().__init__()
        self.codec = codec
        self.layer = torch.nn.Linear(1, 1)

    def validation_step(self, batch, batch_idx):
        return {"loss": torch.zeros(()), "outputs": batch["targets"]}

    def decode(self, outputs):
        return self.codec.decode(outputs)
