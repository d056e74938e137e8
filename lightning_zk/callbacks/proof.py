"""ProofCallback: zero-knowledge proofs of fixed-point training steps, written to ``RUN/proofs/``.

With ``aggregate="step"`` every committed step is one proof unit (proved ``every_n_steps`` steps at
a time); with ``aggregate="epoch"`` the steps of each epoch are stacked into one unit (FAC4DNN),
proved when the epoch ends. ``background=True`` proves in a separate process that receives the
tape files, so training does not wait; the process is joined (and its errors raised) when
training ends. The chain is sealed at the end of training.

A resumed run continues its chain: steps already proved are skipped, and steps committed before
the restart but never proved (and not recomputed by the resume) are proved first, from their
tapes in ``RUN/tapes/`` (``VerifiableStrategy(save_tapes=True)``, the default).
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from ..strategies.verifiable import VerifiableStrategy


class ProofError(RuntimeError):
    """Proving failed (in this process or in the background prover)."""


def _background_prover(run_dir: str, backend: str, queue, errors) -> None:
    """Worker: prove the units it receives, in order; seal on ``None``."""
    from ..audit.proofs import ChainProver, load_tapes
    from ..ledger.rundir import RunDirectory

    try:
        prover = ChainProver(run_dir, backend=backend)
        run = RunDirectory(run_dir)
        while (steps := queue.get()) is not None:
            prover.prove(load_tapes(run, steps))
        prover.seal()
    except BaseException:  # report to the trainer process, which raises ProofError
        errors.put(traceback.format_exc())


class ProofCallback(Callback):
    """Prove each step (or epoch) of a ``VerifiableStrategy(mode="fixed")`` run.

    Args:
        every_n_steps: with ``aggregate="step"``, prove after every ``n`` committed steps (each
            step stays its own proof unit).
        aggregate: ``"step"`` (one proof per step) or ``"epoch"`` (one aggregated proof per epoch).
        backend: ``"auto"`` (CuPy when a GPU is available), ``"numpy"`` or ``"cupy"``.
        background: prove in a separate process (needs the tapes spilled to ``RUN/tapes/``).
        security_bits: soundness of every commitment opening (>= 100; verifiers reject less and
            may demand more: ``lightning-zk verify --security-bits N``). Declared in the
            run's manifest at its start, so the whole chain uses one value.
        blowup: Reed-Solomon blowup of the commitments (2, 4, 8 or 16: larger proves slower
            with shorter proofs).

    Example::

        trainer = Trainer(strategy=VerifiableStrategy(mode="fixed", run_dir="runs/mlp"),
                          callbacks=[ProofCallback(aggregate="epoch")], max_epochs=2)
        trainer.fit(model, datamodule=data)        # then: lightning-zk verify runs/mlp
    """

    def __init__(self, every_n_steps: int = 1, aggregate: str = "step", backend: str = "auto",
                 background: bool = False, security_bits: int = 100, blowup: int = 4) -> None:
        from ..zk.errors import ZkError
        from ..zk.policy import VerifierPolicy

        try:  # the same rule every verifier applies: at least 100 bits
            VerifierPolicy(security_bits=security_bits).ligero_config(security_bits, blowup)
        except ZkError as err:
            raise ValueError(
                f"ProofCallback(security_bits={security_bits!r}, blowup={blowup!r}): {err}"
            ) from err
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"ProofCallback(every_n_steps={every_n_steps!r}): expected an int >= 1")
        if aggregate not in ("step", "epoch"):
            raise ValueError(f"ProofCallback(aggregate={aggregate!r}): use 'step' or 'epoch'")
        if backend not in ("auto", "numpy", "cupy"):
            raise ValueError(f"ProofCallback(backend={backend!r}): use 'auto', 'numpy' or 'cupy'")
        self.every_n_steps = every_n_steps
        self.aggregate = aggregate
        self.backend = backend
        self.background = bool(background)
        self.proof_params = {"security_bits": security_bits, "blowup": blowup}
        self._pending: list[tuple[int, Any]] = []  # (step, tape) not yet proved
        self._next: int | None = None  # first step the chain does not cover (None: not read yet)
        self._sealed = False
        self._prover = None
        self._process = None
        self._queue = None
        self._errors = None

    # --- hooks -------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        strategy = trainer.strategy
        if stage == "fit" and (not isinstance(strategy, VerifiableStrategy) or strategy.mode != "fixed"):
            raise TypeError(
                "ProofCallback proves fixed-point training: use "
                "Trainer(strategy=VerifiableStrategy(mode='fixed', ...))."
            )
        if self.background and not strategy.save_tapes:
            raise ValueError("ProofCallback(background=True) needs VerifiableStrategy(save_tapes=True)")
        strategy.proof_params = dict(self.proof_params)  # declared in the manifest at the start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        session = trainer.strategy.session
        if session is None or session.last_record is None or session.last_tape is None:
            return
        record = session.last_record
        if self._next is None:
            self._start_chain(trainer)
        expected = self._pending[-1][0] + 1 if self._pending else self._next
        if record.step < expected:
            return  # a step recomputed by a resume that the chain already covers
        if self._sealed:
            raise ProofError(
                f"{trainer.strategy.session.run.path}/proofs holds a sealed chain up to step "
                f"{self._next - 1}: it cannot be extended to step {record.step}. Train without "
                "ProofCallback and re-prove the whole run afterwards with `lightning-zk prove RUN`.")
        if record.step > expected:
            self._catch_up(trainer, expected, record.step)
        self._pending.append((record.step, session.last_tape))
        if self.aggregate == "step" and len(self._pending) >= self.every_n_steps:
            self._flush(trainer, per_step=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.aggregate == "epoch":
            self._flush(trainer, per_step=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush(trainer, per_step=self.aggregate == "step")
        if self.background:
            self._finish_background()
        elif self._prover is not None:
            self._prover.seal()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()

    # --- proving -----------------------------------------------------------------------------
    def _start_chain(self, trainer) -> None:
        """Where the run's chain stands (a resumed run continues it; a sealed one cannot)."""
        from ..audit.proofs import ChainProver, ProofRunError, chain_progress

        run_dir = trainer.strategy.session.run.path
        try:
            if self.background:
                self._next, sealed = chain_progress(run_dir)
            else:
                self._prover = ChainProver(run_dir, backend=self.backend)
                self._next, sealed = self._prover.next_step or 0, self._prover.sealed
        except ProofRunError as err:
            raise ProofError(str(err)) from err
        # A sealed chain is fine while the resume only re-verifies steps it covers (a run killed
        # after sealing, before its final manifest); extending it is refused at the next step.
        self._sealed = sealed

    def _catch_up(self, trainer, first: int, stop: int) -> None:
        """Prove steps first..stop-1: committed before a restart, never proved, not recomputed."""
        from ..audit.proofs import ProofRunError, epoch_units, load_tapes

        run = trainer.strategy.session.run
        steps = range(first, stop)
        units = epoch_units(run.read_steps(), steps) if self.aggregate == "epoch" else \
            [[step] for step in steps]
        for steps in units:
            if self.background:
                self._submit(run.path, steps)
                continue
            try:
                tapes = load_tapes(run, steps)
            except ProofRunError as err:
                raise ProofError(
                    f"steps {first}..{stop - 1} were committed before the restart but not proved, "
                    f"and their tapes are not on disk: {err}") from err
            self._prove_now(run.path, steps, tapes)
        self._next = stop

    def _flush(self, trainer, per_step: bool) -> None:
        if not self._pending:
            return
        units: list[list] = []
        for item in self._pending:  # per epoch: one unit per learning rate (a statement has one)
            if units and not per_step and units[-1][-1][1].lr == item[1].lr:
                units[-1].append(item)
            else:
                units.append([item])
        self._pending = []
        self._next = units[-1][-1][0] + 1
        run_dir = trainer.strategy.session.run.path
        for unit in units:
            steps = [step for step, _ in unit]
            if self.background:
                self._submit(run_dir, steps)
            else:
                self._prove_now(run_dir, steps, [tape for _, tape in unit])

    def _prove_now(self, run_dir: Path, steps: list[int], tapes: list) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        label = f"proving step {steps[0]}" if len(steps) == 1 else f"proving steps {steps[0]}–{steps[-1]}"
        with Progress(SpinnerColumn(), TextColumn(label), TimeElapsedColumn(), transient=True) as bar:
            bar.add_task(label, total=None)
            try:
                self._prover.prove(tapes)
            except Exception as err:
                raise ProofError(f"{label} failed: {err}") from err

    def _submit(self, run_dir: Path, steps: list[int]) -> None:
        if self._process is None:
            ctx = mp.get_context("spawn")
            self._queue, self._errors = ctx.Queue(), ctx.Queue()
            self._process = ctx.Process(target=_background_prover, daemon=True,
                                        args=(str(run_dir), self.backend, self._queue, self._errors))
            self._process.start()
        self._queue.put(steps)

    def _finish_background(self) -> None:
        if self._process is None:
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._queue.put(None)
        with Progress(SpinnerColumn(), TextColumn("waiting for the background prover"),
                      TimeElapsedColumn(), transient=True) as bar:
            bar.add_task("prove", total=None)
            self._process.join()
        error = None if self._errors.empty() else self._errors.get()
        code, self._process = self._process.exitcode, None
        if error or code:
            hint = error or (
                "the process ended before it could report. HINT: background proving starts a "
                "process with the 'spawn' method, which re-imports the training script: guard it "
                "with `if __name__ == '__main__':`."
            )
            raise ProofError(f"the background prover failed (exit code {code}):\n{hint}")
