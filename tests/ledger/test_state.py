"""Canonical state digests and safetensors snapshots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_zk.ledger.state import (
    StateError,
    batch_digest,
    load_snapshot,
    restore,
    save_snapshot,
    snapshot,
)


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = model(torch.randn(8, 4, dtype=torch.float64)).square().mean()
    loss.backward()
    opt.step()
    for p in model.parameters():  # put values on the float32 grid, as the strategy does
        p.data = p.data.float().double()
    return model, opt


def test_digest_is_deterministic_and_sensitive():
    m1, o1 = _model_and_opt()
    m2, o2 = _model_and_opt()
    d = snapshot(m1, [o1]).digest()
    assert d == snapshot(m2, [o2]).digest()
    with torch.no_grad():
        m2[0].weight[0, 0] += 2**-20
    assert snapshot(m2, [o2]).digest() != d
    o1.param_groups[0]["lr"] = 0.02
    assert snapshot(m1, [o1]).digest() != d


def test_digest_covers_optimizer_state():
    m, o = _model_and_opt()
    d = snapshot(m, [o]).digest()
    state = next(iter(o.state.values()))
    state["exp_avg"][0] += 1.0
    assert snapshot(m, [o]).digest() != d


def test_save_load_restore_round_trip(tmp_path):
    m, o = _model_and_opt()
    snap = snapshot(m, [o])
    digest = save_snapshot(tmp_path / "s.safetensors", snap)
    loaded = load_snapshot(tmp_path / "s.safetensors")
    assert loaded.digest() == digest
    m2, o2 = _model_and_opt(seed=3)
    restore(loaded, m2, [o2])
    assert snapshot(m2, [o2]).digest() == digest


def test_tampered_file_is_rejected(tmp_path):
    m, o = _model_and_opt()
    path = tmp_path / "s.safetensors"
    save_snapshot(path, snapshot(m, [o]))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a byte of tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="corrupted"):
        load_snapshot(path)


@pytest.mark.parametrize("payload", [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_malformed_file_is_rejected(tmp_path, payload):
    path = tmp_path / "s.safetensors"
    path.write_bytes(payload)
    with pytest.raises(StateError, match="not a valid"):
        load_snapshot(path)


def test_missing_file(tmp_path):
    with pytest.raises(StateError, match="does not exist"):
        load_snapshot(tmp_path / "nope.safetensors")


def test_restore_rejects_other_architectures(tmp_path):
    m, o = _model_and_opt()
    snap = snapshot(m, [o])
    other = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).double()
    with pytest.raises(StateError, match="shape"):
        restore(snap, other)
    renamed = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)).double()
    with pytest.raises(StateError, match="does not match"):
        restore(snap, renamed)


def test_batch_digest():
    a = (torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2]))
    assert batch_digest(a) == batch_digest((a[0].clone(), a[1].clone()))
    assert batch_digest(a) != batch_digest((a[0] + 1, a[1]))
    assert batch_digest(a) != batch_digest((a[0].double(), a[1]))
    assert batch_digest({"x": a[0]}) != batch_digest({"y": a[0]})


def _schedulers(opt):
    sched = torch.optim.lr_scheduler
    warm = sched.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 4))
    return [
        sched.SequentialLR(opt, [warm, sched.CosineAnnealingWarmRestarts(opt, T_0=3)], milestones=[2]),
        sched.OneCycleLR(opt, max_lr=0.1, total_steps=20),
        sched.ReduceLROnPlateau(opt, patience=0),
    ]


def test_scheduler_state_is_committed_and_restored(tmp_path):
    model, opt = _model_and_opt()
    scheds = _schedulers(opt)
    for step in range(5):
        for s in scheds[:2]:
            s.step()
        scheds[2].step(1.0 / (step + 1) if step < 2 else 5.0)
    snap = snapshot(model, [opt], schedulers=scheds)
    assert int(snap.tensors["sched/1/last_epoch"]) == 5
    assert "sched/2/best" in snap.tensors and snap.meta["settings"]["sched/2/mode"] == "min"
    path = tmp_path / "s.safetensors"
    save_snapshot(path, snap)

    model2, opt2 = _model_and_opt(seed=1)
    scheds2 = _schedulers(opt2)
    restore(load_snapshot(path), model2, [opt2], scheds2)
    assert snapshot(model2, [opt2], schedulers=scheds2).digest() == snap.digest()
    for a, b in zip(scheds, scheds2, strict=True):  # they go on exactly alike
        a.step(0.5) if isinstance(a, torch.optim.lr_scheduler.ReduceLROnPlateau) else a.step()
        b.step(0.5) if isinstance(b, torch.optim.lr_scheduler.ReduceLROnPlateau) else b.step()
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
    assert snapshot(model, [opt], schedulers=scheds).digest() == snapshot(model2, [opt2], schedulers=scheds2).digest()


def test_scheduler_step_changes_the_digest_and_runs_without_schedulers_keep_theirs():
    model, opt = _model_and_opt()
    plain = snapshot(model, [opt])
    assert "num_schedulers" not in plain.meta and not any(k.startswith("sched/") for k in plain.tensors)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    before = snapshot(model, [opt], schedulers=[sched]).digest()
    sched.step()
    assert snapshot(model, [opt], schedulers=[sched]).digest() != before


def test_live_gradients_are_committed_and_restored():
    model, opt = _model_and_opt()
    model(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
    for p in model.parameters():
        p.grad = p.grad.float().double()  # on the grid, as under the strategy
    with_grads = snapshot(model, [opt], grads=True)
    assert {k for k in with_grads.tensors if k.startswith("grad/")} == {f"grad/{n}" for n, _ in model.named_parameters()}
    assert snapshot(model, [opt]).digest() != with_grads.digest()
    model2, opt2 = _model_and_opt(seed=1)
    restore(with_grads, model2, [opt2])
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), model2.parameters(), strict=True))
    restore(snapshot(model, [opt]), model2, [opt2])  # a state without gradients: none are live
    assert all(p.grad is None for p in model2.parameters())


def test_scheduler_count_mismatch():
    model, opt = _model_and_opt()
    snap = snapshot(model, [opt], schedulers=[torch.optim.lr_scheduler.StepLR(opt, 1)])
    two = [torch.optim.lr_scheduler.StepLR(opt, 1), torch.optim.lr_scheduler.StepLR(opt, 2)]
    with pytest.raises(StateError, match="1 LR schedulers, the run configures 2"):
        restore(snap, model, [opt], two)
