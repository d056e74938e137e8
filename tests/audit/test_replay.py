"""Audit replay across emulated hardware, and its detection of tampering."""

from __future__ import annotations

import dataclasses
import json

import lightning as L
import pytest
import torch

from lightning_zk import RunDirectory, RunDirectoryError, VerifiableStrategy
from lightning_zk.audit import AuditConfigError, AuditInputError, replay
from lightning_zk.ledger.errors import RunClaimError
from lightning_zk.ledger.schema import IDENTITY_PARTS, run_fingerprint
from lightning_zk.rounding.log import StepLog, encode_step_log, read_step_log
from lightning_zk.testing import NondeterminismEmulator
from tests.models import MLP, loader, make_model, trainer_kwargs

STEPS = 50


def _train(kind, run_dir, steps=STEPS, seed=1, callbacks=(), model=None):
    with NondeterminismEmulator(ulps=8, seed=seed):
        model = model or make_model(kind)
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir), max_steps=steps,
                            callbacks=list(callbacks), **trainer_kwargs())
        trainer.fit(model, train_dataloaders=loader(kind))
    return model


def _audit(kind, run_dir, seed=2, **kwargs):
    with NondeterminismEmulator(ulps=8, seed=seed):
        return replay(run_dir, make_model(kind, seed=99), train_dataloaders=loader(kind), **kwargs)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_replay_on_other_emulated_hardware_is_bit_exact(tmp_path, kind):
    trained = _train(kind, tmp_path / "run")
    report = _audit(kind, tmp_path / "run", audit_dir=tmp_path / "audit")
    assert report.ok, report.summary()
    assert report.steps_checked == STEPS and report.first_mismatch_step is None
    assert report.corrections > 0  # the log really decided roundings the emulators disagreed on
    audit_run = RunDirectory(tmp_path / "audit")
    ours = [r.state_digest for r in RunDirectory(tmp_path / "run").read_steps()]
    assert [r.state_digest for r in audit_run.read_steps()] == ours
    assert audit_run.read_manifest()["audit_result"]["ok"]
    del trained


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_float32_compute_on_the_bfloat16_grid_replays_bit_exact(tmp_path, kind):
    """The configuration a GPU user runs (float32 compute, committed values on the bfloat16 grid,
    rounded by the one-pass float32 kernel): replayed on other emulated hardware bit for bit."""
    steps = 12
    with NondeterminismEmulator(ulps=8, seed=1):
        model = make_model(kind)
        strategy = VerifiableStrategy(run_dir=tmp_path / "run", compute_dtype="float32",
                                      mantissa_bits=7)
        L.Trainer(strategy=strategy, max_steps=steps, **trainer_kwargs()).fit(
            model, train_dataloaders=loader(kind))
    for p in model.parameters():  # committed weights lie on the bfloat16 grid
        assert torch.equal(p.detach(), p.detach().to(torch.bfloat16).to(p.dtype))
    report = _audit(kind, tmp_path / "run", audit_dir=tmp_path / "audit")
    assert report.ok, report.summary()
    assert report.steps_checked == steps and report.corrections > 0
    ours = [r.state_digest for r in RunDirectory(tmp_path / "run").read_steps()]
    assert [r.state_digest for r in RunDirectory(tmp_path / "audit").read_steps()] == ours


def test_plain_training_differs_across_emulated_hardware():
    """Without the strategy the same two 'machines' disagree: the problem is real."""
    finals = []
    for seed in (1, 2):
        model = make_model("mlp")
        with NondeterminismEmulator(ulps=8, seed=seed):
            L.Trainer(max_steps=STEPS, **trainer_kwargs()).fit(
                model, train_dataloaders=loader("mlp", shuffle=False))
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert not torch.equal(finals[0], finals[1])


def test_replay_without_emulation_and_report_json(tmp_path):
    _train("mlp", tmp_path / "run", steps=5)
    report = replay(tmp_path / "run", make_model("mlp"), train_dataloaders=loader("mlp"))
    assert report.ok
    path = report.save(tmp_path / "r.json")
    assert json.loads(path.read_text())["steps_checked"] == 5


class _AtStep(L.Callback):
    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.action(pl_module, batch)


def _edit_weights(module, batch):
    with torch.no_grad():
        next(module.parameters())[0, 0] += 1e-3


def _poison_labels(module, batch):
    batch[1][:] = (batch[1] + 1) % 4


@pytest.mark.parametrize("action", [_edit_weights, _poison_labels], ids=["weights", "labels"])
def test_dishonest_trainer_caught_at_the_step(tmp_path, action):
    _train("mlp", tmp_path / "run", steps=12, callbacks=[_AtStep(7, action)])
    report = _audit("mlp", tmp_path / "run")
    assert not report.ok
    assert report.first_mismatch_step == 7
    if action is _edit_weights:  # caught by the state, or earlier by an implausible log entry
        assert set(report.mismatch["fields"]) & {"state_digest", "rounding_log"}
    else:
        assert "batch_digest" in report.mismatch["fields"]


def _flip_one_entry(run, step):
    """Flip the logged directions of the step's earliest logged op: a change that propagates
    through the rest of the step (a flip whose rounding no later value depends on would be a
    harmless rewrite, and the replay rightly accepts it)."""
    path = run.path / run.read_steps()[step].log_file
    log = read_step_log(path)
    entry = min(log.entries, key=lambda e: e.op_seq)
    flipped = dataclasses.replace(entry, away=~entry.away)
    entries = [flipped if e is entry else e for e in log.entries]
    data = encode_step_log(StepLog(log.step, entries, log.ops_rounded, log.elements_rounded))
    path.write_bytes(data)
    return data


def test_tampered_log_entry_caught_at_the_step(tmp_path):
    _train("mlp", tmp_path / "run", steps=12)
    run = RunDirectory(tmp_path / "run")
    _flip_one_entry(run, 5)
    report = _audit("mlp", tmp_path / "run")
    assert report.first_mismatch_step == 5 and "log_sha256" in report.mismatch["fields"]


def test_consistently_rewritten_log_caught_at_the_step(tmp_path):
    """A trainer that rewrites a log *and* its record's hash is still caught at that step."""
    import hashlib

    _train("mlp", tmp_path / "run", steps=12)
    run = RunDirectory(tmp_path / "run")
    data = _flip_one_entry(run, 5)
    lines = run.steps_path.read_text().splitlines()
    record = json.loads(lines[5])
    record["log_sha256"] = hashlib.sha256(data).hexdigest()
    lines[5] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    run.steps_path.write_text("\n".join(lines) + "\n")
    report = _audit("mlp", tmp_path / "run")
    assert report.first_mismatch_step == 5
    assert set(report.mismatch["fields"]) & {"state_digest", "rounding_log"}


def test_tampered_committed_state_digest(tmp_path):
    _train("mlp", tmp_path / "run", steps=6)
    run = RunDirectory(tmp_path / "run")
    lines = run.steps_path.read_text().splitlines()
    record = json.loads(lines[3])
    record["state_digest"] = "0" * 64
    lines[3] = json.dumps(record)
    run.steps_path.write_text("\n".join(lines) + "\n")
    report = _audit("mlp", tmp_path / "run")
    assert report.first_mismatch_step == 3 and report.mismatch["fields"] == ["state_digest"]


# --- bad input ----------------------------------------------------------------------------------
@pytest.fixture
def honest_run(tmp_path):
    _train("mlp", tmp_path / "run", steps=6)
    return RunDirectory(tmp_path / "run")


def test_missing_log_names_file_and_step(honest_run):
    (honest_run.rounding_dir / "step-00000003.rlog").unlink()
    with pytest.raises(AuditInputError, match=r"step 3 .*step-00000003.rlog.* missing"):
        _audit("mlp", honest_run.path)


def test_truncated_log_names_file(honest_run):
    path = honest_run.rounding_dir / "step-00000002.rlog"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(AuditInputError, match="step-00000002.rlog"):
        _audit("mlp", honest_run.path)


def test_corrupted_initial_checkpoint(honest_run):
    path = honest_run.checkpoint_path(0)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RunClaimError, match="step-00000000.safetensors"):  # checked before replaying
        _audit("mlp", honest_run.path)


def test_missing_initial_checkpoint(honest_run):
    honest_run.checkpoint_path(0).unlink()
    with pytest.raises(RunClaimError, match="lacks the state after 0 steps"):
        _audit("mlp", honest_run.path)


def test_incompatible_format_version(honest_run):
    manifest = json.loads(honest_run.manifest_path.read_text())
    manifest["format_version"] = 0
    honest_run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RunDirectoryError, match="format_version 0"):
        _audit("mlp", honest_run.path)


def test_model_with_other_parameters(honest_run):
    with pytest.raises(AuditConfigError, match="model differs"):
        replay(honest_run.path, MLP(width=24), train_dataloaders=loader("mlp"))


def test_other_batch_size(honest_run):
    with pytest.raises(AuditConfigError, match="data differs"):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp", batch_size=8))


def test_op_that_cannot_be_made_deterministic(tmp_path):
    class Sampling(MLP):
        def training_step(self, batch, batch_idx):
            x, y = batch
            probs = torch.softmax(self(x), -1)
            picks = torch.multinomial(probs, 1)
            return -(probs.gather(1, picks).log()).mean()

    with pytest.raises(RuntimeError, match="aten.multinomial"):
        L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=2,
                  **trainer_kwargs()).fit(Sampling(), train_dataloaders=loader("mlp"))


def test_other_optimizer_hyperparameters(honest_run):
    model = make_model("mlp")
    model.lr = 0.5  # the committed run trained with lr=0.05
    with pytest.raises(AuditConfigError, match="optimizers differs"):
        replay(honest_run.path, model, train_dataloaders=loader("mlp"))


def test_thresholds_resolved_differently_are_refused(honest_run):
    manifest = json.loads(honest_run.manifest_path.read_text())
    manifest["strategy"]["thresholds"]["base"] = 0.001
    with pytest.raises(RunDirectoryError, match="fingerprint"):  # an edit of the identity ...
        honest_run.manifest_path.write_text(json.dumps(manifest))
        honest_run.read_manifest()
    manifest["fingerprint"] = run_fingerprint({k: manifest[k] for k in IDENTITY_PARTS})
    honest_run.manifest_path.write_text(json.dumps(manifest))  # ... even with its fingerprint
    with pytest.raises(RunDirectoryError, match="strategy.thresholds.*resolved thresholds"):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"))


def test_run_without_steps(honest_run):
    honest_run.steps_path.write_text("")
    with pytest.raises(RunClaimError, match="holds 0 step records, but manifest.json claims 6"):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"))
    manifest = json.loads(honest_run.manifest_path.read_text())
    manifest["final_state_digest"] = None  # an unfinished run, killed before its first step
    honest_run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RunClaimError, match="unfinished run"):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"))
    with pytest.raises(AuditInputError, match="commits no steps"):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"), prefix=True)


def test_model_difference_names_the_exact_field(honest_run):
    with pytest.raises(AuditConfigError, match=r'model.state_entries.net.0.weight: committed \[\[32, 16\], "float64"\], '
                                               r'replay \[\[24, 16\], "float64"\]'):
        replay(honest_run.path, MLP(width=24), train_dataloaders=loader("mlp"))
    with pytest.raises(AuditConfigError, match=r"model.structure.net.2: committed .*p=0.1.*replay .*p=0.3"):
        replay(honest_run.path, MLP(dropout=0.3), train_dataloaders=loader("mlp"))


def test_replay_of_a_run_that_validated_needs_its_validation_data(tmp_path):
    class Validated(MLP):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.loss(batch))

    L.seed_everything(0, verbose=False)
    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=3,
              **trainer_kwargs(val_check_interval=2)).fit(
        Validated(), train_dataloaders=loader("mlp"), val_dataloaders=loader("mlp", shuffle=False))
    with pytest.raises(AuditConfigError, match=r"trainer.settings.validation: committed true, replay false.*HINT.*val_dataloaders"):
        replay(tmp_path / "run", Validated(), train_dataloaders=loader("mlp"), progress=False)
    report = replay(tmp_path / "run", Validated(), train_dataloaders=loader("mlp"),
                    val_dataloaders=loader("mlp", shuffle=False), progress=False)
    assert report.ok, report.summary()


def test_progress_bar_shows_steps_and_corrections(honest_run, capsys):
    with NondeterminismEmulator(ulps=8, seed=2):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"), progress=True)
    err = capsys.readouterr().err
    assert "replay" in err and "6/6" in err and "corrections=" in err
    replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"))  # not a terminal
    assert "corrections=" not in capsys.readouterr().err


def test_a_wall_clock_limit_cannot_apply_to_a_replay(honest_run):
    with pytest.raises(AuditConfigError, match=r"max_time=.*HINT: use stop="):
        replay(honest_run.path, make_model("mlp"), train_dataloaders=loader("mlp"), max_time="00:00:01:00")


def test_resume_with_another_setting_names_it(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    L.seed_everything(0, verbose=False)
    L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=4, callbacks=[ckpt],
              **trainer_kwargs(enable_checkpointing=True)).fit(make_model("mlp"), train_dataloaders=loader("mlp"))
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=6,
                        **trainer_kwargs(gradient_clip_val=0.5))
    with pytest.raises(RunDirectoryError, match=r"trainer.settings.gradient_clip_val: committed null, replay 0.5"):
        trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"),
                    ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")


def _v1_run(run_dir, steps=6):
    """A run in format v1, its manifest without ``state_digest_format`` (as written before
    formats were declared)."""
    with NondeterminismEmulator(ulps=8, seed=1):
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, state_digest="lightning-zk/state/v1"),
                            max_steps=steps, **trainer_kwargs())
        trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"))
    path = RunDirectory(run_dir).manifest_path
    manifest = json.loads(path.read_text())
    assert manifest.pop("state_digest_format") == "lightning-zk/state/v1"
    path.write_text(json.dumps(manifest))
    return RunDirectory(run_dir)


def test_a_v1_run_without_a_declared_format_still_audits(tmp_path):
    _v1_run(tmp_path / "run")
    report = _audit("mlp", tmp_path / "run", audit_dir=tmp_path / "audit")
    assert report.ok and report.steps_checked == 6, report.summary()
    ours = [r.state_digest for r in RunDirectory(tmp_path / "run").read_steps()]
    assert [r.state_digest for r in RunDirectory(tmp_path / "audit").read_steps()] == ours


def test_the_audit_computes_the_declared_format(honest_run):
    """A new run declares the default format (BLAKE3) and the replay computes it."""
    manifest = json.loads(honest_run.manifest_path.read_text())
    assert manifest["state_digest_format"] == "lightning-zk/state/v2-blake3"  # the default
    report = _audit("mlp", honest_run.path)
    assert report.ok, report.summary()


def test_an_unknown_digest_format_is_refused_by_name(honest_run):
    manifest = json.loads(honest_run.manifest_path.read_text())
    manifest["state_digest_format"] = "lightning-zk/state/v9-future"
    honest_run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RunDirectoryError, match="unknown state digest format.*v9-future"):
        _audit("mlp", honest_run.path)
