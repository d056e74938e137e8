"""Polynomial-commitment interfaces (the seam where Ligero can be swapped for Basefold/WHIR).

Two capabilities, each with a tiny required core:

* :class:`PolynomialCommitment` — commit to a multilinear polynomial (base or extension
  valued) given by its table; open it at *several* points in one batched proof; verify.
* :class:`LinearFormCommitment` — commit to a vector and open arbitrary linear forms
  <c, w> (used for the sumcheck masking polynomial, whose evaluation is not an eq-query).

Zero-knowledge contract shared by every implementation: a commitment made with
``num_points = q`` carries q independent random *evaluation masks* mu_j (extension-valued,
over the column variables). Opening point j proves the **masked** value

    P^_j(z) = P(z) + z_1 (1 - z_1) * mu_j(z_col)

which agrees with P on the Boolean hypercube (z_1 in {0, 1}) and is uniformly random off it.
Protocols that consume openings (sumcheck) run on P^_j via ``round1_mask``; the verifier never
sees a plain evaluation of a committed witness polynomial. Each commitment is opened exactly
once (one batched proof), because every opening reveals a fresh set of columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ShapeMismatchError
from .extension import Fp2
from .transcript import Transcript

__all__ = [
    "LAYOUT_MULTILINEAR",
    "LAYOUT_VECTOR",
    "Commitment",
    "PolynomialCommitment",
    "LinearFormCommitment",
]

LAYOUT_MULTILINEAR = 0
LAYOUT_VECTOR = 1


@dataclass(frozen=True)
class Commitment:
    """A commitment: Merkle root plus the public shape it commits to.

    The verifier compares the shape with the statement (``expect``) and derives every code
    parameter from it and its own security configuration, never from the proof.
    """

    root: bytes
    num_vars: int
    extension: bool
    num_points: int
    layout: int = LAYOUT_MULTILINEAR

    def absorb_into(self, transcript: Transcript, label: str) -> None:
        transcript.absorb_u64(
            label + ".shape", self.num_vars, int(self.extension), self.num_points, self.layout
        )
        transcript.absorb_digest(label + ".root", self.root)

    def expect(
        self,
        *,
        num_vars: int,
        extension: bool,
        num_points: int,
        layout: int = LAYOUT_MULTILINEAR,
        what: str = "commitment",
    ) -> None:
        """Raise ShapeMismatchError unless this commitment has the expected public shape."""
        got = (self.num_vars, self.extension, self.num_points, self.layout)
        want = (num_vars, extension, num_points, layout)
        if got != want or len(self.root) != 32:
            raise ShapeMismatchError(
                f"{what} shape (num_vars, extension, num_points, layout)",
                expected=want,
                got=got,
            )


class PolynomialCommitment(ABC):
    """Hiding commitment to multilinear polynomials with batched, masked openings."""

    name: str = "abstract"

    @abstractmethod
    def commit(self, table: Any, *, num_points: int = 1, rng: Any = None) -> tuple[Commitment, Any]:
        """Commit to the table (N,) or (2, N) of a multilinear polynomial; returns (c, state)."""

    @abstractmethod
    def open(self, state: Any, points: Sequence[Sequence[Fp2]], transcript: Transcript) -> Any:
        """Prove the masked values at ``points`` (point j uses mask j)."""

    @abstractmethod
    def verify(
        self,
        commitment: Commitment,
        points: Sequence[Sequence[Fp2]],
        values: Sequence[Fp2],
        proof: Any,
        transcript: Transcript,
    ) -> None:
        """Raise a VerificationError unless ``proof`` shows P^_j(points[j]) == values[j]."""

    @abstractmethod
    def mask_table(self, state: Any, index: int) -> Any:
        """Extension table (2, k) of mu_index over the column variables (prover side)."""

    @abstractmethod
    def masked_evaluate(self, state: Any, point: Sequence[Fp2], index: int) -> Fp2:
        """P^_index(point), the value ``open`` will prove (prover side)."""

    def round1_mask(self, state: Any, index: int) -> Any:
        """Mask table M(x_2..x_n) = mu_index(x_col) for a sumcheck over P's own variables."""
        from .multilinear import tile_mask

        return tile_mask(self.mask_table(state, index), state.num_vars)


class LinearFormCommitment(ABC):
    """Hiding commitment to a vector c with openings of masked linear forms.

    Query j = (w, lam) proves <c, w> + lam * <mu_j, w>, with mu_j the j-th random mask.
    """

    @abstractmethod
    def commit_vector(
        self, vector: Any, *, num_points: int = 1, rng: Any = None
    ) -> tuple[Commitment, Any]: ...

    @abstractmethod
    def open_linear(
        self, state: Any, queries: Sequence[tuple[Any, Fp2]], transcript: Transcript
    ) -> Any: ...

    @abstractmethod
    def verify_linear(
        self,
        commitment: Commitment,
        queries: Sequence[tuple[Any, Fp2]],
        values: Sequence[Fp2],
        proof: Any,
        transcript: Transcript,
    ) -> None: ...

    @abstractmethod
    def vector_mask(self, state: Any, index: int) -> Any:
        """Extension array (2, L) of mu_index (prover side)."""
