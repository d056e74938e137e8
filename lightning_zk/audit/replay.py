"""Bit-exact audit replay: re-run a committed run on this machine and compare every step."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from ..atomic import atomic_write_json
from ..callbacks.commit import CommitCallback
from ..ledger.claims import check_run_claims
from ..ledger.rundir import RunDirectory, StepRecord
from ..rounding.mode import ReplayDivergenceError
from ..strategies.ddp import replay_strategy_class
from ..strategies.manifest import (
    SHAPING_SETTINGS,
    STOPPING_SETTINGS,
    hardware,
    json_safe,
    now_utc,
    same_setting,
)
from ..strategies.replay import (
    AuditConfigError,
    AuditInputError,
    ReplayComplete,
    ReplaySession,
    ReplayStart,
)
from .progress import ReplayProgressBar

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


_QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0)


def committed_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The Trainer settings the committed run trained with, as Trainer keyword arguments."""
    section = manifest.get("trainer")
    if not isinstance(section, dict):  # a run written before the settings were recorded
        old = (manifest.get("hyperparameters") or {}).get("trainer") or {}
        return {"gradient_clip_val": old.get("gradient_clip_val"),
                "gradient_clip_algorithm": old.get("gradient_clip_algorithm"),
                "limit_val_batches": 0, "max_steps": -1, "max_epochs": -1}
    settings = {k: v for k, v in (section.get("settings") or {}).items() if k in SHAPING_SETTINGS}
    stopping = {k: v for k, v in (section.get("stopping") or {}).items() if k in STOPPING_SETTINGS}
    return {**settings, **stopping}


def _replay_trainer_kwargs(manifest: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The committed settings plus the caller's other arguments; a differing setting is an error.

    A wall-clock ``max_time`` is not applied: the committed steps say where the replay ends.
    """
    committed = committed_settings(manifest)
    conflicts = [
        f"{name}={overrides[name]!r} (the committed run used {name}={committed[name]!r})"
        for name in (*SHAPING_SETTINGS, *STOPPING_SETTINGS)
        if overrides.get(name) is not None and name in committed
        and not same_setting(json_safe(overrides[name]), committed[name])
    ]
    if conflicts:
        raise AuditConfigError(
            f"the replay's Trainer setting differs from the committed run's: {'; '.join(conflicts)}. "
            "A replay reproduces the committed computation, so it applies the run's own Trainer "
            "settings. HINT: drop the argument (the replay applies the committed value by itself)."
        )
    if overrides.get("max_time") is not None:
        raise AuditConfigError(
            f"Trainer(max_time={overrides['max_time']!r}) cannot apply to a replay: it replays "
            "exactly the committed steps. HINT: use stop= to replay a prefix."
        )
    rest = {k: v for k, v in overrides.items() if k not in committed}
    return {**_QUIET, **committed, **rest}


class _OwnSettingsNotices(logging.Filter):
    """Lightning announces each limit passed explicitly; the replay passes the run's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "` was configured so " not in str(record.getMessage())


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
    val_dataloaders: Any = None,
    progress: bool | None = None,
    prefix: bool = False,
    **trainer_kwargs: Any,
) -> AuditReport:
    """Replay the committed run in ``run_dir`` with ``model`` and data; compare every step.

    The replay uses the run's own arithmetic (compute dtype, mantissa bits, τ, seed) and Trainer
    settings (validation schedule and limits, train limits, gradient clipping and accumulation,
    stopping) from ``manifest.json``, starts from the committed initial state, feeds each step the
    trainer's rounding log, and stops at the first step whose batch, updates, log or resulting
    state differs from the trainer's record. With ``audit_dir`` the auditor commits its own run
    directory, with a Merkle ledger (a :class:`~lightning_zk.CommitCallback` is added unless one is
    given). A progress bar (steps, corrections so far, time left) is shown on an interactive
    terminal; ``progress=True``/``False`` forces it on or off.

    Args:
        start, stop: replay only the committed steps ``[start.step, stop)`` (the referee's replay).
        val_dataloaders: validation data, when the run validated during training and the data
            is not a datamodule.
        progress: draw the progress bar (default: only on an interactive terminal).
        prefix: also accept an unfinished run (killed, or still training) and replay the steps it
            has recorded so far.
        **trainer_kwargs: other Trainer arguments (``accelerator``, ...). A setting that shapes the
            computation must equal the committed one (it is applied anyway).

    A full audit (no ``start``/``stop``) first checks the run's claims
    (:func:`~lightning_zk.ledger.claims.check_run_claims`): the trainer's finished manifest claims
    exactly the recorded number of steps, ends in the last record's state (the state committed at
    the end of training), its published ledger is present and hashes to its root, and its
    checkpoints hold the states their steps committed. ``ok`` then means every claimed step was
    replayed.

    Raises:
        RunDirectoryError: not a run directory, an incompatible format version, a field outside
            the schema (``SchemaError``), a path that leaves the run (``UnsafePathError``), or a
            run whose files disagree with its claims (``RunClaimError``; also an unfinished run).
        LedgerError: a published ledger that is missing, damaged or does not match.
        AuditInputError: a missing, truncated or corrupted log or checkpoint (names file, step).
        AuditConfigError: the model, data, optimizers, schedulers or a Trainer setting differs from
            the committed run's (names the differing field); raised before the first step runs.

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
    if start.global_step is None and start.step < len(records):
        start = dataclasses.replace(start, global_step=records[start.step].global_step)
    stop = len(records) if stop is None else min(stop, len(records))
    kwargs = _replay_trainer_kwargs(manifest, trainer_kwargs)
    # a sharded (data-parallel) run replays on this one process, its shards in turn (or on
    # ``devices=M`` DDP processes, M dividing its shard count: each runs its shards)
    strategy = replay_strategy_class(manifest, kwargs.get("devices")).from_manifest(
        manifest, run_dir=audit_dir, device=device)
    strategy.replay_source, strategy.replay_start, strategy.replay_stop = source, start, stop
    callbacks = list(callbacks or [])
    if audit_dir is not None and not any(isinstance(c, CommitCallback) for c in callbacks):
        # The auditor's run gets its own ledger and checkpoints: what a dispute needs.
        every = (manifest.get("ledger") or {}).get("checkpoint_every_n_steps", 100)
        callbacks.append(CommitCallback(checkpoint_every_n_steps=every))
    callbacks.append(ReplayProgressBar(stop - start.step, enabled=progress))
    notices = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    quiet = _OwnSettingsNotices()
    notices.addFilter(quiet)
    try:
        trainer = L.Trainer(strategy=strategy, callbacks=callbacks, **kwargs)
    finally:
        notices.removeFilter(quiet)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch.*")
            trainer.fit(model, datamodule=datamodule, train_dataloaders=train_dataloaders,
                        val_dataloaders=val_dataloaders)
    except ReplayComplete:
        pass  # the last requested step (or the first difference) was committed
    except ReplayDivergenceError as err:
        session = strategy.session
        if not isinstance(session, ReplaySession):
            raise
        # Publish what the auditor did verify (records, ledger root, manifest): the step it could
        # not complete is then the disputed one.
        session.record_failure(err.step, str(err))
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
