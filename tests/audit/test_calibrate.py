"""Adaptive threshold: measured divergence per op, the derived policy, and replay under it."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.audit import replay
from lightning_zk.rounding.calibration import DivergenceProbe, committed_ulp, policy_from_divergence
from lightning_zk.rounding.precision import GridSpec
from lightning_zk.rounding.threshold import ThresholdPolicy, default_tau
from lightning_zk.strategies.calibrate import calibrate_threshold
from lightning_zk.testing import NondeterminismEmulator
from tests.models import loader, make_model, trainer_kwargs

SPEC = GridSpec()


def test_committed_ulp():
    x = torch.tensor([1.0, 1.5, 2.0, -3.0, 2.0**-130], dtype=torch.float64)
    assert committed_ulp(x, SPEC).tolist() == [2.0**-23, 2.0**-23, 2.0**-22, 2.0**-22, 2.0**-149]


def test_probe_measures_a_known_divergence():
    shift = 2.0**-40  # relative perturbation = 2^-17 committed ulp for values in [1, 2)

    def other(func, args, kwargs):
        return func(*args, **kwargs) * (1 + shift)

    probe = DivergenceProbe(SPEC, other)
    x = 1 + torch.rand(100, dtype=torch.float64) * 0.4
    with probe:
        torch.exp(x * 0)  # exp(0) = 1 exactly: divergence 2^-17 ulp
        x.sum()
    assert probe.max_divergence["aten.exp.default"] == pytest.approx(2.0**-17)
    assert "aten.mul.Tensor" not in probe.max_divergence  # IEEE ops are not measured
    policy = policy_from_divergence(probe, SPEC, safety=16.0, min_tau=2.0**-30)
    assert policy.per_op["aten.exp.default"] == pytest.approx(16 * 2.0**-17)
    assert policy.per_kind["transcendental"] == pytest.approx(16 * 2.0**-17)
    assert policy.tau == default_tau(SPEC)
    assert ThresholdPolicy.from_json(policy.to_json()) == policy


def test_calibrated_policy_in_manifest_and_replay_exact(tmp_path):
    policy = calibrate_threshold(make_model("cnn"), train_dataloaders=loader("cnn"), steps=3,
                                 against="emulator", ulps=8)
    assert policy.calibration["method"] == "emulator" and policy.calibration["ops_measured"] > 5
    assert all(2.0**-20 <= t <= 0.25 for t in policy.per_op.values())
    with NondeterminismEmulator(ulps=8, seed=1):
        L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", threshold=policy),
                  max_steps=20, **trainer_kwargs()).fit(make_model("cnn"), train_dataloaders=loader("cnn"))
    manifest = RunDirectory(tmp_path / "run").read_manifest()
    assert manifest["strategy"]["threshold_policy"]["calibration"]["method"] == "emulator"
    with NondeterminismEmulator(ulps=8, seed=2):
        report = replay(tmp_path / "run", make_model("cnn"), train_dataloaders=loader("cnn"))
    assert report.ok, report.summary()


def test_threshold_below_divergence_breaks_replay(tmp_path):
    """The guarantee is tight: with τ far below the machines' divergence, replay fails."""
    with NondeterminismEmulator(ulps=2**20, seed=1):
        L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", threshold=2.0**-20),
                  max_steps=10, **trainer_kwargs()).fit(make_model("mlp"), train_dataloaders=loader("mlp"))
    with NondeterminismEmulator(ulps=2**20, seed=2):
        report = replay(tmp_path / "run", make_model("mlp"), train_dataloaders=loader("mlp"))
    assert not report.ok


def test_unknown_alternative():
    with pytest.raises(ValueError, match="against='tpu'"):
        calibrate_threshold(make_model("mlp"), train_dataloaders=loader("mlp"), against="tpu")
