"""logUp range checks: values in [0, 2^bits) via lookups into a table {0, ..., 2^b - 1}, b <= 16.

logUp (Haboeck, ePrint 2022/1530): a_1..a_N all lie in a table T iff, for multiplicities m_j,
    sum_i 1/(beta + a_i) = sum_j m_j/(beta + T_j)              (as rational functions)
provided char F = p > N (each pole -a_i then has a nonzero residue). The prover commits m,
gets beta, commits h_i = 1/(beta + a_i) and q_j = m_j/(beta + T_j), and ONE zero-knowledge
sumcheck proves, with fresh alpha, tau, that the two sides agree without ever stating their
common value S (S is a fixed function of the private multiset at a public beta: sent in the
clear it would let a verifier test guesses of the witness):

  sum_y main(y) - sum_j table(j) = 0, where
  main(y)  = h(y) + a1 eq(tau_A, y) (h(y)(beta + A(y)) - 1)
             + a2 eq(tau_x, x) (sum_c W(c) A(x, c) - v(x) [c = 0])       (y = (x, c), n_A vars)
  table(j) = q(j) + a3 eq(tau_T, j) (q(j)(beta + T(j)) - m(j))             (b vars)

run over n = max(n_A, b) variables with the shorter side broadcast (``SumcheckSpec.table_vars``)
and its terms scaled by 2^-(n - n_side), so the hypercube sum is exactly main - table.

Limb decomposition for [0, 2^bits) (see :class:`RangeLayout`: bits <= 16 is a direct lookup
into a 2^bits table; else L = a power of two of limbs of b = ceil(bits/L) <= 16 bits): A(x, c)
holds the b-bit limbs of v(x) (c < L) plus, when the top limb has b' < b bits, its shift
A(x, L) = 2^(b-b') A(x, L-1), so both fit b bits iff
the top limb fits b' bits. W(c) = 2^(bc) (c < L) + a_w (2^(b-b') [c = L-1] - [c = L]). With
bits <= 16 the lookup runs on v itself (A = v, no decomposition).

The gadget reduces everything to one claim on the caller's committed v: a masked evaluation
v^(point) (:class:`RangeClaim`), which the caller checks with its own opening.

Soundness error: (N_A + 2^b)/p^2 (beta, cleared denominators) + (n_A + n + b)/p^2 (the three
zero checks) + 3/p^2 (the alpha combination: sum h - sum q and the zero-check sums are fixed
before the alphas) + one sumcheck error (1 + sum D_i)/p^2 + four commitment openings (<= 2^-100
each): dominated by the openings.

Zero knowledge: h, q, m, A are hiding commitments opened only at masked points; the sumcheck
is Libra-masked and its claimed sum is the public 0, so the proof carries no value that depends
on the private multiset except through hiding commitments and masked evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import field as F
from .backend import P, clipped_bincount, to_numpy
from .errors import LookupError_, ParameterError
from .extension import Fp2, e_add, e_const, e_from_base, e_inv, e_mul_base
from .ligero import Ligero, LigeroProof
from .multilinear import eq_eval, eq_table, num_vars_of
from .pcs import Commitment
from .randomness import as_rng
from .sumcheck import SumcheckProof, SumcheckSpec, prove_sumcheck, verify_sumcheck
from .transcript import Transcript

__all__ = ["TABLE_BITS", "RangeLayout", "RangeProof", "RangeClaim", "prove_range", "verify_range"]

TABLE_BITS = 16  # widest table (and limb) used
TABLE_SIZE = 1 << TABLE_BITS


@dataclass(frozen=True)
class RangeLayout:
    """Public limb layout for a range check of 2^num_vars values in [0, 2^bits).

    The table is {0, ..., 2^table_bits - 1}, chosen so the limb columns fill a power of two
    (each column doubles the lookup domain and the committed h): bits <= 16 is one direct
    lookup into a 2^bits table; otherwise the value splits into the fewest power-of-two number
    of limbs of <= 16 bits (24 bits: two 12-bit limbs, not 16 + 8 bits with a shift column).
    """

    num_vars: int
    bits: int

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 63:
            raise ParameterError(f"range check bits={self.bits}: must be in [1, 63]")
        if self.num_vars < 1:
            raise ParameterError(f"range check num_vars={self.num_vars}: need >= 1")

    @property
    def direct(self) -> bool:
        return self.bits <= TABLE_BITS

    @property
    def limbs(self) -> int:
        if self.direct:
            return 1
        need = -(-self.bits // TABLE_BITS)
        return 1 << (need - 1).bit_length()

    @property
    def table_bits(self) -> int:
        return self.bits if self.direct else -(-self.bits // self.limbs)

    @property
    def table_size(self) -> int:
        return 1 << self.table_bits

    @property
    def shift(self) -> int:
        return self.table_bits * self.limbs - self.bits

    @property
    def columns(self) -> int:
        return 1 if self.direct else self.limbs + (1 if self.shift else 0)

    @property
    def col_vars(self) -> int:
        return (self.columns - 1).bit_length()

    @property
    def a_vars(self) -> int:
        return self.num_vars + self.col_vars

    def weights(self, alpha_w: Fp2) -> list[Fp2]:
        """W(c) over the 2^col_vars columns."""
        w = [Fp2(0)] * (1 << self.col_vars)
        for c in range(self.limbs):
            w[c] = Fp2(pow(2, self.table_bits * c, P))
        if self.shift:
            w[self.limbs - 1] = w[self.limbs - 1] + alpha_w * pow(2, self.shift, P)
            w[self.limbs] = w[self.limbs] - alpha_w
        return w


@dataclass
class RangeClaim:
    """The caller must check v^(point) == value with its own commitment to v."""

    point: list[Fp2]
    value: Fp2


@dataclass
class RangeProof:
    limb_commitment: Commitment | None
    mult_commitment: Commitment
    h_commitment: Commitment
    q_commitment: Commitment
    sumcheck: SumcheckProof  # sum main - sum table = 0 (the logUp identity, no sum revealed)
    limb_opening: LigeroProof | None
    h_opening: LigeroProof
    q_opening: LigeroProof
    mult_opening: LigeroProof


def _limbs(values: np.ndarray, lay: RangeLayout) -> np.ndarray:
    """A(x, c) flattened as index x * 2^col_vars + c."""
    n_cols, tb = 1 << lay.col_vars, lay.table_bits
    a = np.zeros((values.shape[0], n_cols), dtype=np.uint64)
    for c in range(lay.limbs):
        a[:, c] = (values >> np.uint64(tb * c)) & np.uint64(lay.table_size - 1)
    if lay.limbs * tb < 64:
        a[:, lay.limbs - 1] = values >> np.uint64(tb * (lay.limbs - 1))  # keep overflow
    if lay.shift:
        a[:, lay.limbs] = F.mul(a[:, lay.limbs - 1], np.uint64(1 << lay.shift))
    return a.reshape(-1)


# table indices of the combined sumcheck: the A side first, then the table side
_H, _EQ_A, _A, _EQ_X, _W, _VT = range(6)


def _spec(lay: RangeLayout, ch: dict[str, Any], value_masked: bool) -> SumcheckSpec:
    """sum_y main(y) - sum_j table(j) = 0 over n = max(n_A, b) variables (module doc)."""
    a1, a2, a3, beta = ch["a1"], ch["a2"], ch["a3"], ch["beta"]
    n_main = 3 if lay.direct else 6
    q, eq_t, t, m = range(n_main, n_main + 4)
    n = max(lay.a_vars, lay.table_bits)
    s_main = Fp2(pow(pow(2, n - lay.a_vars, P), P - 2, P))
    s_table = -Fp2(pow(pow(2, n - lay.table_bits, P), P - 2, P))
    main: list[tuple[Fp2 | int, Sequence[int]]] = [
        (1, [_H]),
        (a1, [_EQ_A, _H, _A]),
        (a1 * beta, [_EQ_A, _H]),
        (-a1, [_EQ_A]),
    ]
    masked = [True, False, value_masked if lay.direct else True]
    if not lay.direct:
        main += [(a2, [_EQ_X, _W, _A]), (-a2, [_EQ_X, _VT])]
        masked += [False, False, value_masked]
    table = [(1, [q]), (a3, [eq_t, q, t]), (a3 * beta, [eq_t, q]), (-a3, [eq_t, m])]
    masked += [True, False, False, True]
    terms = [(c * s_main, f) for c, f in main] + [(c * s_table, f) for c, f in table]
    table_vars = [lay.a_vars] * n_main + [lay.table_bits] * 4
    return SumcheckSpec.of(n, n_main + 4, terms, zk=True, masked=masked, table_vars=table_vars)


def _challenges(tr: Transcript, lay: RangeLayout, beta: Fp2) -> dict[str, Any]:
    # soundness: alphas 1/p^2 each; eq zero-checks n/p^2 each
    a1, a2, a3, aw = tr.challenge_ext_list("logup.alpha", 4)
    return {
        "beta": beta,
        "a1": a1,
        "a2": a2,
        "a3": a3,
        "aw": aw,
        "tau_a": tr.challenge_ext_list("logup.tau_a", lay.a_vars),
        "tau_x": tr.challenge_ext_list("logup.tau_x", lay.num_vars),
        "tau_t": tr.challenge_ext_list("logup.tau_t", lay.table_bits),
    }


def _table_values(lay: RangeLayout) -> np.ndarray:
    return np.arange(lay.table_size, dtype=np.uint64)


def prove_range(
    transcript: Transcript,
    values: Any,
    *,
    bits: int,
    value_mask: Any = None,
    pcs: Ligero | None = None,
    rng: Any = None,
    strict: bool = True,
) -> tuple[RangeProof, RangeClaim]:
    """Prove every entry of ``values`` (field elements, length 2^n) lies in [0, 2^bits).

    Args:
        values: the caller's committed table v (host or device uint64 array).
        value_mask: round-1 mask of v's commitment (``pcs.round1_mask(state, j)``); the returned
            claim is then the masked value v^_j(point). None: a plain evaluation (not hiding).
        strict: raise ParameterError on out-of-range input (``False`` only for soundness tests,
            which build a cheating proof that the verifier must reject).
    """
    pcs = pcs or Ligero()
    rng = as_rng(rng)
    v = np.asarray(to_numpy(values), dtype=np.uint64).reshape(-1)
    lay = RangeLayout(num_vars_of(v.shape[0], "prove_range values"), bits)
    if strict and bool((v >= np.uint64(1 << bits)).any()):
        bad = int(v[v >= np.uint64(1 << bits)][0])
        raise ParameterError(f"prove_range: value {bad} is outside [0, 2^{bits})")
    a = v if lay.direct else _limbs(v, lay)
    # out-of-range entries (only without strict) are counted as the top table entry, so the
    # sums then disagree and the verifier rejects
    mult = clipped_bincount(a, lay.table_size).astype(np.uint64)

    transcript.absorb_u64("logup.layout", lay.num_vars, lay.bits, lay.table_bits)
    limb_com = limb_state = None
    if not lay.direct:
        limb_com, limb_state = pcs.commit(a, num_points=1, rng=rng)
        limb_com.absorb_into(transcript, "logup.limbs")
    m_com, m_state = pcs.commit(mult, num_points=1, rng=rng)
    m_com.absorb_into(transcript, "logup.mult")
    beta = transcript.challenge_ext("logup.beta")  # soundness: (N_A + 2^b)/p^2
    inv_a = e_inv(e_add(e_from_base(a), e_const(beta, a.shape[0])))
    inv_t = e_inv(e_add(e_from_base(_table_values(lay)), e_const(beta, lay.table_size)))
    q = e_mul_base(inv_t, mult)
    h_com, h_state = pcs.commit(inv_a, num_points=1, rng=rng)
    q_com, q_state = pcs.commit(q, num_points=1, rng=rng)
    h_com.absorb_into(transcript, "logup.h")
    q_com.absorb_into(transcript, "logup.q")
    ch = _challenges(transcript, lay, beta)

    tables = [inv_a, eq_table(ch["tau_a"]), a]
    masks: list[Any] = [pcs.round1_mask(h_state, 0), None]
    if lay.direct:
        masks.append(value_mask)
    else:
        masks.append(pcs.round1_mask(limb_state, 0))
        n_cols = 1 << lay.col_vars
        wts = lay.weights(ch["aw"])
        w_arr = np.array([[x.c0 for x in wts], [x.c1 for x in wts]], dtype=np.uint64)
        vt = np.zeros(a.shape[0], dtype=np.uint64)
        vt[::n_cols] = v
        tables += [
            np.repeat(eq_table(ch["tau_x"]), n_cols, axis=1),
            np.tile(w_arr, (1, v.shape[0])),
            vt,
        ]
        vt_mask = None
        if value_mask is not None:
            vm = np.asarray(to_numpy(value_mask))
            vt_mask = np.zeros((2, vm.shape[1] * n_cols), dtype=np.uint64)
            vt_mask[:, ::n_cols] = vm
        masks += [None, None, vt_mask]
    tables += [q, eq_table(ch["tau_t"]), _table_values(lay), mult]
    masks += [pcs.round1_mask(q_state, 0), None, None, pcs.round1_mask(m_state, 0)]
    spec = _spec(lay, ch, value_mask is not None)
    sc, claim = prove_sumcheck(spec, tables, transcript, claimed_sum=0, masks=masks, pcs=pcs,
                               rng=rng)
    a_pt, t_pt = claim.point[: lay.a_vars], claim.point[: lay.table_bits]
    limb_open = pcs.open(limb_state, [a_pt], transcript) if limb_state else None
    proof = RangeProof(
        limb_com,
        m_com,
        h_com,
        q_com,
        sc,
        limb_open,
        pcs.open(h_state, [a_pt], transcript),
        pcs.open(q_state, [t_pt], transcript),
        pcs.open(m_state, [t_pt], transcript),
    )
    return proof, _value_claim(lay, a_pt, claim.evaluations)


def _value_claim(lay: RangeLayout, point: list[Fp2], evals: Sequence[Fp2]) -> RangeClaim:
    if lay.direct:
        return RangeClaim(point, evals[_A])
    x_pt, c_pt = point[: lay.num_vars], point[lay.num_vars :]
    sel = eq_eval(c_pt, [0] * lay.col_vars)
    if sel.is_zero():
        raise LookupError_("column selector eq(0, r_c) is zero", got=sel)
    return RangeClaim(x_pt, evals[_VT] / sel)


def verify_range(
    transcript: Transcript,
    proof: RangeProof,
    *,
    num_vars: int,
    bits: int,
    value_masked: bool = True,
    pcs: Ligero | None = None,
) -> RangeClaim:
    """Check a range proof; return the claim on v that the caller must check itself.

    Raises:
        LookupError_: a public evaluation (eq, table, weights) does not match.
        SumcheckError / CommitmentError / ShapeMismatchError: from the sub-protocols.
    """
    pcs = pcs or Ligero()
    lay = RangeLayout(num_vars, bits)
    transcript.absorb_u64("logup.layout", lay.num_vars, lay.bits, lay.table_bits)
    if lay.direct != (proof.limb_commitment is None) or lay.direct != (proof.limb_opening is None):
        raise LookupError_(
            "limb commitment presence",
            expected=not lay.direct,
            got=proof.limb_commitment is not None,
        )
    if proof.limb_commitment is not None:
        proof.limb_commitment.expect(
            num_vars=lay.a_vars, extension=False, num_points=1, what="limb commitment"
        )
        proof.limb_commitment.absorb_into(transcript, "logup.limbs")
    proof.mult_commitment.expect(
        num_vars=lay.table_bits, extension=False, num_points=1, what="multiplicity commitment"
    )
    proof.mult_commitment.absorb_into(transcript, "logup.mult")
    beta = transcript.challenge_ext("logup.beta")
    proof.h_commitment.expect(
        num_vars=lay.a_vars, extension=True, num_points=1, what="h commitment"
    )
    proof.q_commitment.expect(
        num_vars=lay.table_bits, extension=True, num_points=1, what="q commitment"
    )
    proof.h_commitment.absorb_into(transcript, "logup.h")
    proof.q_commitment.absorb_into(transcript, "logup.q")
    ch = _challenges(transcript, lay, beta)
    spec = _spec(lay, ch, value_masked)
    sc = verify_sumcheck(spec, proof.sumcheck, transcript, 0, pcs=pcs)
    ev = sc.evaluations
    a_pt, t_pt = sc.point[: lay.a_vars], sc.point[: lay.table_bits]
    n_main = 3 if lay.direct else 6
    # public tables: the verifier evaluates them itself
    _expect("eq(tau_A, r)", eq_eval(ch["tau_a"], a_pt), ev[_EQ_A])
    _expect("eq(tau_T, r)", eq_eval(ch["tau_t"], t_pt), ev[n_main + 1])
    tb = lay.table_bits
    t_eval = sum((r * pow(2, tb - 1 - b, P) for b, r in enumerate(t_pt)), Fp2(0))
    _expect("table T(r)", t_eval, ev[n_main + 2])
    if not lay.direct:
        x_pt, c_pt = a_pt[: lay.num_vars], a_pt[lay.num_vars :]
        _expect("eq(tau_x, r_x)", eq_eval(ch["tau_x"], x_pt), ev[_EQ_X])
        wts = lay.weights(ch["aw"])
        w_eval = sum((w * eq_eval(c_pt, _bits(c, lay.col_vars)) for c, w in enumerate(wts)), Fp2(0))
        _expect("limb weights W(r_c)", w_eval, ev[_W])
        pcs.verify(proof.limb_commitment, [a_pt], [ev[_A]], proof.limb_opening, transcript)
    # committed tables: their masked openings
    pcs.verify(proof.h_commitment, [a_pt], [ev[_H]], proof.h_opening, transcript)
    pcs.verify(proof.q_commitment, [t_pt], [ev[n_main]], proof.q_opening, transcript)
    pcs.verify(proof.mult_commitment, [t_pt], [ev[n_main + 3]], proof.mult_opening, transcript)
    return _value_claim(lay, a_pt, ev)


def _bits(c: int, width: int) -> list[int]:
    return [(c >> (width - 1 - j)) & 1 for j in range(width)]


def _expect(check: str, expected: Fp2, got: Fp2) -> None:
    if expected != got:
        raise LookupError_(check, expected=expected, got=got)
