"""Ligero-style hiding multilinear commitment (Ames, Hazay, Ishai, Venkitasubramaniam, CCS'17).

Commit: the table of P (2^n values) is viewed as an m x k matrix (first n_r variables index
rows, last n_c index columns; an extension-valued table adds its X-parts as m more rows). Random
rows are appended: one *proximity mask* pair and one *evaluation mask* pair per opening point.
Every row is padded with ``pad = t`` random coefficients, Reed-Solomon encoded by NTT to length
K (rate (k + pad)/K <= 1/blowup), and a salted SHA-256 Merkle tree is built over the K columns.

Open (one batched proof for q points, transcript order):
  1. absorb commitment, queries, claimed values y_j
  2. gamma <- F_p2^rows                 [AHIV17 Lemma 4.2: bad combination w.p. <= K/p^2]
  3. prover sends u = gamma^T M and, per point j, v_j = a_j^T M_data + lam_j (mu_j^a + X mu_j^b)
  4. absorb u, v_j;  t column indices <- [0, K)   [far: (1-d/4K)^t; wrong v_j: (1-3d/4K)^t]
  5. prover opens the distinct columns with their salts and one Merkle multi-proof
Verify: Merkle paths; Enc(u)[c] == gamma . col_c; Enc(v_j)[c] == c_j . col_c; and
y_j == <v_j[:k], b_j>, where a_j = eq(z_row), b_j = eq(z_col), lam_j = z_1 (1 - z_1).

Soundness error per batched opening (RS distance d = K - (k + pad) + 1, F = F_p2):
    eps <= K/p^2 + (1 - d/(4K))^t + q (1 - 3d/(4K))^t      (+ SHA-256 collisions)
``derive_params`` picks the smallest t with eps <= 2^-security_bits; see docs/zk_core.md.

Hiding: each row's t-wise independent padding makes any t opened symbols of a witness row
uniform; u and v_j are uniform because of the mask rows; salts hide unopened leaves. What the
verifier learns is exactly the masked values P^_j(z_j) (see :mod:`.pcs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import field as F
from .backend import P, array_module, backend_of, to_numpy
from .errors import CommitmentError, ParameterError, ShapeMismatchError
from .extension import Fp2, W, e_const
from .merkle import SALT_BYTES, MerkleTree, leaf_hash, verify_multiproof
from .multilinear import eq_table, num_vars_of
from .ntt import ntt
from .pcs import (
    LAYOUT_MULTILINEAR,
    LAYOUT_VECTOR,
    Commitment,
    LinearFormCommitment,
    PolynomialCommitment,
)
from .randomness import as_rng
from .transcript import Transcript

__all__ = [
    "LigeroConfig",
    "LigeroParams",
    "LigeroProof",
    "LigeroState",
    "Ligero",
    "derive_params",
    "soundness_bits",
]


@dataclass(frozen=True)
class LigeroConfig:
    """Verifier-side security configuration; every code parameter is derived from it.

    Args:
        security_bits: target soundness of one batched opening (>= 100 by default policy).
        blowup: nominal inverse rate K/k (2 or 4 or 8); the actual rate including the hiding
            pad is (k + pad)/K <= 1/2 and is what the soundness bound uses.
    """

    security_bits: int = 100
    blowup: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.security_bits <= 128:
            raise ParameterError(
                f"LigeroConfig(security_bits={self.security_bits}): must be in [1, 128]"
            )
        if self.blowup not in (2, 4, 8, 16):
            raise ParameterError(f"LigeroConfig(blowup={self.blowup}): must be 2, 4, 8 or 16")


@dataclass(frozen=True)
class LigeroParams:
    num_vars: int
    extension: bool
    num_points: int
    layout: int
    row_vars: int
    col_vars: int
    pad: int
    code_len: int
    num_queries: int
    soundness: float

    @property
    def k(self) -> int:
        return 1 << self.col_vars

    @property
    def m_data(self) -> int:
        return (1 << self.row_vars) * (2 if self.extension else 1)

    @property
    def num_rows(self) -> int:
        return self.m_data + 2 + 2 * self.num_points

    @property
    def msg_len(self) -> int:
        return self.k + self.pad


def soundness_bits(k: int, pad: int, code_len: int, t: int, q: int) -> float:
    """-log2 of K/p^2 + (1 - d/4K)^t + q (1 - 3d/4K)^t with d = K - (k + pad) + 1."""
    d = code_len - (k + pad) + 1
    if d <= 0:
        return 0.0
    delta = d / code_len
    terms = [
        math.log2(code_len) - 2 * math.log2(P),
        t * math.log2(1 - delta / 4),
        math.log2(max(q, 1)) + t * math.log2(1 - 3 * delta / 4),
    ]
    top = max(terms)
    return -(top + math.log2(sum(2.0 ** (x - top) for x in terms)))


def _min_t(k: int, code_len: int, q: int, bits: int) -> int | None:
    t = 1
    while k + t <= code_len // 2:
        if soundness_bits(k, t, code_len, t, q) >= bits:
            return t
        t += 1
    return None


@lru_cache(maxsize=1024)
def derive_params(
    num_vars: int, extension: bool, num_points: int, layout: int, config: LigeroConfig
) -> LigeroParams:
    """Deterministic code parameters for a shape; prover and verifier call the same function.

    The row/column split minimises the estimated proof size.
    """
    if num_points < 1:
        raise ParameterError(f"num_points={num_points}: a commitment is opened at >= 1 point")
    if layout == LAYOUT_MULTILINEAR:
        if num_vars < 1:
            raise ParameterError("multilinear commitments need num_vars >= 1 (x_1 is masked)")
        splits = range(1, num_vars + 1)
    elif layout == LAYOUT_VECTOR:
        splits = range(0, 1)
    else:
        raise ParameterError(f"unknown layout {layout}")
    best: LigeroParams | None = None
    best_size = math.inf
    for row_vars in splits:
        col_vars = num_vars - row_vars
        k = 1 << col_vars
        code_len = 1 << max(1, (config.blowup * k - 1).bit_length())
        while True:
            t = _min_t(k, code_len, num_points, config.security_bits)
            if t is not None:
                break
            code_len *= 2
        rows = (1 << row_vars) * (2 if extension else 1) + 2 + 2 * num_points
        depth = code_len.bit_length() - 1
        size = t * (rows * 8 + SALT_BYTES) + 32 * t * max(1, depth - int(math.log2(t)))
        size += (1 + num_points) * 16 * (k + t)
        if size < best_size:
            best_size = size
            best = LigeroParams(
                num_vars,
                extension,
                num_points,
                layout,
                row_vars,
                col_vars,
                t,
                code_len,
                t,
                soundness_bits(k, t, code_len, t, num_points),
            )
    if best is None:  # pragma: no cover - splits is never empty
        raise ParameterError("no Ligero parameters")
    return best


@dataclass
class LigeroState:
    """Prover-side data of one commitment (never serialised)."""

    params: LigeroParams
    commitment: Commitment
    msg: Any  # (rows, k + pad) message rows, backend array
    code: Any  # (rows, K) codewords, backend array
    salts: list[bytes]
    tree: MerkleTree
    opened: bool = False

    @property
    def num_vars(self) -> int:
        return self.params.num_vars


@dataclass
class LigeroProof:
    """One batched opening: combined rows (proximity first), opened columns, salts, Merkle nodes."""

    combined: np.ndarray  # (1 + q, 2, k + pad) uint64
    columns: np.ndarray  # (c, rows) uint64, c = number of distinct sampled columns
    salts: np.ndarray  # (c, SALT_BYTES) uint8
    merkle: np.ndarray  # (s, 32) uint8

    def size_bytes(self) -> int:
        return int(
            self.combined.nbytes + self.columns.nbytes + self.salts.nbytes + self.merkle.nbytes
        )


def _combine_rows(msg: Any, coeffs: np.ndarray) -> np.ndarray:
    """coeffs^T msg for base rows msg (rows, L) and extension coefficients (2, rows) -> (2, L)."""
    fused = backend_of(msg).combine_rows
    if fused is not None:  # numba: the same products and half-sums, no (rows, L) temporaries
        return fused(msg, coeffs)
    xp = array_module(msg)
    c = xp.asarray(coeffs)
    out = [F.fsum(F.mul(msg, c[i][:, None]), axis=0) for i in range(2)]
    return to_numpy(xp.stack(out))


def _combine_cols(cols: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Per opened column c: coeffs . col_c -> (2, C)."""
    return np.stack([F.fsum(F.mul(cols, coeffs[i][None, :]), axis=1) for i in range(2)])


def _encode(msg_rows: Any, code_len: int) -> Any:
    xp = array_module(msg_rows)
    lead = msg_rows.shape[:-1]
    padded = xp.zeros((*lead, code_len), dtype=xp.uint64)
    padded[..., : msg_rows.shape[-1]] = msg_rows
    return ntt(padded, overwrite=True)  # padded is ours: no second copy


def _times_x(a: np.ndarray) -> np.ndarray:
    """X * (a0 + a1 X) = 7 a1 + a0 X for an extension array."""
    return np.stack([F.mul(a[1], W), a[0]])


class Ligero(PolynomialCommitment, LinearFormCommitment):
    """The hiding Ligero commitment; see the module docstring for the protocol and its bounds.

    Example::

        >>> import numpy as np
        >>> from lightning_zk.zk import Ligero, Transcript, Fp2
        >>> pcs = Ligero()
        >>> com, st = pcs.commit(np.arange(8, dtype=np.uint64), num_points=1, rng=1)
        >>> z = [Fp2(3, 1), Fp2(5), Fp2(7, 2)]
        >>> y = pcs.masked_evaluate(st, z, 0)
        >>> proof = pcs.open(st, [z], Transcript(b"doc"))
        >>> pcs.verify(com, [z], [y], proof, Transcript(b"doc"))
    """

    name = "ligero"

    def __init__(self, config: LigeroConfig | None = None) -> None:
        self.config = config or LigeroConfig()

    def params(
        self, num_vars: int, extension: bool, num_points: int, layout: int = LAYOUT_MULTILINEAR
    ) -> LigeroParams:
        return derive_params(num_vars, bool(extension), num_points, layout, self.config)

    # -- commit -------------------------------------------------------------------------------

    def commit(
        self, table: Any, *, num_points: int = 1, rng: Any = None
    ) -> tuple[Commitment, LigeroState]:
        xp = array_module(table)
        t = xp.asarray(table, dtype=xp.uint64)
        if t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[0] != 2):
            raise ParameterError(f"Ligero.commit: table must be (N,) or (2, N), got {t.shape}")
        F.check_canonical(t, "Ligero.commit table")
        n = num_vars_of(t.shape[-1], "Ligero.commit")
        params = self.params(n, t.ndim == 2, num_points)
        data = t.reshape(params.m_data, params.k)  # ext: (2, m, k) -> re rows then X rows
        return self._commit_rows(data, params, rng, xp)

    def commit_vector(
        self, vector: Any, *, num_points: int = 1, rng: Any = None
    ) -> tuple[Commitment, LigeroState]:
        xp = array_module(vector)
        v = xp.asarray(vector, dtype=xp.uint64)
        if v.ndim != 1:
            raise ParameterError(f"Ligero.commit_vector: expected a 1-D vector, got {v.shape}")
        F.check_canonical(v, "Ligero.commit_vector")
        n = num_vars_of(v.shape[0], "Ligero.commit_vector")
        params = self.params(n, False, num_points, LAYOUT_VECTOR)
        return self._commit_rows(v.reshape(1, -1), params, rng, xp)

    def _commit_rows(
        self, data: Any, params: LigeroParams, rng: Any, xp: Any
    ) -> tuple[Commitment, LigeroState]:
        rng = as_rng(rng)
        rows, k = params.num_rows, params.k
        msg = xp.empty((rows, params.msg_len), dtype=xp.uint64)
        msg[: params.m_data, :k] = data
        msg[: params.m_data, k:] = rng.field((params.m_data, params.pad), xp)
        msg[params.m_data :] = rng.field((rows - params.m_data, params.msg_len), xp)
        code = _encode(msg, params.code_len)
        salt_bytes = rng.bytes(SALT_BYTES * params.code_len)
        salts = [salt_bytes[i * SALT_BYTES : (i + 1) * SALT_BYTES] for i in range(params.code_len)]
        tree = MerkleTree.from_rows(to_numpy(code), salts)  # leaves hash the code's columns
        com = Commitment(
            tree.root, params.num_vars, params.extension, params.num_points, params.layout
        )
        return com, LigeroState(params, com, msg, code, salts, tree)

    # -- masks and values (prover side) ------------------------------------------------------

    def _mask_rows(self, state: LigeroState, index: int) -> int:
        if not 0 <= index < state.params.num_points:
            raise ParameterError(
                f"mask index {index} out of range: commitment has {state.params.num_points} masks"
            )
        return state.params.m_data + 2 + 2 * index

    def mask_table(self, state: LigeroState, index: int) -> Any:
        r = self._mask_rows(state, index)
        return state.msg[r : r + 2, : state.params.k]

    def vector_mask(self, state: LigeroState, index: int) -> Any:
        return self.mask_table(state, index)

    def masked_evaluate(self, state: LigeroState, point: Sequence[Fp2], index: int) -> Fp2:
        a, b, lam = self._ml_query(state.params, point)
        return self._value(state, a, b, lam, index)

    def _value(self, state: LigeroState, a: np.ndarray, b: np.ndarray, lam: Fp2, j: int) -> Fp2:
        v = _combine_rows(state.msg, self._coeffs(state.params, a, lam, j))
        return _inner(v[:, : state.params.k], b)

    # -- queries ------------------------------------------------------------------------------

    @staticmethod
    def _ml_query(params: LigeroParams, point: Sequence[Fp2]) -> tuple[np.ndarray, np.ndarray, Fp2]:
        if len(point) != params.num_vars:
            raise ParameterError(
                f"opening point has {len(point)} coordinates, polynomial has {params.num_vars}"
            )
        pt = [Fp2.lift(z) for z in point]
        a = eq_table(pt[: params.row_vars])
        if params.extension:
            a = np.concatenate([a, _times_x(a)], axis=1)
        b = eq_table(pt[params.row_vars :])
        return a, b, pt[0] * (1 - pt[0])

    @staticmethod
    def _coeffs(params: LigeroParams, a: np.ndarray, lam: Fp2, j: int) -> np.ndarray:
        c = np.zeros((2, params.num_rows), dtype=np.uint64)
        c[:, : params.m_data] = a
        r = params.m_data + 2 + 2 * j
        c[:, r] = (lam.c0, lam.c1)
        lx = lam * Fp2(0, 1)
        c[:, r + 1] = (lx.c0, lx.c1)
        return c

    # -- open ---------------------------------------------------------------------------------

    def open(
        self, state: LigeroState, points: Sequence[Sequence[Fp2]], transcript: Transcript
    ) -> LigeroProof:
        p = state.params
        if p.layout != LAYOUT_MULTILINEAR:
            raise ParameterError("Ligero.open: this commitment is a vector; use open_linear")
        self._check_count(p, len(points))
        queries = [self._ml_query(p, z) for z in points]
        transcript.absorb_points("pcs.points", points)
        return self._open(state, queries, transcript)

    def open_linear(
        self, state: LigeroState, queries: Sequence[tuple[Any, Fp2]], transcript: Transcript
    ) -> LigeroProof:
        p = state.params
        if p.layout != LAYOUT_VECTOR:
            raise ParameterError("Ligero.open_linear: this commitment is multilinear; use open")
        self._check_count(p, len(queries))
        qs = [self._lin_query(p, w, lam) for w, lam in queries]
        self._absorb_linear(transcript, qs)
        return self._open(state, qs, transcript)

    @staticmethod
    def _check_count(p: LigeroParams, count: int) -> None:
        if count != p.num_points:
            raise ParameterError(
                f"opening {count} points of a commitment made for num_points={p.num_points}"
            )

    @staticmethod
    def _lin_query(p: LigeroParams, w: Any, lam: Fp2) -> tuple[np.ndarray, np.ndarray, Fp2]:
        w = np.asarray(to_numpy(w), dtype=np.uint64)
        if w.shape != (2, p.k):
            raise ParameterError(f"linear query weights must have shape (2, {p.k}), got {w.shape}")
        return e_const(1, 1), w, Fp2.lift(lam)

    @staticmethod
    def _absorb_linear(transcript: Transcript, qs: Sequence[tuple[Any, Any, Fp2]]) -> None:
        transcript.absorb_u64("pcs.linear.count", len(qs))
        for _, w, lam in qs:
            transcript.absorb_ext_array("pcs.linear.w", w)
            transcript.absorb_ext("pcs.linear.lam", lam)

    def _open(
        self, state: LigeroState, queries: Sequence[tuple[Any, Any, Fp2]], tr: Transcript
    ) -> LigeroProof:
        if state.opened:
            raise ParameterError(
                "Ligero: this commitment was already opened; a second opening reveals more "
                "columns and breaks hiding. Commit with num_points = all points instead."
            )
        p = state.params
        coeffs = [self._coeffs(p, a, lam, j) for j, (a, _, lam) in enumerate(queries)]
        combined_v = [_combine_rows(state.msg, c) for c in coeffs]
        values = [_inner(v[:, : p.k], b) for v, (_, b, _) in zip(combined_v, queries, strict=True)]
        values = self._prover_values(values)
        state.commitment.absorb_into(tr, "pcs.commitment")
        tr.absorb_ext("pcs.values", values)
        # soundness: random combination of all rows; AHIV17 Lemma 4.2, error <= K/p^2
        gamma = tr.challenge_ext_list("pcs.gamma", p.num_rows)
        g = np.array([[x.c0 for x in gamma], [x.c1 for x in gamma]], dtype=np.uint64)
        u = _combine_rows(state.msg, g)
        combined = self._prover_combined(np.stack([u, *combined_v]))
        tr.absorb_ext_array("pcs.combined", combined.transpose(1, 0, 2))
        # soundness: t uniform columns; (1 - d/4K)^t + q (1 - 3d/4K)^t
        idx = sorted(set(tr.challenge_indices("pcs.columns", p.num_queries, p.code_len)))
        columns = np.ascontiguousarray(to_numpy(state.code[:, idx]).T)
        salts = np.frombuffer(b"".join(state.salts[i] for i in idx), dtype=np.uint8)
        merkle = state.tree.multiproof(idx)
        state.opened = True
        return LigeroProof(
            combined=combined,
            columns=columns,
            salts=salts.reshape(len(idx), SALT_BYTES).copy(),
            merkle=np.frombuffer(b"".join(merkle), dtype=np.uint8).reshape(len(merkle), 32).copy(),
        )

    def _prover_values(self, values: list[Fp2]) -> list[Fp2]:
        """Claimed values as sent; a cheating prover in the tests overrides this."""
        return values

    def _prover_combined(self, combined: np.ndarray) -> np.ndarray:
        """Combined rows as sent; a cheating prover in the tests overrides this."""
        return combined

    # -- verify -------------------------------------------------------------------------------

    def verify(
        self,
        commitment: Commitment,
        points: Sequence[Sequence[Fp2]],
        values: Sequence[Fp2],
        proof: LigeroProof,
        transcript: Transcript,
    ) -> None:
        p = self.params(commitment.num_vars, commitment.extension, commitment.num_points)
        commitment.expect(
            num_vars=p.num_vars,
            extension=p.extension,
            num_points=p.num_points,
            layout=LAYOUT_MULTILINEAR,
            what="Ligero commitment",
        )
        if len(points) != p.num_points or len(values) != p.num_points:
            raise ShapeMismatchError(
                "number of opening points/values",
                expected=p.num_points,
                got=(len(points), len(values)),
            )
        for z in points:
            if len(z) != p.num_vars:
                raise ShapeMismatchError("opening point length", expected=p.num_vars, got=len(z))
        queries = [self._ml_query(p, z) for z in points]
        transcript.absorb_points("pcs.points", points)
        self._verify(commitment, p, queries, values, proof, transcript)

    def verify_linear(
        self,
        commitment: Commitment,
        queries: Sequence[tuple[Any, Fp2]],
        values: Sequence[Fp2],
        proof: LigeroProof,
        transcript: Transcript,
    ) -> None:
        p = self.params(commitment.num_vars, False, commitment.num_points, LAYOUT_VECTOR)
        commitment.expect(
            num_vars=p.num_vars,
            extension=False,
            num_points=p.num_points,
            layout=LAYOUT_VECTOR,
            what="Ligero vector commitment",
        )
        if len(queries) != p.num_points or len(values) != p.num_points:
            raise ShapeMismatchError(
                "number of linear queries/values",
                expected=p.num_points,
                got=(len(queries), len(values)),
            )
        qs = [self._lin_query(p, w, lam) for w, lam in queries]
        self._absorb_linear(transcript, qs)
        self._verify(commitment, p, qs, values, proof, transcript)

    def _verify(
        self,
        com: Commitment,
        p: LigeroParams,
        queries: Sequence[tuple[Any, Any, Fp2]],
        values: Sequence[Fp2],
        proof: LigeroProof,
        tr: Transcript,
    ) -> None:
        q = len(queries)
        _expect_shape("combined rows", proof.combined, (1 + q, 2, p.msg_len))
        F.check_canonical(proof.combined, "combined rows")
        com.absorb_into(tr, "pcs.commitment")
        tr.absorb_ext("pcs.values", [Fp2.lift(v) for v in values])
        gamma = tr.challenge_ext_list("pcs.gamma", p.num_rows)
        g = np.array([[x.c0 for x in gamma], [x.c1 for x in gamma]], dtype=np.uint64)
        tr.absorb_ext_array("pcs.combined", proof.combined.transpose(1, 0, 2))
        idx = sorted(set(tr.challenge_indices("pcs.columns", p.num_queries, p.code_len)))
        _expect_shape("opened columns", proof.columns, (len(idx), p.num_rows))
        _expect_shape("salts", proof.salts, (len(idx), SALT_BYTES))
        if proof.merkle.ndim != 2 or proof.merkle.shape[1] != 32:
            raise ShapeMismatchError(
                "merkle nodes shape", expected="(s, 32)", got=proof.merkle.shape
            )
        F.check_canonical(proof.columns, "opened columns")
        # 1. the opened columns are the committed ones
        leaves = {
            c: leaf_hash(proof.salts[i].tobytes(), proof.columns[i]) for i, c in enumerate(idx)
        }
        verify_multiproof(com.root, p.code_len, leaves, [bytes(r) for r in proof.merkle])
        enc = to_numpy(_encode(proof.combined, p.code_len))[:, :, idx]  # (1+q, 2, C)
        # 2. proximity: Enc(u) agrees with gamma^T U on every opened column
        _check_columns("proximity row", -1, enc[0], _combine_cols(proof.columns, g), idx)
        for j, (a, b, lam) in enumerate(queries):
            coeffs = self._coeffs(p, a, lam, j)
            # 3. evaluation row j is consistent with the committed columns
            _check_columns("combined row", j, enc[1 + j], _combine_cols(proof.columns, coeffs), idx)
            # 4. the claimed value is the row's inner product with eq(z_col)
            got = _inner(proof.combined[1 + j][:, : p.k], b)
            if got != Fp2.lift(values[j]):
                raise CommitmentError("evaluation", round=j, expected=got, got=values[j])


def _inner(v: np.ndarray, b: np.ndarray) -> Fp2:
    from .extension import e_dot

    return e_dot(np.asarray(v), np.asarray(b))


def _expect_shape(what: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(arr, np.ndarray) or arr.shape != shape:
        got = getattr(arr, "shape", type(arr).__name__)
        raise ShapeMismatchError(f"{what} shape", expected=shape, got=got)


def _check_columns(what: str, j: int, enc: np.ndarray, comb: np.ndarray, idx: list[int]) -> None:
    bad = np.nonzero((enc != comb).any(axis=0))[0]
    if bad.size:
        i = int(bad[0])
        raise CommitmentError(
            f"{what} vs opened column {idx[i]}",
            round=None if j < 0 else j,
            expected=Fp2(int(comb[0, i]), int(comb[1, i])),
            got=Fp2(int(enc[0, i]), int(enc[1, i])),
        )
