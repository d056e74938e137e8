"""The zlib level of a run's rounding logs is the run's own (manifest ``log_zlib_level``): new runs
use the fast level, a run that declares none (written before the field) keeps level 6, so a resume
re-verifies its committed log bytes and a replay reads either."""

from __future__ import annotations

import json

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_zk import VerifiableStrategy
from lightning_zk.audit import replay
from lightning_zk.ledger.rundir import RunDirectory
from lightning_zk.rounding.log import (
    DEFAULT_ZLIB_LEVEL,
    LEGACY_ZLIB_LEVEL,
    encode_step_log,
    read_step_log,
)
from lightning_zk.strategies import session as session_module
from tests.models import loader, make_model, trainer_kwargs

BF16 = {"compute_dtype": "float32", "mantissa_bits": 7}  # large logs: the level shows in the bytes


def _fit(run_dir, steps, ckpt=None, callbacks=()):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, **BF16), max_steps=steps,
                        callbacks=list(callbacks), **trainer_kwargs(enable_checkpointing=bool(callbacks)))
    trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"), ckpt_path=ckpt)
    return RunDirectory(run_dir)


def _levels(run: RunDirectory) -> set[int]:
    """The zlib levels whose encoding reproduces every committed log file."""
    found = set()
    for level in (DEFAULT_ZLIB_LEVEL, LEGACY_ZLIB_LEVEL):
        if all(encode_step_log(read_step_log(run.path / r.log_file), level)
               == (run.path / r.log_file).read_bytes() for r in run.read_steps()):
            found.add(level)
    return found


def test_a_new_run_declares_and_uses_the_fast_level(tmp_path):
    run = _fit(tmp_path / "run", 3)
    assert run.read_manifest()["log_zlib_level"] == DEFAULT_ZLIB_LEVEL
    assert _levels(run) == {DEFAULT_ZLIB_LEVEL}


def test_a_run_without_a_declared_level_resumes_and_audits_at_level_6(tmp_path, monkeypatch):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    with monkeypatch.context() as m:  # a run as written before the field: level 6, undeclared
        m.setattr(session_module, "DEFAULT_ZLIB_LEVEL", LEGACY_ZLIB_LEVEL)
        run = _fit(tmp_path / "run", 4, callbacks=[ckpt])
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest.pop("log_zlib_level") == LEGACY_ZLIB_LEVEL
    run.manifest_path.write_text(json.dumps(manifest))
    assert _levels(run) == {LEGACY_ZLIB_LEVEL}
    # resumed from step 2: steps 2-3 are recomputed and must reproduce their committed log bytes
    _fit(tmp_path / "run", 6, ckpt=tmp_path / "ckpt" / "epoch=0-step=2.ckpt", callbacks=[ckpt])
    assert len(run.read_steps()) == 6 and _levels(run) == {LEGACY_ZLIB_LEVEL}
    assert "log_zlib_level" not in run.read_manifest()
    report = replay(run.path, make_model("mlp"), train_dataloaders=loader("mlp"), progress=False)
    assert report.ok and report.steps_checked == 6, report.summary()
