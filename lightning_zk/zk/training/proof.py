"""Training proof objects and their versioned binary format (never pickled).

Layout (little-endian, typed values as in docs/proof_format.md):

    magic "LZKT" | version u16 (= 4) | kind u16 (1 = unit proof, 2 = chain seal) | body

Unit body: commitments Wit, R (Wit's full mask), v16, vQ; Fp2 list carried point, Fp2 carried
value, list of SumcheckProof bodies (one per relation, in transcript order), RangeProof body
(v16, 16 bits), RangeProof body (vQ), SumcheckProof body (the claim reduction of Wit),
LigeroProof bodies: Wit, R, v16, vQ, B_in, batch openings (version 2 added the batch opening,
version 3 the claim reduction: Wit is opened at one point; version 4 range proofs without a
logUp sum; older proofs are rejected).
Seal body: Fp2 list pending point, Fp2 pending value, Fp2 dummy value, LigeroProof body.
The decoder checks every tag, length and field element and rejects trailing bytes; any
malformation raises :class:`~lightning_zk.zk.errors.ProofFormatError` with the byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..extension import Fp2
from ..ligero import LigeroProof
from ..lookup import RangeProof
from ..pcs import Commitment
from ..proof_format import (
    Framing,
    _get_ligero,
    _get_range,
    _get_sumcheck,
    _put_ligero,
    _put_range,
    _put_sumcheck,
    _Reader,
    _Writer,
)
from ..sumcheck import SumcheckProof

__all__ = [
    "PendingClaim",
    "UnitProof",
    "SealProof",
    "encode_training_proof",
    "decode_training_proof",
    "TRAINING_MAGIC",
    "TRAINING_VERSION",
]

TRAINING_MAGIC = b"LZKT"
TRAINING_VERSION = 4  # 2: batch opened; 3: one Wit opening; 4: zero-knowledge range proofs
KIND_UNIT, KIND_SEAL = 1, 2


@dataclass(frozen=True)
class PendingClaim:
    """A masked claim B_out^(point) = value, discharged by the next unit's opening or a seal."""

    point: tuple[Fp2, ...]
    value: Fp2


@dataclass
class UnitProof:
    wit_commitment: Commitment
    wit_mask_commitment: Commitment  # R: the full mask of Wit (see lightning_zk.zk.reduction)
    v16_commitment: Commitment
    vq_commitment: Commitment
    carried_point: list[Fp2]
    carried_value: Fp2
    sumchecks: list[SumcheckProof]
    range16: RangeProof
    rangeq: RangeProof
    reduction: SumcheckProof  # every Wit claim -> one opening of Wit and one of R
    wit_opening: LigeroProof
    wit_mask_opening: LigeroProof
    v16_opening: LigeroProof
    vq_opening: LigeroProof
    b_in_opening: LigeroProof
    batch_opening: LigeroProof  # the statement's batch commitment, at the batch-link points


@dataclass
class SealProof:
    """Opening of the last unit's B_out at its pending point (ends a chain)."""

    pending_point: list[Fp2]
    pending_value: Fp2
    dummy_value: Fp2
    opening: LigeroProof


def _put_unit(w: _Writer, p: UnitProof) -> None:
    for c in (p.wit_commitment, p.wit_mask_commitment, p.v16_commitment, p.vq_commitment):
        w.commitment(c)
    w.fp2_list(list(p.carried_point))
    w.fp2(p.carried_value)
    w.list_of(p.sumchecks, lambda sc: _put_sumcheck(w, sc))
    _put_range(w, p.range16)
    _put_range(w, p.rangeq)
    _put_sumcheck(w, p.reduction)
    for o in (
        p.wit_opening,
        p.wit_mask_opening,
        p.v16_opening,
        p.vq_opening,
        p.b_in_opening,
        p.batch_opening,
    ):
        _put_ligero(w, o)


def _get_unit(r: _Reader) -> UnitProof:
    return UnitProof(
        wit_commitment=r.commitment("unit.wit_commitment"),
        wit_mask_commitment=r.commitment("unit.wit_mask_commitment"),
        v16_commitment=r.commitment("unit.v16_commitment"),
        vq_commitment=r.commitment("unit.vq_commitment"),
        carried_point=r.fp2_list("unit.carried_point"),
        carried_value=r.fp2("unit.carried_value"),
        sumchecks=r.list_of(lambda: _get_sumcheck(r), "unit.sumchecks"),
        range16=_get_range(r),
        rangeq=_get_range(r),
        reduction=_get_sumcheck(r),
        wit_opening=_get_ligero(r),
        wit_mask_opening=_get_ligero(r),
        v16_opening=_get_ligero(r),
        vq_opening=_get_ligero(r),
        b_in_opening=_get_ligero(r),
        batch_opening=_get_ligero(r),
    )


def _put_seal(w: _Writer, p: SealProof) -> None:
    w.fp2_list(list(p.pending_point))
    w.fp2(p.pending_value)
    w.fp2(p.dummy_value)
    _put_ligero(w, p.opening)


def _get_seal(r: _Reader) -> SealProof:
    return SealProof(
        pending_point=r.fp2_list("seal.pending_point"),
        pending_value=r.fp2("seal.pending_value"),
        dummy_value=r.fp2("seal.dummy_value"),
        opening=_get_ligero(r),
    )


TRAINING_PROOFS = Framing(
    "training proof", TRAINING_MAGIC, TRAINING_VERSION,
    {UnitProof: (KIND_UNIT, _put_unit, _get_unit), SealProof: (KIND_SEAL, _put_seal, _get_seal)},
)


def encode_training_proof(proof: UnitProof | SealProof) -> bytes:
    """Serialise a unit proof or a seal."""
    return TRAINING_PROOFS.encode(proof)


def decode_training_proof(data: bytes, expected_kind: type | None = None) -> Any:
    """Parse bytes into a UnitProof or SealProof; ProofFormatError on anything malformed."""
    return TRAINING_PROOFS.decode(data, expected_kind)
