"""Verifier of training proof units, of the chain seal, and of whole chains.

Mirrors :mod:`.prover` absorb for absorb. A unit verifies the relations of its steps, the range
check of every witness value, the reduction of all Wit claims, and one batched opening of each
commitment (the sumcheck mask bank, Wit with the range limbs, M with the multiplicities, the
range inverses h, the range table side q, B_in, the batch commitment), and returns the *pending*
claim on B_out that the next unit (or the seal) must discharge; :func:`verify_chain` links units
and requires the seal, so only a complete chain binds the final weights commitment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ...fixed.engine import loss_constant
from ...fixed.format import FixedPointConfig
from ...fixed.softmax import MAX_FRAC_BITS, max_classes
from ..errors import ShapeMismatchError, SumcheckError, TranscriptError, VerificationError
from ..extension import Fp2
from ..ligero import Ligero, LigeroConfig, Query
from ..policy import VerifierPolicy
from ..sumcheck import verify_bank, verify_sumcheck
from ..transcript import Transcript
from .batch import batch_layout
from .claims import WitClaim, verify_claims
from .common import SEAL_DOMAIN, UNIT_DOMAIN, ChainError, UnitShape, slot_of
from .placement import opening_point
from .proof import PendingClaim, SealProof, UnitProof
from .ranges import range_challenges, range_index, range_public_checks, range_spec
from .relations import Committed, public_value, relation_builders
from .statement import TrainingStatement

__all__ = ["verify_unit", "verify_step", "verify_epoch", "verify_seal", "verify_chain"]


def check_statement(stmt: TrainingStatement, policy: VerifierPolicy | None = None) -> LigeroConfig:
    """Reject statements below the verifier's policy or whose constants could let values wrap
    in the field; return the commitment configuration to verify the statement's proofs with.

    Raises:
        SecurityPolicyError: ``security_bits``/``blowup`` not accepted by ``policy``
            (default: :class:`~lightning_zk.zk.policy.VerifierPolicy`, at least 100 bits).
        TranscriptError: fixed-point parameters, MSE constant, learning rate, momentum or weight
            decay out of range.
    """
    config = (policy or VerifierPolicy()).ligero_config(stmt.security_bits, stmt.blowup)
    try:
        cfg = FixedPointConfig(stmt.frac_bits, stmt.value_bits)
        arch = stmt.arch
        cfg.check_fan_in(max(*stmt.dims, stmt.batch_size, arch.rows(1),
                             *(arch.fan(i) for i in range(1, arch.num_layers + 1))))
    except ValueError as exc:
        raise TranscriptError("statement fixed-point parameters", detail=str(exc)) from exc
    if arch.conv is not None and not arch.conv.provable:
        raise TranscriptError("statement conv: output height and width must be powers of two "
                              "(the Flatten is then a relabelling)", got=stmt.conv)
    want = loss_constant(stmt.loss, stmt.batch_size, stmt.dims[-1], stmt.frac_bits)
    if stmt.mse_const != want:
        raise TranscriptError(f"statement {stmt.loss} gradient constant", expected=want,
                              got=stmt.mse_const)
    if stmt.loss == "xent" and (stmt.dims[-1] > max_classes(stmt.frac_bits, stmt.value_bits)
                                or stmt.frac_bits > MAX_FRAC_BITS):
        raise TranscriptError("statement cross-entropy: classes <= max_classes(s, Q), "
                              f"s <= {MAX_FRAC_BITS}", got=(stmt.dims[-1], stmt.frac_bits))
    if not 0 < stmt.lr < 1 << stmt.frac_bits:
        raise TranscriptError("statement learning rate in (0, 2^s)", got=stmt.lr)
    for name in ("momentum", "weight_decay"):  # SGD's other constants, as the engine bounds them
        if not 0 <= getattr(stmt, name) < 1 << stmt.frac_bits:
            raise TranscriptError(f"statement {name} in [0, 2^s)", got=getattr(stmt, name))
    return config


def _lam(point: Sequence[Fp2]) -> Fp2:
    return point[0] * (1 - point[0])


def verify_unit(
    proof: UnitProof,
    stmt: TrainingStatement,
    carried: PendingClaim | None = None,
    *,
    policy: VerifierPolicy | None = None,
) -> PendingClaim:
    """Check one unit proof against its statement; return the pending claim on B_out.

    Args:
        carried: the previous unit's pending claim (required to link a non-initial unit;
            :func:`verify_chain` passes it).
        policy: the verifier's security policy (default: at least 100 bits); the statement's
            commitment parameters must satisfy it, and every code parameter is derived here.
    Raises:
        VerificationError (a subclass naming the failed check) on any mismatch;
        SecurityPolicyError when the statement asks for less than the policy.
    """
    pcs = Ligero(check_statement(stmt, policy))
    shape = UnitShape(stmt)
    layout, ml, wr = shape.layout, shape.masks, shape.ranges
    n, b = layout.wit_vars, wr.limb_bits
    wit_c = proof.wit_commitment
    wit_c.expect(num_vars=n, extension=False, num_points=1 + wr.columns, what="Wit commitment")
    proof.mask_commitment.expect(num_vars=ml.num_vars, extension=False, num_points=2,
                                 what="mask commitment")
    proof.inv_commitment.expect(num_vars=n, extension=True, num_points=wr.columns,
                                what="range inverse commitment")
    proof.q_commitment.expect(num_vars=b, extension=True, num_points=1, what="range table side")
    for com, what in ((stmt.weights_in, "B_in"), (stmt.weights_out, "B_out")):
        com.expect(num_vars=layout.b_vars, extension=False, num_points=2, what=what)
    bl = batch_layout(layout.arch)
    batch_points = 2
    stmt.batch.expect(num_vars=bl.num_vars, extension=False, num_points=batch_points,
                      what="batch commitment")
    specs = shape.specs
    if len(proof.sumchecks) != len(specs):
        raise ShapeMismatchError("number of sumchecks", expected=len(specs),
                                 got=len(proof.sumchecks))
    tr = Transcript(UNIT_DOMAIN)
    stmt.absorb(tr)
    wit_c.absorb_into(tr, "unit.wit")
    proof.mask_commitment.absorb_into(tr, "unit.mask")
    proof.bank_commitment.absorb_into(tr, "unit.bank")
    c_point = list(proof.carried_point)
    if len(c_point) != layout.b_vars:
        raise ShapeMismatchError("carried point length", expected=layout.b_vars, got=len(c_point))
    if stmt.chain_start:
        want = tr.challenge_ext_list("chain.initial", layout.b_vars)
        if c_point != want or proof.carried_lam != _lam(want):
            raise ChainError("initial carried point", expected=want, got=c_point)
    elif carried is not None and (tuple(c_point), proof.carried_value, proof.carried_lam) != (
        carried.point, carried.value, carried.lam,
    ):
        raise ChainError(
            "carried claim = previous unit's pending claim on B_out",
            expected=carried,
            got=(c_point, proof.carried_value, proof.carried_lam),
        )
    tr.absorb_ext("chain.carried_point", c_point)
    tr.absorb_ext("chain.carried", [proof.carried_lam, proof.carried_value])

    bank_queries: list = []
    length = _bank_length(specs)
    wit_claims: list[WitClaim] = []
    other: dict[str, dict[int, tuple[list[Fp2], Fp2, Fp2]]] = {"bin": {}, "bout": {}, "batch": {}}
    builders = relation_builders(layout, stmt)
    for row, (build, scp) in enumerate(zip(builders, proof.sumchecks, strict=False)):
        rel = build(tr)
        with _stage(f"relation {rel.name}"):
            claim = verify_sumcheck(rel.spec(), scp, tr, rel.claimed, pcs=pcs,
                                    bank=(bank_queries, row, length))
        lam, real = _lam(claim.point), claim.point[1:]
        for k, f in enumerate(rel.factors):
            got = claim.evaluations[k]
            if isinstance(f, Committed):
                full = f.assign + tuple(slot_of(layout, f).code)
                pt = opening_point(full, real)
                if f.com == "wit":
                    wit_claims.append(WitClaim(tuple(pt), lam, got))
                else:
                    other[f.com][f.mask_index] = (pt, lam, got)
            else:
                want = public_value(f, real)
                if got != want:
                    raise SumcheckError(f"{rel.name}: public factor {k}", expected=want, got=got)

    # the range check
    beta = tr.challenge_ext("range.beta")
    proof.inv_commitment.absorb_into(tr, "unit.inv")
    proof.q_commitment.absorb_into(tr, "unit.q")
    ch = range_challenges(tr, wr, beta)
    ix = range_index(wr)
    with _stage("range check"):
        rc = verify_sumcheck(range_spec(wr, ch), proof.sumchecks[len(builders)], tr, 0, pcs=pcs,
                             bank=(bank_queries, len(builders), length))
        for check, expected, got in range_public_checks(wr, ch, rc.point[1:], rc.evaluations):
            if expected != got:
                raise SumcheckError(f"range check: public table {check}", expected=expected,
                                    got=got)
    r_lam, pw, pt = _lam(rc.point), rc.point[1 : 1 + n], rc.point[1 : 1 + b]
    ev = rc.evaluations
    wit_claims.append(WitClaim(tuple(pw), r_lam, ev[ix["wit"]]))

    with _stage("claim reduction of Wit"):
        d_point, d_wit, d_mask = verify_claims(tr, wit_claims, proof.sumchecks[-1], ml, pcs,
                                               (bank_queries, len(builders) + 1, length))
    d_lam, dw, dm = _lam(d_point), d_point[1 : 1 + n], d_point[1 : 1 + ml.num_vars]

    with _stage("opening of the sumcheck mask bank"):
        verify_bank(proof.bank_commitment, specs, [q for q, _ in bank_queries],
                    [v for _, v in bank_queries], proof.bank_opening, tr, pcs)
    with _stage("opening of Wit and the range limbs"):
        qs = [Query(tuple(dw), d_lam, 0)] + [Query(tuple(pw), r_lam, 1 + c)
                                              for c in range(wr.columns)]
        vals = [d_wit] + [ev[ix["A"][c]] for c in range(wr.columns)]
        pcs.verify_queries(wit_c, shape.wit_shapes, qs, vals, proof.wit_opening, tr,
                           shape.wit_support)
    with _stage("opening of M and the multiplicities"):
        pcs.verify_queries(proof.mask_commitment, shape.mask_shapes,
                           [Query(tuple(dm), d_lam, 0), Query(tuple(pt), r_lam, 1)],
                           [d_mask, ev[ix["m"]]], proof.mask_opening, tr)
    with _stage("opening of the range inverses"):
        pcs.verify_queries(proof.inv_commitment, shape.inv_shapes,
                           [Query(tuple(pw), r_lam, c) for c in range(wr.columns)],
                           [ev[ix["h"][c]] for c in range(wr.columns)], proof.inv_opening, tr,
                           shape.wit_support)
    with _stage("opening of the range table side"):
        pcs.verify_queries(proof.q_commitment, ((b, True),), [Query(tuple(pt), r_lam, 0)],
                           [ev[ix["q"]]], proof.q_opening, tr)
    bp, blam, bval = other["bin"][1]
    with _stage("opening of B_in (weights before)"):
        pcs.verify_queries(stmt.weights_in, ((layout.b_vars, False),),
                           [Query(tuple(c_point), proof.carried_lam), Query(tuple(bp), blam)],
                           [proof.carried_value, bval], proof.b_in_opening, tr,
                           shape.theta_support)
    bc = [other["batch"][j] for j in range(batch_points)]
    with _stage("opening of the batch commitment"):
        pcs.verify_queries(stmt.batch, ((bl.num_vars, False),),
                           [Query(tuple(p), lam) for p, lam, _ in bc], [v for _, _, v in bc],
                           proof.batch_opening, tr)
    op, olam, oval = other["bout"][0]
    return PendingClaim(tuple(op), oval, olam)


def _bank_length(specs) -> int:
    from ..sumcheck import bank_row_length

    return bank_row_length(specs)


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Re-raise a sub-protocol's VerificationError with the training stage that failed."""
    try:
        yield
    except VerificationError as exc:
        raise type(exc)(
            f"{name}: {exc.check}", round=exc.round, expected=exc.expected, got=exc.got
        ) from exc


verify_step = verify_unit
verify_epoch = verify_unit


def verify_seal(
    seal: SealProof,
    stmt: TrainingStatement,
    pending: PendingClaim,
    *,
    policy: VerifierPolicy | None = None,
) -> None:
    """Check the opening that discharges the last unit's pending claim on B_out, under the
    parameters of the last unit's statement (which ``policy`` must accept)."""
    pcs = Ligero(check_statement(stmt, policy))
    if (tuple(seal.pending_point), seal.pending_value, seal.pending_lam) != (
        pending.point, pending.value, pending.lam,
    ):
        raise ChainError(
            "seal covers the last pending claim",
            expected=pending,
            got=(seal.pending_point, seal.pending_value, seal.pending_lam),
        )
    shape = UnitShape(stmt)
    tr = Transcript(SEAL_DOMAIN)
    stmt.absorb(tr)
    tr.absorb_ext("seal.pending_point", list(pending.point))
    tr.absorb_ext("seal.pending", [pending.lam, pending.value])
    dummy = tr.challenge_ext_list("seal.dummy", stmt.weights_out.num_vars)
    tr.absorb_ext("seal.dummy_value", seal.dummy_value)
    pcs.verify_queries(
        stmt.weights_out, ((shape.layout.b_vars, False),),
        [Query(tuple(pending.point), pending.lam), Query(tuple(dummy), None)],
        [pending.value, seal.dummy_value], seal.opening, tr, shape.theta_support,
    )


def verify_chain(
    statements: Sequence[TrainingStatement],
    proofs: Sequence[UnitProof],
    seal: SealProof | None,
    *,
    policy: VerifierPolicy | None = None,
) -> int:
    """Verify consecutive units from the start of a run and the seal; return steps covered.

    Every unit and the seal are checked under ``policy`` (default: at least 100 bits).

    Raises:
        ChainError: empty chain, a unit that does not start the chain first, a gap or overlap
            in step indices, B_in of a unit not equal to B_out of the previous one, a carried
            claim that is not the previous pending claim, public parameters or the run that
            change along the chain, or a missing seal.
        SecurityPolicyError: a statement below the policy.
    """
    if not statements or len(statements) != len(proofs):
        raise ChainError("chain length", expected=len(statements), got=len(proofs))
    pending: PendingClaim | None = None
    prev: TrainingStatement | None = None
    for u, (stmt, proof) in enumerate(zip(statements, proofs, strict=True)):
        if stmt.chain_start != (u == 0):
            raise ChainError("only the first unit starts the chain", round=u)
        if prev is not None:
            if stmt.step_start != prev.step_start + prev.num_steps:
                raise ChainError(
                    "consecutive steps",
                    round=u,
                    expected=prev.step_start + prev.num_steps,
                    got=stmt.step_start,
                )
            if stmt.weights_in != prev.weights_out:
                raise ChainError("B_in of unit = B_out of previous unit", round=u)
            # (the learning rate may change between units — an LR schedule —: each unit's
            # relations use its own statement's; the chain links the weights, not the rate)
            keep = (
                "dims",
                "batch_size",
                "frac_bits",
                "value_bits",
                "mse_const",
                "momentum",
                "weight_decay",
                "loss",
                "security_bits",
                "blowup",
                "run_id",
            )
            changed = [k for k in keep if getattr(stmt, k) != getattr(prev, k)]
            if changed:
                raise ChainError(
                    "public parameters constant along the chain", round=u,
                    expected={k: getattr(prev, k) for k in changed},
                    got={k: getattr(stmt, k) for k in changed},
                )
        pending = verify_unit(proof, stmt, carried=pending, policy=policy)
        prev = stmt
    if seal is None or pending is None or prev is None:
        raise ChainError("chain seal", expected="present", got="missing")
    verify_seal(seal, prev, pending, policy=policy)
    return prev.step_start + prev.num_steps - statements[0].step_start
