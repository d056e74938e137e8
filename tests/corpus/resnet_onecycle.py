"""A ResNet-style CNN on digits with OneCycleLR stepped every batch (``interval: "step"``).

Shaped like the CIFAR ResNet tutorials: residual blocks with BatchNorm, SGD with Nesterov
momentum, ``OneCycleLR`` sized from ``trainer.estimated_stepping_batches``.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from .common import DigitsData


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class Model(L.LightningModule):
    def __init__(self, channels: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.block = Block(channels)
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        h = self.block(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


Data = DigitsData
MODEL_ARGS: dict = {}
DATA_ARGS = {"batch_size": 16, "n": 128, "image": True}
TRAINER = {"max_steps": 6}
CHANGED = ("max_steps", 7)
