"""Fixed-point format and the one rescale rule shared by trainer, reference and circuit.

A real value v is stored as the int64 integer x = round(v * 2^s) (DESIGN.md §5). A product of
two scale-s values has scale 2s and is brought back by :func:`rescale`:

    q = floor((raw + 2^(s-1)) / 2^s),   r = raw - 2^s q,   r + 2^(s-1) in [0, 2^s)

i.e. round half up. The zk circuit proves exactly ``raw = 2^s q + r`` with that range check, so
the trainer, the integer reference and the proof agree bit for bit on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FixedPointError",
    "FixedPointConfig",
    "quantize",
    "dequantize",
    "rescale",
    "rescale_owned",
    "fixed_constant",
    "optimizer_constant",
    "check_bound",
]


class FixedPointError(ValueError):
    """A value is outside the enforced fixed-point magnitude bound (it could wrap in the field).

    Attributes:
        tensor: name of the tensor (e.g. ``"Z2"``); step: training step or None;
        bound: the exclusive magnitude bound; value: the first offending integer.
    """

    def __init__(self, tensor: str, step: int | None, bound: int, value: int) -> None:
        self.tensor, self.step, self.bound, self.value = tensor, step, bound, value
        where = f" at step {step}" if step is not None else ""
        super().__init__(
            f"fixed-point value {value} of tensor {tensor!r}{where} is outside the enforced "
            f"bound |x| < {bound}. HINT: lower the learning rate or input scale, or raise "
            f"value_bits (must keep products below 2^62)."
        )


@dataclass(frozen=True)
class FixedPointConfig:
    """Scale 2^frac_bits; every stored tensor satisfies |x| < 2^(value_bits - 1).

    ``value_bits`` is the signed width the circuit range-checks; together with the largest
    fan-in K it must keep K * 2^(2 (value_bits - 1)) + 2^(frac_bits + value_bits) < 2^62 so that
    no int64 product and no field element (p ~ 2^64) ever wraps.
    """

    frac_bits: int = 16
    value_bits: int = 24

    def __post_init__(self) -> None:
        if not 1 <= self.frac_bits <= 30:
            raise ValueError(f"FixedPointConfig(frac_bits={self.frac_bits}): must be in [1, 30]")
        if not self.frac_bits < self.value_bits <= 40:
            raise ValueError(
                f"FixedPointConfig(value_bits={self.value_bits}): must be in "
                f"(frac_bits={self.frac_bits}, 40]"
            )

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def bound(self) -> int:
        """Exclusive magnitude bound 2^(value_bits - 1)."""
        return 1 << (self.value_bits - 1)

    def check_fan_in(self, fan_in: int) -> None:
        """Raise ValueError if a dot product of ``fan_in`` bounded terms could overflow."""
        worst = fan_in * self.bound * self.bound + self.scale * self.bound * 2
        if worst >= 1 << 62:
            raise ValueError(
                f"fan-in {fan_in} with value_bits={self.value_bits} could overflow int64/the "
                f"field (worst |raw| = {worst} >= 2^62). HINT: lower value_bits."
            )


def quantize(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """round(v * 2^s) to nearest (half up, as :func:`rescale`), as int64; exact for floats."""
    v = np.asarray(values, dtype=np.float64) * float(1 << frac_bits)
    if not np.all(np.isfinite(v)):
        raise FixedPointError("input", None, 1 << 62, 0)
    return np.floor(v + 0.5).astype(np.int64)


def dequantize(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """x / 2^s as float64 (exact for |x| < 2^53)."""
    return np.asarray(x, dtype=np.int64).astype(np.float64) / float(1 << frac_bits)


def rescale(raw: np.ndarray, frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, r) with q = floor((raw + 2^(s-1)) / 2^s) and r = raw - 2^s q (DESIGN.md §5)."""
    raw = np.asarray(raw, dtype=np.int64)
    q = (raw + (1 << (frac_bits - 1))) >> frac_bits  # arithmetic shift = floor division
    return q, raw - (q << frac_bits)


def rescale_owned(raw: np.ndarray, frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rescale` computed in place on an int64 temporary the caller gives up (|raw| < 2^62).

    With t = raw + 2^(s-1): q = t >> s and r = raw - 2^s q = (t & (2^s - 1)) - 2^(s-1), so ``raw``
    becomes q and only r is allocated (the engine's weight-sized products: 2 passes fewer).
    """
    if raw.dtype != np.int64:
        return rescale(raw, frac_bits)
    half = 1 << (frac_bits - 1)
    raw += half
    r = raw & ((1 << frac_bits) - 1)
    r -= half
    raw >>= frac_bits
    return raw, r


def fixed_constant(value: float, frac_bits: int) -> int:
    """A public constant (learning rate, 2/(B k)) as a fixed-point integer round(v * 2^s)."""
    return int(np.floor(float(value) * (1 << frac_bits) + 0.5))


def optimizer_constant(name: str, value: float, frac_bits: int) -> int:
    """SGD's momentum or weight decay as a public fixed-point integer, rounded as the learning
    rate is (round(v * 2^s), half up); refused when it leaves [0, 1) or a nonzero value rounds
    to 0 (the run would silently train without it)."""
    value = float(value)
    k = fixed_constant(value, frac_bits) if value == value else -1  # (NaN: refused)
    if not 0 <= k < 1 << frac_bits or (value != 0 and k == 0):
        raise ValueError(
            f"SGD {name}={value} is not representable in fixed point at 2^-{frac_bits}: need "
            f"0 <= {name} < 1 and, when nonzero, {name} >= 2^-{frac_bits + 1} (it is rounded to "
            f"round({name} * 2^{frac_bits}) / 2^{frac_bits}, as the learning rate)"
        )
    return k


def check_bound(name: str, x: np.ndarray, bound: int, step: int | None) -> int:
    """Raise FixedPointError naming the tensor, step and bound if any |x| >= bound.

    Returns max |x| (0 for an empty array): the engine uses it to size its exact matmuls.
    Two reductions (max, min) and no temporaries; the offending value is the first in C order.
    """
    if x.size == 0:
        return 0
    top = max(int(x.max()), -int(x.min()))
    if top >= bound:
        bad = np.abs(x) >= bound
        raise FixedPointError(name, step, bound, int(x[bad].reshape(-1)[0]))
    return top
