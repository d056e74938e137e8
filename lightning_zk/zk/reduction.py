"""Many claims on one committed polynomial, reduced to a single opening by one zk sumcheck.

Status: the training proof (format 5) reduces its Wit claims in :mod:`.training.claims` with a
small block mask instead of the full mask R below; it uses only :func:`combination_table` from
here. The full-mask reduction stays as a tested general tool.

Why: a Ligero opening sends one combined row per point, so a witness polynomial opened at the
~90 points its relations produce pays ~90 rows (most of a training proof). Instead P (n vars)
is committed with a *full mask* R (n - 1 vars, uniform in F_p, its own hiding commitment), and
every sumcheck that consumes P masks it with R placed like P's variables 2..n (the round-1 mask
of :mod:`.sumcheck`). Each claim is then on the same polynomial

    P~(z_j) = P(z_j) + z_j1 (1 - z_j1) R(z_j[2..n])      (= P on the hypercube)

and for random rho_j the verifier checks  sum_j rho_j y_j = sum_x Q(x) P(x) + sum_x' Q'(x') R(x')
with Q(x) = sum_j rho_j eq(z_j, x) and Q'(x') = sum_j rho_j z_j1 (1 - z_j1) eq(z_j[2..n], x'),
by one sumcheck over n variables (R on variables 1..n-1, selected by eq(0, x_n)). Q and Q' are
public: the verifier evaluates them in O(q n). What is left is one masked opening of P and one
of R, each at a single point.

Soundness: q/p^2 for the rho combination (a wrong claim survives only if sum rho_j e_j = 0) plus
the sumcheck's (1 + sum D_i)/p^2 (D_i <= 4) plus the two openings (<= 2^-100 each).
Zero knowledge: the revealed y_j = P(z_j) + lam_j R(z_j') are uniform as long as the lam_j are
nonzero and the eq(z_j', .) are linearly independent (true except with negligible probability
for points with fresh challenge coordinates, and always for points on distinct code blocks);
the reduction sumcheck is Libra-masked and its two final values are masked Ligero openings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import array_module
from .errors import ParameterError, SumcheckError
from .extension import Fp2, e_add, e_const, e_scale
from .ligero import Ligero, LigeroState
from .multilinear import eq_eval, eq_table
from .sumcheck import SumcheckClaim, SumcheckProof, SumcheckSpec, prove_sumcheck, verify_sumcheck
from .transcript import Transcript

__all__ = ["prove_reduction", "verify_reduction", "reduction_spec", "combination_table"]


def _split_code(point: Sequence[Fp2]) -> tuple[list[Fp2], int, int]:
    """Trailing Boolean coordinates of ``point`` as a code (its table is 0 off that block)."""
    pts = [Fp2.lift(z) for z in point]
    k = len(pts)
    while k > 0 and pts[k - 1].c1 == 0 and pts[k - 1].c0 in (0, 1):
        k -= 1
    code = 0
    for z in pts[k:]:
        code = (code << 1) | z.c0
    return pts[:k], code, len(pts) - k


def combination_table(
    points: Sequence[Sequence[Fp2]], weights: Sequence[Fp2], num_vars: int, xp: Any = np
) -> Any:
    """Table (2, 2^num_vars) of sum_j weights_j eq(points_j, x); O(sum of block sizes)."""
    out = e_const(0, 1 << num_vars, xp)
    for z, w in zip(points, weights, strict=True):
        if len(z) != num_vars:
            raise ParameterError(f"claim point has {len(z)} coordinates, expected {num_vars}")
        head, code, bits = _split_code(z)
        block = e_scale(eq_table(head, xp), Fp2.lift(w))
        sl = slice(code, None, 1 << bits)
        out[:, sl] = e_add(out[:, sl], block)
    return out


def reduction_spec(num_vars: int) -> SumcheckSpec:
    """Tables: Q, P (masked), S = eq(0, x_n) Q', R on x_1..x_{n-1} (masked); f = Q P + S R."""
    return SumcheckSpec.of(
        num_vars, 4, [(1, [0, 1]), (1, [2, 3])], zk=True, masked=[False, True, False, True]
    )


def _lams(points: Sequence[Sequence[Fp2]]) -> list[Fp2]:
    return [Fp2.lift(z[0]) * (1 - Fp2.lift(z[0])) for z in points]


def _challenges(tr: Transcript, points: Sequence[Sequence[Fp2]], values: Sequence[Fp2]) -> list:
    tr.absorb_u64("reduce.claims", len(points))
    tr.absorb_points("reduce.points", points)
    tr.absorb_ext("reduce.values", list(values))
    return tr.challenge_ext_list("reduce.rho", len(points))


def prove_reduction(
    tr: Transcript,
    points: Sequence[Sequence[Fp2]],
    values: Sequence[Fp2],
    p_table: Any,
    r_table: Any,
    p_state: LigeroState,
    r_state: LigeroState,
    pcs: Ligero,
    rng: Any = None,
) -> tuple[SumcheckProof, SumcheckClaim]:
    """Reduce y_j = P~(z_j) to P^_0(r) and R^_0(r[:n-1]) (open them with mask index 0).

    Args:
        p_table / r_table: P (2^n) and R (2^(n-1)) as committed (base field, any backend).
        p_state / r_state: their Ligero states (one opening point each).
    Returns:
        the sumcheck proof and its claim: point r (n coords), evaluations [Q, P^, S, R^].
    """
    n = len(points[0]) if points else 0
    if not points or any(len(z) != n for z in points) or n < 2:
        raise ParameterError("prove_reduction: need claims on one polynomial of >= 2 variables")
    xp = array_module(p_table)
    rho = _challenges(tr, points, values)
    q = combination_table(points, rho, n, xp)
    lam = _lams(points)
    qp = combination_table([z[1:] for z in points], [a * b for a, b in zip(rho, lam, strict=True)],
                           n - 1, xp)
    s = xp.stack([qp, xp.zeros_like(qp)], axis=-1).reshape(2, -1)  # eq(0, x_n) Q'(x_1..x_{n-1})
    r_full = xp.repeat(xp.asarray(r_table, dtype=xp.uint64), 2)  # R on x_1..x_{n-1}, any x_n
    # R's round-1 mask over its variables 2..n-1, constant in the extra x_n
    r_mask = xp.repeat(pcs.round1_mask(r_state, 0), 2, axis=1)
    claimed = sum((Fp2.lift(r) * Fp2.lift(v) for r, v in zip(rho, values, strict=True)), Fp2(0))
    return prove_sumcheck(
        reduction_spec(n),
        [q, p_table, s, r_full],
        tr,
        claimed_sum=claimed,
        masks=[None, pcs.round1_mask(p_state, 0), None, r_mask],
        pcs=pcs,
        rng=rng,
    )


def verify_reduction(
    tr: Transcript,
    points: Sequence[Sequence[Fp2]],
    values: Sequence[Fp2],
    proof: SumcheckProof,
    pcs: Ligero,
) -> tuple[list[Fp2], Fp2, list[Fp2], Fp2]:
    """Check the reduction; return (P point, P^_0 value, R point, R^_0 value) to be opened.

    Raises:
        SumcheckError: a round, the final claim, or a public table value Q(r) / S(r) is wrong.
    """
    n = len(points[0]) if points else 0
    if not points or any(len(z) != n for z in points) or n < 2:
        raise ParameterError("verify_reduction: need claims on one polynomial of >= 2 variables")
    rho = _challenges(tr, points, values)
    claimed = sum((Fp2.lift(r) * Fp2.lift(v) for r, v in zip(rho, values, strict=True)), Fp2(0))
    claim = verify_sumcheck(reduction_spec(n), proof, tr, claimed, pcs=pcs)
    r = claim.point
    q_val = sum((w * eq_eval(z, r) for w, z in zip(rho, points, strict=True)), Fp2(0))
    lam = _lams(points)
    s_val = (1 - r[-1]) * sum(
        (w * lm * eq_eval(z[1:], r[:-1]) for w, lm, z in zip(rho, lam, points, strict=True)),
        Fp2(0),
    )
    if claim.evaluations[0] != q_val:
        raise SumcheckError("claim reduction: public table Q(r)", expected=q_val,
                            got=claim.evaluations[0])
    if claim.evaluations[2] != s_val:
        raise SumcheckError("claim reduction: public table S(r)", expected=s_val,
                            got=claim.evaluations[2])
    return list(r), claim.evaluations[1], list(r[:-1]), claim.evaluations[3]
