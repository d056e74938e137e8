"""Overhead of VerifiableStrategy against plain training on the same machine, in the same run.

    python benchmarks/overhead.py [--steps 30] [--families mlp cnn transformer autoencoder resnet]

Per family (an MLP, a CNN and a transformer on digits/tokens, an autoencoder with Adam, a
ResNet-style CNN with a step-interval StepLR): median step time of plain float32, plain float64,
VerifiableStrategy and the auditor's replay (ratios to float32), rounding-log bytes per step and
per rounded element, the fraction of rounded elements that was logged, and the corrections per step
of a replay on an emulated other machine (NondeterminismEmulator), where the log has roundings to
decide. A second table trains the autoencoder and the ResNet with each optimizer (SGD, Adam,
AdamW) and reports the logged fraction, the log bytes per rounded element, and the op that logs
most.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

from common import FAMILIES, StepTimer, loader, machine, make_family, print_table, quiet_trainer

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.audit import replay
from lightning_zk.rounding.log import read_step_log
from lightning_zk.testing import NondeterminismEmulator


def plain(family: str, steps: int, precision: str) -> float:
    model, data, bs = make_family(family)
    timer = StepTimer()
    quiet_trainer(max_steps=steps, precision=precision, callbacks=[timer]).fit(
        model, train_dataloaders=loader(data, bs))
    return timer.median()


def verifiable(family: str, steps: int, run_dir: Path, optimizer: str | None = None,
               **strategy_kwargs) -> tuple[float, RunDirectory]:
    model, data, bs = make_family(family, optimizer=optimizer)
    timer = StepTimer()
    strategy = VerifiableStrategy(run_dir=run_dir, **strategy_kwargs)
    quiet_trainer(max_steps=steps, strategy=strategy, callbacks=[timer]).fit(
        model, train_dataloaders=loader(data, bs))
    return timer.median(), RunDirectory(run_dir)


def audit(family: str, run_dir: Path) -> tuple[float, float]:
    """Replay time per step (plain replay, as an auditor pays it) and corrections per step (a
    second replay on an emulated other machine, so that the log has roundings to decide)."""
    timer = StepTimer()
    model, data, bs = make_family(family, seed=1)
    report = replay(run_dir, model, train_dataloaders=loader(data, bs), callbacks=[timer], progress=False)
    model, data, bs = make_family(family, seed=1)
    with NondeterminismEmulator(ulps=8, seed=7):
        emulated = replay(run_dir, model, train_dataloaders=loader(data, bs), progress=False)
    for r in (report, emulated):
        if not r.ok:
            raise SystemExit(f"replay of {family} failed: {r.summary()}")
    return timer.median(), emulated.corrections / emulated.steps_checked


def log_stats(run: RunDirectory) -> tuple[float, float, str]:
    """Logged fraction, log bytes per rounded element, and the op with most logged elements."""
    records = run.read_steps()
    rounded = sum(r.rounded_elements for r in records)
    per_op: collections.Counter[str] = collections.Counter()
    for r in records:
        for entry in read_step_log(run.path / r.log_file).entries:
            per_op[entry.op_name] += len(entry.positions)
    logged = sum(per_op.values())
    top = f"{per_op.most_common(1)[0][0]} ({per_op.most_common(1)[0][1] / logged:.0%})" if logged else "-"
    return logged / rounded, sum(r.log_bytes for r in records) / rounded, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    args = parser.parse_args()
    rows, optimizer_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            t32 = plain(family, args.steps, "32-true")
            t64 = plain(family, args.steps, "64-true")
            tv, run = verifiable(family, args.steps, Path(tmp) / family)
            ta, corrections = audit(family, Path(tmp) / family)
            records = run.read_steps()
            log_bytes = sum(r.log_bytes for r in records)
            rounded = sum(r.rounded_elements for r in records)
            logged = sum(r.logged_elements for r in records)
            model, _, _ = make_family(family)
            rows.append([
                family, model.optimizer_name, f"{t32 * 1e3:.2f}", f"{t64 * 1e3:.2f} ({t64 / t32:.2f}x)",
                f"{tv * 1e3:.2f} ({tv / t32:.2f}x)", f"{ta * 1e3:.2f} ({ta / t32:.2f}x)",
                f"{log_bytes / len(records):.0f}", f"{log_bytes / rounded:.2e}",
                f"{logged / rounded:.2e}", f"{corrections:.1f}",
            ])
        for family in [f for f in ("autoencoder", "resnet") if f in args.families]:
            for optimizer in ("sgd", "adam", "adamw"):
                _, run = verifiable(family, args.steps, Path(tmp) / f"{family}-{optimizer}", optimizer)
                fraction, per_elem, top = log_stats(run)
                optimizer_rows.append([family, optimizer, f"{fraction:.2e}", f"{per_elem:.2e}", top])
    print_table(
        f"VerifiableStrategy overhead ({args.steps} steps, median step time; {machine()})",
        ["model", "optimizer", "float32 ms", "float64 ms (x f32)", "verifiable ms (x f32)",
         "audit ms (x f32)", "log B/step", "log B/rounded elem", "logged fraction",
         "corrections/step"],
        rows,
    )
    if optimizer_rows:
        print_table(
            f"Rounding log per optimizer ({args.steps} steps)",
            ["model", "optimizer", "logged fraction", "log B/rounded elem", "op logging most"],
            optimizer_rows,
        )


if __name__ == "__main__":
    main()
