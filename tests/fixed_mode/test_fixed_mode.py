"""VerifiableStrategy(mode="fixed"): exact integer training under Lightning."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
from torch import nn

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.fixed import FixedPointConfig, WitnessTape, quantize, reference_step
from lightning_zk.fixed.torch_bridge import UnsupportedModelError, mlp_from_torch
from lightning_zk.ledger.errors import RunDirectoryError
from lightning_zk.testing import NondeterminismEmulator
from tests.fixed_mode.models import make_regressor, regression_data, regression_loader
from tests.models import trainer_kwargs


def _fit(run_dir, model=None, steps=4, **strategy_kwargs):
    model = model or make_regressor()
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed", **strategy_kwargs),
                        max_steps=steps, **trainer_kwargs())
    trainer.fit(model, train_dataloaders=regression_loader())
    return model, trainer


def test_trains_and_commits_integer_state(tmp_path):
    model, _ = _fit(tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert [r.step for r in records] == [0, 1, 2, 3]
    assert all(r.logged_elements == 0 and "tape" in r.extra for r in records)
    manifest = run.read_manifest()
    assert manifest["strategy"]["mode"] == "fixed" and manifest["fixed"]["dims"] == [4, 8, 3]
    # the torch module holds exactly the dequantised integer weights of the last tape
    last = WitnessTape.load(run.path / records[-1].extra["tape"])
    w = model.net[0].weight.detach().double().numpy()
    assert np.array_equal(quantize(w, 16), last.tensors["W1n"])


def test_matches_the_integer_reference(tmp_path):
    """Every committed tape equals a straightforward integer reference step on the same batch."""
    _fit(tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    for record in run.read_steps():
        tape = WitnessTape.load(run.path / record.extra["tape"])
        n = tape.num_layers
        ws = [tape.tensors[f"W{i}"].tolist() for i in range(1, n + 1)]
        bs = [tape.tensors[f"b{i}"].tolist() for i in range(1, n + 1)]
        ref_ws, ref_bs, _ = reference_step(ws, bs, tape.tensors["x"].tolist(),
                                           tape.tensors["y"].tolist(), tape.lr, tape.mse_const,
                                           tape.frac_bits)
        for i in range(n):
            assert np.array_equal(np.array(ref_ws[i]), tape.tensors[f"W{i + 1}n"])
            assert np.array_equal(np.array(ref_bs[i]), tape.tensors[f"b{i + 1}n"])


def _integer_states(run: RunDirectory) -> list[bytes]:
    out = []
    for record in run.read_steps():
        tape = WitnessTape.load(run.path / record.extra["tape"])
        out.append(b"".join(tape.tensors[k].tobytes() for k in sorted(tape.tensors)
                            if k.endswith("n")))
    return out


def test_bit_identical_under_different_emulated_hardware(tmp_path):
    states = []
    for seed in (1, 2):
        with NondeterminismEmulator(ulps=64, seed=seed):
            _fit(tmp_path / f"run{seed}", steps=6)
        states.append(_integer_states(RunDirectory(tmp_path / f"run{seed}")))
    assert states[0] == states[1]


def test_records_hide_the_state_and_batch_digests(tmp_path):
    """A zk run's records (and ledger) carry keyed digests: the plain SHA-256 of the state or
    of a batch, which anyone with a guess could recompute, appears nowhere in what is public."""
    from lightning_zk.ledger.hiding import KEY_FILE, DigestKey
    from lightning_zk.ledger.state import batch_digest

    model, trainer = _fit(tmp_path / "run", steps=2)
    run = RunDirectory(tmp_path / "run")
    manifest, records = run.read_manifest(), run.read_steps()
    key = DigestKey.load(run.path / "tapes" / KEY_FILE, manifest["fixed"]["digests"]["key_commitment"])
    plain_final = trainer.strategy.session.snapshot().digest()
    assert manifest["final_state_digest"] == key.hide("state", 1, plain_final) != plain_final
    public = (run.path / "manifest.json").read_text() + (run.path / "steps.jsonl").read_text()
    assert plain_final not in public
    x, y = regression_data()[records[0].batch_indices]
    plain_batch = batch_digest([x, y])  # the batch as the DataLoader collates it
    assert records[0].batch_digest == key.hide("batch", 0, plain_batch)
    assert plain_batch not in public
    assert manifest["fixed"]["batch_size"] == x.shape[0]
    assert manifest["fixed"]["proof"] == {"security_bits": 100, "blowup": 4}
    assert records[0].state_digest != records[1].state_digest


def test_same_run_as_a_direct_engine_run(tmp_path):
    model = make_regressor()
    engine = mlp_from_torch(model.net, 0.05, FixedPointConfig())
    _fit(tmp_path / "run", model=make_regressor())
    run = RunDirectory(tmp_path / "run")
    for record in run.read_steps():
        tape = WitnessTape.load(run.path / record.extra["tape"])
        mine = engine.step(tape.tensors["x"], tape.tensors["y"])
        assert all(np.array_equal(mine.tensors[k], v) for k, v in tape.tensors.items())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layers": [nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)]}, "Tanh"),
        ({"layers": [nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)]}, "bias"),
        ({"loss": nn.L1Loss()}, "aten.abs.default"),
        ({"optimizer": "adam"}, "Adam"),
        ({"optimizer": "nesterov"}, "nesterov"),
    ],
)
def test_unsupported_models_named(tmp_path, kwargs, match):
    with pytest.raises(UnsupportedModelError, match=match):
        _fit(tmp_path / "run", model=make_regressor(**kwargs))


def test_no_loss_attribute_needed(tmp_path):
    """The training_step itself runs (intercepted): no `self.loss_fn` is required."""
    model = make_regressor()
    del model.loss_fn
    model.training_step = lambda batch, batch_idx: nn.functional.mse_loss(model.net(batch[0]), batch[1])
    _fit(tmp_path / "run", model=model)
    assert len(RunDirectory(tmp_path / "run").read_steps()) == 4


def test_a_batch_sampler_without_a_fixed_batch_size_is_refused(tmp_path):
    """A proof chain has one public batch size: a custom batch sampler (its order recorded) has
    none to declare, so fixed-point mode refuses it before writing anything."""
    from torch.utils.data import DataLoader, Sampler

    class Halves(Sampler):
        def __iter__(self):
            return iter([[0, 1, 2, 3], [4, 5, 6, 7]])

        def __len__(self):
            return 2

    data = regression_data(8)
    batches = Halves()
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=2, **trainer_kwargs())
    with pytest.raises(UnsupportedModelError, match="batch_size"):
        trainer.fit(make_regressor(), train_dataloaders=DataLoader(data, batch_sampler=batches))
    assert not RunDirectory(tmp_path / "run").exists()


def test_bad_mode_and_frac_bits():
    with pytest.raises(ValueError, match="mode='exact'"):
        VerifiableStrategy(mode="exact")
    with pytest.raises(ValueError, match="frac_bits"):
        VerifiableStrategy(mode="fixed", frac_bits=0)


def test_a_start_killed_before_its_manifest_restarts_with_a_new_key(tmp_path):
    """The fixed-point start writes its private digest key before the manifest: a kill between
    the two leaves nothing committed, so the same command starts the run again there."""
    _fit(tmp_path / "done")
    run_dir = tmp_path / "run"
    (run_dir / "tapes").mkdir(parents=True)
    key = (tmp_path / "done" / "tapes" / "digest-key.json").read_bytes()
    (run_dir / "tapes" / "digest-key.json").write_bytes(key)
    assert RunDirectory(run_dir).is_uncommitted_start()
    _fit(run_dir)
    assert len(RunDirectory(run_dir).read_steps()) == 4
    assert (run_dir / "tapes" / "digest-key.json").read_bytes() != key  # a new run, a new key


def test_a_tape_without_a_manifest_is_not_an_uncommitted_start(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "tapes").mkdir(parents=True)
    (run_dir / "tapes" / "step-00000000.npz").write_bytes(b"tape")
    assert not RunDirectory(run_dir).is_uncommitted_start()
    with pytest.raises(RunDirectoryError):
        _fit(run_dir)
