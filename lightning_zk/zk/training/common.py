"""Pieces shared by the training prover and verifier (domain separators, errors, slots)."""

from __future__ import annotations

from ..errors import VerificationError
from .layout import Layout, TensorSlot
from .relations import Committed

__all__ = ["UNIT_DOMAIN", "SEAL_DOMAIN", "ChainError", "slot_of"]

UNIT_DOMAIN = b"lightning-zk/training/unit/v1"
SEAL_DOMAIN = b"lightning-zk/training/seal/v1"


class ChainError(VerificationError):
    """Proof units do not form a chain (missing/reordered step, other commitments, no seal)."""


_IDENTITY = TensorSlot((), ())


def slot_of(layout: Layout, f: Committed) -> TensorSlot:
    """Where factor ``f``'s tensor sits in its commitment (identity for whole tables)."""
    if f.slot == "ALL":
        return _IDENTITY
    if f.com in ("bin", "bout"):
        return layout.theta[f.slot]
    if f.com == "batch":
        from .batch import batch_layout

        return batch_layout(layout.arch)[f.slot]
    return layout.slot(f.slot)
