"""One verifiable training run inside a Trainer: open the run directory, commit every step.

One writer per run directory: the session takes the directory's writer lock
(:mod:`lightning_zk.ledger.lock`) before it writes anything and holds it until the run closes or
aborts (the OS releases it when the process is killed).

Order of writes (crash safety; a kill anywhere leaves a consistent, resumable directory):

- start: layout, initial state, ``config.yaml``, then ``manifest.json`` in one atomic write (every
  section, including fixed-point constants). A directory killed before its manifest holds nothing
  committed and a restart begins again there.
- per step: the rounding log file first (atomic), then the step record (fsynced append). A record
  therefore always has its log.
- resume: a finished manifest is first marked unfinished (``final_state_digest: null``), so a run
  killed while it continues never claims an end it does not have; closing writes the new claims.

Resuming from a Lightning checkpoint re-executes the steps after it; where the run directory
already holds records for those steps (the run was killed after the checkpoint), the recomputed
steps must match them exactly, which re-verifies the log instead of duplicating it. Starting the
same training again on an *unfinished* run without a checkpoint resumes it from its committed
initial state in the same way (every committed step is recomputed and re-verified).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import torch

import lightning_zk

from ..atomic import atomic_write_bytes
from ..ledger.lock import RunLock
from ..ledger.rundir import RunDirectory, RunDirectoryError, StepRecord
from ..ledger.state import batch_digest, named_state_tensors, save_snapshot, snapshot
from ..rounding.log import StepLog, encode_step_log, step_log_path
from ..rounding.mode import RoundingMode
from ..rounding.precision import round_values
from . import manifest as mf
from .data import BatchOrder


def _default_run_dir(trainer, marker: dict[str, Any] | None) -> Path:
    if marker and marker.get("run_dir") and Path(marker["run_dir"]).is_dir():
        return Path(marker["run_dir"])
    base = Path(trainer.default_root_dir) / "verifiable"
    n = 0
    while (base / f"run_{n}").exists():
        n += 1
    return base / f"run_{n}"


class TrainingSession:
    """The trainer's side of a run: records logs, digests and the manifest."""

    def __init__(self, strategy, trainer, run: RunDirectory, batch_order: BatchOrder | None) -> None:
        self.strategy = strategy
        self.trainer = trainer
        self.run = run
        self.batch_order = batch_order
        self.mode = RoundingMode(strategy.spec, strategy.thresholds, strategy.seed)
        self.manifest: dict[str, Any] = {}
        self.next_step = 0
        self._expected: list[StepRecord] = []  # committed records to re-verify after a resume
        self._stepped = False
        self._pending: dict[str, Any] | None = None
        self.last_record: StepRecord | None = None  # the step committed (or re-verified) last
        self._lock: RunLock | None = None
        self._claim: dict[str, Any] | None = None  # a finished run's claims, while it is resumed

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
                with self.mode.paused():
                    return _original(*args, **kwargs)

            setattr(module, name, paused)

    def _restore_metric_logging(self) -> None:
        module = self.strategy.lightning_module
        for name, previous in getattr(self, "_unpatched", {}).items():
            if previous is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, previous)
        self._unpatched = {}

    @classmethod
    def open(cls, strategy, trainer, batch_order: BatchOrder | None) -> TrainingSession:
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

    def _identity(self) -> dict[str, Any]:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        return {
            "strategy": self.strategy.config_json(),
            "model": mf.model_fingerprint(self.model),
            "data": {
                "dataset_class": type(dataset).__qualname__ if dataset is not None else None,
                "order": self.batch_order.to_json() if self.batch_order else None,
            },
            "optimizers": mf.optimizer_summary(self.optimizers),
        }

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
            "hyperparameters": {
                "module": mf.json_safe(dict(getattr(self.strategy.lightning_module, "hparams", {}))),
                "trainer": mf.trainer_summary(self.trainer),
            },
            "initial_state": {"file": str(initial_path.relative_to(run.path)), "digest": initial_digest},
            "steps_committed": 0,
            "final_state_digest": None,
            **self._manifest_sections(),
        }
        run.write_manifest(self.manifest)  # last: a manifest means the start is complete

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
        self.next_step = 0
        self._expected = list(records)

    def _resume(self, marker: dict[str, Any] | None) -> None:
        run = self.run
        self.manifest = run.read_manifest()
        if marker and marker.get("run_id") not in (None, self.manifest.get("run_id")):
            raise RunDirectoryError(
                f"the checkpoint belongs to run {marker.get('run_id')}, but run_dir {run.path} holds "
                f"run {self.manifest.get('run_id')}. HINT: pass the run_dir the checkpoint came from."
            )
        if self.manifest.get("fingerprint") != mf.fingerprint(self._identity()):
            raise RunDirectoryError(
                f"cannot resume into {run.path}: the model, data or strategy configuration differs "
                "from the committed run's."
            )
        run.repair_torn_tail()
        records = run.read_steps()
        step = self.trainer.global_step
        if step > len(records):
            raise RunDirectoryError(
                f"the checkpoint is at step {step}, but {run.path} commits only {len(records)} steps: "
                "the steps in between were never committed and cannot be resumed over."
            )
        if step > 0:
            digest = self.public_digest("state", step - 1, self.snapshot().digest())
            if digest != records[step - 1].state_digest:
                raise RunDirectoryError(
                    f"the checkpoint's state differs from the state committed after step {step - 1} "
                    f"in {run.path}: refusing to resume from an uncommitted state."
                )
        self.next_step = step
        self._expected = records[step:]
        self._mark_unfinished()
        # Lightning's progress counters differ by one depending on where the checkpoint was
        # saved; the committed records say exactly how many batches of this epoch were consumed.
        epoch = self.trainer.current_epoch
        done_in_epoch = sum(1 for r in records[:step] if r.epoch == epoch)
        if self.batch_order is not None and done_in_epoch:
            self.batch_order.sampler.resume_at(epoch, done_in_epoch * self.batch_order.batch_size)

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
        return self.mode.in_step

    @property
    def stepped(self) -> bool:
        return self._stepped

    def mark_stepped(self) -> None:
        self._stepped = True

    def begin_step(self, batch: Any, batch_idx: int) -> None:
        if self.mode.in_step:  # the previous batch made no optimizer step
            raise RuntimeError(
                f"training batch {self._pending['batch_idx'] if self._pending else '?'} ended without "
                "an optimizer step; VerifiableStrategy commits one optimizer update per batch."
            )
        step = self.next_step
        if self.trainer.global_step != step:
            raise RuntimeError(
                f"Trainer.global_step is {self.trainer.global_step} at committed step {step}: each "
                "training batch must make exactly one optimizer step (one optimizer, no skipped "
                "steps) under VerifiableStrategy."
            )
        self._prepare_step(batch, batch_idx)
        self.mode.begin_step(step)

    def _prepare_step(self, batch: Any, batch_idx: int) -> None:
        """What the step record says about the batch: epoch, position, indices, digest."""
        epoch = self.trainer.current_epoch
        self._pending = {
            "epoch": epoch,
            "batch_idx": batch_idx,
            "batch_indices": self.batch_order.indices(epoch, batch_idx) if self.batch_order else None,
            "batch_digest": self.public_digest("batch", self.next_step, batch_digest(batch)),
        }
        self._stepped = False

    def finish_step(self) -> None:
        self.mode.round_named(named_state_tensors(self.model, self.optimizers))
        log, _ = self.mode.end_step()
        self._commit_step(log)

    def _commit_step(self, log: StepLog, extra: dict[str, Any] | None = None) -> StepRecord:
        """Write the step's log and record (in that order); returns the record."""
        step = self.next_step
        data = encode_step_log(log)
        log_path = step_log_path(self.run.rounding_dir, step)
        pending = self._pending or {}
        record = StepRecord(
            step=step,
            epoch=pending.get("epoch", -1),
            batch_idx=pending.get("batch_idx", -1),
            batch_indices=pending.get("batch_indices"),
            batch_digest=pending.get("batch_digest", ""),
            state_digest=self.public_digest("state", step, self.snapshot().digest()),
            log_file=str(log_path.relative_to(self.run.path)),
            log_sha256=hashlib.sha256(data).hexdigest(),
            log_bytes=len(data),
            logged_elements=log.logged_elements,
            rounded_elements=log.elements_rounded,
            extra=extra or {},
        )
        self._commit(record, log_path, data)
        self.last_record = record
        self.next_step = step + 1
        self._stepped = False
        self._pending = None
        return record

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

    def snapshot(self):
        """The current canonical state (model + optimizers), as committed after a step."""
        return snapshot(self.model, self.optimizers, self.strategy.spec.compute_dtype)

    # --- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Write the run's claims (step count, final state) and give back the writer lock."""
        self._restore_metric_logging()
        if self.mode.in_step:
            self.mode.end_step_discard()
            self._pending = None
        if self._expected:
            # stopped before re-verifying every committed step: the earlier claim still holds
            # (or, for a run never finished, there is still no end to claim)
            final = (self._claim or {}).get("final_state_digest")
        else:
            final = self.public_digest("state", self.next_step - 1, self.snapshot().digest())
        self.manifest.update(
            steps_committed=self.next_step + len(self._expected),
            final_state_digest=final,
            updated=mf.now_utc(),
            lightning_zk_version=lightning_zk.__version__,
        )
        try:
            self.run.write_manifest(self.manifest)
        finally:
            self.release()

    def abort(self) -> None:
        """Drop an unfinished step (nothing of it was committed); give back the writer lock."""
        self._restore_metric_logging()
        if self.mode.in_step:
            self.mode.end_step_discard()
        self._pending = None
        self._stepped = False
        self.release()

    def checkpoint_marker(self) -> dict[str, Any]:
        return {
            "run_id": self.manifest.get("run_id"),
            "run_dir": str(self.run.path.resolve()),
            "step": self.next_step,
        }
