"""Cost of the Merkle ledger (CommitCallback) against the same verifiable training without it.

    python benchmarks/ledger.py [--train small:100 small:1000 digits:100] [--direct-steps 1000 10000]

Training rows: an MLP on sklearn's digits under VerifiableStrategy (``small``: 64-32-10, batch 32;
``digits``: benchmarks/common.py's 64-256-256-10, batch 64), trained T steps with and without
CommitCallback in the same process. Per step: median step time of both (without: the
lower of two runs, after a warm-up fit), the
callback's own time (leaf append; checkpoint saves amortised, every ``--every`` steps), its
ratio to the step time, ledger bytes per leaf (file size / T), and an inclusion proof's size.
Direct rows: ``Ledger.extend``/``append`` on synthetic step records, no training.

Dispute rows (``--dispute T ...``): the small MLP trained T steps by a trainer that edits a weight
at step 0.6·T, audited (replay with its own ledger), then ``dispute()``: bisection rounds and the
referee's re-execution from the nearest checkpoint; times and the dispute's ratio to training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
from common import (
    Classifier,
    StepTimer,
    digits_data,
    loader,
    machine,
    make_family,
    print_table,
    quiet_trainer,
)
from torch import nn

from lightning_zk import VerifiableStrategy
from lightning_zk.callbacks import CommitCallback
from lightning_zk.ledger.merkle import LEAF_SIZE, Ledger
from lightning_zk.ledger.rundir import StepRecord


class TimedCommit(CommitCallback):
    """CommitCallback that records how long its per-step work (leaf, checkpoint) takes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[float] = []

    def on_step_committed(self, session, record, state) -> None:
        t0 = time.perf_counter()
        super().on_step_committed(session, record, state)
        self.times.append(time.perf_counter() - t0)


def model_and_data(name: str):
    if name == "digits":
        return make_family("mlp")
    L.seed_everything(0, verbose=False)
    return Classifier(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))), digits_data(), 32


def train(name: str, steps: int, run_dir: Path, every: int | None) -> tuple[float, list[float]]:
    model, data, bs = model_and_data(name)
    timer = StepTimer()
    callbacks = [timer]
    commit = None
    if every is not None:
        commit = TimedCommit(checkpoint_every_n_steps=every)
        callbacks = [commit, timer]
    quiet_trainer(max_steps=steps, strategy=VerifiableStrategy(run_dir=run_dir), callbacks=callbacks,
                  ).fit(model, train_dataloaders=loader(data, bs))
    return timer.median(), commit.times[2:] if commit else []


def proof_stats(ledger: Ledger) -> tuple[int, int, float, float]:
    """(proof JSON bytes, path hashes, ms to prove a middle step, ms to compute the root)."""
    t0 = time.perf_counter()
    root = ledger.root()
    t_root = time.perf_counter() - t0
    t0 = time.perf_counter()
    proof = ledger.prove_inclusion(ledger.size // 2)
    t_prove = time.perf_counter() - t0
    proof.verify(root)
    return (len(json.dumps(proof.to_json(), separators=(",", ":"))), len(proof.proof.path),
            t_prove * 1e3, t_root * 1e3)


def synthetic(step: int) -> StepRecord:
    h = [hashlib.sha256(f"{k}{step}".encode()).hexdigest() for k in "sbl"]
    return StepRecord(step, 0, step, list(range(64 * step, 64 * step + 64)), h[1], h[0],
                      f"rounding/step-{step:08d}.rlog", h[2], 0, 0, 0)


def direct(steps: int, tmp: Path) -> list[object]:
    records = [synthetic(i) for i in range(steps)]
    path = tmp / f"direct-{steps}.sqlite"
    with Ledger(path, create=True) as ledger:
        times = []
        for r in records:  # one transaction per step, as in training
            t0 = time.perf_counter()
            ledger.append(r)
            times.append(time.perf_counter() - t0)
        size, hashes, t_prove, t_root = proof_stats(ledger)
    t0 = time.perf_counter()
    with Ledger(tmp / f"bulk-{steps}.sqlite", create=True) as bulk:
        bulk.extend(records)
    t_bulk = (time.perf_counter() - t0) / steps
    return [f"{steps} (direct appends)", "-", "-", f"{statistics.median(times) * 1e3:.3f} "
            f"(bulk {t_bulk * 1e6:.0f} µs)", "-", f"{path.stat().st_size / steps:.0f}",
            f"{size} B ({hashes} hashes)", f"{t_prove:.2f} / {t_root:.2f}"]


def trained(name: str, steps: int, every: int, tmp: Path) -> list[object]:
    train(name, 10, tmp / f"warmup-{name}-{steps}", None)  # first fit in a process is slower
    t_plain, _ = train(name, steps, tmp / f"plain-{name}-{steps}", None)
    t_with, commit_times = train(name, steps, tmp / f"ledger-{name}-{steps}", every)
    t_plain = min(t_plain, train(name, steps, tmp / f"plain2-{name}-{steps}", None)[0])
    with Ledger(tmp / f"ledger-{name}-{steps}") as ledger:
        size, hashes, t_prove, t_root = proof_stats(ledger)
        file_bytes = ledger.path.stat().st_size
    median, mean = statistics.median(commit_times), statistics.fmean(commit_times)
    return [f"{steps} (training {name})", f"{t_plain * 1e3:.2f}", f"{t_with * 1e3:.2f}",
            f"{median * 1e3:.3f} (mean {mean * 1e3:.3f})", f"{median / t_plain:.3f}",
            f"{file_bytes / steps:.0f}", f"{size} B ({hashes} hashes)",
            f"{t_prove:.2f} / {t_root:.2f}"]


class _EditAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import torch

            with torch.no_grad():
                next(pl_module.parameters())[0, 0] += 1e-3


def dispute_row(steps: int, every: int, tmp: Path) -> list[object]:
    from lightning_zk.audit import dispute, replay

    run, audit = tmp / f"dispute-{steps}", tmp / f"dispute-{steps}-audit"
    model, data, bs = model_and_data("small")
    t0 = time.perf_counter()
    quiet_trainer(max_steps=steps, strategy=VerifiableStrategy(run_dir=run),
                  callbacks=[CommitCallback(checkpoint_every_n_steps=every), _EditAt(int(0.6 * steps))],
                  ).fit(model, train_dataloaders=loader(data, bs))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = replay(run, model_and_data("small")[0], train_dataloaders=loader(data, bs), audit_dir=audit)
    t_audit = time.perf_counter() - t0
    t0 = time.perf_counter()
    verdict = dispute(run, audit, model_and_data("small")[0], train_dataloaders=loader(data, bs))
    t_dispute = time.perf_counter() - t0
    referee = verdict.evidence["referee"]
    return [steps, f"{t_train:.1f}", f"{t_audit:.1f} (step {report.first_mismatch_step})",
            f"{verdict.first_disputed_step} ({verdict.dishonest} dishonest)",
            f"{verdict.rounds} (max {verdict.evidence['max_rounds']})",
            f"{verdict.first_disputed_step - referee['from_step'] + 1}", f"{t_dispute:.2f}",
            f"{t_dispute / t_train:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="*", default=["small:100", "small:1000", "digits:100"],
                        help="MODEL:STEPS with MODEL small or digits")
    parser.add_argument("--direct-steps", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--every", type=int, default=100, help="checkpoint_every_n_steps")
    parser.add_argument("--dispute", type=int, nargs="*", default=[100, 1000],
                        help="dispute a dishonest run of T steps (small MLP)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.train:
            name, steps = spec.split(":")
            rows.append(trained(name, int(steps), args.every, Path(tmp)))
        for steps in args.direct_steps:
            rows.append(direct(steps, Path(tmp)))
    if rows:
        print_table(
        f"Merkle ledger cost per step (VerifiableStrategy, CPU; "
        f"checkpoint every {args.every} steps; leaf {LEAF_SIZE} B, SHA-256; {machine()})",
        ["T", "step ms (no ledger)", "step ms (ledger)", "ledger ms/step (median)",
         "ledger / step", "ledger B/leaf", "inclusion proof", "prove / root ms"],
        rows,
        )
    if args.dispute:
        with tempfile.TemporaryDirectory() as tmp:
            disputes = [dispute_row(steps, 50, Path(tmp)) for steps in args.dispute]
        print_table(
            f"Dispute of a run whose trainer edited a weight at step 0.6 T (small MLP, checkpoint "
            f"every 50 steps; {machine()})",
            ["T", "train s", "audit s (mismatch)", "disputed step", "bisection rounds",
             "referee steps", "dispute s", "dispute / train"],
            disputes,
        )


if __name__ == "__main__":
    main()
