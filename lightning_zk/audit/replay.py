"""Bit-exact audit replay: re-run a committed run on this machine and compare every step."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from ..atomic import atomic_write_json
from ..callbacks.commit import CommitCallback
from ..ledger.claims import check_run_claims
from ..ledger.rundir import RunDirectory, StepRecord
from ..rounding.mode import ReplayDivergenceError
from ..strategies.manifest import hardware, now_utc
from ..strategies.replay import AuditConfigError, AuditInputError, ReplaySession, ReplayStart
from ..strategies.verifiable import VerifiableStrategy

__all__ = ["AuditConfigError", "AuditInputError", "AuditReport", "ReplayStart", "replay"]


@dataclass
class AuditReport:
    """The outcome of a replay.

    ``ok`` holds only when every committed step was replayed and matched bit for bit.
    ``corrections`` counts logged elements whose rounding the trainer's log decided differently
    from what this machine alone would have done.
    """

    ok: bool
    run_dir: str
    steps_committed: int  # step records in steps.jsonl
    steps_checked: int
    first_mismatch_step: int | None
    mismatch: dict[str, Any] | None
    corrections: int
    logged_elements: int
    per_step: list[dict[str, int]] = field(default_factory=list)
    audit_dir: str | None = None
    elapsed_s: float = 0.0
    hardware: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    steps_claimed: int | None = None  # what the trainer's finished manifest claims (full audits)
    claims: str = ""  # the claims checked before the replay (count, final state, ledger root)
    records: list[StepRecord] = field(default_factory=list, repr=False)  # what the replay computed

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "records"}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_json())
        return path

    def summary(self) -> str:
        if self.ok:
            claimed = (f" of the {self.steps_claimed} steps the trainer claimed"
                       if self.steps_claimed is not None else
                       " recorded steps of an unfinished run" if self.claims else " steps")
            return (f"OK: all {self.steps_checked}{claimed} replayed bit-for-bit "
                    f"({self.corrections} corrections from {self.logged_elements} logged elements)")
        m = self.mismatch or {}
        return (f"MISMATCH at step {self.first_mismatch_step}: {', '.join(m.get('fields', []))}"
                f"{' — ' + m['detail'] if m.get('detail') else ''} "
                f"({self.steps_checked} of {self.steps_committed} steps checked)")

    def __str__(self) -> str:
        return self.summary()


def _trainer_kwargs(manifest: dict[str, Any], steps: int, overrides: dict[str, Any]) -> dict[str, Any]:
    committed = (manifest.get("hyperparameters") or {}).get("trainer") or {}
    kwargs: dict[str, Any] = dict(
        max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=committed.get("gradient_clip_val"),
        gradient_clip_algorithm=committed.get("gradient_clip_algorithm"),
    )
    kwargs.update(overrides)
    return kwargs


def replay(
    run_dir: str | Path,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None = None,
    train_dataloaders: Any = None,
    audit_dir: str | Path | None = None,
    device: str | None = None,
    callbacks: list[L.Callback] | None = None,
    start: ReplayStart | None = None,
    stop: int | None = None,
    prefix: bool = False,
    **trainer_kwargs: Any,
) -> AuditReport:
    """Replay the committed run in ``run_dir`` with ``model`` and data; compare every step.

    The replay uses the run's own arithmetic (compute dtype, mantissa bits, τ, seed) from
    ``manifest.json``, starts from the committed initial state, feeds each step the trainer's
    rounding log, and stops at the first step whose batch, log or resulting state differs from
    the trainer's record. With ``audit_dir`` the auditor commits its own run directory, with a
    Merkle ledger (a :class:`~lightning_zk.CommitCallback` is added unless one is given).

    A full audit (no ``start``/``stop``) first checks the run's claims
    (:func:`~lightning_zk.ledger.claims.check_run_claims`): the trainer's finished manifest claims
    exactly the recorded number of steps, ends in the last record's state, and its published
    ledger is present and hashes to its root. ``ok`` then means every claimed step was replayed.
    ``prefix=True`` also accepts an unfinished run (killed, or still training) and replays the
    steps it has recorded so far.

    Raises:
        RunDirectoryError: not a run directory, an incompatible format version, a field outside
            the schema (``SchemaError``), a path that leaves the run (``UnsafePathError``), or a
            run whose files disagree with its claims (``RunClaimError``; also an unfinished run).
        LedgerError: a published ledger that is missing, damaged or does not match.
        AuditInputError: a missing, truncated or corrupted log or checkpoint (names file, step).
        AuditConfigError: the model, data or configuration differs from the committed run's.

    Example::

        report = replay("runs/digits", DigitsMLP(), datamodule=DigitsDataModule())
        assert report.ok, report.summary()
    """
    source = RunDirectory(run_dir)
    manifest = source.read_manifest()
    records = source.read_steps()
    full = start is None and stop is None
    claims = check_run_claims(source, manifest, records, require_finished=not prefix,
                              logs=False) if full else None  # the replay checks each log
    if not records:
        raise AuditInputError(f"{source.path} commits no steps: nothing to replay")
    start = start or ReplayStart()
    stop = len(records) if stop is None else min(stop, len(records))
    strategy = VerifiableStrategy.from_manifest(manifest, run_dir=audit_dir, device=device)
    strategy.replay_source = source
    strategy.replay_start = start
    callbacks = list(callbacks or [])
    if audit_dir is not None and not any(isinstance(c, CommitCallback) for c in callbacks):
        # The auditor's run gets its own ledger and checkpoints: what a dispute needs.
        every = (manifest.get("ledger") or {}).get("checkpoint_every_n_steps", 100)
        callbacks.append(CommitCallback(checkpoint_every_n_steps=every))
    trainer = L.Trainer(strategy=strategy, callbacks=callbacks,
                        **_trainer_kwargs(manifest, stop - start.step, trainer_kwargs))
    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, train_dataloaders=train_dataloaders)
    except ReplayDivergenceError as err:
        session = strategy.session
        if not isinstance(session, ReplaySession):
            raise
        session.record_failure(err.step, str(err))
        if audit_dir is not None:
            # Publish what the auditor did verify (records, ledger root, manifest): the step it
            # could not complete is then the disputed one. No final checkpoint: the aborted step
            # left the model half-updated.
            for callback in callbacks:
                if isinstance(callback, CommitCallback):
                    keep, callback.save_last = callback.save_last, False
                    callback.on_train_end(trainer, model)
                    callback.save_last = keep
            session.close()
    session = strategy.session
    if not isinstance(session, ReplaySession):
        raise AuditInputError("the replay did not start (no training batch was run)")
    result = session.result
    mismatch = result.mismatch
    expected = stop - start.step
    ok = mismatch is None and result.steps_checked == expected
    if mismatch is None and result.steps_checked < expected:
        mismatch_json: dict[str, Any] | None = {
            "step": start.step + result.steps_checked, "fields": ["missing_steps"], "committed": {},
            "replayed": {},
            "detail": f"the data ran out after {result.steps_checked} of {expected} steps",
        }
    else:
        mismatch_json = json.loads(json.dumps(mismatch.__dict__, default=str)) if mismatch else None
    return AuditReport(
        ok=ok,
        run_dir=str(source.path),
        steps_committed=len(records),
        steps_checked=result.steps_checked,
        first_mismatch_step=None if ok else (mismatch_json or {}).get("step"),
        mismatch=mismatch_json,
        corrections=result.corrections,
        logged_elements=result.logged_elements,
        per_step=result.per_step,
        audit_dir=str(audit_dir) if audit_dir is not None else None,
        elapsed_s=time.perf_counter() - started,
        hardware=hardware(strategy.root_device),
        created=now_utc(),
        records=list(session.replayed),
        steps_claimed=claims.steps_claimed if claims else None,
        claims=claims.describe() if claims else "",
    )
