"""The auditor's side of a run: replay a committed run and compare every step.

A :class:`ReplaySession` replaces the trainer's :class:`TrainingSession` when the strategy replays
(``VerifiableStrategy.from_manifest(...)`` with a replay source). It starts from the committed
initial state, feeds each step the trainer's rounding log, and compares the batch, the log and the
state after the step with the trainer's record. The first difference stops the replay. With an
``audit_dir`` the auditor commits its own run directory (its own records and initial state), which
a dispute compares against the trainer's.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from ..ledger import safeio
from ..ledger.rundir import RunDirectory, RunDirectoryError, StepRecord
from ..ledger.state import (
    StateError,
    batch_digest,
    load_snapshot,
    named_state_tensors,
    restore,
    save_snapshot,
)
from ..rounding.log import HEADER_SIZE, MAX_BODY_BYTES, RoundingLogError, decode_step_log
from . import manifest as mf
from .session import TrainingSession


class AuditInputError(RuntimeError):
    """The committed run cannot be replayed: a missing, truncated or corrupted file."""


class AuditConfigError(ValueError):
    """The replay's model, data or configuration is not the committed run's."""


@dataclass(frozen=True)
class ReplayStart:
    """Where a replay starts: after ``step`` committed steps, at ``(epoch, batch_idx)``."""

    step: int = 0
    epoch: int = 0
    batch_idx: int = 0
    checkpoint: str | None = None  # state after ``step`` steps; default the initial state
    digest: str | None = None  # its expected digest (the agreed state)


@dataclass
class Mismatch:
    """Where and how the replay first disagreed with the trainer's commitments."""

    step: int
    fields: list[str]
    committed: dict[str, Any] = field(default_factory=dict)
    replayed: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


@dataclass
class ReplayResult:
    steps_committed: int
    steps_checked: int = 0
    corrections: int = 0
    logged_elements: int = 0
    per_step: list[dict[str, int]] = field(default_factory=list)
    mismatch: Mismatch | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _short(value: Any) -> Any:
    return value[:16] + "…" if isinstance(value, str) and len(value) > 20 else value


class ReplaySession(TrainingSession):
    """Replays ``source`` step by step; optionally commits the auditor's own run to ``run``."""

    def __init__(self, strategy, trainer, run: RunDirectory | None, batch_order, source: RunDirectory):
        super().__init__(strategy, trainer, run or RunDirectory(source.path), batch_order)
        self.own_run = run
        self.run = run  # type: ignore[assignment]  # None: the auditor commits nothing
        self.source = source
        self.source_manifest = source.read_manifest()
        self.records = source.read_steps()
        self.start: ReplayStart = getattr(strategy, "replay_start", None) or ReplayStart()
        self.result = ReplayResult(steps_committed=len(self.records))
        self.replayed: list[StepRecord] = []
        self._trainer_record: StepRecord | None = None
        self.next_step = self.start.step

    @classmethod
    def open(cls, strategy, trainer, batch_order) -> ReplaySession:
        own = RunDirectory(strategy.run_dir) if strategy.run_dir is not None else None
        session = cls(strategy, trainer, own, batch_order, strategy.replay_source)
        try:
            session._check_identity()
            session._load_initial_state()
        except BaseException:
            session.release()
            raise
        session._pause_metric_logging()
        return session

    # --- opening -----------------------------------------------------------------------------
    def _check_identity(self) -> None:
        mine = self._identity()
        theirs = {k: self.source_manifest.get(k) for k in mine}
        for part in ("strategy", "model", "data", "optimizers"):
            if mine[part] != theirs[part]:
                raise AuditConfigError(
                    f"the replay's {part} differs from the committed run's ({self.source.path}): "
                    f"committed {str(theirs[part])[:300]}, replay {str(mine[part])[:300]}. HINT: "
                    "replay with the same model/data code and configuration the trainer used."
                )

    def _load_initial_state(self) -> None:
        info = self.source_manifest["initial_state"]
        start = self.start
        name, expected = (info["file"], info["digest"]) if start.checkpoint is None else \
            (start.checkpoint, start.digest)
        try:
            path = self.source.file(name, "starting state")
            safeio.regular_size(path, "starting state", safeio.MAX_CHECKPOINT_BYTES)
            snap = load_snapshot(path)
        except (StateError, RunDirectoryError) as err:
            raise AuditInputError(f"starting state: {err}") from err
        if snap.digest() != expected:
            raise AuditInputError(
                f"starting state {path} does not match the committed digest "
                f"{_short(expected)}: the checkpoint was replaced"
            )
        restore(snap, self.model, self.optimizers)
        if start.step and self.batch_order is not None:
            # Lightning counts epochs and batches from zero; the run resumes mid-way.
            self.batch_order.sampler.epoch_offset = start.epoch
            self.batch_order.sampler.resume_at(start.epoch, start.batch_idx * self.batch_order.batch_size)
        self.manifest = {
            **{k: self.source_manifest[k] for k in ("fingerprint", "strategy", "model", "data",
                                                    "optimizers", "hyperparameters", "initial_state")},
            "run_id": self.source_manifest.get("run_id"),
            "role": "audit",
            "audited_run": str(self.source.path.resolve()),
            "created": mf.now_utc(),
            "versions": mf.package_versions(),
            "hardware": mf.hardware(self.strategy.root_device),
            "steps_committed": 0,
            "final_state_digest": None,
        }
        if self.own_run is not None:
            self._lock = self.own_run.lock("audit replay")
            if self.own_run.exists() or not self.own_run.is_empty():
                raise RunDirectoryError(
                    f"audit_dir {self.own_run.path} is not empty. HINT: choose a new directory."
                )
            self.own_run.prepare()
            save_snapshot(self.own_run.checkpoint_path(0), snap)
            self.own_run.write_manifest(self.manifest)

    # --- per step ----------------------------------------------------------------------------
    def begin_step(self, batch: Any, batch_idx: int) -> None:
        step = self.next_step
        if step >= len(self.records):
            raise AuditInputError(f"the replay ran past the {len(self.records)} committed steps")
        record = self._trainer_record = self.records[step]
        what = f"rounding log of step {step}"
        try:
            path = self.source.file(record.log_file, what)
            data = safeio.read_regular(path, what, HEADER_SIZE + MAX_BODY_BYTES)
        except RunDirectoryError as err:
            raise AuditInputError(f"step {step} of {self.source.path}: {err}") from err
        if len(data) != record.log_bytes or hashlib.sha256(data).hexdigest() != record.log_sha256:
            self._mismatch(step, ["log_sha256"], {"log_sha256": record.log_sha256},
                           {"log_sha256": hashlib.sha256(data).hexdigest()},
                           f"rounding log {path} ({len(data)} bytes) does not match its committed "
                           f"digest ({record.log_bytes} bytes)")
        try:
            log = decode_step_log(data, source=str(path))
        except RoundingLogError as err:
            raise AuditInputError(f"step {step}: {err}") from err
        epoch = self.trainer.current_epoch + self.start.epoch
        if self.trainer.current_epoch == 0:
            batch_idx += self.start.batch_idx
        self._pending = {
            "epoch": epoch,
            "batch_idx": batch_idx,
            "batch_indices": self.batch_order.indices(epoch, batch_idx) if self.batch_order else None,
            "batch_digest": batch_digest(batch),
        }
        # The batch is known before the step runs: a different batch is the precise finding
        # (running the step would only surface it later as implausible log entries).
        batch_fields = [f for f in ("batch_indices", "batch_digest")
                        if getattr(record, f) != self._pending[f]]
        if batch_fields:
            self._mismatch(step, batch_fields, {f: getattr(record, f) for f in batch_fields},
                           {f: self._pending[f] for f in batch_fields},
                           "the replay's batch differs from the committed one")
        self._stepped = False
        self.mode.begin_step(step, replay_log=log)

    def finish_step(self) -> None:
        step = self.next_step
        self.mode.round_named(named_state_tensors(self.model, self.optimizers))
        _, stats = self.mode.end_step()
        committed = self._trainer_record
        assert committed is not None
        pending = self._pending or {}
        mine = StepRecord(
            step=step, epoch=pending.get("epoch", -1), batch_idx=pending.get("batch_idx", -1),
            batch_indices=pending.get("batch_indices"), batch_digest=pending.get("batch_digest", ""),
            state_digest=self.snapshot().digest(), log_file=committed.log_file,
            log_sha256=committed.log_sha256, log_bytes=committed.log_bytes,
            logged_elements=committed.logged_elements, rounded_elements=committed.rounded_elements,
        )
        self.result.steps_checked += 1
        self.result.corrections += stats.corrections
        self.result.logged_elements += stats.logged
        self.result.per_step.append({"step": step, "corrections": stats.corrections, "logged": stats.logged})
        if self.result.mismatch is None:
            differing = committed.differences(mine)
            if differing:
                self._mismatch(step, differing, {f: getattr(committed, f) for f in differing},
                               {f: getattr(mine, f) for f in differing}, "")
        if self.own_run is not None:
            self.own_run.append_step(mine)
        self.replayed.append(mine)
        self.last_record = mine
        self.next_step = step + 1
        self._stepped = False
        self._pending = None

    def _mismatch(self, step: int, fields: list[str], committed: dict, replayed: dict, detail: str) -> None:
        if self.result.mismatch is None:
            self.result.mismatch = Mismatch(step, fields, committed, replayed, detail)
        self.trainer.should_stop = True

    def record_failure(self, step: int, detail: str) -> None:
        """A step that could not complete (e.g. an implausible log entry) is the first mismatch."""
        if self.result.mismatch is None:
            self.result.mismatch = Mismatch(step, ["rounding_log"], {}, {}, detail)
            self.result.steps_checked = max(self.result.steps_checked, step + 1 - self.start.step)

    def close(self) -> None:
        self._restore_metric_logging()
        if self.mode.in_step:
            self.mode.end_step_discard()
        if self.own_run is not None:
            failed = self.result.mismatch is not None and self.result.mismatch.fields == ["rounding_log"]
            self.manifest.update(
                steps_committed=self.next_step,
                # after an aborted step the live state is half-updated: the last committed one counts
                final_state_digest=(self.replayed[-1].state_digest if self.replayed else None)
                if failed else self.snapshot().digest(),
                updated=mf.now_utc(),
                audit_result={"ok": self.result.mismatch is None and self.next_step == len(self.records),
                              "first_mismatch_step": self.result.mismatch.step if self.result.mismatch else None},
            )
            try:
                self.own_run.write_manifest(self.manifest)
            finally:
                self.release()

    def abort(self) -> None:
        self._restore_metric_logging()
        if self.mode.in_step:
            self.mode.end_step_discard()
        self.release()
