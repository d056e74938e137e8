"""Overhead of VerifiableStrategy against plain training on the same machine, in the same run.

    python benchmarks/overhead.py [--steps 30] [--families mlp cnn transformer]

Per family: median step time of plain float32, plain float64, VerifiableStrategy and the
auditor's replay (ratios to float32), rounding-log bytes per step and per rounded element, the
fraction of rounded elements that was logged, and the corrections per step of a replay on an
emulated other machine (NondeterminismEmulator), where the log has roundings to decide.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import FAMILIES, StepTimer, loader, machine, make_family, print_table, quiet_trainer

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.audit import replay
from lightning_zk.testing import NondeterminismEmulator


def plain(family: str, steps: int, precision: str) -> float:
    model, data, bs = make_family(family)
    timer = StepTimer()
    quiet_trainer(max_steps=steps, precision=precision, callbacks=[timer]).fit(
        model, train_dataloaders=loader(data, bs))
    return timer.median()


def verifiable(family: str, steps: int, run_dir: Path, **strategy_kwargs) -> tuple[float, RunDirectory]:
    model, data, bs = make_family(family)
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
    report = replay(run_dir, model, train_dataloaders=loader(data, bs), callbacks=[timer])
    model, data, bs = make_family(family, seed=1)
    with NondeterminismEmulator(ulps=8, seed=7):
        emulated = replay(run_dir, model, train_dataloaders=loader(data, bs))
    for r in (report, emulated):
        if not r.ok:
            raise SystemExit(f"replay of {family} failed: {r.summary()}")
    return timer.median(), emulated.corrections / emulated.steps_checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    args = parser.parse_args()
    rows = []
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
            rows.append([
                family, f"{t32 * 1e3:.2f}", f"{t64 * 1e3:.2f} ({t64 / t32:.2f}x)",
                f"{tv * 1e3:.2f} ({tv / t32:.2f}x)", f"{ta * 1e3:.2f} ({ta / t32:.2f}x)",
                f"{log_bytes / len(records):.0f}", f"{log_bytes / rounded:.2e}",
                f"{logged / rounded:.2e}", f"{corrections:.1f}",
            ])
    print_table(
        f"VerifiableStrategy overhead ({args.steps} steps, median step time; {machine()})",
        ["model", "float32 ms", "float64 ms (x f32)", "verifiable ms (x f32)",
         "audit ms (x f32)", "log B/step", "log B/rounded elem", "logged fraction",
         "corrections/step"],
        rows,
    )


if __name__ == "__main__":
    main()
