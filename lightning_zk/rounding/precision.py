"""Rounding of compute-dtype values onto the committed b-bit grid.

The committed precision is "float32 with only the top ``b`` mantissa bits kept" (``b = 23`` is
plain float32; ``b = 7`` has bfloat16's grid; ``b = 10`` float16's mantissa width with float32's
exponent range). A value computed in the compute dtype (float64, or float32 when ``b < 23``) is
rounded to that grid with round-to-nearest-even on its bit pattern.

Besides the rounded value, :func:`round_to_grid` reports, per element, how far the exact value was
from the midpoint between its two rounding candidates (in units of the committed ulp). Elements
closer than the threshold τ are the ones whose rounding another machine could decide differently;
the trainer logs their direction and an auditor replays it with :func:`apply_directions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

SUPPORTED_COMPUTE_DTYPES = (torch.float64, torch.float32)
FLOAT32_MANTISSA_BITS = 23
_F32_MIN_NORMAL_EXP = -126
_F32_MAX_EXP = 127


class PrecisionError(ValueError):
    """An unsupported combination of compute dtype and kept mantissa bits."""


@dataclass(frozen=True)
class GridSpec:
    """Compute dtype plus the number of float32 mantissa bits kept in committed values."""

    compute_dtype: torch.dtype = torch.float64
    mantissa_bits: int = FLOAT32_MANTISSA_BITS

    def __post_init__(self) -> None:
        if self.compute_dtype not in SUPPORTED_COMPUTE_DTYPES:
            raise PrecisionError(
                f"compute_dtype={self.compute_dtype} is not supported; use torch.float64 or "
                "torch.float32."
            )
        if not isinstance(self.mantissa_bits, int) or isinstance(self.mantissa_bits, bool):
            raise PrecisionError(f"mantissa_bits must be an int, got {self.mantissa_bits!r}.")
        if not 1 <= self.mantissa_bits <= FLOAT32_MANTISSA_BITS:
            raise PrecisionError(
                f"mantissa_bits={self.mantissa_bits} is out of range: it counts the float32 "
                f"mantissa bits kept and must lie in [1, {FLOAT32_MANTISSA_BITS}]."
            )
        if self.compute_dtype == torch.float32 and self.mantissa_bits == FLOAT32_MANTISSA_BITS:
            raise PrecisionError(
                "compute_dtype=torch.float32 with mantissa_bits=23 leaves no guard bits: rounding "
                "would be the identity and cross-hardware differences could not be absorbed. "
                "HINT: use compute_dtype=torch.float64, or mantissa_bits < 23 (e.g. 16)."
            )

    @property
    def compute_mantissa_bits(self) -> int:
        return 52 if self.compute_dtype == torch.float64 else 23

    @property
    def dropped_bits(self) -> int:
        """Mantissa bits of the compute dtype that rounding removes."""
        return self.compute_mantissa_bits - self.mantissa_bits

    @property
    def committed_dtype(self) -> torch.dtype:
        """Dtype that holds committed values exactly (their canonical serialisation)."""
        return torch.float32

    def to_json(self) -> dict[str, object]:
        return {
            "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
            "mantissa_bits": self.mantissa_bits,
        }


@dataclass
class RoundingResult:
    """Rounded values plus what a log needs: which elements were close to a midpoint."""

    rounded: torch.Tensor
    near: torch.Tensor  # bool, element within τ of a midpoint
    away: torch.Tensor  # bool, element rounded away from zero (larger magnitude)
    distance: torch.Tensor  # int, |dropped - half| in units of 2^-dropped_bits committed ulp


def _int_view_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.int64 if dtype == torch.float64 else torch.int32


def _split(x: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, ...]:
    """Magnitude bits split at the rounding position, with float32 range handling for float64."""
    drop = spec.dropped_bits
    mag_x = x.abs().contiguous()
    shift = None
    if spec.compute_dtype == torch.float64:
        # Below float32's normal range the grid spacing stays 2^(-126-b): align such values to
        # exponent -126 by adding 2^-126 (exact for values with no bits below 2^-178), round there.
        tiny = mag_x < 2.0**_F32_MIN_NORMAL_EXP
        if bool(tiny.any()):
            shift = tiny
            mag_x = torch.where(tiny, mag_x + 2.0**_F32_MIN_NORMAL_EXP, mag_x)
    bits = mag_x.view(_int_view_dtype(x.dtype))
    low_mask = (1 << drop) - 1
    low = bits & low_mask
    trunc = bits - low
    return bits, low, trunc, shift, drop


def _assemble(
    x: torch.Tensor, trunc: torch.Tensor, up: torch.Tensor, shift, spec: GridSpec
) -> torch.Tensor:
    drop = spec.dropped_bits
    mag_bits = trunc + (up.to(trunc.dtype) << drop)
    mag = mag_bits.view(x.dtype)
    if shift is not None:
        mag = torch.where(shift, mag - 2.0**_F32_MIN_NORMAL_EXP, mag)
    if spec.compute_dtype == torch.float64:
        mag = torch.where(mag >= 2.0 ** (_F32_MAX_EXP + 1), torch.inf, mag)
    finite = torch.isfinite(x)
    out = torch.where(torch.signbit(x), -mag, mag)
    return torch.where(finite, out, x)


def round_to_grid(x: torch.Tensor, spec: GridSpec, tau: float = 0.0) -> RoundingResult:
    """Round ``x`` (in ``spec.compute_dtype``) to the committed grid, nearest-even.

    ``tau`` is the logging threshold as a fraction of the committed ulp: an element is ``near``
    when the exact value lies less than ``tau`` ulp from the midpoint of its two candidates
    (exact ties are always near when ``tau > 0``).
    """
    if x.dtype != spec.compute_dtype:
        raise PrecisionError(f"expected a {spec.compute_dtype} tensor, got {x.dtype}")
    bits, low, trunc, shift, drop = _split(x, spec)
    half = 1 << (drop - 1)
    lsb = (trunc >> drop) & 1
    up = (low > half) | ((low == half) & (lsb == 1))
    distance = (low - half).abs()
    tau_units = tau * float(1 << drop)
    near = (distance < tau_units) & torch.isfinite(x) if tau > 0 else torch.zeros_like(up)
    rounded = _assemble(x, trunc, up, shift, spec)
    return RoundingResult(rounded=rounded, near=near, away=up, distance=distance)


def apply_directions(
    x: torch.Tensor, spec: GridSpec, positions: torch.Tensor, away: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round ``x`` nearest-even except at flat ``positions``, which go the logged way.

    Returns the rounded tensor and, for each logged position, the distance of *this* machine's
    value from the midpoint (in units of 2^-dropped_bits ulp), so a replayer can reject log entries
    that no honest hardware difference explains, and the direction this machine alone would take.
    """
    bits, low, trunc, shift, drop = _split(x, spec)
    half = 1 << (drop - 1)
    lsb = (trunc >> drop) & 1
    up = (low > half) | ((low == half) & (lsb == 1))
    flat_up = up.reshape(-1)
    natural = flat_up[positions].clone()
    flat_up[positions] = away
    distance = (low.reshape(-1)[positions] - half).abs()
    return _assemble(x, trunc, flat_up.view_as(up), shift, spec), distance, natural


def round_scalar_reference(value: float, mantissa_bits: int) -> float:
    """Exact reference: nearest-even rounding of ``value`` to float32's range with ``b`` bits.

    Slow (rational arithmetic); the tensor path is tested against it.
    """
    if value != value or value in (float("inf"), float("-inf")) or value == 0.0:
        return value
    sign = -1.0 if value < 0 else 1.0
    mag = Fraction(abs(value))
    exp = mag.numerator.bit_length() - mag.denominator.bit_length()
    if Fraction(2) ** exp > mag:
        exp -= 1
    exp = max(exp, _F32_MIN_NORMAL_EXP)
    ulp = Fraction(2) ** (exp - mantissa_bits)
    q, rem = divmod(mag, ulp)
    if rem > ulp / 2 or (rem == ulp / 2 and q % 2 == 1):
        q += 1
    result = q * ulp
    if result >= Fraction(2) ** (_F32_MAX_EXP + 1):
        return sign * float("inf")
    return sign * float(result)
