"""One writer per run directory: the flock on RUN/.lock (the race itself: test_two_writers.py)."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest

from lightning_zk import VerifiableStrategy
from lightning_zk.commands import ledger as ledger_cli
from lightning_zk.ledger.errors import RunLockedError
from lightning_zk.ledger.lock import LOCK_FILE, RunLock
from lightning_zk.ledger.rundir import RunDirectory
from tests.models import loader, make_model, train, trainer_kwargs


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    first = RunLock(tmp_path / "run", purpose="training").acquire()
    with pytest.raises(RunLockedError, match=rf"training by pid {os.getpid()} on host .* started "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    with RunLock(tmp_path / "run") as again:
        assert again.held
    assert (tmp_path / "run" / LOCK_FILE).exists()  # never deleted


def test_the_os_releases_the_lock_of_a_killed_holder(tmp_path):
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: take the lock, say so, wait to be killed
        try:
            RunLock(tmp_path / "run", purpose="holder").acquire()
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    with pytest.raises(RunLockedError, match=rf"holder by pid {pid}\b"):
        RunLock(tmp_path / "run").acquire()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with RunLock(tmp_path / "run") as lock:
        assert lock.held


def test_trainer_refused_while_another_writes_and_readers_keep_working(tmp_path, capsys):
    train("mlp", tmp_path / "done", steps=2)
    with RunLock(tmp_path / "run"):  # another process's training, as far as this one can tell
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=2,
                            **trainer_kwargs())
        with pytest.raises(RunLockedError, match="in use by another writer"):
            trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"))
        assert sorted(os.listdir(tmp_path / "run")) == [LOCK_FILE]  # wrote nothing
    with RunLock(tmp_path / "done"):  # a writer holds it: reading still works
        run = RunDirectory(tmp_path / "done")
        assert run.read_manifest()["steps_committed"] == 2 and len(run.read_steps()) == 2
    assert ledger_cli.main([str(tmp_path / "done")]) == 1  # (this run has no ledger) — one line
    assert "has no Merkle ledger" in capsys.readouterr().err


def test_lock_released_when_training_ends_or_fails(tmp_path):
    train("mlp", tmp_path / "run", steps=2)
    with RunLock(tmp_path / "run") as lock:
        assert lock.held
    with pytest.raises(Exception, match="already holds 2 committed steps"):
        train("mlp", tmp_path / "run", steps=2)
    with RunLock(tmp_path / "run") as lock:  # released after the refusal too
        assert lock.held
