"""The logging threshold τ: how close to a rounding midpoint an element must be to get logged.

τ is a fraction of the committed ulp. The guarantee of replay: if on every op the auditor's
high-precision value differs from the trainer's by less than τ ulp, every element not logged rounds
the same way on both machines (it was more than τ from the midpoint, so both values lie on the same
side), and every logged element is forced the trainer's way. Bigger τ: safer, larger log (about a
fraction 2τ of the rounded elements is logged).

The default follows the guard bits between compute and committed precision: a float64 result
rounded to float32 has 29 guard bits, so a divergence of 2^13 float64 ulps (far more than a
reordered reduction of a few thousand terms produces) still stays below τ = 2^-16.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .ops import OpClass
from .precision import GridSpec

# How many compute-dtype ulps of cross-hardware divergence the default τ absorbs: 2^13.
DEFAULT_DIVERGENCE_BITS = 13
_MAX_TAU = 0.25


class ThresholdError(ValueError):
    """An invalid logging threshold."""


def _check_tau(name: str, tau: float) -> float:
    tau = float(tau)
    if not 0.0 <= tau <= 0.5:
        raise ThresholdError(
            f"{name}={tau} is out of range: τ is a fraction of the committed ulp in [0, 0.5] "
            "(0 disables logging, 0.5 logs every element)."
        )
    return tau


def default_tau(spec: GridSpec) -> float:
    """Safe analytic default: τ covers 2^13 compute-dtype ulps, capped at 1/4 ulp."""
    return min(_MAX_TAU, 2.0 ** (DEFAULT_DIVERGENCE_BITS - spec.dropped_bits))


@dataclass(frozen=True)
class ThresholdPolicy:
    """τ per op: an exact op name (``"aten.mm.default"``) beats its kind, which beats ``tau``.

    Args:
        tau: default τ for rounded ops; ``None`` picks :func:`default_tau` for the grid.
        per_kind: τ per op kind: ``reduction``, ``transcendental``, ``fused``, ``random``,
            ``other`` and ``state`` (parameters/optimizer state rounded after each step).
        per_op: τ per ATen overload name, e.g. as calibrated by measurement.
        calibration: provenance of a calibrated policy (method, safety factor, measurements);
            recorded in the manifest, not used for rounding.

    Example::

        ThresholdPolicy(tau=2**-14, per_kind={"reduction": 2**-12})
    """

    tau: float | None = None
    per_kind: Mapping[str, float] = field(default_factory=dict)
    per_op: Mapping[str, float] = field(default_factory=dict)
    calibration: Mapping[str, object] | None = None  # how per_kind/per_op were measured

    KINDS = ("reduction", "transcendental", "fused", "random", "other", "state")

    def __post_init__(self) -> None:
        if self.tau is not None:
            _check_tau("tau", self.tau)
        for kind, tau in self.per_kind.items():
            if kind not in self.KINDS:
                raise ThresholdError(
                    f"per_kind has unknown op kind {kind!r}; known kinds: {', '.join(self.KINDS)}."
                )
            _check_tau(f"per_kind[{kind!r}]", tau)
        for op, tau in self.per_op.items():
            _check_tau(f"per_op[{op!r}]", tau)

    def resolve(self, spec: GridSpec) -> ResolvedThresholds:
        base = default_tau(spec) if self.tau is None else float(self.tau)
        return ResolvedThresholds(base, dict(self.per_kind), dict(self.per_op))

    def to_json(self) -> dict[str, object]:
        return {"tau": self.tau, "per_kind": dict(self.per_kind), "per_op": dict(self.per_op),
                "calibration": dict(self.calibration) if self.calibration else None}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ThresholdPolicy:
        return cls(
            tau=data.get("tau"),  # type: ignore[arg-type]
            per_kind=dict(data.get("per_kind") or {}),  # type: ignore[arg-type]
            per_op=dict(data.get("per_op") or {}),  # type: ignore[arg-type]
            calibration=data.get("calibration"),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ResolvedThresholds:
    """Thresholds with the default filled in for one grid: what the rounding mode consults."""

    base: float
    per_kind: dict[str, float]
    per_op: dict[str, float]

    def tau(self, op_name: str, kind: OpClass | str) -> float:
        if op_name in self.per_op:
            return self.per_op[op_name]
        kind_name = kind.value if isinstance(kind, OpClass) else kind
        return self.per_kind.get(kind_name, self.base)

    def to_json(self) -> dict[str, object]:
        return {"base": self.base, "per_kind": self.per_kind, "per_op": self.per_op}
