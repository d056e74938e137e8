"""Rounded precision: b-bit rounding, op interception, device-independent RNG, rounding log.

No Lightning here: usable on its own with any torch code.
"""

from .log import (
    LogEntry,
    RoundingLogError,
    StepLog,
    StepLogBuilder,
    decode_step_log,
    encode_step_log,
)
from .mode import ReplayDivergenceError, ReplayStats, RoundingMode
from .precision import GridSpec, PrecisionError, apply_directions, round_to_grid
from .taint import UnroundedValueWarning
from .threshold import ThresholdError, ThresholdPolicy, default_tau

__all__ = [
    "GridSpec", "LogEntry", "PrecisionError", "ReplayDivergenceError", "ReplayStats",
    "RoundingLogError", "RoundingMode", "StepLog", "StepLogBuilder", "ThresholdError",
    "ThresholdPolicy", "UnroundedValueWarning", "apply_directions", "decode_step_log", "default_tau", "encode_step_log",
    "round_to_grid",
]
