"""The training command of the kill and race drivers, and a fork helper (imports paid once)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_zk import CommitCallback, ProofCallback, VerifiableStrategy
from lightning_zk.ledger.rundir import RunDirectory
from tests.fixed_mode.models import make_regressor, regression_loader
from tests.models import loader, make_model, trainer_kwargs


def train(mode: str, run_dir: Path, ckpt_dir: Path, resume: bool, background: bool = False) -> None:
    """The same command every time; on resume from the newest Lightning checkpoint if any.

    ``background``: digest the states on the worker thread (``background_commit=True``).
    """
    ckpts = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: int(re.search(r"step=(\d+)", p.name)[1]))
    ckpt_path = str(ckpts[-1]) if resume and ckpts else None
    saver = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1)
    if mode == "rounded":
        model, data, steps = make_model("mlp"), loader("mlp"), 8
        strategy = VerifiableStrategy(run_dir=run_dir, background_commit=background)
        callbacks = [CommitCallback(checkpoint_every_n_steps=3), saver]
    else:
        model, data, steps = make_regressor(), regression_loader(n=8, batch_size=4), 4
        strategy = VerifiableStrategy(run_dir=run_dir, mode="fixed", background_commit=background)
        callbacks = [CommitCallback(checkpoint_every_n_steps=2), ProofCallback(), saver]
    trainer = L.Trainer(strategy=strategy, max_steps=steps, callbacks=callbacks,
                        **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(model, train_dataloaders=data, ckpt_path=ckpt_path)


def in_child(fn, kill_after: float | None = None) -> int:
    """Run ``fn`` in a forked child; its wait status (0: success)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    if kill_after is not None:
        time.sleep(kill_after)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return os.waitpid(pid, 0)[1]


def snapshot_of(run_dir: Path) -> dict:
    """What must equal the uninterrupted run's. A zero-knowledge run commits digests keyed by its
    own private run key (two runs never share them), so there the comparison is of everything
    else: records without the keyed digests, whose tape digests cover the whole witness (weights
    before and after, batch), and the manifest's claims other than keyed digests."""
    run = RunDirectory(run_dir)
    manifest = run.read_manifest()
    keyed = "fixed" in manifest
    records = []
    for r in run.read_steps():
        data = json.loads(r.to_json_line())
        if keyed:
            data.pop("state_digest"), data.pop("batch_digest")
        records.append(json.dumps(data, sort_keys=True))
    ledger = dict(manifest.get("ledger") or {})
    if keyed:
        ledger.pop("root", None)
    return {
        "records": records,
        "final": None if keyed else manifest["final_state_digest"],
        "finished": manifest["final_state_digest"] is not None,
        "steps": manifest["steps_committed"],
        "ledger": ledger,
        "initial": None if keyed else manifest["initial_state"]["digest"],
        "checkpoints": sorted(p.name for p in (run.path / "checkpoints").glob("step-*.safetensors")),
    }
