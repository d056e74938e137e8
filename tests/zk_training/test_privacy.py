"""What a verifier sees gives it no value to test a guess of the private data against.

The distinguisher of the review: the logUp sum S = sum 1/(beta + a_i) is a fixed function of the
multiset of range-checked witness values at the public beta. A verifier holding two candidate
batches (differing in one label) computes S for each from the witness the candidate implies and
looks for it in the proof. With S sent in the clear it told the two apart every time; now (the
range check of every witness value is one zero-sum masked sumcheck) no field element of the
proof equals either candidate's S.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP
from lightning_zk.zk.extension import Fp2, e_sum
from lightning_zk.zk.training import prove_step, verify_unit
from lightning_zk.zk.training import verifier as verifier_mod
from lightning_zk.zk.training.common import UnitShape
from lightning_zk.zk.training.ranges import range_columns, range_inverses
from lightning_zk.zk.training.witness import wit_table

DIMS = (4, 8, 3)


def _tapes(label_delta: float):
    rng = np.random.default_rng(9)
    ws = [rng.normal(size=(DIMS[i + 1], DIMS[i])) * 0.5 for i in range(2)]
    bs = [rng.normal(size=DIMS[i + 1]) * 0.1 for i in range(2)]
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 3))
    y = y.copy()
    y[1, 2] += label_delta  # the two candidate batches differ in one label
    return FixedPointMLP.from_float(ws, bs, lr=0.25).step_float(x, y)


def _field_elements(obj, out: list) -> list:
    """Every Fp2 and every F_p2 pair a proof object carries (dataclasses, lists, arrays)."""
    if isinstance(obj, Fp2):
        out.append(obj)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _field_elements(getattr(obj, f.name), out)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _field_elements(item, out)
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint64 and obj.ndim == 3:
        # Ligero combined rows (1 + q, 2, L): extension vectors as (c0 row, c1 row)
        for row in obj:
            out.extend(Fp2(int(a), int(b)) for a, b in zip(row[0], row[1], strict=True))
    return out


@pytest.fixture(scope="module")
def proofs():
    out = {}
    for name, delta in (("A", 0.0), ("B", 0.5)):
        tape = _tapes(delta)
        proof, stmt, _ = prove_step(tape, backend="numpy", rng=21)
        betas = []
        original = verifier_mod.range_challenges

        def spy(tr, wr, beta, _orig=original, _betas=betas):
            _betas.append(beta)
            return _orig(tr, wr, beta)

        verifier_mod.range_challenges = spy
        try:
            verify_unit(proof, stmt)  # the verifier learns beta of the range check
        finally:
            verifier_mod.range_challenges = original
        out[name] = (tape, proof, stmt, betas)
    return out


def _candidate_sums(tape, stmt, betas) -> list[Fp2]:
    """The logUp sum sum_x sum_c 1/(beta + A_c(x)) the candidate witness implies."""
    shape = UnitShape(stmt)
    cols, mult = range_columns(shape.ranges, wit_table(shape.layout, [tape]))
    hs, _ = range_inverses(shape.ranges, cols, mult, betas[0])
    return [sum((e_sum(h) for h in hs), Fp2(0))]


def test_the_candidates_differ_in_what_the_lookup_sums_over(proofs):
    tape_a, _, stmt_a, betas_a = proofs["A"]
    tape_b, _, _, _ = proofs["B"]
    assert not np.array_equal(tape_a.tensors["y"], tape_b.tensors["y"])
    assert _candidate_sums(tape_a, stmt_a, betas_a) != _candidate_sums(tape_b, stmt_a, betas_a)


@pytest.mark.parametrize("run", ["A", "B"])
def test_no_public_value_equals_either_candidates_logup_sum(proofs, run):
    tape_run, proof, stmt, betas = proofs[run]
    public = set(_field_elements(proof, []))
    assert len(public) > 100  # the walker sees the proof's messages
    for candidate in ("A", "B"):
        sums = _candidate_sums(proofs[candidate][0], stmt, betas)
        assert not public & set(sums), f"the proof of run {run} reveals candidate {candidate}'s S"


def test_tampered_range_sumcheck_rejected(proofs):
    """The range check's messages are checked, not trusted (and it sends no sum to tamper)."""
    _, proof, stmt, _ = proofs["A"]
    bad = copy.deepcopy(proof)
    range_check = bad.sumchecks[-2]
    range_check.round_polys[0][0] = range_check.round_polys[0][0] + 1
    with pytest.raises(Exception, match="range check"):
        verify_unit(bad, stmt)
    assert not [f for f in dataclasses.fields(proof) if "sum" in f.name and f.name != "sumchecks"]
