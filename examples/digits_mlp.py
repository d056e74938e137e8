"""Digits MLP: scikit-learn's bundled 8x8 digits (no download), trained verifiably.

Run it directly::

    python examples/digits_mlp.py --run-dir runs/digits --max-steps 60

or through the CLI with the YAML config::

    lightning-zk fit --config examples/configs/digits_mlp.yaml
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(L.LightningDataModule):
    """The 1,797 8x8 digit images that ship with scikit-learn, split 80/20, scaled to [0, 1]."""

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.int64)
        n_val = int(len(x) * self.hparams.val_fraction)
        self.train_set = TensorDataset(x[n_val:], y[n_val:])
        self.val_set = TensorDataset(x[:n_val], y[:n_val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256, num_workers=self.hparams.num_workers)


class DigitsMLP(L.LightningModule):
    """A 64-hidden-hidden-10 MLP with ReLU and dropout, cross-entropy, SGD with momentum."""

    def __init__(self, hidden: int = 256, layers: int = 2, dropout: float = 0.1, lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        blocks: list[nn.Module] = []
        width = 64
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum,
                               weight_decay=self.hparams.weight_decay)


def main() -> None:
    from lightning_zk import VerifiableStrategy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/digits")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    L.seed_everything(args.seed)
    trainer = L.Trainer(
        strategy=VerifiableStrategy(run_dir=args.run_dir, seed=args.seed),
        max_steps=args.max_steps, logger=False, enable_checkpointing=False,
        default_root_dir="runs",
    )
    trainer.fit(DigitsMLP(), datamodule=DigitsDataModule())


if __name__ == "__main__":
    main()
