"""Auditing committed runs: bit-exact replay (and, on top of it, the dispute game)."""

from .replay import AuditConfigError, AuditInputError, AuditReport, replay

__all__ = ["AuditConfigError", "AuditInputError", "AuditReport", "replay"]
