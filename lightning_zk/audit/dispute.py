"""The bisection dispute game and its referee (Teutsch–Reitwießner style).

Two parties hold Merkle ledgers over the same training steps: the trainer's run and the auditor's
replay (``replay(..., audit_dir=...)`` with ``CommitCallback``). Each has published its root in its
manifest. The game:

1. **Check the claims.** Both runs are of the same model, data and configuration (equal
   fingerprints and initial states), and each ledger hashes to its published root.
2. **Bisect on prefix roots.** Round 1 compares the roots over all ``T`` steps both ledgers
   cover; equal roots mean equal histories: no dispute. Otherwise keep ``lo`` (a prefix length
   whose roots agree, 0 = the shared initial state) and ``hi`` (one whose roots differ); each round
   asks both parties for the root of the first ``(lo + hi) // 2`` leaves with a consistency proof
   against their published root. The prefix predicate is monotone (a differing prefix stays
   different), so this finds the *first* differing leaf ``hi − 1`` even against a liar who agrees
   again later; ``⌈log2 T⌉ + 1`` rounds at most. The two leaves of that step are then revealed with
   inclusion proofs.
3. **Referee.** At the first disputed step ``i`` (they agree on ``i − 1``) the referee restores
   the nearest checkpoint at or before ``i`` whose digest matches the agreed leaf, re-executes up to
   ``i`` with the trainer's rounding logs on its own machine, and compares its leaf ``i`` with the
   trainer's: equal → the trainer is honest, else the trainer is not. The referee's own steps before
   ``i`` must reproduce the agreed leaves, or it refuses to judge.

If one ledger stops early (an auditor whose replay could not complete a step), the first step it
lacks is the disputed step. Anything that cannot be judged — ledgers that do not match their roots,
runs of different models, missing checkpoints — raises :class:`DisputeError`; there is never a
wrong verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from ..atomic import atomic_write_json
from ..ledger.claims import check_run_claims
from ..ledger.merkle import (
    Ledger,
    LedgerError,
    leaf_bytes,
    parse_leaf,
    parse_root,
    verify_consistency,
)
from ..ledger.rundir import RunDirectory, RunDirectoryError
from ..strategies.replay import AuditConfigError, AuditInputError, ReplayStart
from .replay import replay


class DisputeError(RuntimeError):
    """The dispute cannot be judged (and no verdict is given)."""


@dataclass
class Verdict:
    """Outcome of a dispute. ``honest`` is ``"trainer"``, ``"auditor"``, or ``None`` (no dispute)."""

    first_disputed_step: int | None
    honest: str | None
    rounds: int
    steps: int
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def dishonest(self) -> str | None:
        return {"trainer": "auditor", "auditor": "trainer"}.get(self.honest or "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        atomic_write_json(Path(path), self.to_json())
        return Path(path)

    def summary(self) -> str:
        if self.first_disputed_step is None:
            return f"no dispute: both ledgers agree on all {self.steps} steps ({self.rounds} round)"
        return (f"first disputed step {self.first_disputed_step}: the {self.dishonest} is dishonest "
                f"({self.rounds} bisection rounds over {self.steps} steps)")


@dataclass
class _Party:
    name: str
    run: RunDirectory
    manifest: dict[str, Any]
    ledger: Ledger
    size: int
    root: bytes

    def prefix_root(self, m: int) -> bytes:
        """Root of the first ``m`` leaves, proven a prefix of the published root."""
        root = self.ledger.root(m)
        if m != self.size:
            try:
                proof = self.ledger.prove_consistency(m, self.size)
                verify_consistency(proof, m, root, self.size, self.root)
            except LedgerError as err:
                raise DisputeError(f"the {self.name}'s ledger: {err}") from err
        elif root != self.root:
            raise DisputeError(f"the {self.name}'s ledger does not hash to its published root")
        return root

    def leaf(self, step: int) -> bytes:
        """The party's leaf of ``step``, checked by an inclusion proof against its published root."""
        proof = self.ledger.prove_inclusion(step, self.size)
        try:
            proof.verify(root=self.root, size=self.size, step=step)
        except LedgerError as err:
            raise DisputeError(f"the {self.name}'s ledger: {err}") from err
        return proof.leaf


def _open_party(name: str, path: str | Path) -> _Party:
    """A party's run, its claims checked (record count, final state, ledger vs published root)."""
    run = RunDirectory(path)
    try:
        manifest = run.read_manifest()
        if manifest.get("ledger") is None:
            raise DisputeError(
                f"the {name}'s run {run.path} publishes no ledger root in its manifest. HINT: train "
                "(or replay with audit_dir) with callbacks=[CommitCallback(...)]."
            )
        check_run_claims(run, manifest, logs=False)  # the referee checks the logs it replays
        published = manifest["ledger"]
        ledger = Ledger.open(run.path)
    except (RunDirectoryError, LedgerError) as err:
        raise DisputeError(f"the {name}'s run cannot be trusted: {err}") from err
    return _Party(name, run, manifest, ledger, published["size"], parse_root(published["root"]))


def _check_same_run(trainer: _Party, auditor: _Party) -> None:
    for key in ("fingerprint", "initial_state"):
        if trainer.manifest.get(key) != auditor.manifest.get(key):
            raise DisputeError(
                f"the two runs differ in {key} ({str(trainer.manifest.get(key))[:80]} vs "
                f"{str(auditor.manifest.get(key))[:80]}): they are runs of different models, data "
                "or configurations, so there is nothing to dispute"
            )


def _bisect(trainer: _Party, auditor: _Party, evidence: list[dict[str, Any]]) -> tuple[int | None, int]:
    """First step whose leaves differ (or that the shorter ledger lacks); and the rounds used.

    The predicate is "the roots of the first ``m`` leaves are equal", which is monotone in ``m``
    (a prefix that differs stays different), unlike "leaf ``m`` is equal": a liar may agree on
    later leaves after differing on an earlier one.
    """
    common = min(trainer.size, auditor.size)
    rounds = 0

    def prefixes_differ(m: int) -> bool:
        nonlocal rounds
        rounds += 1
        t, a = trainer.prefix_root(m), auditor.prefix_root(m)
        evidence.append({"round": rounds, "prefix": m, "agree": t == a,
                         "trainer_root": t.hex(), "auditor_root": a.hex()})
        return t != a

    if common == 0:
        return (0 if max(trainer.size, auditor.size) else None), rounds
    if not prefixes_differ(common):
        return (common if trainer.size != auditor.size else None), rounds
    lo, hi = 0, common  # prefixes of length lo agree (0: the shared initial state), of hi differ
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prefixes_differ(mid):
            hi = mid
        else:
            lo = mid
    step = hi - 1  # the leaves agree before it and differ at it
    t, a = trainer.leaf(step), auditor.leaf(step)
    evidence.append({"step": step, "differing": parse_leaf(t).differences(parse_leaf(a)),
                     "trainer_leaf": t.hex(), "auditor_leaf": a.hex()})
    return step, rounds


def _start_for(trainer: _Party, step: int, records) -> ReplayStart:
    """Nearest trainer checkpoint at or before ``step`` whose digest is the agreed state."""
    for n in range(step, -1, -1):
        path = trainer.run.checkpoint_path(n)
        if not path.is_file():
            continue
        agreed = (trainer.manifest.get("initial_state") or {}).get("digest") if n == 0 else \
            parse_leaf(trainer.leaf(n - 1)).state_digest
        return ReplayStart(step=n, epoch=records[n].epoch, batch_idx=records[n].batch_idx,
                           checkpoint=str(path.relative_to(trainer.run.path)), digest=agreed)
    raise DisputeError(f"the trainer's run has no checkpoint at or before step {step}")


def _referee(trainer: _Party, auditor: _Party, step: int, model, datamodule, train_dataloaders,
             trainer_kwargs) -> tuple[str, dict[str, Any]]:
    records = trainer.run.read_steps()
    if step >= len(records):
        raise DisputeError(f"the trainer's steps.jsonl has no record of disputed step {step}")
    for record in records[: step + 1]:
        if record.step < trainer.size and leaf_bytes(record) != trainer.leaf(record.step):
            raise DisputeError(
                f"the trainer's steps.jsonl disagrees with its ledger at step {record.step}"
            )
    start = _start_for(trainer, step, records)
    evidence: dict[str, Any] = {"checkpoint": start.checkpoint, "from_step": start.step}
    try:
        report = replay(trainer.run.path, model, datamodule=datamodule,
                        train_dataloaders=train_dataloaders, start=start, stop=step + 1,
                        **trainer_kwargs)
    except (AuditInputError, AuditConfigError) as err:
        evidence["replay_error"] = str(err)
        if isinstance(err, AuditInputError) and "starting state" in str(err):
            raise DisputeError(f"the checkpoint for the disputed interval is unusable: {err}") from err
        return "auditor", evidence  # the trainer's own commitments cannot be replayed
    replayed = report.records
    evidence["referee_report"] = {k: report.to_json()[k] for k in
                                  ("ok", "steps_checked", "first_mismatch_step", "mismatch")}
    early = report.first_mismatch_step
    if early is not None and early < step:  # any field of an agreed step, not only its leaf
        raise DisputeError(
            f"the referee could not reproduce agreed step {early} "
            f"({', '.join((report.mismatch or {}).get('fields', []))}): its machine or code cannot "
            "judge this run (different software versions?)"
        )
    for record in replayed:
        if record.step < step and leaf_bytes(record) != trainer.leaf(record.step):
            raise DisputeError(
                f"the referee could not reproduce agreed step {record.step}: its machine cannot "
                "judge this run (different software versions?)"
            )
    mine = next((r for r in replayed if r.step == step), None)
    evidence["referee_leaf"] = leaf_bytes(mine).hex() if mine is not None else None
    auditor_ok = mine is not None and step < auditor.size and leaf_bytes(mine) == auditor.leaf(step)
    # The trainer is honest iff its commitments for the re-executed steps (batch, rounding log
    # file, state) all reproduce on the referee's machine, and so does its leaf of the step.
    trainer_ok = report.ok and mine is not None and leaf_bytes(mine) == trainer.leaf(step)
    evidence.update(trainer_matches_referee=trainer_ok, auditor_matches_referee=auditor_ok)
    return ("trainer" if trainer_ok else "auditor"), evidence


def dispute(
    trainer_run: str | Path,
    auditor_run: str | Path,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None = None,
    train_dataloaders: Any = None,
    **trainer_kwargs: Any,
) -> Verdict:
    """Run the bisection game between two run directories and let the referee judge.

    ``model`` and the data are the agreed model and data code (as for :func:`replay`).

    Raises:
        DisputeError: the dispute cannot be judged (see the module doc); no verdict is given.

    Example::

        verdict = dispute("runs/digits", "runs/digits-audit", DigitsMLP(), DigitsDataModule())
        print(verdict.summary())
    """
    trainer = _open_party("trainer", trainer_run)
    auditor = _open_party("auditor", auditor_run)
    try:
        _check_same_run(trainer, auditor)
        rounds_evidence: list[dict[str, Any]] = []
        step, rounds = _bisect(trainer, auditor, rounds_evidence)
        steps = max(trainer.size, auditor.size)
        evidence: dict[str, Any] = {
            "rounds": rounds_evidence,
            "trainer": {"run": str(trainer.run.path), "size": trainer.size, "root": trainer.root.hex()},
            "auditor": {"run": str(auditor.run.path), "size": auditor.size, "root": auditor.root.hex()},
            "max_rounds": math.ceil(math.log2(max(steps, 1))) + 1,
        }
        if step is None:
            return Verdict(None, None, rounds, steps, evidence)
        honest, referee = _referee(trainer, auditor, step, model, datamodule, train_dataloaders,
                                   trainer_kwargs)
        evidence["referee"] = referee
        return Verdict(step, honest, rounds, steps, evidence)
    finally:
        trainer.ledger.close()
        auditor.ledger.close()
