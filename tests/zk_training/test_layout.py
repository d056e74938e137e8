"""Layout (no overlaps, element bits first) and placement (agrees with direct evaluation)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.fixed import tensor_names
from lightning_zk.zk import Fp2, cupy_available, evaluate
from lightning_zk.zk.training import build_layout, prove_step, verify_unit
from lightning_zk.zk.training.layout import Arch
from lightning_zk.zk.training.placement import Free, opening_point, place

from .conftest import make_tapes


@pytest.mark.parametrize(
    "dims, batch, t", [((4, 8, 3), 3, 2), ((64, 256, 256, 10), 64, 4), ((5, 7, 2, 9), 5, 8)]
)
def test_layout_slots_are_disjoint(dims, batch, t):
    lay = build_layout(Arch(dims, batch, t), tensor_names(len(dims) - 1))
    used = np.zeros(1 << lay.wit_vars, dtype=np.int64)
    for slot in lay.wit.values():
        assert slot.elem_vars + len(slot.code) == lay.wit_vars
        assert slot.axes[0] == ("t", lay.arch.tau)  # instance variable first
        used[slot.code_int :: 1 << len(slot.code)] += 1
    assert used.max() == 1
    # no Theta super-block: the weights are blocks like any other, and the unit's Wit is at most
    # twice its entries (one rounding of the total), not two rounded copies of Theta
    entries = sum(1 << s.elem_vars for s in lay.wit.values()) + sum(
        1 << s.elem_vars for s in lay.unused)
    assert (1 << lay.wit_vars) < 2 * entries


def test_place_agrees_with_evaluation():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1 << 40, 64).astype(np.uint64)
    assign = [Free(0), Fp2(5, 1), Free(3), 1, Free(2), Fp2(9)]
    table = place(data, assign, 5)
    point = [Fp2(1, 2), Fp2(3), Fp2(4, 4), Fp2(6), Fp2(8, 1)]
    assert evaluate(table, point) == evaluate(data, opening_point(assign, point))


def test_place_keeps_base_data_base_under_code_bits():
    """Bound only to code bits, base data stays a base table (the sumcheck lifts it at its
    first fold); its entries are those of the lifted placement."""
    from lightning_zk.zk.extension import e_from_base

    rng = np.random.default_rng(1)
    data = rng.integers(0, 1 << 40, 32).astype(np.uint64)
    assign = [Free(3), 1, Free(0), 0, Free(4)]
    table = place(data, assign, 6)
    assert table.shape == (1 << 6,)
    assert np.array_equal(e_from_base(table), place(e_from_base(data), assign, 6))
    point = [Fp2(1, 2), Fp2(3), Fp2(4, 4), Fp2(6), Fp2(8, 1), Fp2(2, 7)]
    assert evaluate(table, point) == evaluate(data, opening_point(assign, point))
    assert place(data, [Free(0), Fp2(5, 1), Free(1), 1, Free(2)], 3).shape == (2, 8)


@pytest.mark.skipif(not cupy_available(), reason="CuPy unavailable (no usable GPU)")
def test_cupy_backend_proof_verifies():
    tape = make_tapes(1)[0]
    proof, stmt, _ = prove_step(tape, backend="cupy", rng=3)
    verify_unit(proof, stmt)
