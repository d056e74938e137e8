"""A regression MLP whose ReduceLROnPlateau watches the validation loss, validated every two
training batches on a limited number of validation batches."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class RegressionData(L.LightningDataModule):
    def __init__(self, n: int = 96, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Generated once, here: data computed with reductions or transcendental functions inside
        # fit would differ on other hardware (and the committed batch digests would say so).
        g = torch.Generator().manual_seed(3)
        x = torch.randn(n + 64, 8, generator=g)
        y = (x[:, :4].sum(1, keepdim=True) - x[:, 4:].prod(1, keepdim=True)).tanh()
        self.train_set, self.val_set = TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=16)


class Model(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0,
                                                             threshold=0.5)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss", "interval": "step",
                                 "frequency": 2}}


Data = RegressionData
MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_steps": 8, "val_check_interval": 2, "check_val_every_n_epoch": None, "limit_val_batches": 2}
CHANGED = ("val_check_interval", 3)
