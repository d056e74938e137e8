"""Ligero-style hiding multilinear commitment (Ames, Hazay, Ishai, Venkitasubramaniam, CCS'17).

Commit: one or more tables (each the 2^n values of a multilinear polynomial, base or extension
valued) share one matrix of k columns: table i, viewed as rows_i x 2^c (its first n_i - c
variables index rows, its last c variables columns; an extension table adds its X-parts as more
rows), is stacked under the previous ones. A public :class:`ColumnSupport` may say that only
some columns can be nonzero (the unallocated space of a layout): those columns are left out, so
k counts only the columns that can hold data. Random rows are appended: one proximity mask pair
and one evaluation mask pair per query. Every row is padded with ``pad = t`` random coefficients,
Reed-Solomon encoded by NTT to length K (rate (k + pad)/K <= 1/2), and a salted SHA-256 Merkle
tree is built over the K columns.

Open (one batched proof for q queries, transcript order):
  1. absorb commitment, queries (points or weights, and lambdas), claimed values y_j
  2. gamma <- F_p2^rows                 [proximity gap: bad combination w.p. <= K/p^2]
  3. prover sends u = gamma^T M and, per query j, v_j = a_j^T M + lam_j (mu_j^a + X mu_j^b)
  4. absorb u, v_j;  t column indices <- [0, K)   [far: (1 - e/K)^t; wrong v_j: (1 - (d-e)/K)^t]
  5. prover opens the distinct columns with their salts and one Merkle multi-proof
Verify: Merkle paths; Enc(u)[c] == gamma . col_c; Enc(v_j)[c] == c_j . col_c; and
y_j == <v_j[:k], b_j>. A multilinear query on table i at z has a_j = eq(z_row) in table i's rows
and b_j = eq(z_col) on the committed columns; a linear query on a one-row table has a_j = 1 and
arbitrary weights b_j. The masked value proved is P^_j = <P, a_j x b_j> + lam_j mu_j(b_j), with
lam_j = z_1 (1 - z_1) by default or any nonzero public value the protocol supplies (a sumcheck
with a hiding variable uses r_1 (1 - r_1), :mod:`.sumcheck`).

Soundness error per batched opening (RS distance d = K - (k + pad) + 1, unique-decoding radius
e = floor((d - 1) / 2), F = F_p2):
    eps <= K/p^2 + (1 - e/K)^t + q (1 - (d - e)/K)^t      (+ SHA-256 collisions)
If the rows are not jointly e-close to the code, a uniformly random combination is e-close with
probability <= K/|F| (proximity gaps for Reed-Solomon codes in the unique-decoding regime:
Ben-Sasson, Carmon, Ishai, Kopparty, Saraf, FOCS 2020 / JACM 2023), and then u differs from
gamma^T M on more than e columns. If they are, each v_j that is not the combination of the
decoded rows differs from the opened columns on >= d - e positions. ``derive_params`` picks the
smallest t with eps <= 2^-security_bits; see docs/zk_core.md.

Hiding: each row's t-wise independent padding makes any t opened symbols of a witness row
uniform; u and v_j are uniform because of the mask rows; salts hide unopened leaves. What the
verifier learns is exactly the masked values P^_j (see :mod:`.pcs`).
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
from .extension import Fp2, W
from .merkle import SALT_BYTES, MerkleTree, hash_columns, leaf_hash, verify_multiproof
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
    "ColumnSupport",
    "LigeroConfig",
    "LigeroParams",
    "LigeroProof",
    "LigeroState",
    "Ligero",
    "Query",
    "derive_params",
    "soundness_bits",
]


@dataclass(frozen=True)
class LigeroConfig:
    """Verifier-side security configuration; every code parameter is derived from it.

    Args:
        security_bits: target soundness of one batched opening (the verifier's
            :class:`~lightning_zk.zk.policy.VerifierPolicy` accepts >= 100).
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
class ColumnSupport:
    """Where a table may be nonzero: index i lies in block (code, bits) iff its low ``bits``
    bits equal ``code``; entries outside every block are zero by definition (public layout).

    With c column variables, column j can hold data iff j's low min(bits, c) bits equal the
    code's for some block; only those columns are committed, so unallocated layout space costs
    nothing (docs/zk_training.md, "Layout").
    """

    blocks: tuple[tuple[int, int], ...]

    def columns(self, col_vars: int) -> np.ndarray:
        return _support_columns(self.blocks, col_vars)


@lru_cache(maxsize=256)
def _support_columns(blocks: tuple[tuple[int, int], ...], col_vars: int) -> np.ndarray:
    keep = np.zeros(1 << col_vars, dtype=bool)
    for code, bits in blocks:
        low = min(bits, col_vars)
        keep[code & ((1 << low) - 1) :: 1 << low] = True
    out = np.nonzero(keep)[0]
    out.setflags(write=False)
    return out


TableShape = tuple[int, bool]  # (num_vars, extension)


@dataclass(frozen=True)
class LigeroParams:
    """The code and matrix of one commitment, derived from its public shape and the config."""

    shapes: tuple[TableShape, ...]
    num_points: int
    layout: int
    col_vars: int
    k: int  # committed columns (all 2^col_vars, or those of the support)
    pad: int
    code_len: int
    num_queries: int
    soundness: float
    support: ColumnSupport | None = None

    # --- one-table conveniences (the common case) ---------------------------------------------
    @property
    def num_vars(self) -> int:
        return self.shapes[0][0]

    @property
    def extension(self) -> bool:
        return self.shapes[0][1]

    @property
    def row_vars(self) -> int:
        return self.shapes[0][0] - self.col_vars

    # --- matrix geometry -------------------------------------------------------------------
    def table_rows(self, i: int) -> int:
        n, ext = self.shapes[i]
        return (1 << (n - self.col_vars)) * (2 if ext else 1)

    def row_offset(self, i: int) -> int:
        return sum(self.table_rows(j) for j in range(i))

    @property
    def m_data(self) -> int:
        return sum(self.table_rows(i) for i in range(len(self.shapes)))

    @property
    def num_rows(self) -> int:
        return self.m_data + 2 + 2 * self.num_points

    @property
    def msg_len(self) -> int:
        return self.k + self.pad

    def columns(self) -> np.ndarray | None:
        """Committed column indices (None: all of them)."""
        return None if self.support is None else self.support.columns(self.col_vars)


def soundness_bits(k: int, pad: int, code_len: int, t: int, q: int) -> float:
    """-log2 of K/p^2 + (1 - e/K)^t + q (1 - (d - e)/K)^t, d = K - (k + pad) + 1, e = (d-1)//2."""
    d = code_len - (k + pad) + 1
    e = (d - 1) // 2
    if e <= 0:
        return 0.0
    terms = [
        math.log2(code_len) - 2 * math.log2(P),
        t * math.log2(1 - e / code_len),
        math.log2(max(q, 1)) + t * math.log2(1 - (d - e) / code_len),
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
    num_vars: int | tuple[TableShape, ...],
    extension: bool,
    num_points: int,
    layout: int,
    config: LigeroConfig,
    support: ColumnSupport | None = None,
) -> LigeroParams:
    """Deterministic code parameters for a shape; prover and verifier call the same function.

    ``num_vars`` is one table's number of variables (with ``extension``), or a tuple of
    (num_vars, extension) shapes for several tables in one commitment (``extension`` ignored).
    The column count minimises the estimated proof size; a vector layout commits each table as
    one row (all tables then have the same length).
    """
    shapes = tuple(num_vars) if isinstance(num_vars, tuple) else ((num_vars, bool(extension)),)
    if num_points < 1:
        raise ParameterError(f"num_points={num_points}: a commitment is opened at >= 1 point")
    if not shapes or any(n < 0 for n, _ in shapes):
        raise ParameterError(f"Ligero: bad table shapes {shapes}")
    smallest = min(n for n, _ in shapes)
    if layout == LAYOUT_MULTILINEAR:
        if smallest < 1:
            raise ParameterError("multilinear commitments need num_vars >= 1")
        # col_vars: a lone table keeps >= 1 row variable (the round-1 masks of
        # :func:`~lightning_zk.zk.pcs.PolynomialCommitment.round1_mask` need a row variable)
        splits = range(0, smallest + (1 if len(shapes) > 1 else 0))
    elif layout == LAYOUT_VECTOR:
        if len({n for n, _ in shapes}) != 1:
            raise ParameterError(f"a vector commitment's tables have one length, got {shapes}")
        splits = range(smallest, smallest + 1)
    else:
        raise ParameterError(f"unknown layout {layout}")
    best: LigeroParams | None = None
    best_size = math.inf
    for col_vars in splits:
        if support is not None:
            k = len(support.columns(col_vars))
        else:
            k = 1 << col_vars
        if k < 1:
            continue
        code_len = 1 << max(1, (config.blowup * k - 1).bit_length())
        t: int | None = None
        while True:
            if math.log2(code_len) - 2 * math.log2(P) > -config.security_bits:
                # the proximity-gap term K/p^2 alone exceeds the target: no t reaches it
                break
            t = _min_t(k, code_len, num_points, config.security_bits)
            if t is not None:
                break
            code_len *= 2
        if t is None:
            continue
        rows = sum((1 << (n - col_vars)) * (2 if ext else 1) for n, ext in shapes)
        rows += 2 + 2 * num_points
        depth = code_len.bit_length() - 1
        size = t * (rows * 8 + SALT_BYTES) + 32 * t * max(1, depth - int(math.log2(t)))
        size += (1 + num_points) * 16 * (k + t)
        if size < best_size:
            best_size = size
            best = LigeroParams(
                shapes,
                num_points,
                layout,
                col_vars,
                k,
                t,
                code_len,
                t,
                soundness_bits(k, t, code_len, t, num_points),
                support,
            )
    if best is None:
        raise ParameterError(
            f"Ligero: {config.security_bits}-bit openings are not reachable for tables "
            f"{shapes} over F_p2 (the proximity term K/p^2 alone is larger); lower "
            "security_bits"
        )
    return best


@dataclass
class LigeroState:
    """Prover-side data of one commitment (never serialised).

    The codewords (rows x K, K/(k + pad) >= 2 times the message) are not kept: the commitment
    hashes them class by class (:func:`_encode_class`) and the opening re-encodes the classes
    of the columns it reveals, so a commitment costs the message rows and the Merkle tree.
    """

    params: LigeroParams
    commitment: Commitment
    msg: Any  # (rows, k + pad) message rows, backend array
    salts: np.ndarray  # (K, SALT_BYTES) uint8, one per leaf
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


@dataclass(frozen=True)
class Query:
    """One opening query: table ``table`` at multilinear ``point`` (or, for a one-row table,
    the linear form with column ``weights``), masked with ``lam`` (default z_1 (1 - z_1))."""

    point: tuple[Fp2, ...] | None = None
    lam: Fp2 | None = None
    table: int = 0
    weights: Any = None


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


def _class_len(msg_len: int, code_len: int) -> int:
    """L: the codeword splits into K/L classes of L columns (the largest power of two <= the
    message length, so a class is never larger than the message; L <= K/2 as the rate <= 1/2)."""
    return min(1 << (msg_len.bit_length() - 1), code_len)


@lru_cache(maxsize=256)
def _twist(code_len: int, a: int, length: int) -> np.ndarray:
    """w^(a i) for i < length, w the K-th root of unity of :func:`.ntt.ntt`."""
    x = pow(F.root_of_unity(code_len), a, P)
    out = np.ones(length, dtype=np.uint64)
    step = 1
    while step < length:
        out[step : 2 * step] = F.mul(out[: min(step, length - step)], np.uint64(pow(x, step, P)))
        step *= 2
    out.setflags(write=False)
    return out


_ROW_CHUNK = 64  # rows twisted at once (bounds the temporary of the twist)


def _encode_class(msg_rows: Any, code_len: int, a: int) -> Any:
    """Columns a, a + s, a + 2s, ... (s = K/L) of ``_encode(msg_rows, K)``, as (rows, L).

    Enc(m)[a + s j] = sum_i m_i w^(a i) (w^s)^(i j): the NTT of size L (its root is w^s) of the
    twisted message m_i w^(a i), folded modulo L (x^L = 1 on the class). The whole codeword
    never exists at once: the commitment hashes one class at a time and an opening re-encodes
    the classes of the columns it reveals.
    """
    xp = array_module(msg_rows)
    rows, msg_len = msg_rows.shape
    L = _class_len(msg_len, code_len)
    tw = None if a == 0 else _twist(code_len, a, msg_len)
    fused = backend_of(msg_rows).twist_fold
    if fused is not None and xp is np:  # numba: multiply and fold in one pass over the rows
        return ntt(fused(msg_rows, tw, L), overwrite=True)
    block = xp.zeros((rows, L), dtype=xp.uint64)
    if tw is not None and xp is not np:
        tw = xp.asarray(tw)
    for r0 in range(0, rows, _ROW_CHUNK):
        part = msg_rows[r0 : r0 + _ROW_CHUNK]
        if tw is not None:
            part = F.mul(part, tw[None, :])
        for c0 in range(0, msg_len, L):  # fold: index i lands on i mod L
            piece = part[:, c0 : c0 + L]
            dst = block[r0 : r0 + _ROW_CHUNK, : piece.shape[1]]
            dst[...] = piece if c0 == 0 else F.add(dst, piece)
    return ntt(block, overwrite=True)  # block is ours: no second copy


def _code_columns(msg_rows: Any, code_len: int, idx: Sequence[int]) -> np.ndarray:
    """Columns ``idx`` of the codeword matrix, (len(idx), rows) on the host, re-encoded."""
    rows, msg_len = msg_rows.shape
    s = code_len // _class_len(msg_len, code_len)
    out = np.empty((len(idx), rows), dtype=np.uint64)
    want = np.asarray(idx, dtype=np.int64)
    for a in sorted({int(j) % s for j in idx}):
        pos = np.nonzero(want % s == a)[0]
        block = _encode_class(msg_rows, code_len, a)
        xp = array_module(block)
        out[pos] = to_numpy(block[:, xp.asarray(want[pos] // s)]).T
        del block
    return out


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
        self,
        num_vars: int | tuple[TableShape, ...],
        extension: bool = False,
        num_points: int = 1,
        layout: int = LAYOUT_MULTILINEAR,
        support: ColumnSupport | None = None,
    ) -> LigeroParams:
        return derive_params(num_vars, bool(extension), num_points, layout, self.config, support)

    # -- commit -------------------------------------------------------------------------------

    def commit(
        self, table: Any, *, num_points: int = 1, rng: Any = None,
        support: ColumnSupport | None = None,
    ) -> tuple[Commitment, LigeroState]:
        """Commit to one table (N,) or (2, N) of a multilinear polynomial."""
        return self.commit_tables([table], num_points=num_points, rng=rng, support=support)

    def commit_tables(
        self, tables: Sequence[Any], *, num_points: int = 1, rng: Any = None,
        support: ColumnSupport | None = None,
    ) -> tuple[Commitment, LigeroState]:
        """Commit to several multilinear tables in one matrix (one root, one opening).

        ``num_points`` is the total number of queries the one opening will answer. With a
        ``support``, every table must be zero outside it (checked).
        """
        xp = array_module(tables[0])
        ts = [xp.asarray(t, dtype=xp.uint64) for t in tables]
        for t in ts:
            if t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[0] != 2):
                raise ParameterError(f"Ligero.commit: table must be (N,) or (2, N), got {t.shape}")
            F.check_canonical(t, "Ligero.commit table")
        shapes = tuple((num_vars_of(t.shape[-1], "Ligero.commit"), t.ndim == 2) for t in ts)
        params = self.params(shapes, False, num_points, LAYOUT_MULTILINEAR, support)
        return self._commit_rows(ts, params, rng, xp)

    def _data_rows(self, ts: Sequence[Any], params: LigeroParams, xp: Any) -> Any:
        """The data rows (m_data, k) of the tables ``ts`` (one new array)."""
        out = xp.empty((params.m_data, params.k), dtype=xp.uint64)
        self._fill_rows(out, ts, params, xp)
        return out

    @staticmethod
    def _fill_rows(out: Any, ts: Sequence[Any], params: LigeroParams, xp: Any) -> None:
        """Write the tables' rows (their committed columns) into out[:m_data, :k], a few rows
        at a time (no copy of a whole table)."""
        width = 1 << params.col_vars
        cols = params.columns()
        off_cols = None
        if cols is not None and cols.shape[0] < width:
            off = np.ones(width, dtype=bool)
            off[cols] = False
            off_cols = xp.asarray(np.nonzero(off)[0])
        cols_x = None if cols is None else xp.asarray(cols)
        r0 = 0
        step = max(1, (1 << 16) // width)
        for t in ts:
            rows = t.reshape(-1, width)  # ext: (2, N) -> re rows then X rows
            for a in range(0, rows.shape[0], step):
                part = rows[a : a + step]
                if off_cols is not None and bool(xp.any(part[:, off_cols] != 0)):
                    raise ParameterError("Ligero.commit: a table is nonzero outside its support")
                dst = out[r0 + a : r0 + a + part.shape[0], : params.k]
                dst[...] = part if cols_x is None else part[:, cols_x]
            r0 += rows.shape[0]

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

    def commit_rows(
        self, rows: Any, *, num_points: int = 1, rng: Any = None
    ) -> tuple[Commitment, LigeroState]:
        """Commit to the rows of a (R, L) matrix as R one-row tables (linear-form queries on
        each row: e.g. the masking polynomials of many sumchecks in one commitment)."""
        xp = array_module(rows)
        r = xp.asarray(rows, dtype=xp.uint64)
        if r.ndim != 2:
            raise ParameterError(f"Ligero.commit_rows: expected a matrix, got {r.shape}")
        F.check_canonical(r, "Ligero.commit_rows")
        n = num_vars_of(r.shape[1], "Ligero.commit_rows")
        shapes = tuple((n, False) for _ in range(r.shape[0]))
        params = self.params(shapes, False, num_points, LAYOUT_VECTOR)
        return self._commit_rows(r, params, rng, xp)

    def _commit_rows(
        self, data: Any, params: LigeroParams, rng: Any, xp: Any
    ) -> tuple[Commitment, LigeroState]:
        """Commit the data rows: a (m_data, k) array, or the list of multilinear tables whose
        rows they are (written into the message matrix directly)."""
        rng = as_rng(rng)
        rows, k = params.num_rows, params.k
        msg = xp.empty((rows, params.msg_len), dtype=xp.uint64)
        if isinstance(data, list):
            self._fill_rows(msg, data, params, xp)
        else:
            msg[: params.m_data, :k] = data
        msg[: params.m_data, k:] = rng.field((params.m_data, params.pad), xp)
        msg[params.m_data :] = rng.field((rows - params.m_data, params.msg_len), xp)
        salt_bytes = rng.bytes(SALT_BYTES * params.code_len)
        salts = np.frombuffer(salt_bytes, dtype=np.uint8).reshape(params.code_len, SALT_BYTES)
        # leaves hash the code's columns, one class of columns at a time (_encode_class)
        K = params.code_len
        s = K // _class_len(params.msg_len, K)
        leaves = np.empty((K, 32), dtype=np.uint8)
        for a in range(s):
            block = to_numpy(_encode_class(msg, K, a))
            leaves[a::s] = hash_columns(block, salts[a::s], row_major=True)
            del block
        tree = MerkleTree.from_leaves(leaves)
        com = _commitment(tree.root, params)
        return com, LigeroState(params, com, msg, salts, tree)

    # -- masks and values (prover side) ------------------------------------------------------

    def _mask_rows(self, state: LigeroState, index: int) -> int:
        if not 0 <= index < state.params.num_points:
            raise ParameterError(
                f"mask index {index} out of range: commitment has {state.params.num_points} masks"
            )
        return state.params.m_data + 2 + 2 * index

    def mask_table(self, state: LigeroState, index: int) -> Any:
        """mu_index over all 2^col_vars columns, (2, 2^c) (zero on columns outside the support)."""
        p = state.params
        r = self._mask_rows(state, index)
        mu = state.msg[r : r + 2, : p.k]
        cols = p.columns()
        if cols is None:
            return mu
        xp = array_module(mu)
        full = xp.zeros((2, 1 << p.col_vars), dtype=xp.uint64)
        full[:, xp.asarray(cols)] = mu
        return full

    def vector_mask(self, state: LigeroState, index: int) -> Any:
        return self.mask_table(state, index)

    def masked_evaluate(
        self, state: LigeroState, point: Sequence[Fp2], index: int, lam: Fp2 | None = None,
        table: int = 0,
    ) -> Fp2:
        a, b, lam_ = self._ml_query(state.params, Query(tuple(point), lam, table))
        return self._value(state, a, b, lam_, index)

    def _value(self, state: LigeroState, a: np.ndarray, b: np.ndarray, lam: Fp2, j: int) -> Fp2:
        v = _combine_rows(state.msg, self._coeffs(state.params, a, lam, j))
        return _inner(v[:, : state.params.k], b)

    # -- queries ------------------------------------------------------------------------------

    @staticmethod
    def _ml_query(params: LigeroParams, q: Query) -> tuple[np.ndarray, np.ndarray, Fp2]:
        """(a over all data rows, b over the committed columns, lambda) of a multilinear query."""
        if not 0 <= q.table < len(params.shapes):
            raise ParameterError(f"query on table {q.table}: the commitment has "
                                 f"{len(params.shapes)} tables")
        n, ext = params.shapes[q.table]
        point = q.point or ()
        if len(point) != n:
            raise ParameterError(
                f"opening point has {len(point)} coordinates, polynomial has {n}"
            )
        pt = [Fp2.lift(z) for z in point]
        rv = n - params.col_vars
        a_local = eq_table(pt[:rv])
        if ext:
            a_local = np.concatenate([a_local, _times_x(a_local)], axis=1)
        a = np.zeros((2, params.m_data), dtype=np.uint64)
        off = params.row_offset(q.table)
        a[:, off : off + a_local.shape[1]] = a_local
        b = eq_table(pt[rv:])
        cols = params.columns()
        if cols is not None:
            b = np.ascontiguousarray(b[:, cols])
        lam = pt[0] * (1 - pt[0]) if q.lam is None else Fp2.lift(q.lam)
        return a, b, lam

    @staticmethod
    def _lin_query(params: LigeroParams, q: Query) -> tuple[np.ndarray, np.ndarray, Fp2]:
        w = np.asarray(to_numpy(q.weights), dtype=np.uint64)
        if w.shape != (2, params.k):
            raise ParameterError(f"linear query weights must have shape (2, {params.k}), got {w.shape}")
        if not 0 <= q.table < len(params.shapes):
            raise ParameterError(f"linear query on row {q.table} of {len(params.shapes)}")
        a = np.zeros((2, params.m_data), dtype=np.uint64)
        a[0, q.table] = 1
        if q.lam is None:
            raise ParameterError("a linear query needs its lambda")
        return a, w, Fp2.lift(q.lam)

    @staticmethod
    def _coeffs(params: LigeroParams, a: np.ndarray, lam: Fp2, j: int) -> np.ndarray:
        c = np.zeros((2, params.num_rows), dtype=np.uint64)
        c[:, : params.m_data] = a
        r = params.m_data + 2 + 2 * j
        c[:, r] = (lam.c0, lam.c1)
        lx = lam * Fp2(0, 1)
        c[:, r + 1] = (lx.c0, lx.c1)
        return c

    @staticmethod
    def _absorb_queries(transcript: Transcript, qs: Sequence[Query], linear: bool,
                        lams: Sequence[Fp2]) -> None:
        if linear:
            transcript.absorb_u64("pcs.linear.count", len(qs))
            for q, lam in zip(qs, lams, strict=True):
                transcript.absorb_u64("pcs.linear.row", q.table)
                transcript.absorb_ext_array("pcs.linear.w", q.weights)
                transcript.absorb_ext("pcs.linear.lam", lam)
            return
        transcript.absorb_points("pcs.points", [q.point for q in qs])
        transcript.absorb_u64("pcs.tables", *[q.table for q in qs])
        transcript.absorb_ext("pcs.lams", list(lams))

    # -- open ---------------------------------------------------------------------------------

    def open(
        self, state: LigeroState, points: Sequence[Sequence[Fp2]], transcript: Transcript,
        lams: Sequence[Fp2 | None] | None = None,
    ) -> LigeroProof:
        """Open table 0 at ``points`` (point j with mask j; lambda j = ``lams[j]`` or z_1(1-z_1))."""
        lams = list(lams) if lams is not None else [None] * len(points)
        qs = [Query(tuple(z), lam) for z, lam in zip(points, lams, strict=True)]
        return self.open_queries(state, qs, transcript)

    def open_queries(
        self, state: LigeroState, queries: Sequence[Query], transcript: Transcript
    ) -> LigeroProof:
        """Open any tables of the commitment (query j uses mask j)."""
        p = state.params
        if p.layout != LAYOUT_MULTILINEAR:
            raise ParameterError("Ligero.open: this commitment is a vector; use open_linear")
        self._check_count(p, len(queries))
        built = [self._ml_query(p, q) for q in queries]
        self._absorb_queries(transcript, queries, False, [lam for _, _, lam in built])
        return self._open(state, built, transcript)

    def open_linear(
        self, state: LigeroState, queries: Sequence[tuple[Any, Fp2] | Query],
        transcript: Transcript,
    ) -> LigeroProof:
        p = state.params
        if p.layout != LAYOUT_VECTOR:
            raise ParameterError("Ligero.open_linear: this commitment is multilinear; use open")
        self._check_count(p, len(queries))
        qs = [q if isinstance(q, Query) else Query(lam=q[1], weights=q[0]) for q in queries]
        built = [self._lin_query(p, q) for q in qs]
        self._absorb_queries(transcript, qs, True, [lam for _, _, lam in built])
        return self._open(state, built, transcript)

    @staticmethod
    def _check_count(p: LigeroParams, count: int) -> None:
        if count != p.num_points:
            raise ParameterError(
                f"opening {count} points of a commitment made for num_points={p.num_points}"
            )

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
        # soundness: random combination of all rows; proximity gap, error <= K/p^2
        gamma = tr.challenge_ext_list("pcs.gamma", p.num_rows)
        g = np.array([[x.c0 for x in gamma], [x.c1 for x in gamma]], dtype=np.uint64)
        u = _combine_rows(state.msg, g)
        combined = self._prover_combined(np.stack([u, *combined_v]))
        tr.absorb_ext_array("pcs.combined", combined.transpose(1, 0, 2))
        # soundness: t uniform columns; (1 - e/K)^t + q (1 - (d - e)/K)^t
        idx = sorted(set(tr.challenge_indices("pcs.columns", p.num_queries, p.code_len)))
        columns = _code_columns(state.msg, p.code_len, idx)
        salts = state.salts[idx]
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
        lams: Sequence[Fp2 | None] | None = None,
        support: ColumnSupport | None = None,
    ) -> None:
        """Check a one-table opening (``commitment`` of one table, point j with mask j)."""
        lams = list(lams) if lams is not None else [None] * len(points)
        if len(lams) != len(points):
            raise ShapeMismatchError("number of lambdas", expected=len(points), got=len(lams))
        qs = [Query(tuple(z), lam) for z, lam in zip(points, lams, strict=True)]
        self.verify_queries(commitment, ((commitment.num_vars, commitment.extension),), qs,
                            values, proof, transcript, support)

    def verify_queries(
        self,
        commitment: Commitment,
        shapes: Sequence[TableShape],
        queries: Sequence[Query],
        values: Sequence[Fp2],
        proof: LigeroProof,
        transcript: Transcript,
        support: ColumnSupport | None = None,
    ) -> None:
        """Check an opening of a commitment to tables of public ``shapes`` (and ``support``):
        the verifier derives every code parameter from them and its own config."""
        shapes = tuple((int(n), bool(e)) for n, e in shapes)
        p = self.params(shapes, False, commitment.num_points, LAYOUT_MULTILINEAR, support)
        _expect_commitment(commitment, p, "Ligero commitment")
        if len(queries) != p.num_points or len(values) != p.num_points:
            raise ShapeMismatchError(
                "number of opening points/values",
                expected=p.num_points,
                got=(len(queries), len(values)),
            )
        for q in queries:
            if not 0 <= q.table < len(shapes) or len(q.point or ()) != shapes[q.table][0]:
                raise ShapeMismatchError(
                    "opening point length", expected=shapes[min(max(q.table, 0), len(shapes) - 1)][0],
                    got=len(q.point or ()),
                )
        built = [self._ml_query(p, q) for q in queries]
        self._absorb_queries(transcript, queries, False, [lam for _, _, lam in built])
        self._verify(commitment, p, built, values, proof, transcript)

    def verify_linear(
        self,
        commitment: Commitment,
        queries: Sequence[tuple[Any, Fp2] | Query],
        values: Sequence[Fp2],
        proof: LigeroProof,
        transcript: Transcript,
        rows: int = 1,
    ) -> None:
        """Check linear-form openings of a vector commitment (``rows`` one-row tables)."""
        n = commitment.num_vars
        shapes = tuple((n, False) for _ in range(rows))
        p = self.params(shapes if rows > 1 else n, False, commitment.num_points, LAYOUT_VECTOR)
        _expect_commitment(commitment, p, "Ligero vector commitment")
        if len(queries) != p.num_points or len(values) != p.num_points:
            raise ShapeMismatchError(
                "number of linear queries/values",
                expected=p.num_points,
                got=(len(queries), len(values)),
            )
        qs = [q if isinstance(q, Query) else Query(lam=q[1], weights=q[0]) for q in queries]
        built = [self._lin_query(p, q) for q in qs]
        self._absorb_queries(transcript, qs, True, [lam for _, _, lam in built])
        self._verify(commitment, p, built, values, proof, transcript)

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
            if lam.is_zero():
                raise CommitmentError("query lambda is nonzero (a zero lambda reveals the value)",
                                      round=j, got=lam)
            coeffs = self._coeffs(p, a, lam, j)
            # 3. evaluation row j is consistent with the committed columns
            _check_columns("combined row", j, enc[1 + j], _combine_cols(proof.columns, coeffs), idx)
            # 4. the claimed value is the row's inner product with the column weights
            got = _inner(proof.combined[1 + j][:, : p.k], b)
            if got != Fp2.lift(values[j]):
                raise CommitmentError("evaluation", round=j, expected=got, got=values[j])


def _commitment(root: bytes, p: LigeroParams) -> Commitment:
    n, ext = p.shapes[0]
    return Commitment(root, n, ext, p.num_points, p.layout)


def _expect_commitment(com: Commitment, p: LigeroParams, what: str) -> None:
    n, ext = p.shapes[0]
    com.expect(num_vars=n, extension=ext, num_points=p.num_points, layout=p.layout, what=what)


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
