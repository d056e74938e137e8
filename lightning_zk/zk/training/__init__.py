"""Zero-knowledge proofs of fixed-point SGD steps (zkDL / FAC4DNN style). See docs/zk_training.md.

Layer rule: NumPy (+ CuPy through the zk backend) and :mod:`lightning_zk.fixed` only.
"""

from .batch import BatchCheckError, batch_commitment, check_batch
from .common import ChainError
from .layout import Arch, Layout, build_layout
from .proof import (
    PendingClaim,
    SealProof,
    UnitProof,
    decode_training_proof,
    encode_training_proof,
    proof_part_sizes,
)
from .prover import ChainLink, prove_epoch, prove_seal, prove_step, prove_unit, resume_link
from .statement import TrainingStatement
from .verifier import (
    check_statement,
    verify_chain,
    verify_epoch,
    verify_seal,
    verify_step,
    verify_unit,
)
from .witness import WitnessError, check_witness

__all__ = [
    "BatchCheckError",
    "batch_commitment",
    "check_batch",
    "ChainError",
    "Arch",
    "Layout",
    "build_layout",
    "PendingClaim",
    "SealProof",
    "UnitProof",
    "decode_training_proof",
    "encode_training_proof",
    "proof_part_sizes",
    "ChainLink",
    "prove_epoch",
    "prove_seal",
    "prove_step",
    "prove_unit",
    "resume_link",
    "TrainingStatement",
    "check_statement",
    "verify_chain",
    "verify_epoch",
    "verify_seal",
    "verify_step",
    "verify_unit",
    "WitnessError",
    "check_witness",
]
