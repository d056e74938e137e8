"""Verifier of training proof units, of the chain seal, and of whole chains.

Mirrors :mod:`.prover` absorb for absorb. A unit verifies the relations of its steps, every
opening of Wit, v16, vQ, B_in and the batch commitment, and returns the *pending* claim on B_out that the next unit
(or the seal) must discharge; :func:`verify_chain` links units and requires the seal, so only
a complete chain binds the final weights commitment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ...fixed.engine import mse_constant
from ...fixed.format import FixedPointConfig
from ..errors import ShapeMismatchError, SumcheckError, TranscriptError, VerificationError
from ..extension import Fp2
from ..ligero import Ligero, LigeroConfig
from ..lookup import verify_range
from ..policy import VerifierPolicy
from ..reduction import verify_reduction
from ..sumcheck import verify_sumcheck
from ..transcript import Transcript
from .batch import batch_layout, count_batch_claims
from .common import SEAL_DOMAIN, UNIT_DOMAIN, ChainError, slot_of
from .layout import build_layout
from .placement import opening_point
from .proof import PendingClaim, SealProof, UnitProof
from .relations import Committed, public_value, range_packings, relation_builders
from .statement import TrainingStatement

__all__ = ["verify_unit", "verify_step", "verify_epoch", "verify_seal", "verify_chain"]


def check_statement(stmt: TrainingStatement, policy: VerifierPolicy | None = None) -> LigeroConfig:
    """Reject statements below the verifier's policy or whose constants could let values wrap
    in the field; return the commitment configuration to verify the statement's proofs with.

    Raises:
        SecurityPolicyError: ``security_bits``/``blowup`` not accepted by ``policy``
            (default: :class:`~lightning_zk.zk.policy.VerifierPolicy`, at least 100 bits).
        TranscriptError: fixed-point parameters, MSE constant or learning rate out of range.
    """
    config = (policy or VerifierPolicy()).ligero_config(stmt.security_bits, stmt.blowup)
    try:
        cfg = FixedPointConfig(stmt.frac_bits, stmt.value_bits)
        cfg.check_fan_in(max(*stmt.dims, stmt.batch_size))
    except ValueError as exc:
        raise TranscriptError("statement fixed-point parameters", detail=str(exc)) from exc
    want = mse_constant(stmt.batch_size, stmt.dims[-1], stmt.frac_bits)
    if stmt.mse_const != want:
        raise TranscriptError("statement MSE constant", expected=want, got=stmt.mse_const)
    if not 0 < stmt.lr < 1 << stmt.frac_bits:
        raise TranscriptError("statement learning rate in (0, 2^s)", got=stmt.lr)
    return config


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
    layout = build_layout(stmt.arch, _names(stmt))
    proof.wit_commitment.expect(
        num_vars=layout.wit_vars, extension=False, num_points=1, what="Wit commitment"
    )
    proof.wit_mask_commitment.expect(
        num_vars=layout.wit_vars - 1, extension=False, num_points=1, what="Wit mask commitment"
    )
    p16, pq = range_packings(layout, stmt.frac_bits, stmt.value_bits)
    for com, what, pack in ((proof.v16_commitment, "v16", p16), (proof.vq_commitment, "vQ", pq)):
        com.expect(num_vars=pack.num_vars, extension=False, num_points=2, what=what)
    for com, what in ((stmt.weights_in, "B_in"), (stmt.weights_out, "B_out")):
        com.expect(num_vars=layout.b_vars, extension=False, num_points=2, what=what)
    stmt.batch.expect(
        num_vars=batch_layout(layout.arch).num_vars,
        extension=False,
        num_points=count_batch_claims(layout),
        what="batch commitment",
    )
    tr = Transcript(UNIT_DOMAIN)
    stmt.absorb(tr)
    proof.wit_commitment.absorb_into(tr, "unit.wit")
    proof.wit_mask_commitment.absorb_into(tr, "unit.wit_mask")
    proof.v16_commitment.absorb_into(tr, "unit.v16")
    proof.vq_commitment.absorb_into(tr, "unit.vq")
    c_point = list(proof.carried_point)
    if len(c_point) != layout.b_vars:
        raise ShapeMismatchError("carried point length", expected=layout.b_vars, got=len(c_point))
    if stmt.chain_start:
        want = tr.challenge_ext_list("chain.initial", layout.b_vars)
        if c_point != want:
            raise ChainError("initial carried point", expected=want, got=c_point)
    elif carried is not None and (tuple(c_point), proof.carried_value) != (
        carried.point,
        carried.value,
    ):
        raise ChainError(
            "carried claim = previous unit's pending claim on B_out",
            expected=carried,
            got=(c_point, proof.carried_value),
        )
    tr.absorb_ext("chain.carried_point", c_point)
    tr.absorb_ext("chain.carried_value", proof.carried_value)

    builders = relation_builders(layout, stmt)
    if len(proof.sumchecks) != len(builders):
        raise ShapeMismatchError(
            "number of relation sumchecks", expected=len(builders), got=len(proof.sumchecks)
        )
    claims: dict[str, dict[int, tuple[list[Fp2], Fp2]]] = {
        k: {} for k in ("wit", "v16", "vq", "bin", "bout", "batch")
    }
    next_wit = 0
    for build, scp in zip(builders, proof.sumchecks, strict=True):
        rel = build(tr)
        with _stage(f"relation {rel.name}"):
            claim = verify_sumcheck(rel.spec(), scp, tr, rel.claimed, pcs=pcs)
        for k, f in enumerate(rel.factors):
            got = claim.evaluations[k]
            if isinstance(f, Committed):
                if f.mask_index is None:
                    j, next_wit = next_wit, next_wit + 1
                else:
                    j = f.mask_index
                full = f.assign + tuple(slot_of(layout, f).code)
                claims[f.com][j] = (opening_point(full, claim.point), got)
            else:
                want = public_value(f, claim.point)
                if got != want:
                    raise SumcheckError(f"{rel.name}: public factor {k}", expected=want, got=got)
    for name, rp, pack, bits, what in (
        ("v16", proof.range16, p16, stmt.frac_bits, "remainders (v16)"),
        ("vq", proof.rangeq, pq, stmt.value_bits, "values and signs (vQ)"),
    ):
        with _stage(f"range check of {what}"):
            rc = verify_range(tr, rp, num_vars=pack.num_vars, bits=bits, pcs=pcs)
        claims[name][1] = (rc.point, rc.value)
    wit = [claims["wit"][j] for j in range(next_wit)]
    with _stage("claim reduction of Wit"):
        wp, wv, rp, rv = verify_reduction(
            tr, [p for p, _ in wit], [v for _, v in wit], proof.reduction, pcs
        )
    with _stage("opening of Wit"):
        pcs.verify(proof.wit_commitment, [wp], [wv], proof.wit_opening, tr)
    with _stage("opening of Wit's mask"):
        pcs.verify(proof.wit_mask_commitment, [rp], [rv], proof.wit_mask_opening, tr)
    for name, com, opening in (
        ("v16", proof.v16_commitment, proof.v16_opening),
        ("vq", proof.vq_commitment, proof.vq_opening),
    ):
        c = claims[name]
        with _stage(f"opening of {name}"):
            pcs.verify(com, [c[0][0], c[1][0]], [c[0][1], c[1][1]], opening, tr)
    b = claims["bin"][1]
    with _stage("opening of B_in (weights before)"):
        pcs.verify(
            stmt.weights_in, [c_point, b[0]], [proof.carried_value, b[1]], proof.b_in_opening, tr
        )
    bc = [claims["batch"][j] for j in range(count_batch_claims(layout))]
    with _stage("opening of the batch commitment"):
        pcs.verify(stmt.batch, [p for p, _ in bc], [v for _, v in bc], proof.batch_opening, tr)
    out = claims["bout"][0]
    return PendingClaim(tuple(out[0]), out[1])


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Re-raise a sub-protocol's VerificationError with the training stage that failed."""
    try:
        yield
    except VerificationError as exc:
        raise type(exc)(
            f"{name}: {exc.check}", round=exc.round, expected=exc.expected, got=exc.got
        ) from exc


def _names(stmt: TrainingStatement) -> list[str]:
    from ...fixed.tape import tensor_names

    return tensor_names(len(stmt.dims) - 1)


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
    if (tuple(seal.pending_point), seal.pending_value) != (pending.point, pending.value):
        raise ChainError(
            "seal covers the last pending claim",
            expected=pending,
            got=(seal.pending_point, seal.pending_value),
        )
    tr = Transcript(SEAL_DOMAIN)
    stmt.absorb(tr)
    tr.absorb_ext("seal.pending_point", list(pending.point))
    tr.absorb_ext("seal.pending_value", pending.value)
    dummy = tr.challenge_ext_list("seal.dummy", stmt.weights_out.num_vars)
    tr.absorb_ext("seal.dummy_value", seal.dummy_value)
    pcs.verify(
        stmt.weights_out,
        [list(pending.point), dummy],
        [pending.value, seal.dummy_value],
        seal.opening,
        tr,
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
            keep = (
                "dims",
                "batch_size",
                "frac_bits",
                "value_bits",
                "lr",
                "mse_const",
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
