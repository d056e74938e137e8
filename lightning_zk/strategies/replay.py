"""The auditor's side of a run: replay a committed run and compare every step.

A :class:`ReplaySession` replaces the trainer's :class:`TrainingSession` when the strategy replays
(``VerifiableStrategy.from_manifest(...)`` with a replay source). It starts from the committed
initial state, feeds each step the trainer's rounding log, and compares the batch (before the step
runs), the updates, the Trainer's step counter, the log and the state at the step boundary with the
trainer's record. The first difference stops the replay; so does the boundary of its last step
(:class:`ReplayComplete`, caught by :func:`lightning_zk.audit.replay`), so a replay of a prefix
ends exactly where the trainer's step ended. A replay that starts mid-run (the dispute's referee)
first sets Lightning's loop counters to that step (:func:`restart_loops`). With an ``audit_dir``
the auditor commits its own run directory (its own records and initial state), which a dispute
compares against the trainer's.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from ..ledger import safeio
from ..ledger.rundir import RunDirectory, RunDirectoryError, StepRecord
from ..ledger.state import (
    StateError,
    load_snapshot,
    named_state_tensors,
    restore,
    run_digest_format,
    save_snapshot,
)
from ..rounding.log import HEADER_SIZE, MAX_BODY_BYTES, RoundingLogError, StepLog, decode_step_log
from . import manifest as mf
from .session import TrainingSession


class AuditInputError(RuntimeError):
    """The committed run cannot be replayed: a missing, truncated or corrupted file."""


class AuditConfigError(ValueError):
    """The replay's model, data or configuration is not the committed run's."""


class ReplayComplete(Exception):
    """The replay committed its last step (ends the replay's ``Trainer.fit``; never escapes ``replay``)."""


@dataclass(frozen=True)
class ReplayStart:
    """Where a replay starts: after ``step`` committed steps, at ``(epoch, batch_idx)``."""

    step: int = 0
    epoch: int = 0
    batch_idx: int = 0
    checkpoint: str | None = None  # state after ``step`` steps; default the initial state
    digest: str | None = None  # its expected digest (the agreed state)
    global_step: int | None = None  # Trainer.global_step there (default: ``step``)


def restart_loops(trainer, start: ReplayStart) -> None:
    """Set Lightning's loop counters to where ``start`` is, as a resume from a checkpoint would.

    Code that reads ``trainer.global_step`` or ``current_epoch`` (a warm-up, a schedule) and the
    validation schedule then see the values they saw when the trainer ran that step.
    """
    loop = trainer.fit_loop
    state = loop.state_dict()
    epoch, batch, steps = start.epoch, start.batch_idx, start.step
    global_step = start.global_step if start.global_step is not None else start.step
    epochs = {"ready": epoch + 1, "started": epoch + 1, "processed": epoch, "completed": epoch} if batch \
        else dict.fromkeys(("ready", "started", "processed", "completed"), epoch)
    state["epoch_progress"]["total"].update(epochs)
    state["epoch_progress"]["current"].update(epochs)
    batches = state["epoch_loop.batch_progress"]
    batches["total"].update(dict.fromkeys(batches["total"], steps))
    batches["current"].update(dict.fromkeys(batches["current"], batch))
    optimizer = state["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    for part in ("step", "zero_grad"):
        optimizer[part]["total"].update(dict.fromkeys(optimizer[part]["total"], global_step))
    manual = state["epoch_loop.manual_optimization.optim_step_progress"]["total"]
    manual.update(dict.fromkeys(manual, global_step))
    state["epoch_loop.state_dict"]["_batches_that_stepped"] = global_step
    loop.load_state_dict(state)


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
        self.digest_format = run_digest_format(self.source_manifest)  # the run's, never ours
        self.records = source.read_steps()
        self.start: ReplayStart = getattr(strategy, "replay_start", None) or ReplayStart()
        stop = getattr(strategy, "replay_stop", None)
        self.stop = len(self.records) if stop is None else min(stop, len(self.records))
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
        session._watch_updates()
        return session

    # --- opening -----------------------------------------------------------------------------
    def _check_identity(self) -> None:
        mine = self._identity()
        theirs = {k: self.source_manifest.get(k) for k in mine}
        if isinstance(theirs["trainer"], dict):  # the manifest's section also has ``stopping``, ...
            theirs["trainer"] = {k: v for k, v in theirs["trainer"].items() if k in mine["trainer"]}
        for part in mine:
            if theirs[part] is None and part in ("lr_schedulers", "trainer"):
                continue  # a run written before these were recorded
            differing = mf.differences(theirs[part], mine[part], part)
            if not differing:
                continue
            hint = _HINTS.get(part, "replay with the model/data code and configuration the trainer used")
            if part == "trainer" and any(d.startswith("trainer.settings.validation") for d in differing):
                hint = ("the committed run validated during training (its validation can steer the "
                        "run, e.g. ReduceLROnPlateau): give the replay the same validation data "
                        "(datamodule or val_dataloaders=) and validation_step")
            raise AuditConfigError(
                f"the replay's {part} differs from the committed run's ({self.source.path}): "
                f"{'; '.join(differing)}. HINT: {hint}."
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
        try:
            restore(snap, self.model, self.optimizers, self.schedulers)
        except StateError as err:
            raise AuditConfigError(f"the committed state does not fit the replay's model: {err}") from err
        if start.step and self.batch_order is not None:
            self.batch_order.resume_at(start.epoch, start.batch_idx)
        self.manifest = {
            **{k: self.source_manifest[k] for k in _COPIED if k in self.source_manifest},
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
    def _begin_mode_step(self) -> None:
        step = self.next_step
        if step >= self.stop:
            self.close()
            raise ReplayComplete(step)
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
        self.mode.begin_step(step, replay_log=self._replay_log(log, record))

    def _replay_log(self, log: StepLog, record: StepRecord) -> StepLog:
        """The part of the trainer's log this process replays (a sharded replay on several
        processes: its own shards)."""
        return log

    def begin_batch(self, batch: Any, batch_idx: int) -> None:
        super().begin_batch(batch, batch_idx)
        record, pending = self._trainer_record, self._pending or {}
        assert record is not None
        # The batch is known before the step runs: a different batch is the precise finding
        # (running the step would only surface it later as implausible log entries).
        fields = [f for f in ("batch_indices", "batch_digest") if getattr(record, f) != pending[f]]
        detail = "the replay's batch differs from the committed one"
        own = self.batch_order.sampler_indices(pending["epoch"], batch_idx) if self.batch_order else None
        if not fields and own is not None and own != record.batch_indices:
            fields, pending = ["batch_indices"], {**pending, "batch_indices": own}
            detail = ("the committed indices are not what the run's (deterministic) sampler yields "
                      "for this batch")
        if fields:
            self._mismatch(record.step, fields, {f: getattr(record, f) for f in fields},
                           {f: pending[f] for f in fields}, detail)
            self.mode.end_step_discard()
            self.close()
            raise ReplayComplete(record.step)

    def _finish_open_step(self) -> None:
        step = self.next_step
        grads = self._grads_live()
        self.mode.round_named(named_state_tensors(self.model, self.optimizers, grads=grads))
        _, stats = self.mode.end_step()
        committed = self._trainer_record
        assert committed is not None
        pending = self._pending or {}
        # digested and handed over before anything trains on: hashed in place where it can be
        state = self.snapshot(grads=grads, reuse=self._spare.pop() if self._spare else None, live=True)
        mine = StepRecord(
            step=step, epoch=pending.get("epoch", -1), batch_idx=pending.get("batch_idx", -1),
            batch_indices=pending.get("batch_indices"), batch_digest=pending.get("batch_digest", ""),
            state_digest=state.digest(), log_file=committed.log_file,
            log_sha256=committed.log_sha256, log_bytes=committed.log_bytes,
            logged_elements=committed.logged_elements, rounded_elements=committed.rounded_elements,
            updates=list(self._updates), global_step=pending.get("global_step"),
        )
        self.result.steps_checked += 1
        self.result.corrections += stats.corrections
        self.result.logged_elements += stats.logged
        self.result.per_step.append({"step": step, "corrections": stats.corrections, "logged": stats.logged})
        differing = committed.differences(mine)
        if differing:
            self._mismatch(step, differing, {f: getattr(committed, f) for f in differing},
                           {f: getattr(mine, f) for f in differing}, _DETAILS.get(differing[0], ""))
        if self.own_run is not None:
            self.own_run.append_step(mine)
        self.replayed.append(mine)
        self._committed(mine, state)
        if self.result.mismatch is not None:  # stop at the first difference
            self.close()
            raise ReplayComplete(step)

    def _mismatch(self, step: int, fields: list[str], committed: dict, replayed: dict, detail: str) -> None:
        if self.result.mismatch is None:
            self.result.mismatch = Mismatch(step, fields, committed, replayed, detail)

    def record_failure(self, step: int, detail: str) -> None:
        """A step that could not complete (e.g. an implausible log entry) is the first mismatch."""
        if self.result.mismatch is None:
            self.result.mismatch = Mismatch(step, ["rounding_log"], {}, {}, detail)
            self.result.steps_checked = max(self.result.steps_checked, step + 1 - self.start.step)

    def close(self) -> None:
        """End the replay (idempotent): the auditor's own run, if any, gets its claims."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self.end_of_training()
            except ReplayComplete:  # the last step differed: recorded, and the replay ends anyway
                pass
            self._release()
            if self.own_run is None:
                return
            self.manifest.update(
                steps_committed=self.next_step,
                # the state the last replayed step committed (never a half-updated live state)
                final_state_digest=self.replayed[-1].state_digest if self.replayed else
                self.source_manifest["initial_state"]["digest"],
                updated=mf.now_utc(),
                audit_result={"ok": self.result.mismatch is None and self.next_step == len(self.records),
                              "first_mismatch_step": self.result.mismatch.step if self.result.mismatch else None},
            )
            for listener in self.listeners:
                listener.on_session_close(self)
            self.own_run.write_manifest(self.manifest)
        finally:
            self._release()
            self.release()


_COPIED = ("fingerprint", "strategy", "model", "data", "optimizers", "lr_schedulers", "trainer",
           "hyperparameters", "initial_state", "state_digest_format", "log_zlib_level")
_HINTS = {
    "model": "build the replay's model from the same code and hyperparameters the trainer used "
             "(its import path may differ)",
    "data": "use the same dataset, batch size, shuffling and sampler the trainer used",
    "optimizers": "configure the same optimizers with the same hyperparameters",
    "lr_schedulers": "configure the same LR schedulers (class, interval, frequency, monitor)",
    "trainer": "drop the differing Trainer argument: the replay applies the committed run's "
               "settings by itself",
}
_DETAILS = {
    "updates": "the replay made other optimizer updates in this step than the trainer recorded",
    "global_step": "the replay reached this step at another Trainer.global_step than the trainer",
}
