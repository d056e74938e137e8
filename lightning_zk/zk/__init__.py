"""Zero-knowledge engine: Goldilocks field, backends, NTT, transcript, sumcheck, Ligero, logUp.

Layer rule: this package imports NumPy (and optionally CuPy via :mod:`.backend`, numba via
``_numba_kernels``) but never Lightning or torch. See ``docs/zk_core.md``.
"""

from .backend import (
    Backend,
    array_module,
    cupy_available,
    get_backend,
    num_threads,
    numba_available,
    set_num_threads,
    to_numpy,
)
from .errors import (
    CommitmentError,
    FieldRangeError,
    LookupError_,
    MerkleError,
    ParameterError,
    ProofFormatError,
    ShapeMismatchError,
    SumcheckError,
    TranscriptError,
    VerificationError,
    ZkError,
)
from .extension import Fp2
from .field import P, from_signed, to_signed
from .ligero import Ligero, LigeroConfig, LigeroParams, LigeroProof
from .lookup import RangeClaim, RangeLayout, RangeProof, prove_range, verify_range
from .multilinear import eq_eval, eq_table, evaluate, fold, tile_mask
from .ntt import intt, ntt
from .pcs import Commitment, LinearFormCommitment, PolynomialCommitment
from .proof_format import decode_proof, encode_proof
from .randomness import ProverRng
from .sumcheck import (
    SumcheckClaim,
    SumcheckProof,
    SumcheckSpec,
    Term,
    prove_sumcheck,
    verify_sumcheck,
)
from .transcript import Transcript

__all__ = [
    "Backend",
    "array_module",
    "cupy_available",
    "get_backend",
    "numba_available",
    "num_threads",
    "set_num_threads",
    "to_numpy",
    "CommitmentError",
    "FieldRangeError",
    "LookupError_",
    "MerkleError",
    "ParameterError",
    "ProofFormatError",
    "ShapeMismatchError",
    "SumcheckError",
    "TranscriptError",
    "VerificationError",
    "ZkError",
    "Fp2",
    "P",
    "from_signed",
    "to_signed",
    "Ligero",
    "LigeroConfig",
    "LigeroParams",
    "LigeroProof",
    "RangeClaim",
    "RangeLayout",
    "RangeProof",
    "prove_range",
    "verify_range",
    "eq_eval",
    "eq_table",
    "evaluate",
    "fold",
    "tile_mask",
    "intt",
    "ntt",
    "Commitment",
    "LinearFormCommitment",
    "PolynomialCommitment",
    "decode_proof",
    "encode_proof",
    "ProverRng",
    "SumcheckClaim",
    "SumcheckProof",
    "SumcheckSpec",
    "Term",
    "prove_sumcheck",
    "verify_sumcheck",
    "Transcript",
]
