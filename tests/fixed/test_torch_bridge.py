"""torch <-> fixed-point engine conversion and unsupported-model errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_zk.fixed import quantize
from lightning_zk.fixed.torch_bridge import (
    UnsupportedModelError,
    check_loss_and_optimizer,
    mlp_from_torch,
    write_back,
)


def test_from_torch_and_write_back_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    engine = mlp_from_torch(model, lr=0.1)
    assert engine.dims == (4, 8, 3)
    assert np.array_equal(engine.weights[0], quantize(model[0].weight.detach().double(), 16))
    rng = np.random.default_rng(0)
    engine.step_float(rng.normal(size=(4, 4)), rng.normal(size=(4, 3)))
    write_back(engine, model)
    w, b = engine.float_weights()
    assert np.array_equal(model[2].weight.detach().double().numpy(), w[1].astype(np.float32))
    assert np.array_equal(model[0].bias.detach().double().numpy(), b[0].astype(np.float32))


def test_fixed_step_tracks_float_sgd():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    engine = mlp_from_torch(model, lr=0.125)
    x, y = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.125)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    engine.step_float(x.numpy(), y.numpy())
    w, _ = engine.float_weights()
    assert np.abs(w[0] - model[0].weight.detach().numpy()).max() < 1e-3


@pytest.mark.parametrize(
    "model, word",
    [
        (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "Tanh"),
        (nn.Sequential(nn.Conv1d(1, 1, 1)), "Conv1d"),
        (nn.Sequential(nn.Linear(4, 4, bias=False)), "bias"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "ReLU"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)), "ReLU"),
        (nn.Tanh(), "Tanh"),
    ],
)
def test_unsupported_layers_are_named(model, word):
    with pytest.raises(UnsupportedModelError, match=word):
        mlp_from_torch(model, lr=0.1)


def test_loss_and_optimizer_checks_name_the_problem():
    params = [nn.Parameter(torch.zeros(2))]
    assert check_loss_and_optimizer(nn.MSELoss(), torch.optim.SGD(params, lr=0.5)) == 0.5
    assert check_loss_and_optimizer(nn.CrossEntropyLoss(), torch.optim.SGD(params, lr=0.5)) == 0.5
    with pytest.raises(UnsupportedModelError, match="CrossEntropyLoss"):
        check_loss_and_optimizer(nn.CrossEntropyLoss(label_smoothing=0.1),
                                 torch.optim.SGD(params, lr=0.5))
    with pytest.raises(UnsupportedModelError, match="NLLLoss"):
        check_loss_and_optimizer(nn.NLLLoss(), torch.optim.SGD(params, lr=0.5))
    with pytest.raises(UnsupportedModelError, match="Adam"):
        check_loss_and_optimizer(nn.MSELoss(), torch.optim.Adam(params))
    # momentum and weight decay are proved (issue 12); Nesterov and dampening are not
    assert check_loss_and_optimizer(
        nn.MSELoss(), torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)) == 0.1
    with pytest.raises(UnsupportedModelError, match="nesterov"):
        check_loss_and_optimizer(
            nn.MSELoss(), torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(UnsupportedModelError, match="dampening"):
        check_loss_and_optimizer(
            nn.MSELoss(), torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.1))
