"""A classifier written the way much user code is: inputs cast with ``.float()``, embeddings with
``.to(torch.float32)``, an accuracy from ``(pred == y).float().mean()``, and torchmetrics
(``MeanMetric``, ``MulticlassAccuracy``) updated inside the training and validation steps."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .common import DigitsData


class Model(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.position = nn.Embedding(64, 4)
        self.net = nn.Sequential(nn.Linear(64 + 4, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.train_loss = MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes=10)
        self.val_acc = MulticlassAccuracy(num_classes=10)

    def forward(self, x):
        x = x.float()  # "make sure the input is float"
        extra = self.position(torch.arange(64, device=x.device)).mean(0).to(torch.float32)
        return self.net(torch.cat([x, extra.expand(x.shape[0], -1)], dim=1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.train_loss(loss)
        self.train_acc(logits, y)
        self.log_dict({"train_loss": self.train_loss, "train_acc": self.train_acc, "acc": acc})
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


Data = DigitsData
MODEL_ARGS: dict = {}
DATA_ARGS = {"batch_size": 32, "n": 192}
TRAINER = {"max_steps": 5, "limit_val_batches": 1, "val_check_interval": 3}
CHANGED = ("limit_val_batches", 2)
