"""The step boundary: a callback VerifiableStrategy puts first in the Trainer's callback list.

A committed step ends where the next batch starts (or where training ends), so that everything
Lightning does after a batch — scheduler steps, ``on_train_batch_end`` hooks, validation and a
``ReduceLROnPlateau`` step — belongs to the step. The strategy's own hooks run after every
callback; this callback runs before them, so a callback's ``on_train_batch_start`` (or
``on_train_end``) already sees the committed step, and one that meddles with the state at the start
of a batch does so inside the next step.
"""

from __future__ import annotations

from lightning.pytorch import Callback


class StepBoundary(Callback):
    """Commits the open step at each batch start and at the end of training (internal)."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        session = self.strategy.session
        if session is not None:
            session.boundary()

    def on_train_end(self, trainer, pl_module) -> None:
        session = self.strategy.session
        if session is not None:
            session.end_of_training()

    @staticmethod
    def install(trainer, strategy) -> None:
        if not any(isinstance(c, StepBoundary) for c in trainer.callbacks):
            trainer.callbacks.insert(0, StepBoundary(strategy))

    @staticmethod
    def remove(trainer) -> None:
        if trainer is not None:
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, StepBoundary)]
