"""RoundingMode without Lightning: coverage of forward/backward/optimizer, record and replay."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_zk.ledger.state import named_state_tensors
from lightning_zk.rounding.log import LogEntry, StepLog
from lightning_zk.rounding.mode import ReplayDivergenceError, RoundingMode
from lightning_zk.rounding.precision import GridSpec, round_to_grid
from lightning_zk.rounding.threshold import ThresholdPolicy

SPEC = GridSpec()


def _setup(foreach=False):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.GELU(), nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(4 * 6 * 6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3),
    ).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=foreach)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    return model, opt, x, y


def _run(steps=3, tau=2**-8, replay=None, foreach=False, tamper=None):
    model, opt, x, y = _setup(foreach)
    mode = RoundingMode(SPEC, ThresholdPolicy(tau=tau).resolve(SPEC), seed=1)
    logs = []
    for step in range(steps):
        mode.begin_step(step, replay[step] if replay else None)
        with mode.active():
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        mode.round_named(named_state_tensors(model, [opt]))
        logs.append(mode.end_step()[0])
    return model, opt, logs


def _equal_models(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("foreach", [False, True])
def test_everything_lands_on_grid(foreach):
    model, opt, logs = _run(foreach=foreach)
    for _, t in named_state_tensors(model, [opt]):
        if t.is_floating_point():
            assert torch.equal(round_to_grid(t.detach(), SPEC).rounded, t.detach())
    assert all(log.ops_rounded > 50 for log in logs)
    names = {e.op_name for log in logs for e in log.entries}
    assert any("convolution" in n or "addmm" in n or "mm" in n for n in names)


def test_replay_reproduces_bit_for_bit():
    recorded, _, logs = _run()
    assert sum(log.logged_elements for log in logs) > 0
    replayed, _, _ = _run(replay=logs)
    assert _equal_models(recorded, replayed)


def test_flipped_direction_changes_the_result():
    recorded, _, logs = _run()
    step = next(i for i, log in enumerate(logs) if log.entries)
    entry = logs[step].entries[0]
    flipped = dataclasses.replace(entry, away=~entry.away)
    logs[step] = StepLog(step, [flipped, *logs[step].entries[1:]], logs[step].ops_rounded,
                         logs[step].elements_rounded)
    # Detected either way: later logged elements become implausible, or the state differs.
    try:
        replayed, _, _ = _run(replay=logs)
    except ReplayDivergenceError:
        return
    assert not _equal_models(recorded, replayed)


def test_entry_far_from_midpoint_is_rejected():
    _, _, logs = _run()
    step = next(i for i, log in enumerate(logs) if log.entries)
    entry = logs[step].entries[0]
    # move the entry to elements that are not near a midpoint (take the complement)
    near = set(entry.positions.tolist())
    others = np.array([p for p in range(entry.numel) if p not in near][:3], dtype=np.int64)
    moved = dataclasses.replace(entry, positions=others, away=np.ones(len(others), dtype=bool))
    logs[step] = StepLog(step, [moved, *logs[step].entries[1:]], logs[step].ops_rounded,
                         logs[step].elements_rounded)
    with pytest.raises(ReplayDivergenceError, match="beyond 2τ"):
        _run(replay=logs)


def test_wrong_op_name_is_rejected():
    _, _, logs = _run()
    step = next(i for i, log in enumerate(logs) if log.entries)
    entry = logs[step].entries[0]
    renamed = dataclasses.replace(entry, op_name="aten.bmm.default")
    logs[step] = StepLog(step, [renamed, *logs[step].entries[1:]], logs[step].ops_rounded,
                         logs[step].elements_rounded)
    with pytest.raises(ReplayDivergenceError, match=f"step {step}: rounded op #{entry.op_seq}"):
        _run(replay=logs)


def test_entry_beyond_the_last_op_is_rejected():
    _, _, logs = _run()
    extra = LogEntry(logs[0].ops_rounded + 5, "aten.mm.default", 0, 10, np.array([1]), np.array([True]))
    logs[0] = StepLog(0, [*logs[0].entries, extra], logs[0].ops_rounded + 10, logs[0].elements_rounded)
    with pytest.raises(ReplayDivergenceError, match="replay ran only"):
        _run(replay=logs)


def test_log_for_another_step_is_rejected():
    _, _, logs = _run()
    with pytest.raises(ReplayDivergenceError, match="log file is for step 1"):
        _run(replay=[logs[1], logs[1], logs[2]])


def test_paused_ops_are_untouched():
    mode = RoundingMode(SPEC, ThresholdPolicy().resolve(SPEC), seed=0)
    mode.begin_step(0)
    x = torch.randn(100, dtype=torch.float64)
    with mode.active():
        with mode.paused():
            y = x.exp()
        z = x.exp()
    log, _ = mode.end_step()
    assert torch.equal(y, x.exp()) and log.ops_rounded == 1
    assert torch.equal(z, round_to_grid(x.exp(), SPEC).rounded)


def test_mode_requires_an_open_step():
    mode = RoundingMode(SPEC, ThresholdPolicy().resolve(SPEC), seed=0)
    with pytest.raises(RuntimeError, match="outside begin_step"):
        with mode.active():
            pass
