"""A small transformer classifier with a linear warm-up done by hand in an overridden
``optimizer_step`` (the pattern of Lightning's docs), Adam, and gradient clipping by norm."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TokenData(L.LightningDataModule):
    """Token sequences whose class is decided by their first tokens (generated, seeded)."""

    def __init__(self, n: int = 96, length: int = 8, vocab: int = 16, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(7)
        h = self.hparams
        tokens = torch.randint(0, h.vocab, (h.n, h.length), generator=g)
        labels = (tokens[:, 0] + tokens[:, 1]) % 4
        self.train_set = TensorDataset(tokens, labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)


class Model(L.LightningModule):
    def __init__(self, vocab: int = 16, dim: int = 16, heads: int = 2, lr: float = 1e-3, warmup: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 4)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))

    def training_step(self, batch, batch_idx):
        tokens, labels = batch
        loss = F.cross_entropy(self(tokens), labels)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        optimizer.step(closure=optimizer_closure)
        # Linear warm-up by hand, as in Lightning's docs.
        if self.trainer.global_step < self.hparams.warmup:
            scale = min(1.0, float(self.trainer.global_step + 1) / self.hparams.warmup)
            for group in optimizer.param_groups:
                group["lr"] = scale * self.hparams.lr


Data = TokenData
MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_steps": 6, "gradient_clip_val": 0.5}
CHANGED = ("gradient_clip_val", 1.0)
