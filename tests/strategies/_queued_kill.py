"""Train in background-commit mode and SIGKILL while snapshots are queued (test_background_commit).

    python _queued_kill.py RUN_DIR CKPT_DIR {reference,kill,resume} KILL_AT

``reference``: the uninterrupted run, inline; ``kill``: background mode, the worker holds the state
of step KILL_AT (it never finishes its digest), the next step's snapshot is queued behind it, and
the process kills itself; ``resume``: the same training again in background mode, from the newest
Lightning checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_zk.ledger.digester import StateDigester  # noqa: E402
from tests.strategies._runs import train  # noqa: E402


def arm(kill_at: int) -> None:
    original_init, original_submit = StateDigester.__init__, StateDigester.submit
    never = threading.Event()

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        digest = self._digest

        def held(state):
            if getattr(self, "_hold", None) is state:
                never.wait()  # killed while here
            return digest(state)

        self._digest = held

    def submit(self, state, token=None):
        if token.fields["step"] == kill_at:
            self._hold = state
        original_submit(self, state, token)
        if token.fields["step"] == kill_at + 1:
            # step kill_at is being digested (held), kill_at + 1 is queued behind it
            assert self.in_flight >= 2, self.in_flight
            os.kill(os.getpid(), signal.SIGKILL)

    StateDigester.__init__, StateDigester.submit = init, submit


def main(run_dir: str, ckpt_dir: str, what: str, kill_at: str) -> None:
    if what == "kill":
        arm(int(kill_at))
    train("rounded", Path(run_dir), Path(ckpt_dir), resume=what == "resume",
          background=what != "reference")


if __name__ == "__main__":
    main(*sys.argv[1:])
