"""Fixed-point training of a digits classifier with zero-knowledge proofs of every step.

An MLP classifies scikit-learn's 8×8 digits (bundled, no download) with softmax cross-entropy
and SGD with momentum and weight decay, in exact fixed point (``VerifiableStrategy(mode="fixed")``:
the module's own ``training_step`` runs with every op intercepted; its ``forward`` scales the
pixel values 0..16 to [0, 1] itself, and the proofs cover that scaling from the committed
pixels). ``ProofCallback`` proves each
epoch's steps in one aggregated proof, and ``lightning-zk verify RUN`` checks the proofs, their
chain and the ledger without ever seeing weights or data. The same model trained in float32 on
the same initial weights and exactly the batches the run committed (their indices are in the
step records) is the accuracy baseline.

    python -m examples.digits_fixed --run-dir runs/digits_fixed && lightning-zk verify runs/digits_fixed
    python -m examples.digits_fixed --full      # the whole training split, 10 epochs (minutes)
    python -m examples.digits_fixed --loss mse  # regress the one-hot labels instead
    python -m examples.digits_fixed --model cnn # Conv2d(1, 4, 3, padding=1) on the 8×8 images first
    python -m examples.digits_fixed --model cnn --pool 2  # ... then AvgPool2d(2): 64 → 32 → 10
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TEST_SAMPLES = 397  # a fixed random split of the bundled 1797 images: 1400 train, 397 test


class DigitsClassifier(L.LightningModule):
    """64 → hidden → 10 Linear/ReLU network, cross-entropy, SGD with momentum and weight decay."""

    def __init__(self, hidden: int = 32, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 16)  # pixels 0..16 to [0, 1]: proved from the committed pixels

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(self(x), y)

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):  # fixed mode runs it, every op intercepted
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        # a metric: argmax has no fixed-point execution, so it runs natively, unproved (it never
        # reaches the weights; the proofs cover exactly the step without it)
        labels = y if y.dim() == 1 else y.argmax(1)
        self.log("train_acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)
        return loss

    def configure_optimizers(self):
        h = self.hparams
        return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum,
                               weight_decay=h.weight_decay)


class DigitsCNN(DigitsClassifier):
    """Conv2d(1→4, 3×3, padding 1) + ReLU on the 8×8 images, optionally AvgPool2d(pool), Flatten,
    then 256 (64 with pool 2) → hidden → 10: fixed mode proves the conv as a matmul over im2col
    patches and the pooling as rounded window means (docs/zk_training.md)."""

    def __init__(self, hidden: int = 32, filters: int = 4, pool: int = 0, **kwargs) -> None:
        super().__init__(hidden=hidden, **kwargs)
        pooling = [nn.AvgPool2d(pool)] if pool else []
        side = 8 // pool if pool else 8
        self.net = nn.Sequential(nn.Conv2d(1, filters, 3, padding=1), nn.ReLU(), *pooling,
                                 nn.Flatten(), nn.Linear(filters * side * side, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))


class DigitsRegressor(DigitsClassifier):
    """The same network regressing one-hot labels with MSE (fixed mode's other provable loss)."""

    def criterion(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, y)


def digits(split: str, n: int | None = None, onehot: bool = False,
           images: bool = False) -> TensorDataset:
    """The bundled digits, pixel values 0..16 (the model scales them); ``split`` "train" or
    "test" (fixed split);
    ``images``: inputs (1, 8, 8) for a conv network instead of 64 pixels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))  # the images come sorted by writer
    x, y, cut = x[order], y[order], len(x) - TEST_SAMPLES
    x, y = (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
    inputs = torch.tensor(x, dtype=torch.float32)[:n]
    if images:
        inputs = inputs.reshape(-1, 1, 8, 8)
    labels = torch.tensor(y)[:n]
    if onehot:
        labels = nn.functional.one_hot(labels, 10).float()
    return TensorDataset(inputs, labels)


def accuracy(model: DigitsClassifier) -> float:
    data = digits("test", images=isinstance(model, DigitsCNN))
    with torch.no_grad():
        predicted = model(data.tensors[0].to(next(model.parameters()).dtype)).argmax(dim=1)
    return float((predicted == data.tensors[1]).float().mean())


def _train_data(args: argparse.Namespace) -> TensorDataset:
    return digits("train", args.samples, onehot=args.loss == "mse", images=args.model == "cnn")


def train_float32_like(model: DigitsClassifier, run_dir: str, data: TensorDataset) -> None:
    """Plain float32 SGD on exactly the batches the verifiable run committed, in its order."""
    from lightning_zk import RunDirectory

    optimizer = model.configure_optimizers()
    inputs, targets = data.tensors
    for record in RunDirectory(run_dir).read_steps():
        optimizer.zero_grad()
        model.loss(inputs[record.batch_indices], targets[record.batch_indices]).backward()
        optimizer.step()


def main() -> None:
    from lightning_zk import CommitCallback, ProofCallback, VerifiableStrategy
    from lightning_zk.audit.proofs import verify_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/digits_fixed")
    parser.add_argument("--samples", type=int, default=512, help="training images (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--loss", choices=("xent", "mse"), default="xent")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--pool", type=int, choices=(0, 2, 4), default=0,
                        help="--model cnn: average-pool the conv's output with this kernel")
    parser.add_argument("--full", action="store_true",
                        help="the whole training split (1400 images), batch 32, 10 epochs")
    args = parser.parse_args()
    if args.full:
        args.samples, args.batch_size, args.epochs = None, 32, 10
    L.seed_everything(0, verbose=False)
    if args.model == "cnn" and args.loss == "mse":
        parser.error("--model cnn trains with cross-entropy (--loss xent)")
    if args.pool and args.model != "cnn":
        parser.error("--pool needs --model cnn")
    model = (DigitsCNN(pool=args.pool) if args.model == "cnn" else
             DigitsRegressor() if args.loss == "mse" else DigitsClassifier())
    baseline = copy.deepcopy(model)  # the same initial weights, trained in float32
    data = _train_data(args)

    started = time.perf_counter()
    trainer = L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False,
                        strategy=VerifiableStrategy(run_dir=args.run_dir, mode="fixed"),
                        callbacks=[CommitCallback(), ProofCallback(aggregate="epoch")])
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=args.batch_size,
                                                    shuffle=True, drop_last=True))
    fixed_s = time.perf_counter() - started
    started = time.perf_counter()
    train_float32_like(baseline, args.run_dir, data)
    plain_s = time.perf_counter() - started
    report = verify_run(args.run_dir)
    proofs = sum(p.stat().st_size for p in Path(args.run_dir, "proofs").glob("*.lzkt"))
    print(f"test accuracy on {TEST_SAMPLES} images: fixed point {accuracy(model):.1%}, "
          f"float32 {accuracy(baseline):.1%}")
    print(f"{trainer.global_step} steps trained in fixed point and proved in {fixed_s:.1f} s "
          f"(float32 training {plain_s:.1f} s); proofs {proofs / 2**20:.2f} MiB; verify: "
          f"{'OK' if report.ok else 'FAILED ' + '; '.join(report.problems)} "
          f"({report.steps_proven} steps proven, {report.security_bits} bits, ledger {report.ledger})")


if __name__ == "__main__":
    from lightning_zk.commands.quiet import quiet_lightning

    with quiet_lightning():  # Lightning's hardware notices and tips say nothing about the demo
        main()
