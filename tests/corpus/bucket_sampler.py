"""A next-token model over variable-length sequences with a length-bucketing batch sampler (the
kind language-model projects write), seeded per epoch through ``set_epoch``; padding collate."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler


class Sequences(Dataset):
    def __init__(self, n: int = 64, vocab: int = 12) -> None:
        g = torch.Generator().manual_seed(13)
        lengths = torch.randint(3, 9, (n,), generator=g)
        self.items = [torch.randint(1, vocab, (int(k),), generator=g) for k in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length, shuffled within and across buckets by (seed, epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], torch.rand(1, generator=g).item()))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for j in torch.randperm(len(batches), generator=g).tolist():
            yield batches[j]

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


def pad(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in batch)
    tokens = torch.zeros(len(batch), length, dtype=torch.int64)
    for i, s in enumerate(batch):
        tokens[i, : len(s)] = s
    return tokens[:, :-1], tokens[:, 1:]


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        self.train_set = Sequences()

    def train_dataloader(self) -> DataLoader:
        lengths = [len(s) for s in self.train_set.items]
        return DataLoader(self.train_set, batch_sampler=BucketBatchSampler(lengths, self.hparams.batch_size),
                          collate_fn=pad)


class Model(L.LightningModule):
    def __init__(self, vocab: int = 12, dim: int = 16, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        h = torch.cumsum(self.embed(inputs), dim=1)  # a bag-of-prefix "language model"
        logits = self.out(F.gelu(self.mix(h)))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_steps": 10}  # 8 batches per epoch: the run goes into a second epoch
CHANGED = ("limit_train_batches", 4)
