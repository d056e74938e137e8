"""Truncated backpropagation through time: a GRU reads long sequences in chunks and makes one
optimizer update per chunk (several per batch), carrying the detached hidden state across —
Lightning 2's manual-optimization recipe for TBPTT."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SineData(L.LightningDataModule):
    """Noisy sines; the target is the next value of each sequence."""

    def __init__(self, n: int = 48, length: int = 12, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(11)  # generated here, outside fit (see plateau_val.py)
        phase = torch.rand(n, 1, generator=g) * 6.283
        t = torch.arange(length + 1, dtype=torch.float32) * 0.4
        wave = (t + phase).sin() + 0.05 * torch.randn(n, length + 1, generator=g)
        self.train_set = TensorDataset(wave[:, :-1, None], wave[:, 1:, None])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)


class Model(L.LightningModule):
    def __init__(self, hidden: int = 8, chunk: int = 4, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        hidden = None
        for start in range(0, x.shape[1], self.hparams.chunk):
            xs, ys = x[:, start:start + self.hparams.chunk], y[:, start:start + self.hparams.chunk]
            out, hidden = self.rnn(xs, hidden)
            loss = F.mse_loss(self.out(out), ys)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
            opt.step()
            hidden = hidden.detach()
            self.log("train_loss", loss)

    def configure_optimizers(self):
        return torch.optim.RMSprop(self.parameters(), lr=self.hparams.lr)


Data = SineData
MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_epochs": 1, "limit_train_batches": 3}
CHANGED = ("max_epochs", 2)
