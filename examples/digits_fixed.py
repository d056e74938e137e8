"""Fixed-point training of a digits MLP with zero-knowledge proofs of every step.

The network regresses one-hot digit labels with MSE (``--loss mse``) or classifies the integer
labels with softmax cross-entropy (``--loss xent``), with plain SGD in exact fixed point
(``VerifiableStrategy(mode="fixed")``); ``ProofCallback`` proves each epoch's steps in one
aggregated proof, and ``lightning-zk verify RUN`` checks the proofs, their chain and the ledger
without ever seeing weights or data.

    python -m examples.digits_fixed --run-dir runs/digits_fixed && lightning-zk verify runs/digits_fixed
    python -m examples.digits_fixed --loss xent --run-dir runs/digits_xent
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsRegressor(L.LightningModule):
    """64 → hidden → 10 Linear/ReLU network on one-hot targets (MSE, SGD)."""

    def __init__(self, hidden: int = 32, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):  # fixed mode runs it, every op intercepted
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class DigitsClassifier(DigitsRegressor):
    """The same network on the integer labels with softmax cross-entropy (mean)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)


def digits_labels(n: int | None = None) -> TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32)[:n], torch.tensor(y)[:n])


def digits_onehot(n: int | None = None) -> TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)[:n]
    targets = torch.nn.functional.one_hot(torch.tensor(y), 10).float()[:n]
    return TensorDataset(x, targets)


def main() -> None:
    from lightning_zk import CommitCallback, ProofCallback, VerifiableStrategy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/digits_fixed")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--loss", choices=("mse", "xent"), default="mse")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        strategy=VerifiableStrategy(run_dir=args.run_dir, mode="fixed", frac_bits=16),
        callbacks=[CommitCallback(), ProofCallback(aggregate="epoch")],
        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    xent = args.loss == "xent"
    dataset = digits_labels(args.samples) if xent else digits_onehot(args.samples)
    data = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    trainer.fit(DigitsClassifier() if xent else DigitsRegressor(), train_dataloaders=data)


if __name__ == "__main__":
    from lightning_zk.commands.quiet import quiet_lightning

    with quiet_lightning():  # Lightning's hardware notices and tips say nothing about the demo
        main()
