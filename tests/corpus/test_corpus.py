"""Real-world-shaped projects, each trained verifiably, replayed on emulated other hardware, replayed
from the command line, and refused when the replay changes one Trainer setting.

Every module in this package is a LightningModule + DataModule as people write them (schedulers,
warm-up in ``optimizer_step``, ReduceLROnPlateau on a validation metric, GANs and TBPTT with manual
optimization, accumulation and clipping, explicit dtypes and torchmetrics, custom samplers, a model
in ``__main__``); ``TRAINER`` holds its Trainer settings and ``CHANGED`` one setting to change.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lightning_zk import CommitCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit import AuditConfigError, replay
from lightning_zk.cli import main
from lightning_zk.ledger.state import load_snapshot
from lightning_zk.rounding.taint import UnroundedValueWarning
from lightning_zk.testing import NondeterminismEmulator

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
PYTHON_TRAINED = ["resnet_onecycle", "mlp_cosine_epochs", "transformer_warmup", "plateau_val",
                  "gan_two_optimizers", "tbptt_gru", "accumulate_clip", "explicit_dtypes",
                  "bucket_sampler", "imbalanced_weighted"]


def _module(name: str):
    return importlib.import_module(f"tests.corpus.{name}")


def _build(mod, seed: int = 0):
    L.seed_everything(seed, verbose=False)
    return mod.Model(**mod.MODEL_ARGS), mod.Data(**mod.DATA_ARGS)


def _train(mod, run_dir: Path, every: int = 2):
    model, data = _build(mod)
    with NondeterminismEmulator(ulps=8, seed=1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnroundedValueWarning)
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, seed=3),
                            callbacks=[CommitCallback(checkpoint_every_n_steps=every)], **QUIET, **mod.TRAINER)
        trainer.fit(model, datamodule=data)
    unrounded = [w for w in caught if issubclass(w.category, UnroundedValueWarning)]
    return model, trainer, unrounded


def _config(mod, name: str, path: Path, **trainer) -> Path:
    config = {
        "seed_everything": getattr(mod, "SEED", 0),
        "model": {"class_path": f"tests.corpus.{name}.{mod.Model.__name__}", "init_args": mod.MODEL_ARGS},
        "data": {"class_path": f"tests.corpus.{name}.{mod.Data.__name__}", "init_args": mod.DATA_ARGS},
    }
    if trainer:
        config["trainer"] = trainer
    path.write_text(yaml.safe_dump(config))
    return path


def _check_replays(mod, name: str, run_dir: Path, tmp_path: Path, monkeypatch, seed: int = 0) -> None:
    """Replay on another emulated machine, from the CLI, and with one setting changed."""
    records = RunDirectory(run_dir).read_steps()
    model, data = _build(mod, seed)
    with NondeterminismEmulator(ulps=8, seed=2):
        report = replay(run_dir, model, datamodule=data, audit_dir=tmp_path / "audit", progress=False)
    assert report.ok, report.summary()
    assert report.steps_checked == len(records) > 0
    assert next(model.parameters()).dtype == torch.float32  # the replayed model, committed precision

    monkeypatch.chdir(ROOT)
    config = _config(mod, name, tmp_path / "config.yaml")
    assert main(["audit", str(run_dir), "--config", str(config), "--no-progress",
                 "--report", str(tmp_path / "cli.json")]) == 0
    assert json.loads((tmp_path / "cli.json").read_text())["steps_checked"] == len(records)

    setting, value = mod.CHANGED
    model, data = _build(mod, seed)
    with pytest.raises(AuditConfigError, match=setting):
        replay(run_dir, model, datamodule=data, progress=False, **{setting: value})


def _lr(run_dir: Path, step: int, optimizer: int = 0) -> float:
    return float(load_snapshot(RunDirectory(run_dir).checkpoint_path(step)).tensors[f"optim/{optimizer}/group/0/lr"])


@pytest.mark.parametrize("name", PYTHON_TRAINED)
def test_project_trains_and_replays(name, tmp_path, monkeypatch):
    mod = _module(name)
    run_dir = tmp_path / "run"
    model, trainer, unrounded = _train(mod, run_dir, every=1 if name == "accumulate_clip" else 2)
    run = RunDirectory(run_dir)
    records, manifest = run.read_steps(), run.read_manifest()
    assert manifest["final_state_digest"] == records[-1].state_digest
    assert manifest["ledger"]["size"] == len(records)
    assert next(model.parameters()).dtype == torch.float32  # the user gets the committed model
    assert not unrounded, [str(w.message) for w in unrounded]
    CHECKS.get(name, lambda *a: None)(run_dir, records, manifest, trainer)
    _check_replays(mod, name, run_dir, tmp_path, monkeypatch)


# --- what each project exercises -----------------------------------------------------------------
def _onecycle(run_dir, records, manifest, trainer):
    lrs = [_lr(run_dir, n) for n in (2, 4, 6)]
    assert len(set(lrs)) == 3  # the step scheduler's lr is committed with every step
    assert manifest["lr_schedulers"][0] == {"class": "OneCycleLR", "interval": "step", "frequency": 1,
                                            "monitor": None, "reduce_on_plateau": False, "strict": True}
    state = load_snapshot(RunDirectory(run_dir).checkpoint_path(6)).tensors
    assert int(state["sched/0/last_epoch"]) == 6


def _cosine(run_dir, records, manifest, trainer):
    assert [r.epoch for r in records] == [0, 0, 0, 1, 1, 1]
    final = load_snapshot(RunDirectory(run_dir).checkpoint_path(len(records))).tensors
    assert int(final["sched/0/last_epoch"]) == 2  # stepped at the end of both epochs, committed
    assert manifest["trainer"]["settings"]["validation"] is True


def _warmup(run_dir, records, manifest, trainer):
    assert _lr(run_dir, 2) == pytest.approx(2 / 4 * 1e-3)  # set in optimizer_step after step 1
    assert _lr(run_dir, 6) == pytest.approx(1e-3)
    assert manifest["trainer"]["settings"]["gradient_clip_val"] == 0.5


def _plateau(run_dir, records, manifest, trainer):
    assert _lr(run_dir, 8) < 0.05  # ReduceLROnPlateau reduced the lr on the validation loss


def _gan(run_dir, records, manifest, trainer):
    assert [r.updates for r in records] == [[0, 1]] * len(records)  # two updates per batch
    assert [r.global_step for r in records] == [2 * i for i in range(len(records))]
    assert _lr(run_dir, len(records), optimizer=0) == pytest.approx(2e-3 * 0.25)  # StepLR by hand


def _tbptt(run_dir, records, manifest, trainer):
    assert [r.updates for r in records] == [[0, 0, 0]] * 3


def _accumulate(run_dir, records, manifest, trainer):
    assert [r.updates for r in records] == [[], [0], [], [0], [0]] * 2
    run = RunDirectory(run_dir)
    accumulating = load_snapshot(run.checkpoint_path(1)).tensors  # after batch 0: grads are state
    assert any(k.startswith("grad/") for k in accumulating)
    assert not any(k.startswith("grad/") for k in load_snapshot(run.checkpoint_path(2)).tensors)


def _buckets(run_dir, records, manifest, trainer):
    assert manifest["data"]["order"]["kind"] == "recorded"
    assert manifest["data"]["order"]["batch_sampler"] == "BucketBatchSampler"
    assert records[8].epoch == 1 and len({len(r.batch_indices) for r in records}) >= 1


CHECKS = {"resnet_onecycle": _onecycle, "mlp_cosine_epochs": _cosine, "transformer_warmup": _warmup,
          "plateau_val": _plateau, "gan_two_optimizers": _gan, "tbptt_gru": _tbptt,
          "accumulate_clip": _accumulate, "bucket_sampler": _buckets}


# --- projects run from the command line or as a script ------------------------------------------
def test_cli_project_with_seeded_data(tmp_path, monkeypatch):
    """`lightning-zk fit` seeds before building the data; `lightning-zk audit` must do the same."""
    name, mod = "vae_cli", _module("vae_cli")
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    trainer = {"strategy": {"class_path": "lightning_zk.VerifiableStrategy",
                            "init_args": {"run_dir": str(run_dir)}},
               "callbacks": [{"class_path": "lightning_zk.CommitCallback"}],
               **{k: v for k, v in QUIET.items()}, **mod.TRAINER}
    config = _config(mod, name, tmp_path / "fit.yaml", **trainer)
    with NondeterminismEmulator(ulps=8, seed=1):
        assert main(["fit", "--config", str(config)]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed_everything"] == mod.SEED
    assert main(["audit", str(run_dir), "--no-progress", "--report", str(tmp_path / "r.json")]) == 0
    _check_replays(mod, name, run_dir, tmp_path, monkeypatch, seed=mod.SEED)

    # The config's own Trainer settings are checked against the committed ones.
    edited = yaml.safe_load((run_dir / "config.yaml").read_text())
    edited["trainer"]["gradient_clip_val"] = 0.7
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    assert main(["audit", str(run_dir), "--config", str(tmp_path / "edited.yaml"), "--no-progress"]) == 2


def test_cli_audit_refuses_a_changed_setting(tmp_path, monkeypatch, capsys):
    mod = _module("accumulate_clip")
    run_dir = tmp_path / "run"
    _train(mod, run_dir)
    monkeypatch.chdir(ROOT)
    config = _config(mod, "accumulate_clip", tmp_path / "c.yaml", accumulate_grad_batches=4)
    assert main(["audit", str(run_dir), "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "accumulate_grad_batches=4" in err and "accumulate_grad_batches=2" in err and "HINT" in err


def test_model_defined_in_main_replays_from_its_module(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "corpus" / "main_script.py"), str(run_dir)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = RunDirectory(run_dir).read_manifest()
    assert manifest["model_class"] == "__main__.Net" and manifest["model"]["class"] == "Net"
    _check_replays(_module("main_script"), "main_script", run_dir, tmp_path, monkeypatch)


def test_deterministic_custom_sampler_is_checked(tmp_path):
    """A trainer whose recorded order is not what its (deterministic) sampler yields is caught."""
    mod = _module("bucket_sampler")
    run_dir = tmp_path / "run"
    _train(mod, run_dir)

    class OtherSeed(mod.Data):
        def train_dataloader(self):
            loader = super().train_dataloader()
            loader.batch_sampler.seed = 99
            return loader

    model, _ = _build(mod)
    report = replay(run_dir, model, datamodule=OtherSeed(), progress=False)
    assert not report.ok and report.first_mismatch_step == 0
    assert report.mismatch["fields"] == ["batch_indices"]
    assert "sampler" in report.mismatch["detail"]
