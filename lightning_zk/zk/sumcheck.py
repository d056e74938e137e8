"""Sumcheck for sums of products of multilinear polynomials, with Libra-style zero knowledge.

Statement: H = sum_{x in {0,1}^n} f(x), f(x) = sum_t c_t prod_{k in S_t} P_k(x), where the P_k
are multilinear tables and d = max |S_t| (any degree; d >= 3 for logUp and Hadamard relations).
A table may have fewer variables n_k < n (``SumcheckSpec.table_vars``): it depends on the
first n_k variables only and is broadcast over the rest, so a term whose factors all have n_t
variables contributes 2^(n - n_t) times its own hypercube sum. This batches sums over domains
of different sizes into one sumcheck without materialising the broadcast (the zero-knowledge
logUp proves sum_x main(x) - sum_t table(t) = 0 this way, :mod:`.lookup`).
Reduction (Lund-Fortnow-Karloff-Nisan): round i sends s_i(X) (evaluations at 0..D_i), the
verifier checks s_i(0) + s_i(1) = claim, draws r_i and continues with claim = s_i(r_i); the
last claim must equal f(r) evaluated on the prover's final values P_k(r), which the *caller*
checks (commitment openings or public evaluations): :class:`SumcheckClaim`.

Zero knowledge (``spec.zk``), following Libra (Xie et al., CRYPTO'19, section 4):

* masking polynomial g(x) = sum_i g_i(x_i), g_i random of the round's degree with coefficients
  uniform in F_p2 (the field of the round messages: coefficients in F_p alone would mask only
  the rho-multiples, one of the two F_p coordinates of every coefficient of degree >= 1),
  committed as the vector (Re C, Im C) with its evaluation mask mu_g by a
  :class:`LinearFormCommitment`; the prover sends
  G = sum_x g(x), the verifier draws rho, and the sumcheck runs on f + rho * g^ with claim
  H + rho G, where g^ = g + x_n (1 - x_n) mu_g (equal to g on the hypercube). The final value
  g^(r) is opened as the masked linear form <C + lam mu_g, (r_i^e)> with lam = r_n (1 - r_n).
* masked final evaluations: table k may carry a round-1 mask M_k, i.e. the sumcheck runs on
  P^_k(x) = P_k(x) + x_1 (1 - x_1) M_k(x_2..x_n) (same hypercube sum); its final value
  P^_k(r) is what a hiding commitment opens (see :mod:`.pcs`), so no plain evaluation of a
  committed polynomial reaches the verifier. Round 1 then has degree up to 2d.
* hiding variable (``spec.hiding``): variable 1 is a pure hiding variable that no table depends
  on; table k lives on variables 2..n and its mask M_k on the *same* variables, so the sumcheck
  runs on P^_k(x) = P_k(x_2..) + x_1 (1 - x_1) M_k(x_2..) and the final value is
  P_k(r_2..) + r_1 (1 - r_1) M_k(r_2..): a masked opening with lambda = r_1 (1 - r_1) (the
  commitment's ``lams`` argument, :mod:`.pcs`). No committed polynomial then needs a free first
  variable of its own (a single training step needs no zero instance). The hypercube sum over
  x_1 counts every value twice, so the round-1 check is s_1(0) + s_1(1) = 2H for claimed sum H;
  round 1 has degree 2 per masked factor (the tables are constant in x_1).

Soundness error (F = F_p2, |F| = p^2 ~ 2^128): 1/p^2 for rho plus D_i/p^2 per round (the
opened form zeroes g's coefficients above each round's degree, so f^ + rho g^ has degree <= D_i
in round i whatever was committed): eps <= (1 + sum_i D_i)/p^2, plus the mask opening's PCS
error (<= 2^-100 by its parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import field as F
from .backend import P, array_module, backend_of, to_numpy
from .errors import ParameterError, ShapeMismatchError, SumcheckError
from .extension import Fp2, W, _raw, e_mul, e_mul_base, e_scale, e_sum
from .ligero import Ligero, LigeroProof, Query
from .multilinear import fold, num_vars_of
from .pcs import LAYOUT_VECTOR, Commitment, LinearFormCommitment
from .randomness import as_rng
from .transcript import Transcript

__all__ = [
    "Term",
    "SumcheckSpec",
    "SumcheckProof",
    "SumcheckClaim",
    "Periodic",
    "prove_sumcheck",
    "verify_sumcheck",
    "interpolate",
    "MaskBank",
    "bank_row_length",
    "verify_bank",
]


@dataclass(frozen=True)
class Term:
    """c * prod_{k in factors} P_k."""

    coeff: Fp2
    factors: tuple[int, ...]


@dataclass(frozen=True)
class SumcheckSpec:
    """Public structure of one sumcheck: variables, tables, terms, which tables are masked.

    ``table_vars[k]`` (default: all ``num_vars``) is the number of leading variables table k
    depends on; a shorter factor of a term is broadcast over the term's other variables.
    """

    num_vars: int
    num_tables: int
    terms: tuple[Term, ...]
    zk: bool = True
    masked: tuple[bool, ...] = ()
    table_vars: tuple[int, ...] = ()
    hiding: bool = False

    def __post_init__(self) -> None:
        if self.num_vars < 1:
            raise ParameterError(f"SumcheckSpec(num_vars={self.num_vars}): need >= 1 variable")
        if not self.terms:
            raise ParameterError("SumcheckSpec: at least one term is required")
        for t in self.terms:
            if not t.factors or any(not 0 <= k < self.num_tables for k in t.factors):
                raise ParameterError(f"SumcheckSpec: term {t} refers to a missing table")
        masked = self.masked or (False,) * self.num_tables
        if len(masked) != self.num_tables:
            raise ParameterError(
                f"SumcheckSpec: masked has {len(masked)} flags for {self.num_tables} tables"
            )
        if any(masked) and not self.zk:
            raise ParameterError("SumcheckSpec: masked tables require zk=True")
        object.__setattr__(self, "masked", tuple(bool(m) for m in masked))
        object.__setattr__(
            self, "terms", tuple(Term(Fp2.lift(t.coeff), tuple(t.factors)) for t in self.terms)
        )
        real = self.num_vars - int(self.hiding)  # the variables tables may depend on
        if real < 1:
            raise ParameterError("SumcheckSpec: a hiding sumcheck needs >= 2 variables")
        tv = tuple(int(v) for v in self.table_vars) or (real,) * self.num_tables
        if len(tv) != self.num_tables or any(not 1 <= v <= real for v in tv):
            raise ParameterError(
                f"SumcheckSpec: table_vars {tv} must give 1..{real} variables for each "
                f"of the {self.num_tables} tables"
            )
        object.__setattr__(self, "table_vars", tv)

    @staticmethod
    def of(
        num_vars: int,
        num_tables: int,
        terms: Sequence[tuple[Fp2 | int, Sequence[int]]],
        *,
        zk: bool = True,
        masked: Sequence[bool] = (),
        table_vars: Sequence[int] = (),
        hiding: bool = False,
    ) -> SumcheckSpec:
        """Convenience constructor from (coeff, factor indices) pairs."""
        return SumcheckSpec(
            num_vars,
            num_tables,
            tuple(Term(Fp2.lift(c), tuple(f)) for c, f in terms),
            zk,
            tuple(masked),
            tuple(table_vars),
            hiding,
        )

    @property
    def degree(self) -> int:
        return max(len(t.factors) for t in self.terms)

    def f_degrees(self) -> list[int]:
        """Degree of f^ in each round's variable (round 1 doubles for masked factors; with a
        hiding variable, round 1 has degree 2 per masked factor only)."""
        if self.hiding:
            d1 = max(1, max(2 * sum(self.masked[k] for k in t.factors) for t in self.terms))
        else:
            d1 = max(len(t.factors) + sum(self.masked[k] for k in t.factors) for t in self.terms)
        return [d1] + [self.degree] * (self.num_vars - 1)

    def round_degrees(self) -> list[int]:
        """Degree bound D_i of each round message (the last round adds 2 for g^ under zk)."""
        degs = self.f_degrees()
        if self.zk:
            degs[-1] += 2
        return degs

    def mask_width(self) -> int:
        """Coefficients per g_i (max f-degree + 1)."""
        return max(self.f_degrees()) + 1

    def mask_coeff_len(self) -> int:
        """Base-field entries of g: both coordinates of its F_p2 coefficients."""
        return 2 * self.num_vars * self.mask_width()

    def mask_vector_len(self) -> int:
        return 1 << (self.mask_coeff_len() - 1).bit_length()

    def absorb(self, tr: Transcript) -> None:
        tr.absorb_u64(
            "sumcheck.spec", self.num_vars, self.num_tables, len(self.terms), int(self.zk)
        )
        for t in self.terms:
            tr.absorb_ext("sumcheck.term.coeff", t.coeff)
            tr.absorb_u64("sumcheck.term.factors", len(t.factors), *t.factors)
        tr.absorb_u64("sumcheck.masked", *[int(m) for m in self.masked])
        tr.absorb_u64("sumcheck.table_vars", *self.table_vars)
        tr.absorb_u64("sumcheck.hiding", int(self.hiding))


@dataclass
class SumcheckProof:
    """Round messages, final values and (zk) the masking polynomial's commitment and opening."""

    round_polys: list[list[Fp2]]
    final_evals: list[Fp2]
    mask_commitment: Commitment | None = None
    mask_sum: Fp2 | None = None
    mask_eval: Fp2 | None = None
    mask_opening: LigeroProof | None = None


@dataclass
class SumcheckClaim:
    """What a sumcheck reduces to: P^_k(point) == evaluations[k] for every table k.

    The sumcheck verifier has checked the rounds; the caller must still check every entry
    (commitment opening for committed tables, direct evaluation for public ones).
    """

    point: list[Fp2]
    evaluations: list[Fp2]


# ---- polynomial helpers ---------------------------------------------------------------------


def interpolate(evals: Sequence[Fp2], r: Fp2) -> Fp2:
    """Value at r of the polynomial of degree < len(evals) with values evals[i] at X = i.

    Barycentric form on the integer coordinates (the verifier calls this once per sumcheck
    round; Fp2 objects per product cost more than the arithmetic)."""
    n = len(evals)
    r = Fp2.lift(r)
    r0, r1 = r.c0, r.c1
    if r1 == 0 and r0 < n:
        return evals[r0]
    # prefix[i] = prod_{j < i} (r - j), suffix[i] = prod_{j >= i} (r - j), as (c0, c1) pairs
    pre0, pre1 = [1], [0]
    for i in range(n):
        a0, a1 = pre0[-1], pre1[-1]
        d0 = r0 - i
        pre0.append((a0 * d0 + W * a1 * r1) % P)
        pre1.append((a0 * r1 + a1 * d0) % P)
    acc0 = acc1 = 0
    s0, s1 = 1, 0  # suffix[i + 1], built from the end
    inverses = _lagrange_inverses(n)
    for i in range(n - 1, -1, -1):
        # L_i = prefix[i] * suffix[i + 1] * inv_i;  acc += evals[i] * L_i
        a0, a1 = pre0[i], pre1[i]
        l0 = (a0 * s0 + W * a1 * s1) % P * inverses[i] % P
        l1 = (a0 * s1 + a1 * s0) % P * inverses[i] % P
        e = evals[i]
        e0, e1 = (e.c0, e.c1) if type(e) is Fp2 else (int(e) % P, 0)
        acc0 += e0 * l0 + W * e1 * l1
        acc1 += e0 * l1 + e1 * l0
        d0 = r0 - i
        s0, s1 = (s0 * d0 + W * s1 * r1) % P, (s0 * r1 + s1 * d0) % P
    return _raw(acc0 % P, acc1 % P)


@lru_cache(maxsize=64)
def _lagrange_inverses(n: int) -> tuple[int, ...]:
    """1 / prod_{j != i} (i - j) for the nodes 0..n-1 (barycentric weights, cached)."""
    fact = [1] * (n + 1)
    for i in range(1, n + 1):
        fact[i] = fact[i - 1] * i % P
    out = []
    for i in range(n):
        denom = fact[i] * fact[n - 1 - i] % P
        if (n - 1 - i) % 2:
            denom = (-denom) % P
        out.append(pow(denom, P - 2, P))
    return tuple(out)


def _horner(coeffs: Sequence[Fp2 | int], x: Fp2) -> Fp2:
    acc = Fp2(0)
    for c in reversed(coeffs):
        acc = acc * x + c
    return acc


def _eval_f(spec: SumcheckSpec, values: Sequence[Fp2]) -> Fp2:
    acc = Fp2(0)
    for t in spec.terms:
        prod = t.coeff
        for k in t.factors:
            prod = prod * values[k]
        acc = acc + prod
    return acc


# ---- the masking polynomial g ---------------------------------------------------------------


def _mask_coeffs(spec: SumcheckSpec, rng: Any, length: int) -> np.ndarray:
    """Random F_p2 coefficients of g (n x width each, zero above each round's degree) as the
    base vector (real parts, then imaginary parts, then zeros up to ``length``)."""
    n, width = spec.num_vars, spec.mask_width()
    coeffs = rng.field((2, n, width))
    for i, deg in enumerate(spec.f_degrees()):
        coeffs[:, i, deg + 1 :] = 0  # g_i has exactly the round's degree
    vec = np.zeros(length, dtype=np.uint64)
    vec[: 2 * n * width] = coeffs.reshape(-1)
    return vec


class _Mask:
    """Prover view of g (base coefficients C) and its evaluation mask mu_g (extension)."""

    def __init__(self, spec: SumcheckSpec, pcs: LinearFormCommitment, rng: Any) -> None:
        vec = _mask_coeffs(spec, rng, spec.mask_vector_len())
        self.commitment, self.state = pcs.commit_vector(vec, num_points=1, rng=rng)
        self._load(spec, vec, np.asarray(pcs.vector_mask(self.state, 0)))

    @classmethod
    def from_row(cls, spec: SumcheckSpec, vec: np.ndarray, mu: np.ndarray) -> _Mask:
        """g stored as one row of a :class:`MaskBank` (its commitment is the bank's)."""
        self = cls.__new__(cls)
        self.commitment = self.state = None
        self._load(spec, vec, mu)
        return self

    def _load(self, spec: SumcheckSpec, vec: np.ndarray, mu_row: np.ndarray) -> None:
        n, width = spec.num_vars, spec.mask_width()
        coeffs = vec[: 2 * n * width].reshape(2, n, width)
        # the evaluation mask of entry (part, i, e), part 0 = real, 1 = imaginary coordinate
        mu = mu_row[:, : 2 * n * width].reshape(2, 2, n, width)
        degs = spec.f_degrees()
        self.c = [[Fp2(int(coeffs[0, i, e]), int(coeffs[1, i, e])) for e in range(degs[i] + 1)]
                  for i in range(n)]
        # only coefficients up to the round's degree are ever queried (see _mask_query); the
        # query weighs the imaginary parts by u (F_p2 = F_p[u]), so mu_g's coefficient is
        # mu(real part) + u mu(imaginary part)
        u = Fp2(0, 1)
        self.mu = [
            [Fp2(int(mu[0, 0, i, e]), int(mu[1, 0, i, e]))
             + u * Fp2(int(mu[0, 1, i, e]), int(mu[1, 1, i, e])) for e in range(degs[i] + 1)]
            for i in range(n)
        ]
        self.n = n

    @staticmethod
    def _cube_sum(row: Sequence[Fp2]) -> Fp2:
        """g_j(0) + g_j(1)."""
        return sum(row[1:], row[0] * 2)

    def total(self) -> Fp2:
        half = pow(2, self.n - 1, P)
        return sum((self._cube_sum(row) for row in self.c), Fp2(0)) * half

    def round_values(self, i: int, rs: Sequence[Fp2], degree: int) -> list[Fp2]:
        """Evaluations at X = 0..degree of the round-i polynomial of g^ (0-based i)."""
        n = self.n
        fixed = sum((_horner(self.c[j], rs[j]) for j in range(i)), Fp2(0))
        out = []
        for x in range(degree + 1):
            X = Fp2(x)
            gi = _horner(self.c[i], X)
            if i < n - 1:
                rest = sum((self._cube_sum(self.c[j]) for j in range(i + 1, n)), Fp2(0))
                val = (fixed + gi) * pow(2, n - 1 - i, P) + rest * pow(2, n - 2 - i, P)
            else:
                mu_fixed = sum((_horner(self.mu[j], rs[j]) for j in range(i)), Fp2(0))
                val = fixed + gi + X * (1 - X) * (mu_fixed + _horner(self.mu[i], X))
            out.append(val)
        return out

    def final(self, rs: Sequence[Fp2]) -> Fp2:
        lam = rs[-1] * (1 - rs[-1])
        return sum(
            (_horner(self.c[j], rs[j]) + lam * _horner(self.mu[j], rs[j]) for j in range(self.n)),
            Fp2(0),
        )


def _mask_query(
    spec: SumcheckSpec, rs: Sequence[Fp2], length: int | None = None
) -> tuple[np.ndarray, Fp2]:
    """Weights r_i^e on the real part of coefficient (i, e) and u r_i^e on its imaginary part,
    for e <= deg_i (0 elsewhere), and lam = r_n (1 - r_n).

    Then g^(r) = <C + lam mu, w> with C = (Re, Im) of g's coefficients; zero weights above each
    round's degree keep the committed g^ within the degree bound the verifier enforces,
    whatever the prover committed there.
    """
    width = spec.mask_width()
    half = spec.num_vars * width
    degs = spec.f_degrees()
    w = np.zeros((2, length or spec.mask_vector_len()), dtype=np.uint64)
    u = Fp2(0, 1)
    for i, r in enumerate(rs):
        pw = Fp2(1)
        for e in range(degs[i] + 1):
            upw = u * pw
            w[0, i * width + e], w[1, i * width + e] = pw.c0, pw.c1
            w[0, half + i * width + e], w[1, half + i * width + e] = upw.c0, upw.c1
            pw = pw * r
    return w, rs[-1] * (1 - rs[-1])


class MaskBank:
    """The Libra masking polynomials of several sumchecks in ONE commitment, opened once.

    Each sumcheck of a protocol commits its own g otherwise: one Ligero commitment and one
    opening (t columns, a Merkle multi-proof) each. The bank commits every g as one row of a
    matrix (``Ligero.commit_rows``) before the first of those sumchecks, and one batched opening
    at the end answers every sumcheck's query <C_s + lam_s mu_s, w_s> (row s). The shapes of the
    specs are public (fixed by the protocol, not by challenges), so prover and verifier build the
    same bank; a sumcheck run with ``bank=(bank, s)`` sends G_s and g^_s(r) as usual but no
    commitment or opening of its own. Soundness: each sumcheck's argument is unchanged (g_s is
    committed before its rho is drawn; the opening binds g^_s(r)), and the one opening's error
    is the commitment's (<= 2^-security_bits).
    """

    def __init__(self, specs: Sequence[SumcheckSpec], pcs: Ligero, rng: Any) -> None:
        self.specs = list(specs)
        self.length = bank_row_length(self.specs)
        rows = np.stack([_mask_coeffs(sp, rng, self.length) for sp in self.specs])
        self.commitment, self.state = pcs.commit_rows(rows, num_points=len(self.specs), rng=rng)
        self.masks = [
            _Mask.from_row(sp, rows[s], np.asarray(pcs.vector_mask(self.state, s)))
            for s, sp in enumerate(self.specs)
        ]
        self.queries: list[Any] = [None] * len(self.specs)

    def open(self, pcs: Ligero, transcript: Transcript) -> LigeroProof:
        """The one opening of every sumcheck's g^(r) (after the last of them)."""
        if any(q is None for q in self.queries):
            raise ParameterError("MaskBank.open: a sumcheck of the bank has not run")
        return pcs.open_linear(self.state, self.queries, transcript)


def bank_row_length(specs: Sequence[SumcheckSpec]) -> int:
    """Row length of a mask bank: the longest g, rounded up to a power of two."""
    longest = max(sp.mask_coeff_len() for sp in specs)
    return 1 << (longest - 1).bit_length()


def verify_bank(
    commitment: Commitment,
    specs: Sequence[SumcheckSpec],
    queries: Sequence[Any],
    values: Sequence[Fp2],
    proof: LigeroProof,
    transcript: Transcript,
    pcs: Ligero,
) -> None:
    """Check the bank's one opening against the queries the verified sumchecks left."""
    n = num_vars_of(bank_row_length(specs), "mask bank rows")
    commitment.expect(num_vars=n, extension=False, num_points=len(specs), layout=LAYOUT_VECTOR,
                      what="sumcheck mask bank")
    pcs.verify_linear(commitment, queries, values, proof, transcript, rows=len(specs))


# ---- prover ----------------------------------------------------------------------------------
#
# Memory: the prover holds each table once, in the smallest form it has. A base-field table
# (the witness, selectors) stays a (N,) uint64 array until its first fold makes it an extension
# table of half the length; a table or round-1 mask that repeats over the leading variables (a
# commitment's mask mu over its column variables; a block selector of a layout) is held as one
# period; a round-1 mask is not added to its table (P + c M, a new table of the full length)
# but kept beside it until the next fold; the round messages are summed over chunks of _CHUNK
# entries or 1/8 of a longer table (small chunks cost a thread hand-off per kernel call), so
# their temporaries are a fraction of the tables; factors that do not change with X (round 1
# of a hiding sumcheck) are multiplied once per chunk, not once per X; each table is replaced by its fold
# as soon as that exists (with ``consume``, the caller's references go too, so the previous
# round's tables are freed).

_CHUNK = 1 << 14  # entries per pass of the round sums (bounds the temporaries)


@dataclass(frozen=True)
class Periodic:
    """A sumcheck table given by one period: entry i of the table is ``values[i mod len]``.

    The table depends only on its last log2(len) variables (the low index bits), e.g. a block
    selector of a layout whose blocks are given by low-bit codes; the prover holds and folds
    the period only (folding a leading variable leaves a periodic table unchanged).
    """

    values: Any


def _prover_array(a: Any, what: str) -> Any:
    """A table or mask as given: base (N,) or extension (2, N) uint64 (no lifting)."""
    xp = array_module(a)
    t = xp.asarray(a, dtype=xp.uint64)
    if t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[0] != 2):
        raise ParameterError(f"prove_sumcheck: {what} must have shape (N,) or (2, N), got {t.shape}")
    return t


def _add(a: Any, b: Any) -> Any:
    """a + b for base (N,) / extension (2, N) arrays of one length (base + base stays base)."""
    if a.ndim == b.ndim:
        return F.add(a, b)
    if a.ndim == 1:
        a, b = b, a
    xp = array_module(a)
    out = xp.empty_like(a)
    out[0] = F.add(a[0], b)
    out[1] = a[1]
    return out


def _mul(a: Any, b: Any) -> Any:
    """a * b for base / extension arrays of one length (base x extension: two products)."""
    if a.ndim == b.ndim == 1:
        return F.mul(a, b)
    if a.ndim == b.ndim:
        return e_mul(a, b)
    if a.ndim == 1:
        a, b = b, a
    return e_mul_base(a, b)


def _scale(a: Any, s: Fp2) -> Any:
    if a.ndim == 2:
        return e_scale(a, s)
    xp = array_module(a)
    out = xp.empty((2, a.shape[0]), dtype=xp.uint64)
    out[0] = F.mul(a, np.uint64(s.c0))
    out[1] = F.mul(a, np.uint64(s.c1))
    return out


def _total(a: Any) -> Fp2:
    return Fp2(F.fsum(a)) if a.ndim == 1 else e_sum(a)


def _window(a: Any, start: int, count: int) -> Any:
    """Entries start .. start + count of ``a`` read periodically (index i -> a[i mod len(a)]);
    ``start`` is a multiple of ``count`` and every length a power of two."""
    xp = array_module(a)
    m = a.shape[-1]
    if count <= m:
        lo = start % m
        return a[..., lo : lo + count]
    return xp.tile(a, (1, count // m) if a.ndim == 2 else count // m)


def _spread(a: Any, reps: int) -> Any:
    """Each entry repeated ``reps`` times (a shorter table under a longer one's variables)."""
    if reps == 1:
        return a
    return array_module(a).repeat(a, reps, axis=-1)


class _Table:
    """One table of a running sumcheck: T(i) = values[i mod len(values)] + coeff M(i), over
    ``length`` entries (``values`` one period or all of them; M a pending round-1 mask, read
    periodically too)."""

    __slots__ = ("values", "length", "mask", "coeff")

    def __init__(self, values: Any, length: int) -> None:
        self.values, self.length = values, length
        self.mask: Any = None
        self.coeff = Fp2(0)

    def period(self) -> int:
        p = self.values.shape[-1]
        return p if self.mask is None else max(p, self.mask.shape[-1])

    def moves(self) -> bool:
        """Whether T depends on its first variable (else its halves are equal)."""
        return self.length > 1 and self.period() > self.length // 2

    def read(self, start: int, count: int) -> Any:
        out = _window(self.values, start, count)
        if self.mask is not None:
            out = _add(out, _scale(_window(self.mask, start, count), self.coeff))
        return out

    def bind(self, r: Fp2) -> None:
        """Fix the first variable to r (a bound table, one entry, is constant in the rest)."""
        half = self.length // 2
        if half == 0:
            return
        if not self.moves():
            self.length = half
            return
        t = self.values
        fused = backend_of(t).fold_table
        if self.mask is None and t.ndim == 2 and t.shape[-1] == self.length:
            self.values = fold(t, r)  # the fused kernel
        elif fused is not None:  # numba: read, subtract, scale and add in one pass
            c = self.coeff
            self.values = fused(t, self.mask, (c.c0, c.c1), self.length, (r.c0, r.c1))
            self.mask, self.coeff = None, Fp2(0)
        else:  # low + r (high - low), chunk by chunk: a base table becomes an extension table
            xp = array_module(t)
            out = xp.empty((2, half), dtype=xp.uint64)
            step = min(half, 4 * _CHUNK)
            for a in range(0, half, step):
                lo = self.read(a, step)
                d = F.sub(self.read(half + a, step), lo)
                out[:, a : a + step] = _add(lo, _scale(d, r))
            self.values, self.mask, self.coeff = out, None, Fp2(0)
        self.length = half

    def final(self) -> Fp2:
        v = to_numpy(self.read(0, 1))
        return Fp2(int(v[0, 0]), int(v[1, 0])) if v.ndim == 2 else Fp2(int(v[0]))


def _sums(spec: SumcheckSpec, tabs: list[_Table], masks: Sequence[Any], degree: int,
          split: bool, free_vars: int) -> list[Fp2]:
    """s(X) at X = 0..degree: the sum of f over ``free_vars`` variables after the current one,
    each table as T(X, rest) = low + X (high - low) (``split``; else constant in X) plus
    X (1 - X) times its mask. A term over 2^m entries counts 2^(free_vars - m) times."""
    half = [t.length // 2 if split and t.length > 1 else t.length for t in tabs]
    moves = [split and t.moves() for t in tabs]
    groups: dict[int, list[Term]] = {}
    for term in spec.terms:
        groups.setdefault(max(half[k] for k in term.factors), []).append(term)
    fused = backend_of(tabs[0].values).round_sums
    if fused is not None and not any(_is_device(t.values) for t in tabs):
        poly = backend_of(tabs[0].values).round_poly_sums
        return _fused_sums(fused, poly, groups, tabs, masks, half, moves, degree, free_vars)
    evals = [Fp2(0)] * (degree + 1)
    for length, terms in groups.items():
        ks = sorted({k for t in terms for k in t.factors})
        step = min(length, max(_CHUNK, length >> 3))
        sums = [[Fp2(0)] * (degree + 1) for _ in terms]
        for start in range(0, length, step):
            lo: dict[int, Any] = {}
            diff: dict[int, Any] = {}
            msk: dict[int, Any] = {}
            for k in ks:  # entry i of the term reads entry i // ratio of table k
                ratio = length // half[k]
                a, cnt = start // ratio, max(1, step // ratio)
                low = tabs[k].read(a, cnt)
                d = F.sub(tabs[k].read(half[k] + a, cnt), low) if moves[k] else None
                lo[k] = _spread(low, step // cnt)
                diff[k] = None if d is None else _spread(d, step // cnt)
                if masks[k] is not None:
                    msk[k] = _spread(_window(masks[k], a, cnt), step // cnt)
            # factors constant in X (not moving, no mask) go first: their product is made once
            fixed = {k for k in ks if diff[k] is None and k not in msk}
            orders = [sorted(t.factors, key=lambda k: k not in fixed) for t in terms]
            base: dict[tuple[int, ...], Any] = {}
            for order in orders:
                head = tuple(k for k in order if k in fixed)
                if head and head not in base:
                    prod = lo[head[0]]
                    for k in head[1:]:
                        prod = _mul(prod, lo[k])
                    base[head] = prod
            still = not any(d is not None for d in diff.values())  # T(1) = T(0) (no mask at 0, 1)
            part = [[Fp2(0)] * (degree + 1) for _ in terms]  # this chunk's share of each sum
            cur = lo
            for x in range(degree + 1):
                if x == 1 and still:
                    for row in part:
                        row[1] = row[0]
                    continue
                if x:
                    cur = {k: v if diff[k] is None else _add(v, diff[k]) for k, v in cur.items()}
                vals = cur
                if x >= 2 and msk:
                    sx = Fp2(x * (1 - x))
                    vals = {k: v if k not in msk else _add(v, _scale(msk[k], sx))
                            for k, v in cur.items()}
                for j, order in enumerate(orders):
                    head = tuple(k for k in order if k in fixed)
                    rest = order[len(head):]
                    if not rest and x:  # constant in X: its sum at X = 0
                        part[j][x] = part[j][0]
                        continue
                    prod = base[head] if head else vals[rest[0]]
                    for k in rest if head else rest[1:]:
                        prod = _mul(prod, vals[k])
                    part[j][x] = _total(prod)
            for j in range(len(terms)):
                sums[j] = [a + b for a, b in zip(sums[j], part[j], strict=True)]
        copies = pow(2, free_vars - num_vars_of(length, "term"), P)
        for j, term in enumerate(terms):
            for x in range(degree + 1):
                evals[x] = evals[x] + term.coeff * sums[j][x] * copies
    return evals


def _is_device(a: Any) -> bool:
    return array_module(a) is not np


def _fused_sums(kernel: Any, poly: Any, groups: dict[int, list[Term]], tabs: list[_Table],
                masks: Sequence[Any], half: list[int], moves: list[bool], degree: int,
                free_vars: int) -> list[Fp2]:
    """:func:`_sums` by the backend's fused kernel (numba): every term of a group of one length
    in one pass over its tables (:func:`._numba_sumcheck.round_sums`), the same sums exactly."""
    from ._numba_sumcheck import MODE_NONE, MODE_PENDING, MODE_ROUND

    sx = [x * (1 - x) % P for x in range(degree + 1)]
    evals = [Fp2(0)] * (degree + 1)
    for length, terms in groups.items():
        ks = sorted({k for t in terms for k in t.factors})
        local = {k: i for i, k in enumerate(ks)}
        values, msks = [], []
        params = np.zeros((len(ks), 6), dtype=np.int64)
        coeffs = np.zeros((len(ks), 2), dtype=np.uint64)
        for i, k in enumerate(ks):
            t = tabs[k]
            if masks[k] is not None:
                mode, m = MODE_ROUND, masks[k]
            elif t.mask is not None:
                mode, m = MODE_PENDING, t.mask
                if 4 * m.shape[-1] <= length:  # a short period: c M once, not per entry
                    m, c = (e_scale(m, t.coeff) if m.ndim == 2 else
                            _scale(m, t.coeff)), Fp2(1)
                else:
                    c = t.coeff
                coeffs[i] = (c.c0, c.c1)
            else:
                mode, m = MODE_NONE, None
            values.append(t.values)
            msks.append(m)
            params[i] = ((length // half[k]).bit_length() - 1, t.values.shape[-1], half[k],
                         int(moves[k]), mode, 1 if m is None else m.shape[-1])
        still = not any(moves[k] for k in ks)  # T(1) = T(0) (no mask at 0, 1)
        copies = pow(2, free_vars - num_vars_of(length, "term"), P)
        factors = [[local[k] for k in t.factors] for t in terms]
        if still and any(masks[k] is not None for k in ks) and poly is not None:
            # round 1 of a hiding sumcheck: each term is a polynomial in S = X (1 - X)
            coeffs_s = poly(values, msks, params, factors, length)
            for j, term in enumerate(terms):
                cs = [_raw(*c) for c in coeffs_s[j]]
                for x in range(degree + 1):
                    s, acc, pw = Fp2(sx[x]), Fp2(0), Fp2(1)
                    for c in cs:
                        acc = acc + c * pw
                        pw = pw * s
                    evals[x] = evals[x] + term.coeff * acc * copies
            continue
        const = [all(not moves[k] and masks[k] is None for k in t.factors) for t in terms]
        xs = [x for x in range(degree + 1) if not (x == 1 and still)]
        sums = kernel(values, msks, params, coeffs, factors, const, xs, sx, length)
        for j, term in enumerate(terms):
            row = sums[j]
            for x in range(degree + 1):
                src = 0 if const[j] or (x == 1 and still) else x
                s = _raw(*row[src])
                evals[x] = evals[x] + term.coeff * s * copies
    return evals


def prove_sumcheck(
    spec: SumcheckSpec,
    tables: Sequence[Any],
    transcript: Transcript,
    *,
    claimed_sum: Fp2 | int | None = None,
    masks: Sequence[Any | None] | None = None,
    pcs: LinearFormCommitment | None = None,
    rng: Any = None,
    bank: tuple[MaskBank, int] | None = None,
    consume: bool = False,
) -> tuple[SumcheckProof, SumcheckClaim]:
    """Prove sum_x f^(x) = H and return (proof, the claim it reduces to).

    Args:
        spec: public structure.
        tables: one table per P_k, (2^n_k,) base or (2, 2^n_k) extension, NumPy or CuPy (a
            base table is kept base until its first fold), or :class:`Periodic` (one period
            of it). The arrays are never modified.
        transcript: already holding the statement; the same object the verifier rebuilds.
        claimed_sum: H; computed when omitted.
        masks: per table, the round-1 mask M_k or None (zk only): (2, 2^m) or (2^m,) over the
            table's remaining variables (2^(n_k - 1) entries; 2^n_k with ``spec.hiding``), or
            one period of it, 2^m dividing that length (entry i is M_k[i mod 2^m]: a
            commitment's mask over its low column variables need not be tiled).
        pcs: commitment for g (default :class:`Ligero`).
        rng: prover randomness (None: OS CSPRNG; an int seed for tests only).
        bank: (bank, s): use row s of a :class:`MaskBank` as g (committed there, opened by
            ``bank.open`` later) instead of a commitment of its own.
        consume: ``tables`` and ``masks`` are lists the sumcheck takes over: it empties them,
            so each table is freed as soon as its fold exists when the caller holds no other
            reference (memory: the tables of one round, not two).
    """
    n = spec.num_vars
    if len(tables) != spec.num_tables:
        raise ParameterError(
            f"prove_sumcheck: {len(tables)} tables for spec.num_tables={spec.num_tables}"
        )
    tabs = []
    for k, t in enumerate(tables):
        full = 1 << spec.table_vars[k]
        if isinstance(t, Periodic):
            arr = _prover_array(t.values, f"table {k}")
            period = arr.shape[-1]
            if period & (period - 1) or full % period:
                raise ParameterError(f"prove_sumcheck: table {k} has a period of {period} "
                                     f"entries, which does not divide 2^{spec.table_vars[k]}")
        else:
            arr = _prover_array(t, f"table {k}")
            if num_vars_of(arr.shape[-1], f"table {k}") != spec.table_vars[k]:
                raise ParameterError(f"prove_sumcheck: table {k} has length {arr.shape[-1]}, "
                                     f"need 2^{spec.table_vars[k]}")
        tabs.append(_Table(arr, full))
    given = masks
    masks = list(masks) if masks is not None else [None] * spec.num_tables
    if len(masks) != spec.num_tables:
        raise ParameterError("prove_sumcheck: one mask entry (or None) per table")
    for k, m in enumerate(masks):
        if (m is not None) != spec.masked[k]:
            raise ParameterError(
                f"prove_sumcheck: table {k} mask presence differs from spec.masked"
            )
        if m is None:
            continue
        masks[k] = m = _prover_array(m, f"mask {k}")
        half = 1 << (spec.table_vars[k] - int(not spec.hiding))
        period = m.shape[-1]
        if period & (period - 1) or half % period:
            raise ParameterError(
                f"prove_sumcheck: mask {k} must have shape (2, {half}) (or one period of it)"
            )
    if consume:
        if not isinstance(tables, list) or (given is not None and not isinstance(given, list)):
            raise ParameterError("prove_sumcheck(consume=True): pass the tables (and masks) "
                                 "as lists")
        tables.clear()
        if given is not None:
            given.clear()
    if claimed_sum is None:
        claimed_sum = _sums(spec, tabs, [None] * len(tabs), 0, False, n - int(spec.hiding))[0]
    rng = as_rng(rng)
    pcs = pcs or Ligero()

    spec.absorb(transcript)
    transcript.absorb_ext("sumcheck.claim", Fp2.lift(claimed_sum))
    proof = SumcheckProof([], [])
    claim = Fp2.lift(claimed_sum) * (2 if spec.hiding else 1)
    rho = Fp2(0)
    g: _Mask | None = None
    if spec.zk:
        if bank is not None:
            g = bank[0].masks[bank[1]]
            transcript.absorb_u64("sumcheck.mask_bank_row", bank[1])
        else:
            g = _Mask(spec, pcs, rng)
            g.commitment.absorb_into(transcript, "sumcheck.mask")
            proof.mask_commitment = g.commitment
        proof.mask_sum = g.total()
        transcript.absorb_ext("sumcheck.mask_sum", proof.mask_sum)
        rho = transcript.challenge_ext("sumcheck.rho")  # soundness: 1/p^2
        claim = claim + rho * proof.mask_sum
    rs: list[Fp2] = []
    for i, degree in enumerate(spec.round_degrees()):
        # with a hiding variable, round 1 does not split the tables (they do not depend on it)
        split = not (i == 0 and spec.hiding)
        evals = _sums(spec, tabs, masks, degree, split, n - i - 1)
        if g is not None:
            gv = g.round_values(i, rs, degree)
            evals = [e + rho * v for e, v in zip(evals, gv, strict=False)]
        proof.round_polys.append(evals)
        transcript.absorb_ext("sumcheck.round", evals)
        r = transcript.challenge_ext("sumcheck.r")  # soundness: D_i/p^2
        rs.append(r)
        claim = interpolate(evals, r)
        for k, t in enumerate(tabs):  # each table replaced by its fold as soon as it exists
            if split:
                t.bind(r)
            if masks[k] is not None:  # round 1 only: P^ = P + r (1 - r) M, kept as (P, M)
                t.mask, t.coeff = masks[k], r * (1 - r)
        masks = [None] * len(tabs)
    finals = [t.final() for t in tabs]
    proof.final_evals = finals
    transcript.absorb_ext("sumcheck.final", finals)
    if g is not None:
        proof.mask_eval = g.final(rs)
        transcript.absorb_ext("sumcheck.mask_eval", proof.mask_eval)
        if bank is not None:
            w, lam = _mask_query(spec, rs, bank[0].length)
            bank[0].queries[bank[1]] = Query(lam=lam, table=bank[1], weights=w)
        else:
            w, lam = _mask_query(spec, rs)
            proof.mask_opening = pcs.open_linear(g.state, [(w, lam)], transcript)
    return proof, SumcheckClaim(rs, finals)


# ---- verifier -------------------------------------------------------------------------------


def verify_sumcheck(
    spec: SumcheckSpec,
    proof: SumcheckProof,
    transcript: Transcript,
    claimed_sum: Fp2 | int,
    *,
    pcs: LinearFormCommitment | None = None,
    bank: tuple[list, int, int] | None = None,
) -> SumcheckClaim:
    """Check every round, the final claim and (zk) the mask opening; return the reduced claim.

    Raises:
        SumcheckError: a round sum, the final claim, or a message length is wrong.
        CommitmentError: the masking polynomial's opening is wrong.
    """
    pcs = pcs or Ligero()
    degrees = spec.round_degrees()
    if len(proof.round_polys) != spec.num_vars:
        raise ShapeMismatchError(
            "number of sumcheck rounds", expected=spec.num_vars, got=len(proof.round_polys)
        )
    if len(proof.final_evals) != spec.num_tables:
        raise ShapeMismatchError(
            "number of final evaluations", expected=spec.num_tables, got=len(proof.final_evals)
        )
    spec.absorb(transcript)
    transcript.absorb_ext("sumcheck.claim", Fp2.lift(claimed_sum))
    claim = Fp2.lift(claimed_sum) * (2 if spec.hiding else 1)
    rho = Fp2(0)
    if spec.zk:
        own = (proof.mask_commitment, proof.mask_opening)
        if proof.mask_sum is None or proof.mask_eval is None or any(
            (x is None) != (bank is not None) for x in own
        ):
            raise ShapeMismatchError(
                "zk sumcheck mask fields",
                expected="sum and value" + ("" if bank else ", commitment and opening"),
                got="missing or extra",
            )
        if bank is not None:
            transcript.absorb_u64("sumcheck.mask_bank_row", bank[1])
        else:
            proof.mask_commitment.expect(
                num_vars=num_vars_of(spec.mask_vector_len()),
                extension=False,
                num_points=1,
                layout=LAYOUT_VECTOR,
                what="sumcheck mask commitment",
            )
            proof.mask_commitment.absorb_into(transcript, "sumcheck.mask")
        transcript.absorb_ext("sumcheck.mask_sum", proof.mask_sum)
        rho = transcript.challenge_ext("sumcheck.rho")
        claim = claim + rho * proof.mask_sum
    elif any(
        x is not None
        for x in (proof.mask_commitment, proof.mask_sum, proof.mask_eval, proof.mask_opening)
    ):
        raise ShapeMismatchError("non-zk sumcheck mask fields", expected="absent", got="present")
    rs: list[Fp2] = []
    for i, (evals, degree) in enumerate(zip(proof.round_polys, degrees, strict=False)):
        if len(evals) != degree + 1:
            raise ShapeMismatchError(
                "round polynomial length", round=i, expected=degree + 1, got=len(evals)
            )
        got = evals[0] + evals[1]
        if got != claim:
            raise SumcheckError("round sum s(0)+s(1)", round=i, expected=claim, got=got)
        transcript.absorb_ext("sumcheck.round", evals)
        r = transcript.challenge_ext("sumcheck.r")
        rs.append(r)
        claim = interpolate(evals, r)
    transcript.absorb_ext("sumcheck.final", proof.final_evals)
    expected = _eval_f(spec, proof.final_evals)
    if spec.zk:
        transcript.absorb_ext("sumcheck.mask_eval", proof.mask_eval)
        expected = expected + rho * proof.mask_eval
    if expected != claim:
        raise SumcheckError(
            "final claim f(r) + rho g(r)", round=spec.num_vars, expected=claim, got=expected
        )
    if spec.zk and bank is not None:  # checked by the bank's one opening (verify_bank)
        queries, row, length = bank
        w, lam = _mask_query(spec, rs, length)
        queries.append((Query(lam=lam, table=row, weights=w), proof.mask_eval))
    elif spec.zk:
        w, lam = _mask_query(spec, rs)
        pcs.verify_linear(
            proof.mask_commitment, [(w, lam)], [proof.mask_eval], proof.mask_opening, transcript
        )
    return SumcheckClaim(rs, list(proof.final_evals))


_ = array_module  # kept for backends: tables may be CuPy arrays
