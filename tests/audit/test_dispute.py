"""The dispute game: an attack suite of dishonest trainers, a dishonest auditor, bad input."""

from __future__ import annotations

import hashlib
import json
import math

import lightning as L
import pytest
import torch

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.audit import DisputeError, dispute, replay
from lightning_zk.callbacks import CommitCallback
from lightning_zk.ledger.merkle import LEDGER_FILE, Ledger
from lightning_zk.testing import NondeterminismEmulator
from tests.audit.test_replay import _flip_one_entry
from tests.models import loader, make_data, make_model, trainer_kwargs

T = 16
STEP = 9  # the step every attack tampers with


class _Attack(L.Callback):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if self.kind == "lr" and step == STEP:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= 2
        if step != STEP:
            return
        if self.kind == "labels":
            batch[1][:] = (batch[1] + 1) % 4
        elif self.kind == "weights":
            with torch.no_grad():
                next(pl_module.parameters())[0, 0] += 1e-3
        elif self.kind == "reorder":
            other = make_data("mlp")[:16]
            batch[0].copy_(other[0].to(batch[0].dtype))
            batch[1].copy_(other[1])
        elif self.kind == "skip":
            opt = trainer.optimizers[0]
            step_fn = opt.step

            def skipped(closure=None):
                opt.step = step_fn  # the forward/backward run, the update does not
                return closure() if closure is not None else None

            opt.step = skipped


def _trainer_run(path, attack=None):
    callbacks = [CommitCallback(checkpoint_every_n_steps=4)]
    if attack:
        callbacks.append(_Attack(attack))
    with NondeterminismEmulator(ulps=8, seed=1):
        # τ = 2^-10 ulp: forward ops get logged entries too (for the rewritten-log attack)
        L.Trainer(strategy=VerifiableStrategy(run_dir=path, threshold=2**-10), max_steps=T, callbacks=callbacks,
                  **trainer_kwargs()).fit(make_model("mlp"), train_dataloaders=loader("mlp"))


def _auditor_run(trainer_path, audit_path):
    with NondeterminismEmulator(ulps=8, seed=2):
        return replay(trainer_path, make_model("mlp"), train_dataloaders=loader("mlp"),
                      audit_dir=audit_path)


def _dispute(trainer_path, audit_path):
    with NondeterminismEmulator(ulps=8, seed=3):  # the referee is a third machine
        return dispute(trainer_path, audit_path, make_model("mlp"), train_dataloaders=loader("mlp"))


def _rebuild_ledger(run: RunDirectory) -> None:
    """What a consistent liar does after rewriting records: new ledger, new published root."""
    (run.path / LEDGER_FILE).unlink()
    with Ledger(run.path / LEDGER_FILE, create=True) as ledger:
        ledger.extend(run.read_steps())
        manifest = run.read_manifest()
        manifest["ledger"].update(size=ledger.size, root=ledger.root().hex())
    run.write_manifest(manifest)


def _rewrite_log_consistently(run: RunDirectory, step: int) -> None:
    data = _flip_one_entry(run, step)
    lines = run.steps_path.read_text().splitlines()
    record = json.loads(lines[step])
    record["log_sha256"] = hashlib.sha256(data).hexdigest()
    lines[step] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    run.steps_path.write_text("\n".join(lines) + "\n")
    _rebuild_ledger(run)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    base = tmp_path_factory.mktemp("honest")
    _trainer_run(base / "run")
    assert _auditor_run(base / "run", base / "audit").ok
    return base


def test_honest_run_has_no_dispute(honest):
    verdict = _dispute(honest / "run", honest / "audit")
    assert verdict.first_disputed_step is None and verdict.honest is None
    assert verdict.rounds == 1


@pytest.mark.parametrize("attack", ["labels", "skip", "weights", "lr", "reorder", "log"])
def test_dishonest_trainer_caught_at_the_step(tmp_path, attack):
    _trainer_run(tmp_path / "run", attack if attack != "log" else None)
    if attack == "log":
        _rewrite_log_consistently(RunDirectory(tmp_path / "run"), STEP)
    report = _auditor_run(tmp_path / "run", tmp_path / "audit")
    assert not report.ok and report.first_mismatch_step == STEP
    verdict = _dispute(tmp_path / "run", tmp_path / "audit")
    assert verdict.first_disputed_step == STEP, verdict.evidence
    assert verdict.honest == "auditor" and verdict.dishonest == "trainer"
    assert verdict.rounds <= math.ceil(math.log2(T)) + 1
    assert verdict.evidence["referee"]["from_step"] <= STEP


def test_dishonest_auditor_is_declared_dishonest(honest, tmp_path):
    import shutil

    shutil.copytree(honest / "audit", tmp_path / "audit")
    run = RunDirectory(tmp_path / "audit")
    lines = run.steps_path.read_text().splitlines()
    record = json.loads(lines[STEP])
    record["state_digest"] = "0" * 64
    lines[STEP] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    run.steps_path.write_text("\n".join(lines) + "\n")
    _rebuild_ledger(run)
    verdict = _dispute(honest / "run", tmp_path / "audit")
    assert verdict.first_disputed_step == STEP and verdict.honest == "trainer"
    assert verdict.evidence["referee"]["trainer_matches_referee"]


# --- bad input: never a wrong verdict ------------------------------------------------------------
def test_ledger_not_matching_published_root(honest, tmp_path):
    import shutil

    shutil.copytree(honest / "run", tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    manifest = run.read_manifest()
    manifest["ledger"]["root"] = "ab" * 32
    run.write_manifest(manifest)
    with pytest.raises(DisputeError, match="trainer's run cannot be trusted"):
        _dispute(tmp_path / "run", honest / "audit")


def test_tampered_sqlite_file(honest, tmp_path):
    import shutil

    shutil.copytree(honest / "audit", tmp_path / "audit")
    path = tmp_path / "audit" / LEDGER_FILE
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(DisputeError, match="auditor"):
        _dispute(honest / "run", tmp_path / "audit")


def test_missing_checkpoints_for_disputed_interval(tmp_path):
    _trainer_run(tmp_path / "run", "weights")
    _auditor_run(tmp_path / "run", tmp_path / "audit")
    for path in (tmp_path / "run" / "checkpoints").glob("*.safetensors"):
        path.unlink()
    with pytest.raises(DisputeError, match="trainer's run cannot be trusted.*lacks the state after 0"):
        _dispute(tmp_path / "run", tmp_path / "audit")


def test_runs_of_different_models(honest, tmp_path):
    with NondeterminismEmulator(ulps=8, seed=1):
        L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "cnn"), max_steps=4,
                  callbacks=[CommitCallback()], **trainer_kwargs()).fit(
            make_model("cnn"), train_dataloaders=loader("cnn"))
    with pytest.raises(DisputeError, match="different models"):
        _dispute(honest / "run", tmp_path / "cnn")


def test_run_without_ledger(honest, tmp_path):
    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "plain"), max_steps=2,
              **trainer_kwargs()).fit(make_model("mlp"), train_dataloaders=loader("mlp"))
    with pytest.raises(DisputeError, match="publishes no ledger root"):
        _dispute(tmp_path / "plain", honest / "audit")


# --- the referee restarts mid-run: Lightning's counters, schedulers, several updates per step -----
@pytest.mark.parametrize("name,every", [("transformer_warmup", 2), ("gan_two_optimizers", 2),
                                        ("accumulate_clip", 1)])
def test_referee_restarts_projects_mid_run(tmp_path, name, every):
    """A warm-up that reads trainer.global_step, a GAN with two updates per step, and a restart in
    the middle of an accumulation window (live gradients in the checkpoint): the referee restarts
    from the checkpoint before the disputed step with Lightning's counters as they were, so an
    honest trainer is upheld against a lying auditor."""
    import importlib

    mod = importlib.import_module(f"tests.corpus.{name}")

    def build():
        L.seed_everything(0, verbose=False)
        return mod.Model(**mod.MODEL_ARGS), mod.Data(**mod.DATA_ARGS)

    model, data = build()
    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"),
              callbacks=[CommitCallback(checkpoint_every_n_steps=every)],
              **trainer_kwargs(**mod.TRAINER)).fit(model, datamodule=data)
    model, data = build()
    # The lying auditor keeps no intermediate checkpoints: one holding the true state after step 3
    # would contradict its lie, and the claims check would refuse its run before the game.
    assert replay(tmp_path / "run", model, datamodule=data, audit_dir=tmp_path / "audit", progress=False,
                  callbacks=[CommitCallback(checkpoint_every_n_steps=None)]).ok
    audit = RunDirectory(tmp_path / "audit")
    lines = audit.steps_path.read_text().splitlines()
    record = json.loads(lines[3])
    record["state_digest"] = "0" * 64
    lines[3] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    audit.steps_path.write_text("\n".join(lines) + "\n")
    _rebuild_ledger(audit)
    model, data = build()
    verdict = dispute(tmp_path / "run", tmp_path / "audit", model, datamodule=data)
    assert verdict.first_disputed_step == 3 and verdict.honest == "trainer", verdict.evidence
    assert verdict.evidence["referee"]["from_step"] == (3 if every == 1 else 2)


def test_referee_refuses_when_it_cannot_reproduce_an_agreed_step(tmp_path):
    """The step counter a referee restarts from is the trainer's record (not part of the leaf):
    a wrong one makes the agreed steps irreproducible, and the referee gives no verdict."""
    import importlib

    mod = importlib.import_module("tests.corpus.transformer_warmup")

    def build():
        L.seed_everything(0, verbose=False)
        return mod.Model(**mod.MODEL_ARGS), mod.Data(**mod.DATA_ARGS)

    model, data = build()
    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"),
              callbacks=[CommitCallback(checkpoint_every_n_steps=2)],
              **trainer_kwargs(**mod.TRAINER)).fit(model, datamodule=data)
    model, data = build()
    # as above: the lying auditor keeps no checkpoint that would contradict its lie
    replay(tmp_path / "run", model, datamodule=data, audit_dir=tmp_path / "audit", progress=False,
           callbacks=[CommitCallback(checkpoint_every_n_steps=None)])
    for run, step, field, value in ((tmp_path / "audit", 3, "state_digest", "0" * 64),
                                    (tmp_path / "run", 2, "global_step", 0)):
        run = RunDirectory(run)
        lines = run.steps_path.read_text().splitlines()
        record = json.loads(lines[step])
        record[field] = value
        lines[step] = json.dumps(record, sort_keys=True, separators=(",", ":"))
        run.steps_path.write_text("\n".join(lines) + "\n")
    _rebuild_ledger(RunDirectory(tmp_path / "audit"))
    model, data = build()
    with pytest.raises(DisputeError, match="could not reproduce agreed step 2"):
        dispute(tmp_path / "run", tmp_path / "audit", model, datamodule=data)
