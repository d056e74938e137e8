"""Lightning callbacks that commit a verifiable run: the Merkle ledger and checkpoints."""

from .commit import CheckpointError, CommitCallback
from .proof import ProofCallback, ProofError

__all__ = ["CheckpointError", "CommitCallback", "ProofCallback", "ProofError"]
