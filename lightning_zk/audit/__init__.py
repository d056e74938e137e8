"""Auditing committed runs: bit-exact replay and, on top of it, the dispute game."""

from .dispute import DisputeError, Verdict, dispute
from .replay import AuditConfigError, AuditInputError, AuditReport, ReplayStart, replay

__all__ = [
    "AuditConfigError", "AuditInputError", "AuditReport", "DisputeError", "ReplayStart", "Verdict",
    "dispute", "replay",
]
