"""Train a tiny MLP with CommitCallback and SIGKILL the process at one step (for test_commit.py).

    python _killed_run.py RUN_DIR CKPT_DIR MAX_STEPS KILL_STEP {before-leaf,after-leaf}

``before-leaf``: killed after step KILL_STEP's record is committed but before its leaf is appended;
``after-leaf``: killed right after the leaf (and any checkpoint) is written.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_zk import VerifiableStrategy  # noqa: E402
from lightning_zk.callbacks import CommitCallback  # noqa: E402
from lightning_zk.strategies.session import StepListener  # noqa: E402
from tests.models import loader, make_model, trainer_kwargs  # noqa: E402


class KillAt(L.Callback, StepListener):
    """Killed when ``step`` is committed: before or after CommitCallback's leaf (callback order)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_committed(self, session, record, state) -> None:
        if record.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(run_dir: str, ckpt_dir: str, max_steps: str, kill_step: str, where: str) -> None:
    commit = CommitCallback(checkpoint_every_n_steps=4)
    kill = KillAt(int(kill_step))
    callbacks = [kill, commit] if where == "before-leaf" else [commit, kill]
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir), max_steps=int(max_steps),
                        callbacks=[*callbacks, ckpt], **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"))


if __name__ == "__main__":
    main(*sys.argv[1:])
