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

import numpy as np
import torch

try:  # optional one-pass CPU kernel (the ``fast`` extra); the torch path is always available
    from . import _numba_kernels as _kernels
except ImportError:  # pragma: no cover - depends on the installation
    _kernels = None

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
        # derived once (read per rounded op); not dataclass fields, so equality is unchanged
        object.__setattr__(self, "_dropped", (52 if self.compute_dtype == torch.float64 else 23)
                           - self.mantissa_bits)

    @property
    def compute_mantissa_bits(self) -> int:
        return 52 if self.compute_dtype == torch.float64 else 23

    @property
    def dropped_bits(self) -> int:
        """Mantissa bits of the compute dtype that rounding removes."""
        return self._dropped

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
    """Rounded values plus what a log needs: the elements close to a midpoint, and their way."""

    rounded: torch.Tensor
    positions: torch.Tensor  # int64 flat indices of elements within τ of a midpoint
    away: torch.Tensor  # bool per position: rounded away from zero (larger magnitude)


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
    low = bits & ((1 << drop) - 1)
    trunc = bits - low
    half = 1 << (drop - 1)
    up = (low > half) | ((low == half) & (((trunc >> drop) & 1) == 1))
    return trunc, low, up, shift


def _assemble(
    x: torch.Tensor, trunc: torch.Tensor, up: torch.Tensor, shift, spec: GridSpec
) -> torch.Tensor:
    drop = spec.dropped_bits
    mag = (trunc + (up.to(trunc.dtype) << drop)).view(x.dtype)
    if shift is not None:
        mag = torch.where(shift, mag - 2.0**_F32_MIN_NORMAL_EXP, mag)
    if spec.compute_dtype == torch.float64:
        mag = torch.where(mag >= 2.0 ** (_F32_MAX_EXP + 1), torch.inf, mag)
    out = torch.where(torch.signbit(x), -mag, mag)
    return torch.where(torch.isfinite(x), out, x)


def _round_generic(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    trunc, _, up, shift = _split(x, spec)
    return _assemble(x, trunc, up, shift, spec)


def round_values(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """``x`` rounded to the committed grid, nearest-even (no log information)."""
    if x.dtype != spec.compute_dtype:
        raise PrecisionError(f"expected a {spec.compute_dtype} tensor, got {x.dtype}")
    if spec.compute_dtype == torch.float64 and spec.mantissa_bits == FLOAT32_MANTISSA_BITS:
        # IEEE float64 -> float32 conversion is exactly this rounding (subnormals, overflow too).
        return x.to(torch.float32).to(torch.float64)
    if _kernels is not None and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.from_numpy(
            _kernels.run_f32(x.detach().contiguous().numpy(), spec.dropped_bits, 0.0)[0]
        ).view(x.shape)
    return _round_generic(x, spec)


def midpoint_distance(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """|dropped bits − half| per element, in units of 2^-dropped_bits committed ulp."""
    _, low, _, _ = _split(x, spec)
    return (low - (1 << (spec.dropped_bits - 1))).abs()


def _fast_distance(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Midpoint distance from the raw bits: four passes, exact unless |x| < 2^-126 (float64)."""
    drop = spec.dropped_bits
    low = x.contiguous().view(_int_view_dtype(x.dtype)) & ((1 << drop) - 1)
    return (low - (1 << (drop - 1))).abs_()


def round_to_grid(
    x: torch.Tensor, spec: GridSpec, tau: float = 0.0, in_place: bool = False
) -> RoundingResult:
    """Round ``x`` (in ``spec.compute_dtype``) to the committed grid, nearest-even.

    ``tau`` is the logging threshold as a fraction of the committed ulp: an element is reported
    when its exact value lies less than ``tau`` ulp from the midpoint of its two candidates
    (exact ties are always reported when ``tau > 0``). With ``in_place`` the result may be
    written into ``x`` itself (``result.rounded is x`` then tells the caller no copy is needed).
    """
    tau_units = tau * float(1 << spec.dropped_bits) if tau > 0 else 0.0
    if (
        _kernels is not None and x.device.type == "cpu" and x.dtype == torch.float64
        and spec.mantissa_bits == FLOAT32_MANTISSA_BITS
    ):
        direct = in_place and x.is_contiguous()
        values = x.detach().contiguous().numpy()
        fast = _kernels.run(values, tau_units, out=values if direct else None)
        if fast is not None:
            out, positions, away = fast
            rounded = x if direct else torch.from_numpy(out).view(x.shape)
            return RoundingResult(rounded, torch.from_numpy(positions), torch.from_numpy(away))
    if (
        _kernels is not None and x.device.type == "cpu" and x.dtype == torch.float32
        and spec.compute_dtype == torch.float32
    ):
        direct = in_place and x.is_contiguous()
        values = x.detach().contiguous().numpy()
        out, positions, away = _kernels.run_f32(values, spec.dropped_bits, tau_units,
                                                out=values if direct else None)
        rounded = x if direct else torch.from_numpy(out).view(x.shape)
        return RoundingResult(rounded, torch.from_numpy(positions), torch.from_numpy(away))
    rounded = round_values(x, spec)
    if tau <= 0:
        empty = torch.empty(0, dtype=torch.int64, device=x.device)
        return RoundingResult(rounded, empty, torch.empty(0, dtype=torch.bool, device=x.device))
    if spec.compute_dtype == torch.float64 and bool(
        ((x.abs() < 2.0**_F32_MIN_NORMAL_EXP) & (x != 0)).any()
    ):
        distance = midpoint_distance(x, spec)  # exact below float32's normal range too
    else:
        distance = _fast_distance(x, spec)
    positions = (distance < tau_units).reshape(-1).nonzero().squeeze(1)
    xs = x.reshape(-1)[positions]
    finite = torch.isfinite(xs)
    if not bool(finite.all()):
        positions, xs = positions[finite], xs[finite]
    away = rounded.reshape(-1)[positions].abs() > xs.abs()
    return RoundingResult(rounded, positions, away)


def _storage_order(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None] | None:
    """A 1-D view of ``x``'s elements in the order they lie in memory, and the permutation of
    ``x``'s dimensions that memory order follows (``None``: ``x`` is contiguous); ``None`` when
    ``x`` is not a dense, non-overlapping block (then it needs a copy)."""
    if x.is_contiguous():
        return x.view(-1), None
    perm = tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))
    permuted = x.permute(perm)
    if not permuted.is_contiguous():
        return None
    return permuted.view(-1), perm


def _logical_positions(x: torch.Tensor, perm: tuple[int, ...], memory: np.ndarray,
                       away: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Memory-order flat indices of ``x`` (laid out as ``x.permute(perm)``) as flat indices in
    ``x``'s own row-major order, increasing, with their directions in the same order."""
    shape = x.shape
    contiguous = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        contiguous[d] = contiguous[d + 1] * shape[d + 1]
    coords = np.unravel_index(memory, tuple(shape[d] for d in perm))
    logical = np.zeros(memory.shape, dtype=np.int64)
    for axis, d in enumerate(perm):
        logical += coords[axis].astype(np.int64) * contiguous[d]
    order = np.argsort(logical, kind="stable")
    return logical[order], away[order]


def in_place_rounder(spec: GridSpec):
    """The one-pass CPU kernel of ``spec``'s grid as ``rounder(x, tau)`` (see
    :func:`round_in_place`), with every per-grid decision taken here once; ``None`` where no
    kernel applies (no numba, or float64 values onto a grid narrower than float32)."""
    if _kernels is None:
        return None
    if spec.compute_dtype == torch.float64 and spec.mantissa_bits != FLOAT32_MANTISSA_BITS:
        return None
    dtype, drop = spec.compute_dtype, spec.dropped_bits
    scale = float(1 << drop)
    f64 = dtype == torch.float64
    kernel = _kernels.round_inplace_at

    def rounder(x: torch.Tensor, tau: float) -> tuple[np.ndarray, np.ndarray] | None:
        if x.dtype != dtype or not x.is_cpu:
            return None
        perm = None
        if not x.is_contiguous():
            view = _storage_order(x)
            if view is None:
                return None
            x_flat, perm = view
        else:
            x_flat = x
        # by address: ``x_flat`` is one dense block, alive until the kernel returns
        positions, away = kernel(x_flat.data_ptr(), x_flat.numel(), f64,
                                 tau * scale if tau > 0 else 0.0, drop)
        if perm is not None and positions.size:
            positions, away = _logical_positions(x, perm, positions, away)
        return positions, away

    return rounder


def round_in_place(x: torch.Tensor, spec: GridSpec, tau: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """Round ``x`` onto the grid in place with the one-pass CPU kernel, where it applies.

    Returns the logged flat positions (int64, increasing, in ``x``'s row-major order) and their
    directions as numpy arrays — exactly :func:`round_to_grid`'s ``positions`` and ``away`` — or
    ``None`` (nothing done) where the kernel does not apply: no numba, another device or grid,
    or a tensor that is not one dense block. A dense block in another memory order (a transposed
    or permuted result) is rounded where it lies, without the copy in and out.
    """
    rounder = in_place_rounder(spec)
    return None if rounder is None else rounder(x, tau)


def apply_directions(
    x: torch.Tensor, spec: GridSpec, positions: torch.Tensor, away: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round ``x`` nearest-even except at flat ``positions``, which go the logged way.

    Returns the rounded tensor; for each logged position the distance of *this* machine's value
    from the midpoint (in units of 2^-dropped_bits ulp), so a replayer can reject log entries that
    no honest hardware difference explains; and the direction this machine alone would take.
    """
    rounded = round_values(x, spec)
    xs = x.reshape(-1)[positions]
    trunc, low, natural, shift = _split(xs, spec)
    forced = _assemble(xs, trunc, away, shift, spec)
    rounded.reshape(-1)[positions] = forced
    distance = (low - (1 << (spec.dropped_bits - 1))).abs()
    return rounded, distance, natural


def logged_directions(
    x: torch.Tensor, spec: GridSpec, positions: torch.Tensor, away: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the logged flat ``positions`` of ``x`` only: the values rounded the logged way, their
    distance from the midpoint here, and the way this machine alone would round them (the
    logged part of :func:`apply_directions`, without touching ``x``)."""
    xs = x.reshape(-1)[positions]
    trunc, low, natural, shift = _split(xs, spec)
    forced = _assemble(xs, trunc, away, shift, spec)
    return forced, (low - (1 << (spec.dropped_bits - 1))).abs(), natural


def place_directions_(x: torch.Tensor, spec: GridSpec, positions: torch.Tensor,
                      forced: torch.Tensor) -> torch.Tensor:
    """``x`` rounded nearest-even with ``forced`` values (:func:`logged_directions`) at
    ``positions``: written into ``x`` where it is contiguous (then ``x`` is returned), else a
    rounded copy. In place, the one-pass rounding path replaces a new tensor copied back."""
    view = _storage_order(x)
    if view is not None and round_in_place(x, spec) is not None:  # one dense block, in place
        flat, perm = view
        if perm is not None:  # row-major flat indices -> offsets in memory order
            index, offsets = positions, torch.zeros_like(positions)
            for d in range(x.dim() - 1, -1, -1):
                offsets += (index % x.shape[d]) * x.stride(d)
                index = index // x.shape[d]
            positions = offsets
        flat[positions] = forced
        return x
    if not x.is_contiguous():
        rounded = round_values(x, spec)
        rounded.reshape(-1)[positions] = forced
        return rounded
    rounded = round_to_grid(x, spec, 0.0, in_place=True).rounded
    if rounded is not x:
        x.copy_(rounded)
    x.view(-1)[positions] = forced
    return x


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
