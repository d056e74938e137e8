"""A small regression MLP for fixed-point mode, on generated data."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(L.LightningModule):
    def __init__(self, hidden: int = 8, layers: list[nn.Module] | None = None, loss=None,
                 optimizer: str = "sgd") -> None:
        super().__init__()
        self.net = nn.Sequential(*(layers or [nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3)]))
        self.loss_fn = loss if loss is not None else nn.MSELoss()
        self.optimizer_name = optimizer

    def training_step(self, batch, batch_idx):  # the float version; fixed mode runs the engine
        x, y = batch
        return self.loss_fn(self.net(x), y)

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.01)
        if self.optimizer_name == "momentum":
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        if self.optimizer_name == "nesterov":
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        return torch.optim.SGD(self.parameters(), lr=0.05)


def regression_data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 4, generator=g)
    return TensorDataset(x, 0.5 * x[:, :3] - 0.25)


def regression_loader(n: int = 16, batch_size: int = 4) -> DataLoader:
    return DataLoader(regression_data(n), batch_size=batch_size, shuffle=True)


def make_regressor(seed: int = 0, **kwargs) -> Regressor:
    L.seed_everything(seed, verbose=False)
    return Regressor(**kwargs)


class Crash(RuntimeError):
    """The training process dies here (a test's simulated crash)."""


class CrashBefore(L.Callback):
    """Raise :class:`Crash` when the batch of ``step`` starts (steps before it are committed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"crash before step {self.step}")
