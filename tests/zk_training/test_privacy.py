"""What a verifier sees gives it no value to test a guess of the private data against.

The distinguisher of the review: the logUp sum S = sum 1/(beta + a_i) is a fixed function of the
multiset of range-checked witness values at the public beta. A verifier holding two candidate
batches (differing in one label) computes S for each from the witness the candidate implies and
looks for it in the proof. With S sent in the clear it told the two apart every time; now no
field element of the proof equals either candidate's S (nor anything else this test derives).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from lightning_zk.fixed import FixedPointMLP, tensor_names
from lightning_zk.zk import lookup as L
from lightning_zk.zk.extension import Fp2
from lightning_zk.zk.training import build_layout, prove_step, verify_unit
from lightning_zk.zk.training.witness import range_tables, wit_table

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


def _logup_sum(values: np.ndarray, bits: int, beta: Fp2) -> Fp2:
    lay = L.RangeLayout((values.shape[0] - 1).bit_length(), bits)
    a = values if lay.direct else L._limbs(values, lay)
    total = Fp2(0)
    for v in a.tolist():
        total = total + Fp2(1) / (beta + v)
    return total


@pytest.fixture(scope="module")
def proofs():
    out = {}
    for name, delta in (("A", 0.0), ("B", 0.5)):
        tape = _tapes(delta)
        proof, stmt, _ = prove_step(tape, backend="numpy", rng=21)
        betas = []
        original = L._challenges

        def spy(tr, lay, beta, _orig=original, _betas=betas):
            _betas.append(beta)
            return _orig(tr, lay, beta)

        L._challenges = spy
        try:
            verify_unit(proof, stmt)  # the verifier learns beta of each range proof
        finally:
            L._challenges = original
        out[name] = (tape, proof, stmt, betas)
    return out


def _candidate_sums(tape, stmt, betas) -> list[Fp2]:
    layout = build_layout(stmt.arch, tensor_names(len(stmt.dims) - 1))
    v16, vq = range_tables(layout, wit_table(layout, [tape]), stmt.frac_bits, stmt.value_bits)
    assert v16.min() >= 0 and vq.min() >= 0  # shifted into [0, 2^bits)
    return [_logup_sum(v16.astype(np.uint64), stmt.frac_bits, betas[0]),
            _logup_sum(vq.astype(np.uint64), stmt.value_bits, betas[1])]


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


def test_range_proof_object_has_no_sum_field(proofs):
    _, proof, _, _ = proofs["A"]
    names = {f.name for f in dataclasses.fields(proof.range16)}
    assert "logup_sum" not in names and "sumcheck" in names
    bad = copy.deepcopy(proof)
    bad.range16.sumcheck.round_polys[0][0] = bad.range16.sumcheck.round_polys[0][0] + 1
    with pytest.raises(Exception, match="round sum"):
        verify_unit(bad, proofs["A"][2])
