"""Training proof objects and their versioned binary format (never pickled).

Layout (little-endian, typed values as in docs/proof_format.md):

    magic "LZKT" | version u16 (= 6) | kind u16 (1 = unit proof, 2 = chain seal) | body

Unit body: commitments Wit (with the range limbs), M (with the multiplicities), the sumcheck
mask bank, the range inverses h, the range table side q; Fp2 list carried point, Fp2 carried
lambda, Fp2 carried value; list of SumcheckProof bodies (the relations in transcript order, then
the range check, then the claim reduction; each without a mask commitment or opening of its own:
the bank answers them); LigeroProof bodies: Wit, M, bank, h, q, B_in, batch. Seal body: Fp2 list
pending point, Fp2 pending lambda, Fp2 pending value, Fp2 dummy value, LigeroProof body. Older
versions (1: no batch opening; 2: Wit opened at every claim; 3: range proofs sending their logUp
sum; 4: packed range vectors, a full-size mask of Wit and a zero instance per step; 5: sumcheck
masking polynomials with F_p coefficients) are rejected. The decoder checks every tag, length and field element and rejects trailing bytes;
any malformation raises :class:`~lightning_zk.zk.errors.ProofFormatError` with the byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..extension import Fp2
from ..ligero import LigeroProof
from ..pcs import Commitment
from ..proof_format import (
    Framing,
    _get_ligero,
    _get_sumcheck,
    _put_ligero,
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
    "proof_part_sizes",
    "TRAINING_MAGIC",
    "TRAINING_VERSION",
]

TRAINING_MAGIC = b"LZKT"
TRAINING_VERSION = 6  # 5: range check over Wit, block mask, mask bank; 6: F_p2 sumcheck masks
KIND_UNIT, KIND_SEAL = 1, 2


@dataclass(frozen=True)
class PendingClaim:
    """A masked claim B_out^(point) = value (mask lambda ``lam``), discharged by the next unit's
    opening of its B_in or by a seal."""

    point: tuple[Fp2, ...]
    value: Fp2
    lam: Fp2


@dataclass
class UnitProof:
    wit_commitment: Commitment  # Wit and the range limbs (one matrix)
    mask_commitment: Commitment  # the block mask M and the range multiplicities
    bank_commitment: Commitment  # the Libra masks of every sumcheck of the unit
    inv_commitment: Commitment  # the range inverses h_c
    q_commitment: Commitment  # the range table side q = m / (beta + T)
    carried_point: list[Fp2]
    carried_lam: Fp2
    carried_value: Fp2
    sumchecks: list[SumcheckProof]  # relations, range check, claim reduction
    wit_opening: LigeroProof
    mask_opening: LigeroProof
    bank_opening: LigeroProof
    inv_opening: LigeroProof
    q_opening: LigeroProof
    b_in_opening: LigeroProof
    batch_opening: LigeroProof  # the statement's batch commitment, at the batch-link points

    _COMMITMENTS = ("wit_commitment", "mask_commitment", "bank_commitment", "inv_commitment",
                    "q_commitment")
    _OPENINGS = ("wit_opening", "mask_opening", "bank_opening", "inv_opening", "q_opening",
                 "b_in_opening", "batch_opening")


@dataclass
class SealProof:
    """Opening of the last unit's B_out at its pending point (ends a chain)."""

    pending_point: list[Fp2]
    pending_lam: Fp2
    pending_value: Fp2
    dummy_value: Fp2
    opening: LigeroProof


def _put_unit(w: _Writer, p: UnitProof) -> None:
    for name in UnitProof._COMMITMENTS:
        w.commitment(getattr(p, name))
    w.fp2_list(list(p.carried_point))
    w.fp2(p.carried_lam)
    w.fp2(p.carried_value)
    w.list_of(p.sumchecks, lambda sc: _put_sumcheck(w, sc))
    for name in UnitProof._OPENINGS:
        _put_ligero(w, getattr(p, name))


def _get_unit(r: _Reader) -> UnitProof:
    coms = {name: r.commitment(f"unit.{name}") for name in UnitProof._COMMITMENTS}
    point = r.fp2_list("unit.carried_point")
    lam = r.fp2("unit.carried_lam")
    value = r.fp2("unit.carried_value")
    sumchecks = r.list_of(lambda: _get_sumcheck(r), "unit.sumchecks")
    openings = {name: _get_ligero(r) for name in UnitProof._OPENINGS}
    return UnitProof(**coms, carried_point=point, carried_lam=lam, carried_value=value,
                     sumchecks=sumchecks, **openings)


def _put_seal(w: _Writer, p: SealProof) -> None:
    w.fp2_list(list(p.pending_point))
    w.fp2(p.pending_lam)
    w.fp2(p.pending_value)
    w.fp2(p.dummy_value)
    _put_ligero(w, p.opening)


def _get_seal(r: _Reader) -> SealProof:
    return SealProof(
        pending_point=r.fp2_list("seal.pending_point"),
        pending_lam=r.fp2("seal.pending_lam"),
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


def proof_part_sizes(proof: UnitProof) -> dict[str, int]:
    """Encoded bytes of each part of a unit proof (commitments, carried claim, each sumcheck
    group, each opening); the values add up to the encoding minus its header and list framing."""
    sizes: dict[str, int] = {}

    def measure(name: str, put: Any) -> None:
        w = _Writer()
        put(w)
        sizes[name] = sum(len(b) for b in w.parts)

    measure("commitments", lambda w: [w.commitment(getattr(proof, n))
                                      for n in UnitProof._COMMITMENTS])
    measure("carried claim", lambda w: (w.fp2_list(list(proof.carried_point)),
                                        w.fp2(proof.carried_lam), w.fp2(proof.carried_value)))
    *relations, range_sc, reduction_sc = proof.sumchecks
    measure("sumchecks: relations", lambda w: [_put_sumcheck(w, sc) for sc in relations])
    measure("sumcheck: range check", lambda w: _put_sumcheck(w, range_sc))
    measure("sumcheck: claim reduction", lambda w: _put_sumcheck(w, reduction_sc))
    for name in UnitProof._OPENINGS:
        measure(f"opening: {name.removesuffix('_opening')}",
                lambda w, name=name: _put_ligero(w, getattr(proof, name)))
    return sizes
