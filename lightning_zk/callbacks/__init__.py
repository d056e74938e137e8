"""Lightning callbacks that commit a verifiable run: the Merkle ledger and checkpoints."""

from .commit import CommitCallback
from .proof import ProofCallback, ProofError

__all__ = ["CommitCallback", "ProofCallback", "ProofError"]
