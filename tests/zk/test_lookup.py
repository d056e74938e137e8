"""logUp range checks: in-range accepted (direct, narrow, limb-decomposed), out-of-range rejected."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lightning_zk.zk import Ligero, Transcript, VerificationError, prove_range, verify_range
from lightning_zk.zk.backend import P
from lightning_zk.zk.errors import LookupError_, ParameterError

PCS = Ligero()


def _committed(values):
    com, st = PCS.commit(values, num_points=1, rng=11)
    return com, st


@pytest.mark.parametrize("bits,n", [(16, 3), (5, 2), (17, 2), (24, 2), (33, 2), (40, 2)])
def test_in_range_accepted_and_claim_matches_commitment(rng, bits, n):
    v = rng.integers(0, 2**bits, 2**n, dtype=np.uint64)
    v[0], v[-1] = 0, 2**bits - 1  # both ends of the range
    com, st = _committed(v)
    proof, claim = prove_range(
        Transcript(b"rc"), v, bits=bits, value_mask=PCS.round1_mask(st, 0), pcs=PCS, rng=1
    )
    out = verify_range(Transcript(b"rc"), proof, num_vars=n, bits=bits, pcs=PCS)
    assert out.point == claim.point and out.value == claim.value
    # the caller closes the loop with its own (masked) opening of v
    opening = PCS.open(st, [out.point], Transcript(b"caller"))
    PCS.verify(com, [out.point], [out.value], opening, Transcript(b"caller"))


@pytest.mark.parametrize(
    "bits,bad",
    [(16, 2**16), (5, 32), (17, 2**17), (24, 2**24 + 7), (33, 2**33), (40, P - 1)],
)
def test_out_of_range_rejected(rng, bits, bad):
    v = rng.integers(0, 2**bits, 4, dtype=np.uint64)
    v[2] = bad
    with pytest.raises(ParameterError, match="outside"):
        prove_range(Transcript(b"rc"), v, bits=bits, pcs=PCS)
    proof, _ = prove_range(Transcript(b"rc"), v, bits=bits, pcs=PCS, rng=1, strict=False)
    with pytest.raises(VerificationError):
        verify_range(Transcript(b"rc"), proof, num_vars=2, bits=bits, value_masked=False, pcs=PCS)


def test_wrong_limb_decomposition_rejected(rng):
    """Limbs all in range but not summing to v: the decomposition term catches it."""
    import lightning_zk.zk.lookup as L

    v = rng.integers(0, 2**24, 4, dtype=np.uint64)
    orig = L._limbs

    def lying(values, lay):
        a = orig(values, lay)
        a[0] = (int(a[0]) + 1) % 2**16  # limb 0 of value 0 changed, still in range
        return a

    L._limbs = lying
    try:
        proof, _ = prove_range(Transcript(b"rc"), v, bits=24, pcs=PCS, rng=1)
    finally:
        L._limbs = orig
    with pytest.raises(VerificationError):
        verify_range(Transcript(b"rc"), proof, num_vars=2, bits=24, value_masked=False, pcs=PCS)


@pytest.fixture(scope="module")
def honest():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 2**20, 4, dtype=np.uint64)
    proof, _ = prove_range(Transcript(b"rc"), v, bits=20, pcs=PCS, rng=1)
    return proof


def test_honest_unmasked_value(honest):
    verify_range(Transcript(b"rc"), honest, num_vars=2, bits=20, value_masked=False, pcs=PCS)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.sumcheck.final_evals.__setitem__(1, p.sumcheck.final_evals[1] + 1),
        lambda p: p.sumcheck.final_evals.__setitem__(-1, p.sumcheck.final_evals[-1] + 1),
        lambda p: p.sumcheck.round_polys[3].__setitem__(0, p.sumcheck.round_polys[3][0] + 1),
        lambda p: setattr(p.sumcheck, "mask_sum", p.sumcheck.mask_sum + 1),
        lambda p: p.h_opening.columns.__setitem__((0, 0), (int(p.h_opening.columns[0, 0]) + 1) % P),
        lambda p: p.mult_opening.merkle.__setitem__((0, 0), p.mult_opening.merkle[0, 0] ^ 1),
        lambda p: setattr(p, "limb_commitment", None),
    ],
)
def test_altered_proof_rejected(honest, mutate):
    bad = copy.deepcopy(honest)
    mutate(bad)
    with pytest.raises(VerificationError):
        verify_range(Transcript(b"rc"), bad, num_vars=2, bits=20, value_masked=False, pcs=PCS)


def test_public_evaluation_checks_fire(honest):
    """Final values of public tables are recomputed by the verifier (eq, T, W)."""
    import lightning_zk.zk.lookup as L

    seen = []
    orig = L._expect

    def spy(check, expected, got):
        seen.append(check)
        orig(check, expected, got)

    L._expect = spy
    try:
        verify_range(Transcript(b"rc"), honest, num_vars=2, bits=20, value_masked=False, pcs=PCS)
    finally:
        L._expect = orig
    assert {
        "eq(tau_A, r)",
        "eq(tau_T, r)",
        "table T(r)",
        "eq(tau_x, r_x)",
        "limb weights W(r_c)",
    } <= set(seen)
    with pytest.raises(LookupError_, match="table"):
        orig("table T(r)", 1, 2)


def test_other_statement_and_wrong_bits_rejected(honest):
    with pytest.raises(VerificationError):
        verify_range(Transcript(b"other"), honest, num_vars=2, bits=20, value_masked=False, pcs=PCS)
    with pytest.raises(VerificationError):
        verify_range(Transcript(b"rc"), honest, num_vars=2, bits=21, value_masked=False, pcs=PCS)


@pytest.mark.parametrize(
    "bits, limbs, table_bits, shift, columns",
    [
        (5, 1, 5, 0, 1),
        (16, 1, 16, 0, 1),
        (17, 2, 9, 1, 3),
        (24, 2, 12, 0, 2),
        (32, 2, 16, 0, 2),
        (33, 4, 9, 3, 5),
        (40, 4, 10, 0, 4),
        (63, 4, 16, 1, 5),
    ],
)
def test_range_layout_fills_power_of_two_columns(bits, limbs, table_bits, shift, columns):
    from lightning_zk.zk.lookup import RangeLayout

    lay = RangeLayout(4, bits)
    assert (lay.limbs, lay.table_bits, lay.shift, lay.columns) == (
        limbs,
        table_bits,
        shift,
        columns,
    )
    assert lay.table_bits <= 16 and lay.table_bits * lay.limbs - lay.shift == bits
