"""Ligero PCS: open/verify (base, extension, several points), and rejection of every alteration."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lightning_zk.zk import Fp2, Ligero, LigeroConfig, Transcript
from lightning_zk.zk.backend import P
from lightning_zk.zk.errors import (
    CommitmentError,
    MerkleError,
    ParameterError,
    ShapeMismatchError,
    VerificationError,
)
from lightning_zk.zk.ligero import soundness_bits
from lightning_zk.zk.multilinear import masked_ref_evaluate

N = 6


def _points(rng, q, n=N):
    return [[Fp2.random(rng) for _ in range(n)] for _ in range(q)]


@pytest.fixture(scope="module")
def opened():
    rng = np.random.default_rng(7)
    pcs = Ligero()
    table = rng.integers(0, P, 1 << N, dtype=np.uint64)
    com, st = pcs.commit(table, num_points=2, rng=5)
    pts = _points(rng, 2)
    vals = [pcs.masked_evaluate(st, z, j) for j, z in enumerate(pts)]
    proof = pcs.open(st, pts, Transcript(b"pcs"))
    return pcs, table, st, com, pts, vals, proof


def test_open_verify_and_values_are_masked(opened):
    pcs, table, st, com, pts, vals, proof = opened
    pcs.verify(com, pts, vals, proof, Transcript(b"pcs"))
    for j, z in enumerate(pts):
        mu = pcs.mask_table(st, j)
        mus = [Fp2(int(mu[0, i]), int(mu[1, i])) for i in range(mu.shape[1])]
        assert vals[j] == masked_ref_evaluate([int(v) for v in table], mus, z)
    # on the hypercube the mask vanishes: plain value
    assert pcs.masked_evaluate(st, [1, 0, 1, 1, 0, 0], 0) == Fp2(int(table[0b101100]))


def test_extension_valued_polynomial(rng):
    pcs = Ligero()
    table = rng.integers(0, P, (2, 1 << 5), dtype=np.uint64)
    com, st = pcs.commit(table, num_points=1, rng=2)
    z = _points(rng, 1, 5)
    y = pcs.masked_evaluate(st, z[0], 0)
    proof = pcs.open(st, z, Transcript(b"e"))
    pcs.verify(com, z, [y], proof, Transcript(b"e"))
    vals = [Fp2(int(table[0, i]), int(table[1, i])) for i in range(32)]
    assert pcs.masked_evaluate(st, [0, 1, 1, 0, 1], 0) == vals[0b01101]


def _reject(opened, mutate, exc=CommitmentError, transcript=b"pcs", values=None):
    pcs, _, _, com, pts, vals, proof = opened
    bad = copy.deepcopy(proof)
    mutate(bad)
    with pytest.raises(exc):
        pcs.verify(com, pts, values or vals, bad, Transcript(transcript))


def test_altered_column_rejected(opened):
    def f(p):
        p.columns[3, 0] = (int(p.columns[3, 0]) + 1) % P

    _reject(opened, f, MerkleError)


def test_altered_mask_row_column_rejected(opened):
    def f(p):
        p.columns[0, -1] = (int(p.columns[0, -1]) + 1) % P

    _reject(opened, f, MerkleError)


def test_altered_merkle_path_rejected(opened):
    def f(p):
        p.merkle[2, 5] ^= 1

    _reject(opened, f, MerkleError)


def test_altered_salt_rejected(opened):
    def f(p):
        p.salts[0, 0] ^= 1

    _reject(opened, f, MerkleError)


def test_merkle_path_count_rejected(opened):
    def f(p):
        p.merkle = p.merkle[:-1]

    _reject(opened, f, ShapeMismatchError)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_altered_combined_row_rejected(opened, row):
    def f(p):
        p.combined[row, 0, 1] = (int(p.combined[row, 0, 1]) + 1) % P

    # the row is absorbed, so the column challenge moves too: any VerificationError
    _reject(opened, f, VerificationError)


def test_altered_evaluation_rejected(opened):
    pcs, _, _, com, pts, vals, proof = opened
    with pytest.raises(VerificationError):
        pcs.verify(com, pts, [vals[0] + 1, vals[1]], proof, Transcript(b"pcs"))


def test_other_statement_rejected(opened):
    _reject(opened, lambda p: None, VerificationError, transcript=b"another statement")


class _LyingValue(Ligero):
    def _prover_values(self, values):
        return [values[0] + 1, *values[1:]]


class _LyingRow(Ligero):
    def __init__(self, row):
        super().__init__()
        self.row = row

    def _prover_combined(self, combined):
        combined = combined.copy()
        combined[self.row, 0, 0] = (int(combined[self.row, 0, 0]) + 1) % P
        return combined


def _cheat(pcs_cls_or_obj, rng):
    pcs = pcs_cls_or_obj
    table = rng.integers(0, P, 1 << N, dtype=np.uint64)
    com, st = pcs.commit(table, num_points=1, rng=1)
    pts = _points(rng, 1)
    vals = [pcs.masked_evaluate(st, pts[0], 0)]
    proof = pcs.open(st, pts, Transcript(b"c"))
    return com, pts, vals, proof


def test_check_value_vs_row_fails_for_lying_prover(rng):
    com, pts, vals, proof = _cheat(_LyingValue(), rng)
    with pytest.raises(CommitmentError, match="evaluation"):
        Ligero().verify(com, pts, [vals[0] + 1], proof, Transcript(b"c"))


def test_check_proximity_fails_for_lying_prover(rng):
    com, pts, vals, proof = _cheat(_LyingRow(0), rng)
    with pytest.raises(CommitmentError, match="proximity"):
        Ligero().verify(com, pts, vals, proof, Transcript(b"c"))


def test_check_combined_row_fails_for_lying_prover(rng):
    com, pts, vals, proof = _cheat(_LyingRow(1), rng)
    with pytest.raises(CommitmentError, match="combined row"):
        Ligero().verify(com, pts, vals, proof, Transcript(b"c"))


def test_shape_of_commitment_checked(opened):
    pcs, _, _, com, pts, vals, proof = opened
    from dataclasses import replace

    with pytest.raises(ShapeMismatchError):
        pcs.verify(replace(com, num_points=1), pts[:1], vals[:1], proof, Transcript(b"pcs"))
    with pytest.raises(ShapeMismatchError):
        pcs.verify(com, pts[:1], vals[:1], proof, Transcript(b"pcs"))


def test_single_opening_enforced(rng):
    pcs = Ligero()
    com, st = pcs.commit(np.arange(8, dtype=np.uint64), num_points=1, rng=1)
    pts = _points(rng, 1, 3)
    pcs.open(st, pts, Transcript(b"x"))
    with pytest.raises(ParameterError, match="already opened"):
        pcs.open(st, pts, Transcript(b"x"))


def test_randomised_commitments_differ(rng):
    pcs = Ligero()
    t = np.arange(16, dtype=np.uint64)
    assert pcs.commit(t)[0].root != pcs.commit(t)[0].root


@pytest.mark.parametrize("n", [1, 8, 16, 22])
def test_parameters_reach_100_bits(n):
    p = Ligero(LigeroConfig(security_bits=100, blowup=4)).params(n, False, 2)
    assert p.soundness >= 100
    assert p.pad == p.num_queries  # hiding pad covers every opened column
    assert soundness_bits(p.k, p.pad, p.code_len, p.num_queries, 2) == pytest.approx(p.soundness)
    assert (p.k + p.pad) * 2 <= p.code_len


def test_linear_form_commitment(rng):
    pcs = Ligero()
    vec = rng.integers(0, P, 16, dtype=np.uint64)
    com, st = pcs.commit_vector(vec, num_points=1, rng=3)
    w = rng.integers(0, P, (2, 16), dtype=np.uint64)
    lam = Fp2(9, 4)
    mu = pcs.vector_mask(st, 0)
    expected = Fp2(0)
    for i in range(16):
        wi = Fp2(int(w[0, i]), int(w[1, i]))
        expected = expected + wi * (Fp2(int(vec[i])) + lam * Fp2(int(mu[0, i]), int(mu[1, i])))
    proof = pcs.open_linear(st, [(w, lam)], Transcript(b"l"))
    pcs.verify_linear(com, [(w, lam)], [expected], proof, Transcript(b"l"))
    with pytest.raises(VerificationError):
        pcs.verify_linear(com, [(w, lam)], [expected + 1], proof, Transcript(b"l"))


@pytest.mark.parametrize(
    "rows,msg_len,code_len",
    [(2, 1, 2), (3, 5, 16), (5, 9, 32), (4, 16, 32), (7, 100, 256), (130, 37, 128)],
)
def test_class_encoding_is_the_codeword(rows, msg_len, code_len):
    """The prover never holds the codeword matrix: it hashes it class by class (columns
    a, a + s, ...) and re-encodes the opened columns; both must be the columns of Enc(msg)."""
    from lightning_zk.zk.ligero import _class_len, _code_columns, _encode, _encode_class

    rng = np.random.default_rng(rows * msg_len)
    msg = rng.integers(0, P, size=(rows, msg_len), dtype=np.uint64)
    keep = msg.copy()
    full = _encode(msg, code_len)
    s = code_len // _class_len(msg_len, code_len)
    assert s >= 2
    for a in range(s):
        assert np.array_equal(_encode_class(msg, code_len, a), full[:, a::s])
    idx = sorted({int(j) for j in rng.integers(0, code_len, size=9)})
    assert np.array_equal(_code_columns(msg, code_len, idx), full[:, idx].T)
    assert np.array_equal(msg, keep)  # the message rows are not touched


def test_commitment_keeps_no_codeword(rng):
    """The state holds the message rows and the tree, not the (rows, K) codewords."""
    pcs = Ligero()
    _, st = pcs.commit(rng.integers(0, P, 1 << 10, dtype=np.uint64), num_points=1, rng=3)
    assert not hasattr(st, "code")
    assert st.salts.shape == (st.params.code_len, 16)
