"""A training script whose model lives in ``__main__``, run as ``python main_script.py RUN_DIR``.

The auditor imports the same code as ``tests.corpus.main_script.Net``: the model is identified by
what determines its computation, not by its import path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # run as a script: make `tests.corpus` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.corpus.common import DigitsData  # noqa: E402


class Net(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


Model, Data = Net, DigitsData
MODEL_ARGS: dict = {}
DATA_ARGS = {"batch_size": 32, "n": 128}
TRAINER = {"max_epochs": 2, "limit_train_batches": 2, "limit_val_batches": 1, "check_val_every_n_epoch": 1}
CHANGED = ("check_val_every_n_epoch", 2)


def main(run_dir: str) -> None:
    from lightning_zk import CommitCallback, VerifiableStrategy
    from lightning_zk.testing import NondeterminismEmulator

    L.seed_everything(0, verbose=False)
    with NondeterminismEmulator(ulps=8, seed=1):
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir), callbacks=[CommitCallback()],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", **TRAINER)
        trainer.fit(Net(**MODEL_ARGS), datamodule=DigitsData(**DATA_ARGS))


if __name__ == "__main__":
    main(sys.argv[1])
