"""Fused elementwise ops computed as single IEEE operations: same values, no log entries."""

from __future__ import annotations

import pytest
import torch

from lightning_zk.rounding.decompose import decomposition
from lightning_zk.rounding.mode import RoundingMode
from lightning_zk.rounding.precision import GridSpec, round_to_grid
from lightning_zk.rounding.threshold import ThresholdPolicy

SPEC = GridSpec()
aten = torch.ops.aten


def _grid(*shape, seed=0) -> torch.Tensor:
    """float64 values on the float32 grid, as every committed value is."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).float().double()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float64 rounding (the fused kernel may contract into an FMA)."""
    return torch.allclose(a, b, rtol=1e-14, atol=1e-15)


CASES = [
    (aten.lerp.Scalar, lambda a, b, c: (a, b, 0.1), {}),
    (aten.lerp.Scalar, lambda a, b, c: (a, b, 0.75), {}),
    (aten.lerp.Tensor, lambda a, b, c: (a, b, c.abs() / c.abs().max()), {}),
    (aten.addcmul.default, lambda a, b, c: (a, b, c), {"value": 0.001}),
    (aten.addcdiv.default, lambda a, b, c: (a, b, c.abs() + 1), {"value": -0.01}),
    (aten.add.Tensor, lambda a, b, c: (a, b), {"alpha": -0.05}),
    (aten.sub.Tensor, lambda a, b, c: (a, b), {"alpha": 0.3}),
    (aten.mse_loss_backward.default, lambda a, b, c: (torch.tensor(0.7, dtype=torch.float64), a, b, 1), {}),
    (aten.mse_loss_backward.default, lambda a, b, c: (c, a, b, 0), {}),
]


@pytest.mark.parametrize("func,make,kwargs", CASES, ids=[str(c[0]) + str(c[2]) for c in CASES])
def test_decomposition_matches_the_kernel(func, make, kwargs):
    a, b, c = _grid(40, seed=1), _grid(40, seed=2), _grid(40, seed=3)
    args = make(a, b, c)
    assert _close(decomposition(func)(args, kwargs), func(*args, **kwargs))


def test_inplace_and_foreach_variants_write_their_targets():
    a, b, c = _grid(5, seed=1), _grid(5, seed=2), _grid(5, seed=3)
    target = a.clone()
    out = decomposition(aten.lerp_.Scalar)((target, b, 0.1), {})
    assert out is target and _close(target, torch.lerp(a, b, 0.1))
    selves = [a.clone(), b.clone()]
    decomposition(aten._foreach_addcmul_.ScalarList)((selves, [b, c], [c, a], [0.5, -2.0]), {})
    assert _close(selves[0], a + 0.5 * b * c) and _close(selves[1], b - 2.0 * c * a)
    selves = [a.clone(), b.clone()]
    decomposition(aten._foreach_lerp_.List)((selves, [b, c], [c.abs() / 9, a.abs() / 9]), {})
    assert _close(selves[1], torch.lerp(b, c, a.abs() / 9))


def test_ops_without_alpha_or_with_out_keep_their_kernel():
    assert decomposition(aten.add.out) is None
    assert decomposition(aten._foreach_add_.Scalar) is None
    assert decomposition(aten.mul.Tensor) is None


def _adam_ties() -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's ``exp_avg.lerp_(grad, 0.1)`` on grid values: (9a + b)/10 is a midpoint often."""
    a = torch.arange(1, 4001, dtype=torch.float64) * 2.0**-30 + 2.0**-7
    b = a.flip(0) * 3
    return a, b


def test_exact_ties_of_the_fused_form_are_logged_but_never_by_the_decomposition():
    a, b = _adam_ties()
    tau = ThresholdPolicy().resolve(SPEC).tau("aten.lerp_.Scalar", "fused")
    fused_logged = round_to_grid(torch.lerp(a, b, 0.1), SPEC, tau).positions.numel()
    assert fused_logged > 100  # the ties the fused op had to log

    mode = RoundingMode(SPEC, ThresholdPolicy().resolve(SPEC), seed=0)
    mode.begin_step(0)
    with mode.active():
        target = a.clone()
        target.lerp_(b, 0.1)
        torch.optim.Adam([torch.nn.Parameter(a.clone())], lr=1e-3)
    log, _ = mode.end_step()
    assert log.logged_elements == 0
    assert torch.equal(target, round_to_grid(a + 0.1 * (b - a), SPEC).rounded)


def test_adam_and_sgd_steps_log_nothing_for_their_updates():
    for make in (lambda p: torch.optim.Adam(p, lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4)):
        param = torch.nn.Parameter(_grid(64, 64, seed=4))
        opt = make([param])
        mode = RoundingMode(SPEC, ThresholdPolicy().resolve(SPEC), seed=0)
        names = []
        for step in range(3):
            grad = _grid(64, 64, seed=10 + step) * 2.0**-10
            mode.begin_step(step)
            with mode.active():
                param.grad = grad
                opt.step()
            log, _ = mode.end_step()
            names += [e.op_name for e in log.entries]
        assert names == [], names
