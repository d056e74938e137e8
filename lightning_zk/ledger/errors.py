"""Typed errors of a run directory (shared by the reader, the schema, the lock and the claims).

Every error names the file, the field or step, and what is wrong, so that a command line can print
it as one line. All of them are :class:`RunDirectoryError` subclasses: code that only wants to
know "this run cannot be read as committed" catches the base class.
"""

from __future__ import annotations


class RunDirectoryError(RuntimeError):
    """A run directory that is missing, unwritable, foreign, damaged or of another format."""


class UnsafePathError(RunDirectoryError):
    """A path named by a run leaves the run directory, or is not a regular file of bounded size.

    Raised for absolute paths, ``..`` components, symlinks that resolve outside the run directory,
    FIFOs, devices, directories and files larger than their format allows — before anything is
    opened for reading (so a FIFO never blocks and ``/dev/zero`` is never read).
    """


class SchemaError(RunDirectoryError):
    """A field of the manifest or of a step record has the wrong type, range or consistency.

    Attributes:
        file: the file that holds the field (``manifest.json``, ``steps.jsonl``).
        field: dotted path of the field (``strategy.seed``, ``extra.tape``).
        step: the step of the record, or ``None`` for the manifest.
        problem: what is wrong, with the value received.
    """

    def __init__(self, file: str, field: str, problem: str, step: int | None = None,
                 line: int | None = None) -> None:
        self.file, self.field, self.problem, self.step, self.line = file, field, problem, step, line
        where = file
        if line is not None:
            where += f" line {line}"
        if step is not None:
            where += f" (step {step})"
        super().__init__(f"{where}: field {field!r}: {problem}")


class RunClaimError(RunDirectoryError):
    """The run's files disagree with what its manifest claims (step count, final state, ledger).

    A finished run claims how many steps it committed, the state after the last one and (with a
    ledger) the Merkle root over them; a truncated ``steps.jsonl``, a deleted ledger or an edited
    manifest breaks one of those claims.
    """


class RunLockedError(RunDirectoryError):
    """Another process holds the run directory's writer lock (one writer per run directory)."""


__all__ = ["RunClaimError", "RunDirectoryError", "RunLockedError", "SchemaError", "UnsafePathError"]
