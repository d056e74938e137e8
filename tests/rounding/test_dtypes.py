"""Explicit dtypes in user code: float32 inside the compute dtype; warnings only for unrounded
values that reach the committed state, naming the user's line."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_zk.ledger.state import named_state_tensors
from lightning_zk.rounding.mode import RoundingMode
from lightning_zk.rounding.precision import GridSpec
from lightning_zk.rounding.taint import UnroundedValueWarning
from lightning_zk.rounding.threshold import ThresholdPolicy

SPEC = GridSpec()


def _mode(model=None) -> RoundingMode:
    mode = RoundingMode(SPEC, ThresholdPolicy().resolve(SPEC), seed=0)
    if model is not None:
        mode.taint.committed = lambda: named_state_tensors(model, [], grads=True)
    mode.begin_step(0)
    return mode


def _caught(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if issubclass(w.category, UnroundedValueWarning)]


def test_float32_requests_stay_in_the_compute_dtype():
    x = torch.tensor([1 / 3, 2.5, -7.1], dtype=torch.float64)
    mode = _mode()
    with mode.active():
        converted = x.float()
        moved = x.to(torch.float32)
        zeros = torch.zeros(3, dtype=torch.float32)
        accumulated = x.sum(dtype=torch.float32)
        accuracy = (x > 0).float().mean()
    mode.end_step()
    for t in (converted, moved, zeros, accumulated, accuracy):
        assert t.dtype == torch.float64
    assert torch.equal(converted, x.to(torch.float32).to(torch.float64))  # float32's values
    assert accuracy.item() == pytest.approx(2 / 3, abs=1e-7)


def test_a_float32_layer_input_no_longer_breaks_matmul():
    layer = nn.Linear(3, 2).double()
    mode = _mode(layer)
    messages = _caught(lambda: _forward(mode, layer))
    assert messages == []


def _forward(mode, layer):
    with mode.active():
        layer(torch.ones(4, 3, dtype=torch.float64).float()).sum().backward()
    mode.end_step()


def test_unrounded_value_reaching_a_parameter_names_the_users_line():
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    holder = nn.Module()
    holder.param = param
    outside = torch.rand(3).exp()  # float32, created outside the step

    def step():
        with _mode(holder).active():
            scale = outside.exp().sum()  # float32 transcendental + reduction: unrounded
            with torch.no_grad():
                param.add_(scale.double())

    messages = _caught(step)
    assert len(messages) == 1
    assert "test_dtypes.py" in messages[0] and "scale = outside.exp().sum()" in messages[0]
    assert "model/param" in messages[0] and "HINT" in messages[0]


def test_unrounded_value_that_never_reaches_the_state_is_silent():
    metric_state = torch.zeros((), dtype=torch.float32)
    model = nn.Linear(2, 1).double()
    outside = torch.rand(8)

    def step():
        mode = _mode(model)
        with mode.active():
            model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
            metric_state.add_(outside.exp().mean())  # a running metric: float32, unrounded
        mode.end_step()

    assert _caught(step) == []


def test_unrounded_value_through_autograd_reaches_the_gradients():
    model = nn.Linear(2, 1).double()
    outside = torch.rand(8)

    def step():
        with _mode(model).active():
            weight = outside.exp().mean().double()  # tainted, then multiplies the loss
            (model(torch.ones(1, 2, dtype=torch.float64)).sum() * weight).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(0.1 * p.grad)

    messages = _caught(step)
    assert messages and "weight = outside.exp().mean().double()" in messages[0]


def test_unrounded_value_turned_into_a_python_number_warns():
    outside = torch.rand(8)

    def step():
        with _mode().active():
            if outside.exp().mean().item() > 0:  # steers the computation
                pass

    messages = _caught(step)
    assert messages and "Python number" in messages[0]


def test_an_overwrite_clears_the_mark():
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    holder = nn.Module()
    holder.param = param
    outside = torch.rand(3)

    def step():
        with _mode(holder).active():
            buffer = outside.exp()
            buffer.copy_(torch.ones(3))  # fully overwritten by an untainted value
            with torch.no_grad():
                param.add_(buffer.double())

    assert _caught(step) == []
