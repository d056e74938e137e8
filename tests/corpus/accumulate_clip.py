"""Gradient accumulation over two batches with value clipping, over two short epochs whose odd
number of batches cuts the last accumulation window at the epoch's end."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from .common import DigitsData


class Model(L.LightningModule):
    def __init__(self, hidden: int = 24, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=0.1)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


Data = DigitsData
MODEL_ARGS: dict = {}
DATA_ARGS = {"batch_size": 16, "n": 192}
TRAINER = {"max_epochs": 2, "limit_train_batches": 5, "accumulate_grad_batches": 2,
           "gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"}
CHANGED = ("accumulate_grad_batches", 1)
