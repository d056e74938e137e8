"""BatchNorm in sharded runs, on one process (fast): the per-shard rule and what it refuses.

The 2-process BatchNorm run (``cnn4_run``, 4 shards on 2 processes) is checked in test_ddp.py.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn

from lightning_zk import RunDirectory, VerifiableDDPStrategy, VerifiableShardedStrategy
from lightning_zk.audit import replay
from lightning_zk.strategies.ddp import ShardedRunError
from tests.ddp.models import make
from tests.models import trainer_kwargs

SHARD = 4


def _fit(tmp_path, model, data, steps: int, callbacks=(), shards: int = 2) -> RunDirectory:
    strategy = VerifiableShardedStrategy(run_dir=tmp_path / "run", shards=shards)
    L.Trainer(strategy=strategy, max_steps=steps, callbacks=list(callbacks),
              **trainer_kwargs()).fit(model, train_dataloaders=data)
    return RunDirectory(tmp_path / "run")


def _bn_input(model, x: torch.Tensor) -> torch.Tensor:
    """What the CNN's BatchNorm layer sees (float64, the initial weights)."""
    with torch.no_grad():
        h = torch.relu(model.norm(model.conv1(x)))
        return model.conv2(h)


def test_running_statistics_are_shard_0s_and_batch_statistics_per_shard(tmp_path):
    """One step of 2 shards: the running statistics are the momentum update from shard 0's batch
    alone (not shard 1's, not the global batch's), counted once."""
    model, data = make("cnn", batch_size=SHARD)
    initial = copy.deepcopy(model).double()
    run = _fit(tmp_path, model, data, steps=1)
    assert run.read_manifest()["strategy"]["batch_norm"] == "per_shard"
    indices = run.read_steps()[0].batch_indices
    x = data.dataset.tensors[0].double()
    expected = {}
    for k in range(2):
        z = _bn_input(initial, x[indices[k * SHARD:(k + 1) * SHARD]])
        mean, var = z.mean(dim=(0, 2, 3)), z.var(dim=(0, 2, 3), unbiased=True)
        expected[k] = (0.1 * mean, 0.9 + 0.1 * var)
    bn = model.bn
    assert int(bn.num_batches_tracked) == 1
    for stat, value in (("mean", bn.running_mean), ("var", bn.running_var)):
        i = 0 if stat == "mean" else 1
        assert torch.allclose(value.double(), expected[0][i], rtol=1e-5, atol=1e-7), stat
        assert not torch.allclose(value.double(), expected[1][i], rtol=1e-3, atol=1e-5), stat


class _TamperRunningMean(L.Callback):
    """(Test) the trainer doubles the BatchNorm running mean before step ``step`` runs: the state
    it commits at that step is not the step's."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.step:
            with torch.no_grad():
                pl_module.bn.running_mean.mul_(2.0)


def test_tampered_running_statistics_are_caught_at_the_step(tmp_path):
    model, data = make("cnn", batch_size=SHARD)
    run = _fit(tmp_path, model, data, steps=3, callbacks=[_TamperRunningMean(2)])
    model, data = make("cnn", batch_size=SHARD)
    report = replay(run.path, model, train_dataloaders=data, accelerator="cpu")
    assert not report.ok and report.first_mismatch_step == 2
    assert "state_digest" in report.mismatch["fields"]


def test_sync_batchnorm_is_refused_by_name(tmp_path):
    model, data = make("cnn", batch_size=SHARD)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    with pytest.raises(ShardedRunError, match=r"SyncBatchNorm layer bn: synchronised BatchNorm"):
        _fit(tmp_path, model, data, steps=1)


def test_buffers_other_than_running_statistics_must_stay_constant(tmp_path):
    """A buffer the forward pass changes (here a counter) is refused: only BatchNorm's running
    statistics have a canonical rule."""
    model, data = make("mlp")
    model.register_buffer("calls", torch.zeros(1, dtype=torch.float64))
    forward = model.forward

    def counting(x):
        model.calls += 1
        return forward(x)

    model.forward = counting
    with pytest.raises(ShardedRunError, match="buffer 'calls' changed while shard 0 ran"):
        _fit(tmp_path, model, data, steps=1)


def test_broadcast_buffers_false_is_refused():
    with pytest.raises(ShardedRunError, match=r"broadcast_buffers=False.*shard 0's"):
        VerifiableDDPStrategy(broadcast_buffers=False)
