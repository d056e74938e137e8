"""Shared pieces of the benchmarks: models of each family, data, a step timer, table printing."""

from __future__ import annotations

import platform
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer: str = "sgd", step_schedule: bool = False) -> None:
        super().__init__()
        self.net = net
        self.optimizer_name = optimizer
        self.step_schedule = step_schedule

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = make_optimizer(self.optimizer_name, self.parameters())
        if not self.step_schedule:
            return opt
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class Autoencoder(L.LightningModule):
    """Digits 64 → 32 → 8 → 32 → 64 with ReLU, MSE reconstruction."""

    def __init__(self, optimizer: str = "adam") -> None:
        super().__init__()
        self.optimizer_name = optimizer
        self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
        self.decoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return F.mse_loss(self.decoder(self.encoder(x)), x)

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_name, self.parameters())


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return F.relu(x + self.body(x))


class Transformer(nn.Module):
    def __init__(self, vocab=64, dim=64, heads=4, layers=2, seq=32, classes=10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(seq, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


def digits_data(n: int | None = None) -> TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    return TensorDataset(x[:n], y[:n]) if n else TensorDataset(x, y)


def make_family(name: str, seed: int = 0, optimizer: str | None = None):
    """(LightningModule, dataset, batch size) of one benchmark family (optimizer: its own default)."""
    L.seed_everything(seed, verbose=False)
    g = torch.Generator().manual_seed(0)  # the data are fixed; only the model init follows seed
    if name == "mlp":
        net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256),
                            nn.ReLU(), nn.Linear(256, 10))
        return Classifier(net, optimizer or "sgd"), digits_data(), 64
    if name == "autoencoder":
        return Autoencoder(optimizer or "adam"), digits_data(), 64
    if name == "resnet":
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                            Residual(16), Residual(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(16, 10))
        data = digits_data()
        images = TensorDataset(data.tensors[0].reshape(-1, 1, 8, 8), data.tensors[1])
        return Classifier(net, optimizer or "sgd", step_schedule=True), images, 64
    if name == "cnn":
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )
        data = digits_data()
        return Classifier(net, optimizer or "sgd"), TensorDataset(data.tensors[0].reshape(-1, 1, 8, 8), data.tensors[1]), 64
    if name == "transformer":
        y = torch.randint(0, 10, (1024,), generator=g)
        x = (torch.randint(0, 54, (1024, 32), generator=g) + y[:, None]) % 64
        return Classifier(Transformer(), optimizer=optimizer or "adamw"), TensorDataset(x, y), 32
    raise ValueError(name)


FAMILIES = ("mlp", "cnn", "transformer", "autoencoder", "resnet")


class StepTimer(L.Callback):
    """Wall time of each training batch (forward, backward, optimizer, commit)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t0)

    def median(self, warmup: int = 2) -> float:
        return statistics.median(self.times[warmup:] or self.times)


def quiet_trainer(**kwargs) -> L.Trainer:
    base = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    base.update(kwargs)
    return L.Trainer(**base)


def loader(data, batch_size):
    return DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
