"""Models and data of the DDP tests (importable: Lightning's launcher re-runs the script)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tests.models import MLP, TinyTransformer, ToyModule, make_data


class NormCNN(ToyModule):
    """Convolutions, GroupNorm, BatchNorm2d with running statistics (per shard, shard 0's kept),
    GELU and dropout."""

    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__(optimizer)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.GroupNorm(2, 6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(8 * 3 * 3, 4)

    def forward(self, x):
        h = F.relu(self.norm(self.conv1(x)))
        h = self.drop(F.gelu(self.bn(self.conv2(h))))
        return self.head(h.flatten(1))


KINDS = {"mlp": (MLP, "mlp"), "cnn": (NormCNN, "cnn"), "transformer": (TinyTransformer, "transformer")}


def make(kind: str, batch_size: int = 8, shuffle: bool = True, seed: int = 0,
         n: int = 64) -> tuple[L.LightningModule, DataLoader]:
    """The model (seeded) and its training data; ``batch_size`` is one shard's."""
    cls, data = KINDS[kind]
    L.seed_everything(seed, verbose=False)
    model = cls()
    return model, DataLoader(make_data(data, n=n), batch_size=batch_size, shuffle=shuffle)


def misroute_shard(strategy: Any, step: int) -> None:
    """(Test) make rank 1 load shard 0's samples at ``step``: a rank that trained on another shard."""
    original = strategy.process_dataloader

    def process(dataloader):
        loader = original(dataloader)
        order = strategy._batch_order
        if order is None or strategy.global_rank != 1:
            return loader
        local = order.local_indices

        def wrong(epoch: int, batch_idx: int) -> list[int]:
            if batch_idx == step:
                return order.shard_indices(epoch, batch_idx, 0)
            return local(epoch, batch_idx)

        order.local_indices = wrong
        return loader

    strategy.process_dataloader = process


class Rank1Divergence(L.Callback):
    """(Test) rank 1's update of step ``step`` differs from rank 0's, as a near-tie rounded the
    other way on other hardware would make it: its log of the update has an entry rank 0's lacks,
    and its first layer differs (doubled, exaggerated so that the later steps cannot absorb it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 1 or batch_idx != self.step:
            return
        import numpy as np
        import torch

        from lightning_zk.rounding.log import LogEntry

        with torch.no_grad():
            next(pl_module.parameters()).mul_(2.0)  # exact: stays on the grid
        session = trainer.strategy.session
        original = session._rest_entries

        def rest(log, lo, hi):
            session._rest_entries = original
            flipped = LogEntry(hi, "state:model/net.0.weight", 0, 1, np.array([0], dtype=np.int64),
                               np.array([True]))
            return [*original(log, lo, hi), flipped]

        session._rest_entries = rest


class CrashAt(L.Callback):
    """(Test) every rank fails when step ``step``'s batch starts (a crash mid-run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.step:
            raise RuntimeError(f"crash at step {self.step}")


class Rank1SkipsUpdate(L.Callback):
    """(Test) rank 1 skips the optimizer update of step ``step`` (its forward and backward run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank != 1 or batch_idx != self.step:
            return
        optimizer = trainer.optimizers[0]
        step = optimizer.step

        def skipped(closure=None, **kwargs):
            optimizer.step = step
            return closure() if closure is not None else None

        optimizer.step = skipped
