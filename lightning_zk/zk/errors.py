"""Typed errors of the zk engine.

Every verification failure raises a subclass of :class:`VerificationError` that names the check
and carries what mismatched (round, expected, got), so a rejected proof says *why* it was
rejected. Malformed bytes raise :class:`ProofFormatError`; bad arguments from a caller raise
:class:`ParameterError`. Nothing in the engine signals failure by returning ``False``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ZkError",
    "ParameterError",
    "FieldRangeError",
    "ProofFormatError",
    "VerificationError",
    "TranscriptError",
    "SumcheckError",
    "CommitmentError",
    "MerkleError",
    "LookupError_",
    "ShapeMismatchError",
]


class ZkError(Exception):
    """Base class of every error raised by :mod:`lightning_zk.zk`."""


class ParameterError(ZkError, ValueError):
    """A caller passed an argument that breaks a documented rule (shape, size, range)."""


class FieldRangeError(ParameterError):
    """A value does not fit the field encoding (e.g. a fixed-point integer outside (-p/2, p/2))."""


class ProofFormatError(ZkError, ValueError):
    """Proof bytes are malformed: truncated, trailing bytes, bad tag, bad length, value >= p."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        self.offset = offset
        where = f" (at byte {offset})" if offset is not None else ""
        super().__init__(message + where)


class VerificationError(ZkError):
    """A proof was checked and rejected.

    Attributes:
        check: short name of the failed check (e.g. ``"round sum"``).
        round: protocol round or index where it failed, if any.
        expected: the value the verifier computed.
        got: the value the proof supplied.
    """

    def __init__(
        self,
        check: str,
        *,
        round: int | None = None,  # noqa: A002 - the protocol's own word
        expected: Any = None,
        got: Any = None,
        detail: str = "",
    ) -> None:
        self.check = check
        self.round = round
        self.expected = expected
        self.got = got
        parts = [f"{type(self).__name__}: {check} failed"]
        if round is not None:
            parts.append(f"round={round}")
        if expected is not None or got is not None:
            parts.append(f"expected={_short(expected)} got={_short(got)}")
        if detail:
            parts.append(detail)
        super().__init__("; ".join(parts))


class TranscriptError(VerificationError):
    """A transcript-level check failed (e.g. proof for another statement / parameter set)."""


class ShapeMismatchError(VerificationError):
    """A proof element has the wrong length or shape for the statement being verified."""


class SumcheckError(VerificationError):
    """A sumcheck round polynomial or the final claim did not check out."""


class CommitmentError(VerificationError):
    """A polynomial-commitment opening did not check out (column, combined row, evaluation)."""


class MerkleError(CommitmentError):
    """A Merkle authentication path does not lead to the committed root."""


class LookupError_(VerificationError):  # noqa: N801 - avoid shadowing builtins.LookupError
    """A logUp lookup / range-check claim did not check out."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
