"""VerifiableStrategy end to end: determinism, logs, model families, run directory."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.rounding.log import read_step_log
from lightning_zk.rounding.precision import GridSpec, round_to_grid
from tests.models import loader, make_model, train, trainer_kwargs

FLOAT32_GRID = GridSpec()


def _on_grid(model, spec: GridSpec = FLOAT32_GRID) -> bool:
    values = [p.detach().to(spec.compute_dtype) for p in model.parameters()]
    return all(torch.equal(round_to_grid(v, spec).rounded, v) for v in values)


def test_same_seed_runs_are_bit_identical(tmp_path):
    m1, _ = train("mlp", tmp_path / "a", steps=8)
    m2, _ = train("mlp", tmp_path / "b", steps=8)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    s1 = RunDirectory(tmp_path / "a").read_steps()
    s2 = RunDirectory(tmp_path / "b").read_steps()
    assert [r.state_digest for r in s1] == [r.state_digest for r in s2]
    assert [r.log_sha256 for r in s1] == [r.log_sha256 for r in s2]
    assert [r.batch_indices for r in s1] == [r.batch_indices for r in s2]


def test_different_seed_changes_order_and_dropout(tmp_path):
    train("mlp", tmp_path / "a", steps=3, seed=0)
    train("mlp", tmp_path / "b", steps=3, seed=1)
    s1 = RunDirectory(tmp_path / "a").read_steps()
    s2 = RunDirectory(tmp_path / "b").read_steps()
    assert s1[0].batch_indices != s2[0].batch_indices


def test_dropout_masks_do_not_depend_on_torch_global_rng(tmp_path):
    """Masks come from the run's keyed stream: reseeding torch between runs changes nothing."""
    results = []
    for name, torch_seed in (("a", 1), ("b", 2)):
        model = make_model("mlp", seed=0)
        torch.manual_seed(torch_seed)
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / name, seed=5),
                            max_steps=4, **trainer_kwargs())
        trainer.fit(model, train_dataloaders=loader("mlp"))
        results.append([r.state_digest for r in RunDirectory(tmp_path / name).read_steps()])
    assert results[0] == results[1]


def test_logs_written_and_non_empty_with_tau(tmp_path):
    model, _ = train("mlp", tmp_path / "run", steps=5, strategy_kwargs={"threshold": 2**-10})
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert [r.step for r in records] == list(range(5))
    logged = 0
    for record in records:
        log = read_step_log(run.path / record.log_file)
        assert log.step == record.step
        assert log.logged_elements == record.logged_elements
        logged += log.logged_elements
        assert 0 < record.rounded_elements
    assert logged > 0
    assert _on_grid(model)


def test_tau_zero_logs_nothing(tmp_path):
    train("mlp", tmp_path / "run", steps=3, strategy_kwargs={"threshold": 0.0})
    assert all(r.logged_elements == 0 for r in RunDirectory(tmp_path / "run").read_steps())


@pytest.mark.parametrize(
    "kind,optimizer",
    [("mlp", "sgd"), ("mlp", "adam"), ("mlp", "sgd-foreach"), ("cnn", "sgd"), ("cnn", "adamw"),
     ("transformer", "adamw"), ("transformer", "adamw-foreach")],
)
def test_model_families_train_on_grid(tmp_path, kind, optimizer):
    model, trainer = train(kind, tmp_path / "run", steps=4, optimizer=optimizer)
    assert trainer.global_step == 4
    assert _on_grid(model)
    for opt in trainer.optimizers:
        for state in opt.state.values():
            for key, value in state.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.is_floating_point():
                    assert torch.equal(round_to_grid(value, GridSpec()).rounded, value), key
    assert len(RunDirectory(tmp_path / "run").read_steps()) == 4


def test_reduced_mantissa_and_float32_compute(tmp_path):
    model, _ = train("mlp", tmp_path / "a", steps=3, strategy_kwargs={"mantissa_bits": 10})
    assert _on_grid(model, GridSpec(torch.float64, 10))
    model, _ = train("cnn", tmp_path / "b", steps=3,
                     strategy_kwargs={"compute_dtype": "float32", "mantissa_bits": 16})
    assert next(model.parameters()).dtype == torch.float32
    assert _on_grid(model, GridSpec(torch.float32, 16))


def test_data_order_recorded_even_when_user_shuffles(tmp_path):
    train("mlp", tmp_path / "run", steps=7)  # 96 samples / 16 = 6 batches per epoch
    records = RunDirectory(tmp_path / "run").read_steps()
    epoch0 = [i for r in records if r.epoch == 0 for i in r.batch_indices]
    assert sorted(epoch0) == list(range(96)) and epoch0 != list(range(96))
    assert records[6].epoch == 1 and records[6].batch_idx == 0
    assert records[6].batch_indices != records[0].batch_indices


def test_manifest_contents(tmp_path):
    train("cnn", tmp_path / "run", steps=2)
    manifest = RunDirectory(tmp_path / "run").read_manifest()
    assert manifest["strategy"]["compute_dtype"] == "float64"
    assert manifest["strategy"]["mantissa_bits"] == 23
    assert manifest["steps_committed"] == 2
    assert "bn.running_mean" in manifest["model"]["state_entries"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert (tmp_path / "run" / manifest["initial_state"]["file"]).is_file()
    assert manifest["optimizers"][0]["class"] == "SGD"
    json.dumps(manifest)


def test_strategy_registered_by_name(tmp_path):
    model = make_model("mlp")
    trainer = L.Trainer(strategy="verifiable", max_steps=1, **trainer_kwargs(default_root_dir=tmp_path))
    assert isinstance(trainer.strategy, VerifiableStrategy)
    trainer.fit(model, train_dataloaders=loader("mlp"))
    assert (tmp_path / "verifiable" / "run_0" / "manifest.json").is_file()
