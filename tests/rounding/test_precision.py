"""Rounding onto the committed grid against reference casts and an exact rational reference."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_zk.rounding.precision import (
    GridSpec,
    PrecisionError,
    apply_directions,
    place_directions_,
    round_in_place,
    round_scalar_reference,
    round_to_grid,
    round_values,
)

F64 = GridSpec()


def _wide_values(n: int = 20000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mant = torch.randn(n, dtype=torch.float64, generator=g)
    exps = torch.randint(-150, 128, (n,), generator=g).double()
    return mant * torch.exp2(exps)


@pytest.mark.parametrize("spec", [F64, GridSpec(torch.float32, 7), GridSpec(torch.float32, 16)],
                         ids=["f64", "f32-b7", "f32-b16"])
@pytest.mark.parametrize("shape, order", [((300,), (0,)), ((40, 24), (1, 0)),
                                          ((4, 5, 6, 7), (2, 0, 3, 1)), ((3, 1, 5), (2, 1, 0))])
def test_round_in_place_matches_round_to_grid(spec, shape, order):
    """The in-place kernel path, also on transposed/permuted dense blocks (rounded where they lie,
    positions reported in row-major order), equals the reference path bit for bit."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(1)
    laid = torch.randn(*[shape[d] for d in order], dtype=torch.float64, generator=g) * 3
    laid.view(-1)[::5] = laid.view(-1)[::5].float().double() + 2.0**-24 * laid.view(-1)[::5].sign()
    laid = laid.to(spec.compute_dtype)
    inverse = [order.index(d) for d in range(len(order))]
    for tau in (0.0, 2.0**-16, 0.125, 0.3):
        x = laid.clone().permute(*inverse)
        assert x.shape == shape
        ref = round_to_grid(x.contiguous(), spec, tau)
        got = round_in_place(x, spec, tau)
        assert got is not None
        assert torch.equal(x, ref.rounded)
        assert got[0].tolist() == ref.positions.tolist() and got[1].tolist() == ref.away.tolist()
    overlapping = torch.zeros(1, dtype=spec.compute_dtype).expand(4)
    assert round_in_place(overlapping, spec) is None  # not one dense block: the caller copies


def test_place_directions_on_a_transposed_tensor():
    x = torch.randn(30, 20, dtype=torch.float64).t()
    positions = torch.tensor([0, 7, 599])
    expected = round_to_grid(x.contiguous(), F64).rounded.reshape(-1)
    forced = -expected[positions]
    out = place_directions_(x, F64, positions, forced)
    assert out is x
    expected[positions] = forced
    assert torch.equal(x.reshape(-1), expected)


def test_float64_to_float32_matches_cast():
    x = _wide_values()
    assert torch.equal(round_to_grid(x, F64).rounded, x.to(torch.float32).to(torch.float64))


@pytest.mark.parametrize("bits", [1, 7, 10, 16, 22])
def test_reduced_bits_match_exact_reference(bits):
    x = _wide_values(3000, seed=bits)
    got = round_to_grid(x, GridSpec(torch.float64, bits)).rounded.tolist()
    want = [round_scalar_reference(v, bits) for v in x.tolist()]
    assert got == want


def test_float32_compute_with_7_bits_is_bfloat16():
    x = _wide_values().to(torch.float32)
    got = round_to_grid(x, GridSpec(torch.float32, 7)).rounded
    assert torch.equal(got, x.to(torch.bfloat16).to(torch.float32))


def test_float32_compute_with_10_bits_matches_reference():
    x = (torch.randn(3000, dtype=torch.float64) * 100).to(torch.float32)
    got = round_to_grid(x, GridSpec(torch.float32, 10)).rounded.tolist()
    assert got == [round_scalar_reference(v, 10) for v in x.tolist()]


def test_ties_round_to_even_both_signs():
    ulp = 2.0**-23
    x = torch.tensor([1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), -(1 + 3 * ulp / 2)], dtype=torch.float64)
    r = round_to_grid(x, F64, tau=1e-6)
    assert r.rounded.tolist() == [1.0, 1 + 2 * ulp, -1.0, -(1 + 2 * ulp)]
    assert r.positions.tolist() == [0, 1, 2, 3]  # exact ties are always logged when tau > 0
    assert r.away.tolist() == [False, True, False, True]


def test_specials_and_overflow():
    big = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, big * (1 + 2**-25), 1e300, 2**-149 * 0.75],
                     dtype=torch.float64)
    r = round_to_grid(x, F64).rounded
    ref = x.to(torch.float32).to(torch.float64)
    assert torch.equal(r.nan_to_num(nan=7.0), ref.nan_to_num(nan=7.0))
    assert torch.signbit(r[1])


def test_near_fraction_tracks_tau():
    x = torch.randn(200000, dtype=torch.float64)
    for tau in (2**-4, 2**-8):
        frac = round_to_grid(x, F64, tau).positions.numel() / x.numel()
        assert abs(frac - 2 * tau) < 0.3 * 2 * tau


def test_apply_directions_forces_logged_elements():
    x = torch.randn(1000, dtype=torch.float64)
    natural = round_to_grid(x, F64).rounded
    pos = torch.tensor([3, 10, 500])
    natural_away = round_values(x, F64)[pos].abs() > x[pos].abs()
    out, dist, nat = apply_directions(x, F64, pos, ~natural_away)
    assert torch.equal(nat, natural_away)
    mask = torch.ones(1000, dtype=torch.bool)
    mask[pos] = False
    assert torch.equal(out[mask], natural[mask])
    assert (out[pos] != natural[pos]).all()
    assert torch.equal(round_to_grid(out[pos], F64).rounded, out[pos])  # still on the grid
    assert (dist >= 0).all()


def test_grid_spec_validation():
    with pytest.raises(PrecisionError):
        GridSpec(torch.float16, 7)
    with pytest.raises(PrecisionError):
        GridSpec(torch.float64, 0)
    with pytest.raises(PrecisionError):
        GridSpec(torch.float32, 23)
    with pytest.raises(PrecisionError, match="expected a torch.float64 tensor"):
        round_to_grid(torch.ones(3, dtype=torch.float32), F64)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(1, 23))
def test_hypothesis_against_reference(value, bits):
    x = torch.tensor([value], dtype=torch.float64)
    got = round_to_grid(x, GridSpec(torch.float64, bits)).rounded.item()
    want = round_scalar_reference(value, bits)
    # documented caveat: below 2^-126, float64 values with bits under 2^-178 may double-round
    if abs(value) >= 2.0**-126 or value == 0.0:
        assert got == want


def test_fast_and_generic_paths_agree_on_logging():
    """The float64→float32 fast path (cast + raw bits) against the generic bit path."""
    from lightning_zk.rounding.precision import _round_generic, midpoint_distance

    x = _wide_values(50000, seed=9)
    tau = 2**-6
    fast = round_to_grid(x, F64, tau)
    assert torch.equal(fast.rounded, _round_generic(x, F64))
    slow_pos = (midpoint_distance(x, F64) < tau * 2**29).nonzero().squeeze(1)
    assert torch.equal(fast.positions, slow_pos)


@pytest.mark.parametrize("tau", [0.0, 2**-16, 2**-11, 2**-6, 0.49])
def test_numba_kernel_agrees_with_torch_path(tau, monkeypatch):
    """The optional JIT kernel and the torch path give identical results (incl. tiny values)."""
    import lightning_zk.rounding.precision as P

    if P._kernels is None:
        pytest.skip("numba is not installed: the optional kernel is not used here")
    x = _wide_values(30000, seed=11)
    x[::97] = 0.0
    x[5] = float("nan")
    x[6] = float("inf")
    for values in (x, x[(x.abs() >= 2.0**-126) | (x == 0)]):  # with and without tiny values
        fast = round_to_grid(values, F64, tau)
        monkeypatch.setattr(P, "_kernels", None)
        slow = round_to_grid(values, F64, tau)
        monkeypatch.undo()
        assert torch.equal(fast.rounded.nan_to_num(7.0), slow.rounded.nan_to_num(7.0))
        assert torch.equal(fast.positions, slow.positions)
        assert torch.equal(fast.away, slow.away)
        inplace = values.clone()
        result = round_to_grid(inplace, F64, tau, in_place=True)
        assert torch.equal(result.positions, slow.positions)
        assert torch.equal(result.rounded.nan_to_num(7.0), slow.rounded.nan_to_num(7.0))


def _f32_bit_patterns(n: int = 40000, seed: int = 13) -> torch.Tensor:
    """Float32 values from random bit patterns: every exponent, subnormals, ties, specials."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int64, generator=g).to(torch.int32)
    x = bits.view(torch.float32).clone()
    x[::101] = 0.0
    x[1::101] = -0.0
    x[2] = float("nan")
    x[3] = float("inf")
    x[4] = float("-inf")
    x[5] = torch.finfo(torch.float32).max
    x[6] = -torch.finfo(torch.float32).max
    x[7:400] = torch.randn(393, generator=g) * 1e-38  # subnormals and the smallest normals
    x[400:800] = (torch.randint(-1000, 1000, (400,), generator=g) / 64.0).float()  # exact ties
    return x


@pytest.mark.parametrize("bits", [1, 7, 10, 16, 22])
@pytest.mark.parametrize("tau", [0.0, 2**-10, 0.25, 0.49])
def test_float32_kernel_agrees_with_torch_path(bits, tau, monkeypatch):
    """The float32-compute JIT kernel (e.g. the bfloat16 grid) against the generic torch path:
    the same values (bit for bit, signed zeros and NaNs included), positions and directions."""
    import lightning_zk.rounding.precision as P

    if P._kernels is None:
        pytest.skip("numba is not installed: the optional kernel is not used here")
    spec = GridSpec(torch.float32, bits)
    x = _f32_bit_patterns()
    monkeypatch.setattr(P, "_kernels", None)
    slow = round_to_grid(x, spec, tau)
    slow_values = round_values(x, spec)
    monkeypatch.undo()
    fast = round_to_grid(x, spec, tau)
    as_bits = lambda t: t.contiguous().view(torch.int32)  # noqa: E731
    assert torch.equal(as_bits(fast.rounded), as_bits(slow.rounded))
    assert torch.equal(as_bits(round_values(x, spec)), as_bits(slow_values))
    assert torch.equal(fast.positions, slow.positions)
    assert torch.equal(fast.away, slow.away)
    if tau > 0:
        assert fast.positions.numel() > 0
    inplace = x.clone()
    result = round_to_grid(inplace, spec, tau, in_place=True)
    assert result.rounded is inplace
    assert torch.equal(as_bits(inplace), as_bits(slow.rounded))
    assert torch.equal(result.positions, slow.positions)
    strided = x.reshape(200, 200).t()  # not contiguous: a rounded copy, the input untouched
    before = strided.clone()
    result = round_to_grid(strided, spec, tau, in_place=True)
    assert torch.equal(as_bits(result.rounded.contiguous()), as_bits(slow_values.reshape(200, 200).t().contiguous()))
    assert torch.equal(as_bits(strided.contiguous()), as_bits(before.contiguous()))


@pytest.mark.parametrize("spec", [F64, GridSpec(torch.float32, 7), GridSpec(torch.float32, 16)],
                         ids=["f64", "f32-b7", "f32-b16"])
@pytest.mark.parametrize("tau", [0.0, 2**-16, 2**-11, 0.25, 0.49])
def test_round_in_place_by_address_matches_torch_path(spec, tau, monkeypatch):
    """The in-place kernel is handed the tensor's address (no ``.numpy()`` view): the values it
    leaves (bit for bit: signed zeros, NaN, ±inf, subnormal results, ties), its positions and
    directions equal the generic torch path's, also for a view at a storage offset, a tensor
    that requires grad and an empty tensor; nothing outside the view is written."""
    import lightning_zk.rounding.precision as P

    if P._kernels is None:
        pytest.skip("numba is not installed: the optional kernel is not used here")
    if spec.compute_dtype == torch.float64:
        x = _wide_values(30000, seed=5)
        x[::97] = 0.0
        x[1::97] = -0.0
        x[5], x[6], x[7] = float("nan"), float("inf"), float("-inf")
        x[8:40] = (torch.arange(32, dtype=torch.float64) + 0.5) * 2.0**-149  # float32 subnormal ties
        x[40:80] = torch.arange(40, dtype=torch.float64) * 2.0**-24 + 1  # float32 ties near 1
        bits_view = torch.int64
    else:
        x = _f32_bit_patterns(seed=3)
        bits_view = torch.int32
    monkeypatch.setattr(P, "_kernels", None)
    reference = {offset: round_to_grid(x[offset:], spec, tau) for offset in (0, 3, 11)}
    monkeypatch.undo()
    for offset in (0, 3, 11):
        base = x.clone()
        view = base[offset:]  # data_ptr() past the storage's start
        got = round_in_place(view, spec, tau)
        ref = reference[offset]
        assert torch.equal(view.view(bits_view), ref.rounded.view(bits_view))
        assert torch.equal(base[:offset].view(bits_view), x[:offset].view(bits_view))
        assert got[0].tolist() == ref.positions.tolist() and got[1].tolist() == ref.away.tolist()
        if tau > 0:
            assert got[0].size > 0
    leaf = x[:1000].clone().requires_grad_()
    got = round_in_place(leaf, spec, tau)
    assert torch.equal(leaf.detach().view(bits_view), reference[0].rounded[:1000].view(bits_view))
    empty = torch.empty(0, dtype=spec.compute_dtype)
    assert [a.size for a in round_in_place(empty, spec, tau)] == [0, 0]


@pytest.mark.parametrize("tau", [2**-29, 2**-16, 2**-11, 2**-10])
def test_float64_kernel_blocks(tau, monkeypatch):
    """With a small τ the float64 kernel tests blocks of 256 elements and scans only the blocks
    holding a candidate: candidates on both sides of block edges, in the last partial block,
    alone below 2^-126, exact ties, next to NaN and ±inf, and elements just outside the τ
    window are logged (or not) exactly as by the torch path."""
    import lightning_zk.rounding.precision as P

    if P._kernels is None:
        pytest.skip("numba is not installed: the optional kernel is not used here")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, generator=g).double()  # float32 values: on the grid, never logged
    ulp = 2.0**-52  # float64 ulp of values in [1, 2): 2^-29 committed ulp
    for i, d in ((0, 0), (255, 1), (256, -1), (511, 2**29 * tau - 1), (512, 2**29 * tau),
                 (767, -(2**29) * tau), (999, 0)):  # offsets from the midpoint, in float64 ulps
        x[i] = 1.0 + 2.0**-24 + d * ulp  # the midpoint between 1 and 1 + 2^-23
    x[300], x[301], x[302] = float("nan"), float("inf"), -float("inf")
    x[700] = 3.0 * 2.0**-140  # alone below 2^-126 in its block
    x[701] = -0.0
    monkeypatch.setattr(P, "_kernels", None)
    slow = round_to_grid(x, F64, tau)
    monkeypatch.undo()
    fast = round_to_grid(x, F64, tau)
    assert torch.equal(fast.rounded.view(torch.int64), slow.rounded.view(torch.int64))
    assert fast.positions.tolist() == slow.positions.tolist()
    assert fast.away.tolist() == slow.away.tolist()
    logged = set(slow.positions.tolist())
    assert {0, 511, 999} <= logged and ({255, 256} <= logged) == (tau > 2**-29)
    assert 512 not in slow.positions.tolist()  # exactly τ away: outside the window
