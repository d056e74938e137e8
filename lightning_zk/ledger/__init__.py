"""Commitments to a run: canonical state digests, checkpoints, the run directory.

No Lightning here: a verifier reads a run directory with torch, safetensors and JSON only.
"""

from .rundir import RunDirectory, RunDirectoryError, StepRecord
from .state import (
    StateError,
    StateSnapshot,
    batch_digest,
    load_snapshot,
    restore,
    save_snapshot,
    snapshot,
)

__all__ = [
    "RunDirectory", "RunDirectoryError", "StateError", "StateSnapshot", "StepRecord",
    "batch_digest", "load_snapshot", "restore", "save_snapshot", "snapshot",
]
