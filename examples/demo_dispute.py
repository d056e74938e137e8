"""Demo: emulated-hardware audit, a dishonest trainer, and the bisection dispute (digits MLP)."""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch

from examples.digits_mlp import DigitsDataModule, DigitsMLP
from lightning_zk import CommitCallback, VerifiableStrategy
from lightning_zk.audit import dispute, replay
from lightning_zk.testing import NondeterminismEmulator

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)


class EditWeightsAt(L.Callback):
    """The dishonest trainer: nudges one weight right before committing step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net[0].weight[0, 0] += 0.01


def train(run_dir: Path, steps: int, callbacks=()) -> None:
    L.seed_everything(0, verbose=False)
    with NondeterminismEmulator(ulps=8, seed=1):  # "machine A"
        L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir), max_steps=steps,
                  callbacks=[CommitCallback(checkpoint_every_n_steps=10), *callbacks], **QUIET
                  ).fit(DigitsMLP(), datamodule=DigitsDataModule())


def audit(run_dir: Path, audit_dir: Path):
    with NondeterminismEmulator(ulps=8, seed=2):  # "machine B"
        return replay(run_dir, DigitsMLP(), datamodule=DigitsDataModule(), audit_dir=audit_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    honest, liar = args.runs / "honest", args.runs / "dishonest"
    train(honest, args.steps)
    report = audit(honest, args.runs / "honest-audit")
    print(f"honest run, audited on another (emulated) machine: {report.summary()}")

    train(liar, args.steps, callbacks=[EditWeightsAt(37)])
    report = audit(liar, args.runs / "dishonest-audit")
    print(f"dishonest run, audited:                            {report.summary()}")
    verdict = dispute(liar, args.runs / "dishonest-audit", DigitsMLP(), datamodule=DigitsDataModule())
    print(f"dispute: {verdict.summary()}")
    referee = verdict.evidence["referee"]
    print(f"  the referee restarted from {referee['checkpoint']} and re-executed up to the step")


if __name__ == "__main__":
    from lightning_zk.commands.quiet import quiet_lightning

    with quiet_lightning():  # Lightning's hardware notices and tips say nothing about the demo
        main()
