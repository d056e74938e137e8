"""An MLP classifier with AdamW and an epoch-interval CosineAnnealingLR; the run ends on an epoch
boundary (``max_epochs``), validation every epoch on a limited number of batches."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from .common import DigitsData


class Model(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 3e-3, dropout: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
        return [opt], [sched]


Data = DigitsData
MODEL_ARGS: dict = {}
DATA_ARGS = {"batch_size": 32, "n": 192}
TRAINER = {"max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1}
CHANGED = ("max_epochs", 3)
