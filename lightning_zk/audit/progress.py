"""A progress bar for replays: steps checked, corrections so far, time left.

Shown on an interactive terminal only (like Lightning's own bar); ``replay(progress=True/False)``
and ``lightning-zk audit --no-progress`` override the choice.
"""

from __future__ import annotations

import sys

from lightning.pytorch import Callback

from ..strategies.session import StepListener


def interactive() -> bool:
    return sys.stderr.isatty()


class ReplayProgressBar(Callback, StepListener):
    """Advances one tick per replayed step; shows the corrections the trainer's log made so far.

    Args:
        total: steps the replay will check.
        enabled: draw the bar (default: only on an interactive terminal).
    """

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.total = total
        self.enabled = interactive() if enabled is None else bool(enabled)
        self._bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.enabled and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="replay", unit="step", dynamic_ncols=True,
                             file=sys.stderr, leave=True)
            self._bar.set_postfix(corrections=0)

    def on_step_committed(self, session, record, state) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(corrections=session.result.corrections)

    def on_session_close(self, session) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.close()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
