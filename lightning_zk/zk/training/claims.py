"""All claims on Wit reduced to one opening of Wit and one of the small mask M.

Each claim j says y_j = Wit(z_j) + lam_j M~(z_j) (:mod:`.masking`: M~ is the block mask spread
over Wit). For random rho_j the verifier checks

    sum_j rho_j y_j = sum_x Q(x) Wit(x) + sum_i W(i) M(i)

with Q = sum_j rho_j eq(z_j, .) over Wit and W = sum_j rho_j lam_j (the block-local eq of z_j)
over M (:func:`.masking.mask_weights`): one zk sumcheck with a hiding variable over
max(n_Wit, n_M) variables (the shorter side broadcast, scaled by 2^-difference). Q and W are
public; the verifier evaluates them itself (O(q n) and O(q x blocks x vars)). What remains is one
masked opening of Wit and one of M, both at (a prefix of) the sumcheck's point.

Soundness: q/p^2 for the rho combination (a wrong claim survives only if sum rho_j e_j = 0),
plus the sumcheck's (1 + sum D_i)/p^2 (D_i <= 4), plus the two openings (<= 2^-100 each).
Zero knowledge: the y_j are uniform (the masks lam_j M~(z_j) are jointly uniform, module doc of
:mod:`.masking`), the sumcheck is Libra-masked, and its two final values are masked openings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import P
from ..errors import ParameterError, SumcheckError
from ..extension import Fp2, e_dot
from ..ligero import Ligero, LigeroState
from ..multilinear import eq_eval_many
from ..reduction import combination_table
from ..sumcheck import MaskBank, SumcheckProof, SumcheckSpec, prove_sumcheck, verify_sumcheck
from ..transcript import Transcript
from .masking import MaskLayout, mask_weight_eval, mask_weights

__all__ = ["WitClaim", "claims_spec", "prove_claims", "verify_claims"]


@dataclass(frozen=True)
class WitClaim:
    """y = Wit(point) + lam M~(point), left by a sumcheck for the reduction."""

    point: tuple[Fp2, ...]
    lam: Fp2
    value: Fp2


def claims_spec(n: int, mv: int) -> SumcheckSpec:
    """Tables Q (n), Wit (n, masked), W (mv), M (mv, masked); f = Q Wit + W M, hiding."""
    N = max(n, mv)
    sw = Fp2(pow(pow(2, N - n, P), P - 2, P))
    sm = Fp2(pow(pow(2, N - mv, P), P - 2, P))
    return SumcheckSpec.of(N + 1, 4, [(sw, [0, 1]), (sm, [2, 3])], zk=True,
                           masked=[False, True, False, True], table_vars=[n, n, mv, mv],
                           hiding=True)


def _ext(values: Sequence[Fp2]) -> np.ndarray:
    return np.array([[v.c0 for v in values], [v.c1 for v in values]], dtype=np.uint64)


def _rho(tr: Transcript, claims: Sequence[WitClaim]) -> list[Fp2]:
    tr.absorb_u64("claims.count", len(claims))
    tr.absorb_points("claims.points", [c.point for c in claims])
    tr.absorb_ext("claims.lams", [c.lam for c in claims])
    tr.absorb_ext("claims.values", [c.value for c in claims])
    return tr.challenge_ext_list("claims.rho", len(claims))  # soundness: q/p^2


def prove_claims(
    tr: Transcript,
    claims: Sequence[WitClaim],
    wit: Any,
    mtable: Any,
    ml: MaskLayout,
    wit_state: LigeroState,
    m_state: LigeroState,
    pcs: Ligero,
    rng: Any,
    bank: tuple[MaskBank, int],
) -> tuple[SumcheckProof, list[Fp2]]:
    """Reduce the claims; returns the proof and the sumcheck point (hiding variable first).

    Wit is opened afterwards at point[1 : 1 + n] (mask 0 of its commitment, lambda of the
    hiding variable) and M at point[1 : 1 + n_M] (mask 0 of its commitment).
    """
    if not claims:
        raise ParameterError("prove_claims: no claim on Wit")
    n, mv = ml.wit_vars, ml.num_vars
    rho = _rho(tr, claims)
    q = combination_table([list(c.point) for c in claims], rho, n)
    w = mask_weights(ml, [c.point for c in claims], [r * c.lam for r, c in zip(rho, claims,
                                                                                   strict=True)])
    claimed = sum((r * c.value for r, c in zip(rho, claims, strict=True)), Fp2(0))
    # the masks of Wit and M: one period each (a commitment's mu over its column variables,
    # the low bits of the table), which the sumcheck repeats over the leading variables
    masks = [None, pcs.mask_table(wit_state, 0), None, pcs.mask_table(m_state, 0)]
    tables = [q, wit, w, mtable]
    del q, w
    proof, claim = prove_sumcheck(claims_spec(n, mv), tables, tr, claimed_sum=claimed,
                                  masks=masks, pcs=pcs, rng=rng, bank=bank, consume=True)
    return proof, claim.point


def verify_claims(
    tr: Transcript,
    claims: Sequence[WitClaim],
    proof: SumcheckProof,
    ml: MaskLayout,
    pcs: Ligero,
    bank: tuple[list, int, int],
) -> tuple[list[Fp2], Fp2, Fp2]:
    """Check the reduction; return (its point, the masked value of Wit, the masked value of M)
    that the caller checks with the two openings.

    Raises:
        SumcheckError: a round, the final claim, or a public table Q(r) / W(r) is wrong.
    """
    if not claims:
        raise ParameterError("verify_claims: no claim on Wit")
    n, mv = ml.wit_vars, ml.num_vars
    rho = _rho(tr, claims)
    claimed = sum((r * c.value for r, c in zip(rho, claims, strict=True)), Fp2(0))
    out = verify_sumcheck(claims_spec(n, mv), proof, tr, claimed, pcs=pcs, bank=bank)
    r = out.point[1:]
    eqs = eq_eval_many([c.point for c in claims], r[:n])
    q_val = e_dot(eqs, _ext(rho))
    w_val = mask_weight_eval(ml, [c.point for c in claims],
                             [w * c.lam for w, c in zip(rho, claims, strict=True)], r[:mv])
    if out.evaluations[0] != q_val:
        raise SumcheckError("claim reduction: public table Q(r)", expected=q_val,
                            got=out.evaluations[0])
    if out.evaluations[2] != w_val:
        raise SumcheckError("claim reduction: public table W(r)", expected=w_val,
                            got=out.evaluations[2])
    return out.point, out.evaluations[1], out.evaluations[3]
