"""CommitCallback: commit every training step to the run's Merkle ledger, checkpoint every k steps.

Why a callback on top of the strategy's step records: ``steps.jsonl`` is the source of truth and is
written first (when the step is committed, at the step boundary); the ledger is a pure function of
it, so the callback can always catch up. The session tells the callback about every committed
step (:class:`~lightning_zk.strategies.session.StepListener`) together with the exact state the
step commits, so a checkpoint is that state — never one a later hook has touched. Order per step:
record (strategy) → leaf (one SQLite transaction) → checkpoint (atomic rename). A process killed
anywhere leaves ``ledger ⊆ steps.jsonl`` as a prefix and only complete checkpoints; the next
``fit`` appends the missing leaves and never a duplicate.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from ..ledger.merkle import (
    ALGORITHM,
    LEAF_FORMAT,
    LEDGER_FILE,
    Ledger,
    LedgerMismatchError,
    parse_root,
)
from ..ledger.rundir import StepRecord
from ..ledger.state import StateSnapshot, save_snapshot
from ..strategies.session import StepListener
from ..strategies.verifiable import VerifiableStrategy

_STATE_VERSION = 1


class CommitCallback(Callback, StepListener):
    """Append one ledger leaf per committed step and save safetensors checkpoints.

    Args:
        checkpoint_every_n_steps: save ``checkpoints/step-{n:08d}.safetensors`` (the state after
            ``n`` steps) whenever ``n`` is a multiple of this; ``None`` saves only the initial
            state (written by the strategy) and, with ``save_last``, the final one.
        save_last: also save the state at the end of training.

    Raises:
        ValueError: ``checkpoint_every_n_steps`` is not a positive int or ``None``.
        TypeError: the Trainer's strategy is not a :class:`~lightning_zk.VerifiableStrategy`.
        LedgerError: the ledger disagrees with ``steps.jsonl`` or with the Lightning checkpoint
            being resumed (subclasses name the file, the step and the mismatch).

    Example::

        trainer = Trainer(strategy=VerifiableStrategy(run_dir="runs/digits"),
                          callbacks=[CommitCallback(checkpoint_every_n_steps=50)], max_steps=200)
        trainer.fit(model, datamodule=data)   # RUN/ledger.sqlite, RUN/checkpoints/, manifest root
    """

    def __init__(self, checkpoint_every_n_steps: int | None = 100, save_last: bool = True) -> None:
        k = checkpoint_every_n_steps
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(
                f"CommitCallback(checkpoint_every_n_steps={k!r}): expected a positive int, or None "
                "to keep only the initial (and last) checkpoint."
            )
        if not isinstance(save_last, bool):
            raise ValueError(f"CommitCallback(save_last={save_last!r}): expected True or False.")
        self.checkpoint_every_n_steps = k
        self.save_last = save_last
        self._ledger: Ledger | None = None
        self._resumed_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(checkpoint_every_n_steps=self.checkpoint_every_n_steps)

    # --- Lightning hooks (short; the work is below) -------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not isinstance(trainer.strategy, VerifiableStrategy):
            raise TypeError(
                f"CommitCallback needs Trainer(strategy=VerifiableStrategy(...)), got "
                f"{type(trainer.strategy).__name__}. HINT: Trainer(strategy=VerifiableStrategy("
                "run_dir=...), callbacks=[CommitCallback(...)])."
            )

    # --- the session's notifications ------------------------------------------------------------
    def on_step_committed(self, session, record: StepRecord, state: StateSnapshot) -> None:
        if not session.trainer.is_global_zero or session.run is None:  # a replay without audit_dir
            return
        self._commit(self._open(session), session, record)
        k = self.checkpoint_every_n_steps
        if k is not None and (record.step + 1) % k == 0:
            self._checkpoint(session, record, state)

    def on_session_close(self, session) -> None:
        if not session.trainer.is_global_zero or session.run is None:
            return
        ledger = self._open(session)
        ledger.extend(session.run.read_steps())
        if self.save_last and session.last_record is not None and session.last_state is not None:
            self._checkpoint(session, session.last_record, session.last_state)
        session.manifest["ledger"] = {
            "file": LEDGER_FILE,
            "leaf_format": LEAF_FORMAT,
            "algorithm": ALGORITHM,
            "size": ledger.size,
            "root": ledger.root().hex(),
            "checkpoint_every_n_steps": self.checkpoint_every_n_steps,
            "save_last": self.save_last,
        }
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close()

    # --- Lightning checkpoint state: the ledger size and root at save time --------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"version": _STATE_VERSION, "leaf_format": LEAF_FORMAT}
        if self._ledger is not None:
            state.update(size=self._ledger.size, root=self._ledger.root().hex())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_state = dict(state_dict)

    # --- the work ------------------------------------------------------------------------------
    def _open(self, session) -> Ledger:
        """Open (or create) the ledger, check it against the records, append what it lacks."""
        if self._ledger is not None:
            return self._ledger
        ledger = Ledger(session.run.path / LEDGER_FILE, create=True)
        try:
            records = session.run.read_steps()
            ledger.check_records(records, complete=False)
            ledger.extend(records)
            self._check_resumed_root(ledger)
        except BaseException:
            ledger.close()
            raise
        self._ledger = ledger
        return ledger

    def _check_resumed_root(self, ledger: Ledger) -> None:
        """The ledger still extends the root recorded in the Lightning checkpoint we resume.

        Checked after catching up: a lost ledger rebuilt from ``steps.jsonl`` passes only if the
        records still hash to the root the checkpoint saw (edited records do not).
        """
        state, self._resumed_state = self._resumed_state, None
        if not state or "size" not in state:
            return
        if state.get("leaf_format") != LEAF_FORMAT:
            raise LedgerMismatchError(
                f"the Lightning checkpoint's ledger uses leaf format {state.get('leaf_format')!r}; "
                f"this lightning-zk writes {LEAF_FORMAT!r}"
            )
        ledger.check_root(int(state["size"]), parse_root(str(state["root"])),
                          source="the root recorded in the Lightning checkpoint being resumed")

    def _commit(self, ledger: Ledger, session, record: StepRecord) -> None:
        size = ledger.size
        if record.step == size:
            ledger.append(record)
        elif record.step > size:  # a leaf was missed (killed between record and leaf): catch up
            ledger.extend(session.run.read_steps())
            if ledger.size <= record.step:
                raise LedgerMismatchError(
                    f"{ledger.path} holds {ledger.size} leaves after catching up, but step "
                    f"{record.step} was committed: steps.jsonl lacks records"
                )
        else:  # re-verified after a resume: already committed, must be the same leaf
            ledger.check_leaf(record, source="the re-verified step record")

    def _checkpoint(self, session, record: StepRecord, state: StateSnapshot) -> None:
        """Save ``state``, committed by ``record``, unless a (complete) file exists."""
        path = session.run.checkpoint_path(record.step + 1)
        if path.exists():
            return
        digest = session.public_digest("state", record.step, save_snapshot(path, state))
        if digest != record.state_digest:  # the session handed over another state: a bug
            path.unlink(missing_ok=True)
            raise RuntimeError(
                f"internal error: the state handed over for step {record.step} hashes to "
                f"{digest[:16]}…, but its record commits {record.state_digest[:16]}…; "
                f"{path.name} was not kept"
            )

    def _close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


__all__ = ["CommitCallback"]
