"""Background state digests (``VerifiableStrategy(background_commit=True)``): the same run as
inline, errors surfaced on the training thread, and a kill while snapshots are queued leaves a
consistent prefix that resumes to the uninterrupted run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import lightning as L
import pytest

from lightning_zk import CommitCallback, VerifiableStrategy
from lightning_zk.ledger.claims import check_run_claims
from lightning_zk.ledger.digester import DigestWorkerError, StateDigester
from lightning_zk.ledger.merkle import Ledger
from lightning_zk.ledger.rundir import RunDirectory
from lightning_zk.ledger.state import STATE_DIGEST_V1, STATE_DIGEST_V2
from tests.models import loader, make_model, trainer_kwargs
from tests.strategies._runs import snapshot_of


def _fit(run_dir, background: bool, steps: int = 7, state_digest: str | None = None,
         kind: str = "mlp", optimizer: str = "adam") -> RunDirectory:
    model = make_model(kind, optimizer=optimizer)
    strategy = VerifiableStrategy(run_dir=run_dir, background_commit=background,
                                  state_digest=state_digest)
    trainer = L.Trainer(strategy=strategy, max_steps=steps,
                        callbacks=[CommitCallback(checkpoint_every_n_steps=2)], **trainer_kwargs())
    trainer.fit(model, train_dataloaders=loader(kind))
    return RunDirectory(run_dir)


@pytest.mark.parametrize("fmt", [STATE_DIGEST_V1, STATE_DIGEST_V2])
def test_background_commits_the_same_run_as_inline(tmp_path, fmt):
    inline = _fit(tmp_path / "inline", background=False, state_digest=fmt)
    background = _fit(tmp_path / "background", background=True, state_digest=fmt)
    assert inline.read_manifest()["state_digest_format"] == fmt
    mine, reference = snapshot_of(background.path), snapshot_of(inline.path)
    assert mine == reference
    digests = [r.state_digest for r in inline.read_steps()]
    assert len(set(digests)) == len(digests) == 7  # Adam moved the state at every step
    check_run_claims(background)
    for name in reference["checkpoints"]:
        assert (inline.checkpoint_dir / name).read_bytes() == (background.checkpoint_dir / name).read_bytes()


def test_formats_give_different_digests_of_the_same_run(tmp_path):
    v1 = _fit(tmp_path / "v1", background=False, steps=3, state_digest=STATE_DIGEST_V1)
    v2 = _fit(tmp_path / "v2", background=True, steps=3)  # the default for new runs
    assert v2.read_manifest()["state_digest_format"] == STATE_DIGEST_V2
    a, b = v1.read_steps(), v2.read_steps()
    assert [r.batch_digest for r in a] == [r.batch_digest for r in b]
    assert all(x.state_digest != y.state_digest for x, y in zip(a, b, strict=True))


def test_batchnorm_counters_are_copied_not_aliased(tmp_path):
    """BatchNorm's int64 ``num_batches_tracked`` is updated in place by the next forward pass."""
    inline = _fit(tmp_path / "inline", background=False, steps=4, kind="cnn", optimizer="sgd")
    background = _fit(tmp_path / "background", background=True, steps=4, kind="cnn", optimizer="sgd")
    assert snapshot_of(background.path) == snapshot_of(inline.path)


def test_a_worker_error_surfaces_as_a_typed_error_and_leaves_a_prefix(tmp_path, monkeypatch):
    calls = []

    def failing(self, state):
        calls.append(threading.current_thread().name)
        if len(calls) == 4:
            raise OSError("disk on fire")
        return state.digest()

    original = StateDigester.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._digest = partial(failing, self)

    monkeypatch.setattr(StateDigester, "__init__", init)
    with pytest.raises(DigestWorkerError, match="disk on fire") as info:
        _fit(tmp_path / "run", background=True)
    assert isinstance(info.value.__cause__, OSError)
    assert "lightning-zk-digest" in calls  # it did run on the worker
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert len(records) == 3  # steps 0-2; step 3's digest failed, nothing after it is committed
    manifest = run.read_manifest()
    check_run_claims(run, manifest, records, require_finished=False)
    with Ledger(run.path) as ledger:
        ledger.check_records(records, complete=False)


KILL_SCRIPT = Path(__file__).with_name("_queued_kill.py")


def _train(run_dir, ckpt_dir, what: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KILL_SCRIPT), str(run_dir), str(ckpt_dir), what,
                           str(kill_at)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kill_at", [1, 4])
def test_a_kill_while_snapshots_are_queued_leaves_a_resumable_prefix(tmp_path, kill_at):
    proc = _train(tmp_path / "reference", tmp_path / "reference-ckpt", "reference")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = snapshot_of(tmp_path / "reference")  # inline: the background run must equal it
    run_dir, ckpt_dir = tmp_path / "run", tmp_path / "ckpt"
    proc = _train(run_dir, ckpt_dir, "kill", kill_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run = RunDirectory(run_dir)
    manifest, records = run.read_manifest(), run.read_steps()
    assert len(records) <= kill_at  # neither the held step nor the queued one was committed
    check_run_claims(run, manifest, records, require_finished=False)
    if records:  # (the steps before the held one may still have been waiting for their digests)
        with Ledger(run.path) as ledger:
            ledger.check_records(records, complete=False)
    # a Lightning checkpoint (every 3 steps) never counts a step that was not committed
    for ckpt in ckpt_dir.glob("*.ckpt"):
        assert int(re.search(r"step=(\d+)", ckpt.name)[1]) <= len(records), ckpt.name
    proc = _train(run_dir, ckpt_dir, "resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert snapshot_of(run_dir) == reference
    check_run_claims(RunDirectory(run_dir))


def test_bad_settings_are_refused_before_training():
    with pytest.raises(ValueError, match="background_commit is for mode='rounded'"):
        VerifiableStrategy(mode="fixed", background_commit=True)  # proofs need each record now
    with pytest.raises(ValueError, match="background_commit="):
        VerifiableStrategy(background_commit="yes")
    with pytest.raises(ValueError, match="state_digest="):
        VerifiableStrategy(state_digest="sha1")


@pytest.mark.parametrize("name", ["plateau_val", "gan_two_optimizers", "transformer_warmup"])
def test_background_commits_the_same_run_on_real_world_shaped_projects(tmp_path, name):
    """ReduceLROnPlateau on a validation metric, two optimizers, warm-up in optimizer_step."""
    from tests.corpus import test_corpus as corpus

    mod = corpus._module(name)
    runs = []
    for background in (False, True):
        model, data = corpus._build(mod)
        run_dir = tmp_path / f"background={background}"
        L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, seed=3, background_commit=background),
                  callbacks=[CommitCallback(checkpoint_every_n_steps=2)], **corpus.QUIET,
                  **mod.TRAINER).fit(model, datamodule=data)
        runs.append(snapshot_of(run_dir))
    assert runs[0] == runs[1]
