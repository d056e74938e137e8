"""An imbalanced classification problem rebalanced with ``WeightedRandomSampler`` (sampling with
replacement, drawn from the global RNG: its order is recorded, not re-drawn, by the replay)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler


class Data(L.LightningDataModule):
    def __init__(self, n: int = 80, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(17)
        y = (torch.rand(self.hparams.n, generator=g) < 0.2).long()
        x = torch.randn(self.hparams.n, 6, generator=g) + y[:, None] * 1.5
        self.train_set = TensorDataset(x, y)
        counts = torch.bincount(y, minlength=2).float()
        self.weights = (1.0 / counts)[y]

    def train_dataloader(self) -> DataLoader:
        sampler = WeightedRandomSampler(self.weights, num_samples=self.hparams.n, replacement=True)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler)


class Model(L.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.5)


MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_steps": 7}
CHANGED = ("min_steps", 3)
