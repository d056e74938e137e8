"""One verifiable training run inside a Trainer: open the run directory, commit every step.

**What a committed step is.** One training batch, with everything the trainer does until the next
batch starts: the forward and backward passes, *every* optimizer update inside the batch in order
(several optimizers and several updates per batch under manual optimization, none on a batch that
only accumulates gradients), the LightningModule's ``optimizer_step`` override (a warm-up), the LR
scheduler steps Lightning runs after the batch, the ``on_train_batch_end`` hooks, and a validation
run with its ``ReduceLROnPlateau`` step when one follows the batch. The committed state is the
state at the *step boundary* — the start of the next batch, or the end of training — so it is a
clean restart point: a replay that starts there runs the next batch exactly as the trainer did.

The committed state is the model, the optimizers, the LR schedulers, and the gradients where they
are still live at the boundary (after a batch that only accumulated them; under manual
optimization, whatever gradients are set). Every state and batch digest is committed through
:meth:`TrainingSession.public_digest` (plain here; hidden under the run's key in fixed-point runs).

One writer per run directory: the session takes the directory's writer lock
(:mod:`lightning_zk.ledger.lock`) before it writes anything and holds it until the run closes or
aborts (the OS releases it when the process is killed).

Order of writes (crash safety; a kill anywhere leaves a consistent, resumable directory):

- start: layout, initial state, ``config.yaml``, then ``manifest.json`` in one atomic write (every
  section, including fixed-point constants). A directory killed before its manifest holds nothing
  committed and a restart begins again there.
- per step (at its boundary): the state is digested — at once, in place (no copy: nothing trains
  until the step is committed), or with ``VerifiableStrategy(background_commit=True)`` from a
  snapshot (copy) on a worker thread while the next steps run
  (:class:`~lightning_zk.ledger.digester.StateDigester`: at most two snapshots in flight, in
  order, a worker error raised here as ``DigestWorkerError``). Once the digest is known, in step
  order: the rounding log file (atomic), then the step record (fsynced append), then the listeners
  (the Merkle ledger and checkpoints of ``CommitCallback``), then the Lightning checkpoints saved
  while the step was open (:meth:`TrainingSession.after_commit`). A record therefore always has
  its log and its digest, the ledger is always a prefix of the records, and a Lightning checkpoint
  never counts a step that was not committed; a kill while snapshots are queued loses only those
  uncommitted steps (a resume recomputes them).
- resume: a finished manifest is first marked unfinished (``final_state_digest: null``), so a run
  killed while it continues never claims an end it does not have; closing writes the new claims
  (the final state is the state committed by the last step).

Resuming from a Lightning checkpoint re-executes the steps after it; where the run directory
already holds records for those steps (the run was killed after the checkpoint), the recomputed
steps must match them exactly, which re-verifies the log instead of duplicating it. Starting the
same training again on an *unfinished* run without a checkpoint resumes it from its committed
initial state in the same way (every committed step is recomputed and re-verified).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lightning_zk

from ..atomic import atomic_write_bytes
from ..ledger.digester import StateDigester
from ..ledger.lock import RunLock
from ..ledger.rundir import RunDirectory, RunDirectoryError, StepRecord
from ..ledger.state import (
    DEFAULT_STATE_DIGEST,
    StateSnapshot,
    batch_digest,
    named_state_tensors,
    run_digest_format,
    save_snapshot,
    snapshot,
)
from ..rounding.log import (
    DEFAULT_ZLIB_LEVEL,
    LEGACY_ZLIB_LEVEL,
    StepLog,
    encode_step_log,
    step_log_path,
)
from ..rounding.mode import RoundingMode
from ..rounding.precision import round_values
from . import manifest as mf
from .data import BatchOrder, RecordedOrder


class StepListener:
    """Acts on every committed step (the Merkle ledger, checkpoints, a progress bar).

    A :class:`~lightning.pytorch.Callback` that also subclasses this is notified by the session,
    in the order of ``Trainer(callbacks=...)``.
    """

    def on_step_committed(self, session: TrainingSession, record: StepRecord, state: StateSnapshot) -> None:
        """``record`` was committed; ``state`` is the state it commits (its digest is the record's).

        ``state`` is valid during this call only: inline (the default) its tensors are the model's
        and the optimizers' own (:attr:`StateSnapshot.live`), which the next step updates in place,
        and in background mode the session reuses its buffers for later snapshots, so copy what
        you keep. ``session.last_state`` after training ended (``on_session_close``) is a copy.
        """

    def on_session_close(self, session: TrainingSession) -> None:
        """The run is about to write its final manifest (``session.manifest``)."""


class _Queued:
    """A step waiting for its state digest: the record's other fields, its log, its writes."""

    __slots__ = ("fields", "log_path", "data", "writes")

    def __init__(self, fields: dict[str, Any], log_path: Path, data: bytes,
                 writes: list[Callable[[], None]]) -> None:
        self.fields, self.log_path, self.data, self.writes = fields, log_path, data, writes


def _default_run_dir(trainer, marker: dict[str, Any] | None) -> Path:
    if marker and marker.get("run_dir") and Path(marker["run_dir"]).is_dir():
        return Path(marker["run_dir"])
    base = Path(trainer.default_root_dir) / "verifiable"
    n = 0
    while (base / f"run_{n}").exists():
        n += 1
    return base / f"run_{n}"


def _resumable(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity parts a resume must keep: optimizer groups by their keys, not their values."""
    parts = ("strategy", "model", "data", "optimizers", "lr_schedulers", "trainer")
    out = {k: identity.get(k) for k in parts}
    out["optimizers"] = [{"class": o.get("class"), "groups": [sorted(g) for g in o.get("param_groups", [])]}
                         for o in out["optimizers"] or []]
    out["trainer"] = {"settings": (out["trainer"] or {}).get("settings")}
    return out


def schedulers_of(trainer) -> list[object]:
    """The LR schedulers Lightning configured (in ``configure_optimizers`` order)."""
    return [config.scheduler for config in trainer.lr_scheduler_configs]


class TrainingSession:
    """The trainer's side of a run: records logs, digests and the manifest."""

    def __init__(self, strategy, trainer, run: RunDirectory, batch_order: BatchOrder | RecordedOrder | None) -> None:
        self.strategy = strategy
        self.trainer = trainer
        self.run = run
        self.batch_order = batch_order
        self.mode = RoundingMode(strategy.spec, strategy.thresholds, strategy.seed)
        self.mode.taint.committed = lambda: named_state_tensors(self.model, self.optimizers, grads=True)
        self.manifest: dict[str, Any] = {}
        self.next_step = 0
        self._expected: list[StepRecord] = []  # committed records to re-verify after a resume
        self._pending: dict[str, Any] | None = None  # the open step's batch
        self._updates: list[int] = []  # optimizer updates of the open step, by optimizer index
        self._hooks: list[Any] = []
        self._closed = False
        self.listeners: list[StepListener] = [c for c in trainer.callbacks if isinstance(c, StepListener)]
        self.last_record: StepRecord | None = None  # the step committed (or re-verified) last
        self.last_state: StateSnapshot | None = None  # the state it commits
        self._lock: RunLock | None = None
        self._claim: dict[str, Any] | None = None  # a finished run's claims, while it is resumed
        self._after_commit: list[Callable[[], None]] = []  # writes waiting for the open step
        self.digest_format: str = getattr(strategy, "state_digest", None) or DEFAULT_STATE_DIGEST
        self.log_zlib_level = DEFAULT_ZLIB_LEVEL  # a run's own, once it has a manifest
        self._digester = StateDigester(background=bool(getattr(strategy, "background_commit", False)))
        self._spare: list[StateSnapshot] = []  # committed snapshots nobody uses: reused buffers
        self._commit_failed = False  # committing a step raised: the session commits nothing more

    # --- opening -----------------------------------------------------------------------------
    def _pause_metric_logging(self) -> None:
        """Keep ``self.log``/``self.log_dict`` out of the rounded op sequence.

        Lightning's metric aggregation runs ops whose number depends on its internal state (which
        differs, e.g., after restoring a checkpoint); they never feed the training state.
        """
        module = self.strategy.lightning_module
        self._unpatched = {}
        for name in ("log", "log_dict"):
            original = getattr(module, name)
            self._unpatched[name] = module.__dict__.get(name)

            def paused(*args, _original=original, **kwargs):
                with self.paused_ops():
                    return _original(*args, **kwargs)

            setattr(module, name, paused)

    def paused_ops(self) -> contextlib.AbstractContextManager:
        """Where ops run untouched by the session's interception (metric logging)."""
        return self.mode.paused()

    def _restore_metric_logging(self) -> None:
        module = self.strategy.lightning_module
        for name, previous in getattr(self, "_unpatched", {}).items():
            if previous is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, previous)
        self._unpatched = {}

    def _watch_updates(self) -> None:
        """Note every optimizer update, however it is called (Lightning, manual, a closure)."""
        for index, optimizer in enumerate(self.optimizers):
            def noted(opt, args, kwargs, _index=index) -> None:
                if self.in_step:
                    self._updates.append(_index)

            self._hooks.append(optimizer.register_step_post_hook(noted))

    def _unwatch(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @classmethod
    def open(cls, strategy, trainer, batch_order) -> TrainingSession:
        marker = getattr(strategy, "_resume_marker", None)
        path = strategy.run_dir or _default_run_dir(trainer, marker)
        session = cls(strategy, trainer, RunDirectory(path), batch_order)
        session._lock = session.run.lock("training")
        try:
            resuming = trainer.ckpt_path is not None or trainer.global_step > 0
            if resuming:
                session._resume(marker)
            else:
                session._start()
        except BaseException:
            session.release()
            raise
        session._pause_metric_logging()
        session._watch_updates()
        return session

    def release(self) -> None:
        """Give back the run directory's writer lock (idempotent)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    @property
    def model(self):
        return self.strategy.model

    @property
    def optimizers(self):
        return self.strategy.optimizers

    @property
    def schedulers(self) -> list[object]:
        return schedulers_of(self.trainer)

    def _identity(self) -> dict[str, Any]:
        """What a replay, a resume and a dispute must share (as it reads back from JSON)."""
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        identity = {
            "strategy": self.strategy.config_json(),
            "model": mf.model_fingerprint(self.strategy.lightning_module),
            "data": {
                "dataset_class": type(dataset).__qualname__ if dataset is not None else None,
                "order": self.batch_order.to_json() if self.batch_order else None,
            },
            "optimizers": mf.optimizer_summary(self.optimizers),
            "lr_schedulers": mf.scheduler_summary(self.trainer.lr_scheduler_configs),
            "trainer": {"settings": mf.trainer_section(self.trainer)["settings"]},
        }
        return json.loads(json.dumps(identity))

    def _start(self) -> None:
        run = self.run
        identity = self._identity()
        fp = mf.fingerprint(identity)
        if run.exists():
            old = run.read_manifest()
            if old.get("fingerprint") != fp:
                raise RunDirectoryError(
                    f"run_dir {run.path} belongs to another run (run_id {old.get('run_id')}, a "
                    "different model, data or strategy configuration). HINT: choose a new run_dir."
                )
            run.repair_torn_tail()
            records = run.read_steps()
            if records and old["final_state_digest"] is not None:
                raise RunDirectoryError(
                    f"run_dir {run.path} already holds {len(records)} committed steps of the "
                    f"finished run {old.get('run_id')}. HINT: choose a new run_dir, or continue "
                    "that run with trainer.fit(..., ckpt_path=...)."
                )
            if records:
                self._adopt_digest_format(old)
                self._restart_unfinished(old, records)
                return
        elif not run.is_empty() and not run.is_uncommitted_start():
            raise RunDirectoryError(
                f"run_dir {run.path} is not empty and holds no lightning-zk run; refusing to mix "
                "files. HINT: choose a new or empty run_dir."
            )
        run.prepare()
        self._round_initial_state()
        initial = self.snapshot()
        initial_path = run.checkpoint_path(0)
        initial_digest = self.public_digest("state", -1, save_snapshot(initial_path, initial))
        config = getattr(self.strategy, "cli_config", None)
        if config:
            atomic_write_bytes(run.path / "config.yaml", config.encode("utf-8"))
        self.manifest = {
            "run_id": uuid.uuid4().hex,
            "fingerprint": fp,
            "created": mf.now_utc(),
            "versions": mf.package_versions(),
            "hardware": mf.hardware(self.strategy.root_device),
            **identity,
            "trainer": mf.trainer_section(self.trainer),  # its ``settings`` are the identity's
            "model_class": mf.import_path(self.strategy.lightning_module),
            "hyperparameters": {
                "module": mf.json_safe(dict(getattr(self.strategy.lightning_module, "hparams", {}))),
            },
            "initial_state": {"file": str(initial_path.relative_to(run.path)), "digest": initial_digest},
            "steps_committed": 0,
            "final_state_digest": None,
            "state_digest_format": self.digest_format,
            "log_zlib_level": self.log_zlib_level,
            **self._manifest_sections(),
        }
        run.write_manifest(self.manifest)  # last: a manifest means the start is complete

    def _adopt_digest_format(self, manifest: dict[str, Any]) -> None:
        """A run keeps the digest format it started with (its manifest's; v1 if it names none)."""
        declared = run_digest_format(manifest)
        wanted = getattr(self.strategy, "state_digest", None)
        if wanted is not None and wanted != declared:
            raise RunDirectoryError(
                f"run_dir {self.run.path} commits state digests in format {declared}, but the "
                f"strategy asks for {wanted}: a run keeps one format. HINT: drop "
                "VerifiableStrategy(state_digest=...) to continue the run in its own format."
            )
        self.digest_format = declared
        # the same for the rounding logs' bytes (a resume re-verifies them against the records)
        self.log_zlib_level = manifest.get("log_zlib_level", LEGACY_ZLIB_LEVEL)

    def _manifest_sections(self) -> dict[str, Any]:
        """Mode-specific manifest sections, written with the rest in one atomic write."""
        return {}

    def _restart_unfinished(self, manifest: dict[str, Any], records: list[StepRecord]) -> None:
        """Fit again on an unfinished run without a checkpoint: recompute it from its start.

        The model must start in the committed initial state; every committed step is then
        recomputed and must reproduce its record (as after a resume from a checkpoint).
        """
        self._round_initial_state()
        self.manifest = manifest  # first: a fixed-point run's digest key is checked against it
        digest = self.public_digest("state", -1, self.snapshot().digest())
        if digest != manifest["initial_state"]["digest"]:
            raise RunDirectoryError(
                f"run_dir {self.run.path} holds {len(records)} committed steps of the unfinished run "
                f"{manifest.get('run_id')}, but the model's initial state differs from the committed "
                "one. HINT: seed the model as the run did, resume with trainer.fit(..., "
                "ckpt_path=...), or choose a new run_dir."
            )
        self.manifest = manifest
        self._latest_stopping()
        self.next_step = 0
        self._expected = list(records)

    def _resume(self, marker: dict[str, Any] | None) -> None:
        run = self.run
        self.manifest = run.read_manifest()
        self._adopt_digest_format(self.manifest)
        if marker and marker.get("run_id") not in (None, self.manifest.get("run_id")):
            raise RunDirectoryError(
                f"the checkpoint belongs to run {marker.get('run_id')}, but run_dir {run.path} holds "
                f"run {self.manifest.get('run_id')}. HINT: pass the run_dir the checkpoint came from."
            )
        # The optimizers' hyperparameter values move with the schedulers: the restored state's
        # digest (below) checks them; here the configuration must be the committed one.
        mine, committed = _resumable(self._identity()), _resumable(self.manifest)
        differing = mf.differences(committed, mine)
        if differing:
            raise RunDirectoryError(
                f"cannot resume into {run.path}: the configuration differs from the committed "
                f"run's: {'; '.join(differing)}. HINT: resume with the model, data, optimizers and "
                "Trainer settings the run was started with."
            )
        self._latest_stopping()
        run.repair_torn_tail()
        records = run.read_steps()
        step = int(marker["step"]) if marker and "step" in marker else self.trainer.global_step
        if step > len(records):
            raise RunDirectoryError(
                f"the checkpoint is at step {step}, but {run.path} commits only {len(records)} steps: "
                "the steps in between were never committed and cannot be resumed over."
            )
        if step > 0:
            state = self.snapshot()
            if self.public_digest("state", step - 1, state.digest()) != records[step - 1].state_digest:
                raise RunDirectoryError(
                    f"the checkpoint's state differs from the state committed after step {step - 1} "
                    f"in {run.path}: refusing to resume from an uncommitted state (was the "
                    "checkpoint saved before that step's validation or scheduler update?)."
                )
            # the run ends here unless it trains on: the last committed step and its state
            self.last_record, self.last_state = records[step - 1], state
        self.next_step = step
        self._expected = records[step:]
        self._mark_unfinished()
        # Lightning's progress counters differ by one depending on where the checkpoint was
        # saved; the committed records say exactly how many batches of this epoch were consumed.
        epoch = self.trainer.current_epoch
        done_in_epoch = sum(1 for r in records[:step] if r.epoch == epoch)
        if self.batch_order is not None and done_in_epoch:
            self.batch_order.resume_at(epoch, done_in_epoch)

    def _latest_stopping(self) -> None:
        """A resume may train longer: the stopping settings are the latest segment's."""
        if "trainer" in self.manifest:  # (a run written before the section has none to update)
            self.manifest["trainer"] = {**self.manifest["trainer"], **{
                k: v for k, v in mf.trainer_section(self.trainer).items() if k != "settings"}}

    def _mark_unfinished(self) -> None:
        """Before a finished run continues: withdraw its final-state claim (kept to restore)."""
        if self.manifest.get("final_state_digest") is None:
            return
        self._claim = {"final_state_digest": self.manifest["final_state_digest"]}
        self.manifest["final_state_digest"] = None
        self.run.write_manifest(self.manifest)

    def _round_initial_state(self) -> None:
        """Put the initial weights on the committed grid (exact for float32 weights and b = 23)."""
        spec = self.strategy.spec
        with torch.no_grad():
            for _, t in named_state_tensors(self.model, self.optimizers):
                if t.is_floating_point() and t.dtype == spec.compute_dtype:
                    t.copy_(round_values(t, spec))

    # --- per step ----------------------------------------------------------------------------
    @property
    def in_step(self) -> bool:
        """A step is open: its batch started and the next boundary has not come yet."""
        return self.mode.in_step

    def boundary(self) -> None:
        """A training batch is about to start: commit the open step, open the next one."""
        if self.in_step:
            self._finish_open_step()
        self._updates = []
        self._pending = None
        self._begin_mode_step()

    def _begin_mode_step(self) -> None:
        self.mode.begin_step(self.next_step)

    def begin_batch(self, batch: Any, batch_idx: int) -> None:
        """The strategy's ``on_train_batch_start`` (after every other hook): note the batch."""
        if not self.in_step or self._pending is not None:  # no boundary callback ran: be one
            self.boundary()
        self._prepare_step(batch, batch_idx)

    def _prepare_step(self, batch: Any, batch_idx: int) -> None:
        """What the step record says about the batch: epoch, position, indices, digest."""
        epoch = self.trainer.current_epoch
        self._pending = {
            "epoch": epoch,
            "batch_idx": batch_idx,
            "batch_indices": self.batch_order.indices(epoch, batch_idx) if self.batch_order else None,
            "batch_digest": self.public_digest("batch", self.next_step, batch_digest(batch)),
            "global_step": self.trainer.global_step,
        }

    def end_of_training(self) -> None:
        """Training ended (the first ``on_train_end`` hook): commit the open step, and keep a copy
        of the last committed state (``last_state``) if it is the live model's."""
        if self.in_step and self._pending is not None:
            self._finish_open_step()
        elif self.in_step:
            self.mode.end_step_discard()
        if self.last_state is not None:
            self.last_state = self.last_state.materialized()

    def _grads_live(self) -> bool:
        """Are the gradients part of the state at this boundary?

        Under automatic optimization Lightning zeroes them before the next backward pass unless the
        batch only accumulated them; under manual optimization the user decides, so every
        gradient that is set counts.
        """
        if not self.strategy.lightning_module.automatic_optimization:
            return True
        return not self._updates

    def _finish_open_step(self) -> None:
        grads = self._grads_live()
        self.mode.round_named(named_state_tensors(self.model, self.optimizers, grads=grads))
        log, _ = self.mode.end_step()
        self._commit_step(log, grads=grads)

    def _commit_step(self, log: StepLog, extra: dict[str, Any] | None = None, grads: bool = False) -> None:
        """Snapshot the state and queue the step for its digest; commit every step whose digest
        is known (in order: log, record, listeners, waiting checkpoints).

        Inline (the default) the step is committed before this returns; in background mode it
        is committed once the worker has its digest (at a later boundary, or at the latest when
        the session closes).
        """
        step = self.next_step
        data = encode_step_log(log, self.log_zlib_level)
        log_path = step_log_path(self.run.rounding_dir, step)
        pending = self._pending or {}
        fields = dict(
            step=step,
            epoch=pending.get("epoch", -1),
            batch_idx=pending.get("batch_idx", -1),
            batch_indices=pending.get("batch_indices"),
            batch_digest=pending.get("batch_digest", ""),
            log_file=str(log_path.relative_to(self.run.path)),
            log_sha256=hashlib.sha256(data).hexdigest(),
            log_bytes=len(data),
            logged_elements=log.logged_elements,
            rounded_elements=log.elements_rounded,
            updates=list(self._updates),
            global_step=pending.get("global_step"),
            extra=extra or {},
        )
        # background: the copy, taken now, before the next step's in-place updates; inline: the
        # state is digested and handed to the listeners below, before anything trains on, so what
        # needs no conversion is hashed in place
        state = self.snapshot(grads=grads, reuse=self._spare.pop() if self._spare else None,
                              live=not self._digester.background)
        queued = _Queued(fields, log_path, data, self._after_commit)
        self.next_step = step + 1
        self._pending = None
        self._updates = []
        self._after_commit = []
        self._digester.submit(state, queued)
        self._commit_ready(self._digester.ready())

    def _commit_ready(self, done: list[tuple[_Queued, StateSnapshot, str]]) -> None:
        try:
            for queued, state, digest in done:
                step = queued.fields["step"]
                record = StepRecord(**queued.fields,
                                    state_digest=self.public_digest("state", step, digest))
                self._commit(record, queued.log_path, queued.data)
                self._committed(record, state, queued.writes)
        except BaseException:
            self._commit_failed = True  # nothing queued after it may be committed (abort)
            raise

    def flush(self) -> None:
        """Commit every queued step (waits for the digest worker); raises its error, if any."""
        while self._digester.in_flight:
            self._commit_ready(self._digester.drain())

    def _committed(self, record: StepRecord, state: StateSnapshot,
                   writes: list[Callable[[], None]] | None = None) -> None:
        previous = self.last_state
        self.last_record, self.last_state = record, state
        self.next_step = max(self.next_step, record.step + 1)  # (ahead while steps are queued)
        for listener in self.listeners:
            listener.on_step_committed(self, record, state)
        if (previous is not None and previous is not state
                and len(self._spare) < self._digester.max_in_flight):
            # its buffers hold a later snapshot: once as many buffers exist as are ever alive at
            # once (in flight, the last state, the new one), no step allocates any more (the
            # tensors a live snapshot shares with the model are never reused)
            self._spare.append(previous)
        if writes is None:  # a subclass committing directly (the audit replay): the open step's
            self._pending = None
            self._updates = []
            writes, self._after_commit = self._after_commit, []
        for write in writes:
            write()

    @property
    def step_open(self) -> bool:
        """A training batch ran and its step is not committed yet (it ends at the next boundary)."""
        return self.in_step and self._pending is not None

    def after_commit(self, write: Callable[[], None]) -> None:
        """Run ``write`` once the open step is committed (at once when none is open).

        A Lightning checkpoint saved inside a step (after its batch, before the scheduler steps
        and validation that end it) counts that step; it is written only after the step's record,
        ledger leaf and state file, so a kill in between never leaves a checkpoint that is ahead of
        what the run committed. An aborted step drops its writes.
        """
        if self.step_open:
            self._after_commit.append(write)
        elif self._digester.in_flight:  # after the queued steps it counts (checkpoint_marker)
            self._digester.last_token().writes.append(write)
        else:
            write()

    def _commit(self, record: StepRecord, log_path: Path, data: bytes) -> None:
        if self._expected:
            committed = self._expected.pop(0)
            differing = committed.differences(record)
            if differing:
                raise RunDirectoryError(
                    f"resumed training diverged from the committed run at step {record.step}: "
                    f"{', '.join(differing)} differ (committed "
                    f"{[getattr(committed, f) for f in differing]!s:.200}, recomputed "
                    f"{[getattr(record, f) for f in differing]!s:.200})"
                )
            return
        atomic_write_bytes(log_path, data)
        self.run.append_step(record)

    def public_digest(self, kind: str, index: int, digest: str) -> str:
        """The form in which a SHA-256 ``digest`` of the state or of a batch is committed.

        Rounded-mode runs are replayed by an auditor who sees the data: the plain digest.
        Fixed-point (zero-knowledge) runs hide it (:mod:`lightning_zk.ledger.hiding`).
        """
        return digest

    def snapshot(self, grads: bool = False, reuse: StateSnapshot | None = None,
                 live: bool = False) -> StateSnapshot:
        """The current canonical state (model, optimizers, LR schedulers; live gradients), a copy
        (into ``reuse``'s buffers where they fit; none with ``live``: the model's own tensors),
        digested in the run's format."""
        return snapshot(self.model, self.optimizers, self.strategy.spec.compute_dtype,
                        schedulers=self.schedulers, grads=grads, digest_format=self.digest_format,
                        reuse=reuse, live=live)

    # --- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Commit the open step, write the run's claims (step count, final state) and give back
        the writer lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.end_of_training()
            self.flush()
            self._digester.close()
            self._release()
            if self._expected:
                # stopped before re-verifying every committed step: the earlier claim still holds
                # (or, for a run never finished, there is still no end to claim)
                final = (self._claim or {}).get("final_state_digest")
            else:  # the state the last step committed (at the end of training)
                final = self.last_record.state_digest if self.last_record else \
                    self.manifest["initial_state"]["digest"]
            self.manifest.update(
                steps_committed=self.next_step + len(self._expected),
                final_state_digest=final,
                updated=mf.now_utc(),
                lightning_zk_version=lightning_zk.__version__,
            )
            for listener in self.listeners:
                listener.on_session_close(self)
            self.run.write_manifest(self.manifest)
        finally:
            self._digester.discard()
            self._release()
            self.release()

    def _release(self) -> None:
        self._restore_metric_logging()
        self._unwatch()

    def abort(self) -> None:
        """Drop an unfinished step (nothing of it was committed); give back the writer lock."""
        if self._closed:
            return
        self._release()
        if self.mode.in_step:
            self.mode.end_step_discard()
        self._pending = None
        self._after_commit = []  # the step was never committed: neither are its checkpoints
        try:  # the queued steps are complete: commit them (a consistent prefix either way)
            if not self._commit_failed:
                self.flush()
        except Exception as err:  # the run is failing already: keep its own exception
            warnings.warn(f"lightning-zk: the steps queued for their digests were not committed "
                          f"({type(err).__name__}: {err})", RuntimeWarning, stacklevel=2)
        finally:
            self._digester.discard()
            self.release()

    def checkpoint_marker(self) -> dict[str, Any]:
        """Which committed state a Lightning checkpoint saved now holds: ``step`` steps' worth.

        Lightning saves after a batch (``on_train_batch_end``, after validation, at epoch end), so
        an open step counts: its state is committed at the next boundary, and the checkpoint is
        written then (:meth:`after_commit`).
        """
        return {
            "run_id": self.manifest.get("run_id"),
            "run_dir": str(self.run.path.resolve()),
            "step": self.next_step + (1 if self.step_open else 0),
        }
