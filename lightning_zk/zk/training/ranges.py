"""Range check of every witness value, by a zero-knowledge logUp lookup over Wit itself.

Each allocated entry x of Wit (block B of the layout) must satisfy a(x) = c_B Wit(x) + d_B in
[0, 2^Q), Q = value_bits, where (c_B, d_B) is (1, 2^(Q-1)) for a signed value (so
|Wit(x)| < 2^(Q-1)), (2^(Q-s), 2^(Q-1)) for a rescale remainder (so Wit(x) + 2^(s-1) lies in
[0, 2^s): the scaled check is exact because the rescaled quotient is range-checked too, which
makes the remainder an integer) and (1, 0) for the ReLU sign witness V (V in [0, 2^Q)). No copy
of the values is committed: the lookup runs on Wit, and the public block tables sel, C, D (1,
c_B, d_B on block B, 0 on unallocated space) are evaluated by the verifier from the layout.

a is split into L limbs of b <= 16 bits (Q = 24: two 12-bit limbs), A_c(x) for c < L, plus, when
L b > Q, a shifted copy A_L = 2^(Lb - Q) A_{L-1} of the top limb (both fit b bits iff the top
limb fits b - (Lb - Q)). Every column is looked up in the table T = {0, ..., 2^b - 1} with
multiplicities m (one m for all columns), h_c = 1/(beta + A_c) on allocated entries:

  sum_x sum_c h_c(x) - sum_t q(t) = 0,                                  q = m/(beta + T)
  eq(tau, x) (h_c(x) (beta + A_c(x)) - sel(x)) = 0 for every c            (h_c = 0 elsewhere)
  eq(tau, x) (sum_{c<L} 2^(bc) A_c(x) - C(x) Wit(x) - D(x)) = 0
  eq(tau, x) (A_L(x) - 2^(Lb-Q) A_{L-1}(x)) = 0                          (with a shift column)
  eq(tau_T, t) (q(t) (beta + T(t)) - m(t)) = 0

all in ONE Libra-masked sumcheck with a hiding variable and claimed sum 0 (the alphas combine
the identities; the table side over b variables is broadcast, scaled by 2^-(N-b)), so no sum
that depends on the private values is ever sent. The limbs are committed with Wit (before beta),
m beside the mask M, and h, q after beta.

Soundness: logUp (Haboeck, ePrint 2022/1530) needs p > (L + 1) 2^n: (N_A + 2^b)/p^2 for beta,
(n + b)/p^2 for the zero checks, (columns + 3)/p^2 for the alpha combination, the sumcheck
(1 + sum D_i)/p^2, and the openings of the committed tables (<= 2^-100 each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import P, clipped_bincount
from ..errors import ParameterError
from ..extension import Fp2, e_add, e_const, e_from_base, e_inv, e_mul_base
from ..multilinear import eq_eval, eq_table
from ..sumcheck import Periodic, SumcheckSpec
from ..transcript import Transcript
from .layout import Layout, code_int
from .relations import tensor_class

__all__ = ["WitRange", "wit_range", "range_columns", "range_inverses", "range_spec",
           "range_challenges", "block_value", "block_table"]

MAX_LIMB_BITS = 16
_CHUNK = 1 << 16  # entries inverted at once by range_inverses


@dataclass(frozen=True)
class WitRange:
    """Public description of the range check of a unit's Wit."""

    n: int  # Wit variables
    bits: int  # Q
    limbs: int  # L
    limb_bits: int  # b
    shift: int  # Lb - Q (0: no shift column)
    blocks: tuple[tuple[tuple[int, ...], int, int], ...]  # (code, c_B, d_B) per allocated block

    @property
    def columns(self) -> int:
        return self.limbs + (1 if self.shift else 0)

    @property
    def sumcheck_vars(self) -> int:
        """Real variables of the range sumcheck: the longer of Wit and the table."""
        return max(self.n, self.limb_bits)


def wit_range(layout: Layout, frac_bits: int, value_bits: int) -> WitRange:
    if not 2 <= value_bits <= 62 or not 1 <= frac_bits < value_bits:
        raise ParameterError(f"range check: frac_bits {frac_bits}, value_bits {value_bits}")
    limbs = -(-value_bits // MAX_LIMB_BITS)
    b = -(-value_bits // limbs)
    signed = (1, 1 << (value_bits - 1))
    kinds = {"remainder": (1 << (value_bits - frac_bits), 1 << (value_bits - 1)),
             "vwit": (1, 0), "sign": signed, "signed": signed}
    blocks = tuple(sorted(
        (slot.code, *kinds[tensor_class(_base_name(name))]) for name, slot in layout.leaf_blocks()
    ))
    return WitRange(layout.wit_vars, value_bits, limbs, b, limbs * b - value_bits, blocks)


def _base_name(name: str) -> str:
    return name[:-1] if name[-1] == "n" and name[0] in "Wb" else name


def block_table(wr: WitRange, which: str, period: bool = False) -> np.ndarray:
    """sel, C or D as a uint64 table over Wit (prover side); with ``period``, one period of it
    (the blocks are low-bit codes, so the table repeats every 2^(longest code) entries)."""
    bits = max((len(code) for code, _, _ in wr.blocks), default=0) if period else wr.n
    out = np.zeros(1 << bits, dtype=np.uint64)
    for code, c, d in wr.blocks:
        value = {"sel": 1, "C": c, "D": d}[which]
        out[code_int(code) :: 1 << len(code)] = np.uint64(value % P)
    return out


def block_value(wr: WitRange, which: str, point: Sequence[Fp2]) -> Fp2:
    """The MLE of sel, C or D at ``point`` (verifier side: O(#blocks x n))."""
    acc = Fp2(0)
    n = len(point)
    for code, c, d in wr.blocks:
        value = {"sel": 1, "C": c, "D": d}[which]
        if value:
            acc = acc + eq_eval(list(point[n - len(code):]), list(code)) * value
    return acc


def range_columns(wr: WitRange, wit: np.ndarray, strict: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """(limb columns A_c as uint64 tables over Wit, multiplicities m over the table).

    Raises:
        ParameterError: (``strict``) a value outside its range (the tape is not a valid step).
    """
    a = np.zeros(1 << wr.n, dtype=np.int64)
    for code, c, d in wr.blocks:
        sl = slice(code_int(code), None, 1 << len(code))
        a[sl] = wit[sl] * c + d
    if strict:
        sel = block_table(wr, "sel").astype(bool)
        bad = sel & ((a < 0) | (a >= (1 << wr.bits)))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise ParameterError(f"range check: entry {i} of Wit is outside its range")
    au = a.astype(np.uint64)  # out-of-range values (only without strict) wrap: the proof fails
    mask = np.uint64((1 << wr.limb_bits) - 1)
    cols = [(au >> np.uint64(wr.limb_bits * c)) & mask for c in range(wr.limbs - 1)]
    cols.append(au >> np.uint64(wr.limb_bits * (wr.limbs - 1)))  # the top limb keeps overflow
    if wr.shift:
        cols.append(cols[-1] << np.uint64(wr.shift))
    sel = block_table(wr, "sel").astype(bool)
    top = (1 << wr.limb_bits) - 1
    mult = np.zeros(1 << wr.limb_bits, dtype=np.int64)
    for col in cols:  # out-of-range limbs (only without strict) count as the top entry
        mult += clipped_bincount(col[sel], top + 1).astype(np.int64)
    return [c % np.uint64(P) for c in cols], mult.astype(np.uint64)


def range_inverses(wr: WitRange, cols: Sequence[np.ndarray], mult: np.ndarray, beta: Fp2
                   ) -> tuple[list[Any], Any]:
    """(h_c = sel / (beta + A_c) per column, q = m / (beta + T)) as extension tables."""
    period = block_table(wr, "sel", period=True).astype(bool)
    step = min(1 << wr.n, max(period.shape[0], _CHUNK))
    sel = np.tile(period, step // period.shape[0])  # the selector on every chunk
    hs = []
    for col in cols:
        h = e_const(0, 1 << wr.n)
        for a in range(0, 1 << wr.n, step):  # a chunk at a time: bounded temporaries
            vals = col[a : a + step][sel]
            h[:, a : a + step][:, sel] = e_inv(e_add(e_from_base(vals), e_const(beta, vals.size)))
        hs.append(h)
    t = np.arange(1 << wr.limb_bits, dtype=np.uint64)
    inv_t = e_inv(e_add(e_from_base(t), e_const(beta, t.shape[0])))
    return hs, e_mul_base(inv_t, mult)


@dataclass(frozen=True)
class RangeChallenges:
    beta: Fp2
    alphas: tuple[Fp2, ...]  # one per column, then decomposition, shift, table
    tau: tuple[Fp2, ...]
    tau_t: tuple[Fp2, ...]


def range_challenges(tr: Transcript, wr: WitRange, beta: Fp2) -> RangeChallenges:
    # soundness: the alphas 1/p^2 each; eq zero checks (n + b)/p^2
    alphas = tr.challenge_ext_list("range.alpha", wr.columns + 3)
    return RangeChallenges(beta, tuple(alphas), tuple(tr.challenge_ext_list("range.tau", wr.n)),
                           tuple(tr.challenge_ext_list("range.tau_t", wr.limb_bits)))


# table order of the range sumcheck
def _index(wr: WitRange) -> dict[str, Any]:
    cols = wr.columns
    idx = {"h": list(range(cols)), "A": list(range(cols, 2 * cols))}
    k = 2 * cols
    for name in ("wit", "eq", "sel", "C", "D", "q", "eq_t", "T", "m"):
        idx[name] = k
        k += 1
    idx["count"] = k
    return idx


def range_spec(wr: WitRange, ch: RangeChallenges) -> SumcheckSpec:
    """The one hiding zk sumcheck of the range check (module doc), claimed sum 0."""
    ix = _index(wr)
    N = wr.sumcheck_vars
    sw = Fp2(pow(pow(2, N - wr.n, P), P - 2, P))
    st = -Fp2(pow(pow(2, N - wr.limb_bits, P), P - 2, P))
    beta, al = ch.beta, ch.alphas
    h, A, eq = ix["h"], ix["A"], ix["eq"]
    wit_side: list[tuple[Fp2 | int, list[int]]] = []
    for c in range(wr.columns):
        wit_side += [(1, [h[c]]), (al[c], [eq, h[c], A[c]]), (al[c] * beta, [eq, h[c]]),
                     (-al[c], [eq, ix["sel"]])]
    ad = al[wr.columns]
    for c in range(wr.limbs):
        wit_side.append((ad * pow(2, wr.limb_bits * c, P), [eq, A[c]]))
    wit_side += [(-ad, [eq, ix["C"], ix["wit"]]), (-ad, [eq, ix["D"]])]
    if wr.shift:
        a_s = al[wr.columns + 1]
        wit_side += [(a_s, [eq, A[wr.limbs]]), (-a_s * pow(2, wr.shift, P), [eq, A[wr.limbs - 1]])]
    at = al[wr.columns + 2]
    table_side = [(1, [ix["q"]]), (at, [ix["eq_t"], ix["q"], ix["T"]]),
                  (at * beta, [ix["eq_t"], ix["q"]]), (-at, [ix["eq_t"], ix["m"]])]
    terms = [(c * sw, f) for c, f in wit_side] + [(c * st, f) for c, f in table_side]
    table_vars = [wr.n] * (ix["q"]) + [wr.limb_bits] * 4
    masked = [True] * (2 * wr.columns) + [True, False, False, False, False, True, False, False, True]
    return SumcheckSpec.of(N + 1, ix["count"], terms, zk=True, masked=masked,
                           table_vars=table_vars, hiding=True)


def range_tables(wr: WitRange, hs: Sequence[Any], cols: Sequence[np.ndarray], wit: np.ndarray,
                 q: Any, mult: np.ndarray, ch: RangeChallenges) -> list[Any]:
    """The sumcheck's tables in :func:`range_spec` order (prover side)."""
    t = np.arange(1 << wr.limb_bits, dtype=np.uint64)
    sel, c, d = (Periodic(block_table(wr, w, period=True)) for w in ("sel", "C", "D"))
    return [*hs, *cols, wit, eq_table(list(ch.tau)), sel, c, d, q, eq_table(list(ch.tau_t)), t,
            mult]


def range_public_checks(wr: WitRange, ch: RangeChallenges, point: Sequence[Fp2],
                        evals: Sequence[Fp2]) -> list[tuple[str, Fp2, Fp2]]:
    """(name, expected, got) for every public table of the range sumcheck at its final point."""
    ix = _index(wr)
    pw, pt = list(point[: wr.n]), list(point[: wr.limb_bits])
    tb = wr.limb_bits
    t_eval = sum((r * pow(2, tb - 1 - i, P) for i, r in enumerate(pt)), Fp2(0))
    return [
        ("eq(tau, r)", eq_eval(list(ch.tau), pw), evals[ix["eq"]]),
        ("sel(r)", block_value(wr, "sel", pw), evals[ix["sel"]]),
        ("C(r)", block_value(wr, "C", pw), evals[ix["C"]]),
        ("D(r)", block_value(wr, "D", pw), evals[ix["D"]]),
        ("eq(tau_T, r)", eq_eval(list(ch.tau_t), pt), evals[ix["eq_t"]]),
        ("table T(r)", t_eval, evals[ix["T"]]),
    ]


def range_index(wr: WitRange) -> dict[str, Any]:
    """Where each table sits in the range sumcheck (for the claims the caller opens)."""
    return _index(wr)
