"""Small models of every supported family, on data generated in-process (no downloads)."""

from __future__ import annotations

import atexit
import shutil
import tempfile

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ToyModule(L.LightningModule):
    """Shared training loop: ``loss_fn`` on ``self(x)``; optimizer chosen by name."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.05) -> None:
        super().__init__()
        self.optimizer_name = optimizer
        self.lr = lr

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        params = self.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=1e-4)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr * 0.1)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr * 0.1, weight_decay=0.01)
        if self.optimizer_name == "adamw-foreach":
            return torch.optim.AdamW(params, lr=self.lr * 0.1, weight_decay=0.01, foreach=True)
        if self.optimizer_name == "sgd-foreach":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=1e-4, foreach=True)
        raise ValueError(self.optimizer_name)


class MLP(ToyModule):
    def __init__(self, optimizer: str = "sgd", width: int = 32, dropout: float = 0.1) -> None:
        super().__init__(optimizer)
        self.net = nn.Sequential(
            nn.Linear(16, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width),
            nn.Tanh(), nn.Linear(width, 4),
        )

    def forward(self, x):
        return self.net(x)


class CNN(ToyModule):
    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__(optimizer)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.head = nn.Linear(8 * 3 * 3, 4)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = F.gelu(self.conv2(h))
        return self.head(h.flatten(1))


class TinyTransformer(ToyModule):
    """Embedding, MultiheadAttention, SDPA, LayerNorm, GELU, dropout and residual additions."""

    def __init__(self, optimizer: str = "adamw", vocab: int = 11, dim: int = 16) -> None:
        super().__init__(optimizer)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(8, dim))
        self.attn = nn.MultiheadAttention(dim, 2, dropout=0.1, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm1(h + a)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v, dropout_p=0.1 if self.training else 0.0, is_causal=True)
        h = self.norm2(h + self.ff(h))
        return self.head(h.mean(1))


def make_data(kind: str, n: int = 96, seed: int = 0) -> TensorDataset:
    g = _generator(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    if kind == "mlp":
        x = torch.randn(n, 16, generator=g) + y[:, None].float()
    elif kind == "cnn":
        x = torch.randn(n, 1, 8, 8, generator=g) + y[:, None, None, None].float()
    elif kind == "transformer":
        x = (torch.randint(0, 8, (n, 8), generator=g) + y[:, None]) % 11
    else:
        raise ValueError(kind)
    return TensorDataset(x, y)


MODELS = {"mlp": MLP, "cnn": CNN, "transformer": TinyTransformer}


def make_model(kind: str, seed: int = 0, **kwargs) -> ToyModule:
    L.seed_everything(seed, verbose=False)
    return MODELS[kind](**kwargs)


def loader(kind: str, batch_size: int = 16, shuffle: bool = True, n: int = 96) -> DataLoader:
    return DataLoader(make_data(kind, n=n), batch_size=batch_size, shuffle=shuffle)


_ROOT = tempfile.mkdtemp(prefix="lzk-tests-")  # Lightning's files never in the working directory
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def trainer_kwargs(**overrides) -> dict:
    """Quiet, fast Trainer settings for tests (a checkpoint without its own ``dirpath`` goes to
    a temporary directory, not to ``./checkpoints``)."""
    kwargs = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
        default_root_dir=_ROOT,
    )
    kwargs.update(overrides)
    return kwargs


def train(kind: str, run_dir, steps: int = 6, seed: int = 0, optimizer: str | None = None,
          strategy_kwargs: dict | None = None, **trainer_overrides) -> tuple:
    """Train ``kind`` under VerifiableStrategy; returns (model, trainer)."""
    from lightning_zk import VerifiableStrategy

    model_kwargs = {"optimizer": optimizer} if optimizer else {}
    model = make_model(kind, seed=seed, **model_kwargs)
    strategy = VerifiableStrategy(run_dir=run_dir, seed=seed, **(strategy_kwargs or {}))
    trainer = L.Trainer(strategy=strategy, max_steps=steps, **trainer_kwargs(**trainer_overrides))
    trainer.fit(model, train_dataloaders=loader(kind))
    return model, trainer
