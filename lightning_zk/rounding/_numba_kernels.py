"""Optional one-pass CPU kernel for the common case: float64 values rounded to float32.

Used by :func:`lightning_zk.rounding.precision.round_to_grid` when numba is importable (the
``fast`` extra) and the tensor is a CPU float64 tensor; tested against the torch path. One pass
does the IEEE cast, the midpoint test on the 29 dropped bits and the direction of each logged
element, instead of about twenty separate torch ops.
"""

from __future__ import annotations

import numba
import numpy as np

_LOW_MASK = (1 << 29) - 1
_HALF = 1 << 28
_MIN_NORMAL_F32 = 2.0**-126


@numba.njit(cache=True, nogil=True)
def round_f64_to_f32(x, xbits, out, positions, away, tau_units):  # pragma: no cover - JIT
    """Fill ``out``; return the number of logged positions, or -1 if a value is below 2^-126.

    A -1 tells the caller to use the exact generic path (the dropped bits of such values are not
    at the float32 rounding position); it is decided before anything is written.
    """
    if tau_units > 0.0:  # read-only pass first: bail out before anything is written
        for i in range(x.size):
            a = abs(x[i])
            if a < _MIN_NORMAL_F32 and a != 0.0:
                return -1
    count = 0
    for i in range(x.size):
        v = x[i]
        low = xbits[i] & _LOW_MASK  # read before writing: ``out`` may be ``x`` itself
        r = np.float64(np.float32(v))
        if tau_units > 0.0:
            a = abs(v)
            if a == a and a != np.inf and abs(low - _HALF) < tau_units:
                positions[count] = i
                away[count] = abs(r) > a
                count += 1
        out[i] = r
    return count


def run(
    x: np.ndarray, tau_units: float, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rounded values, logged positions and directions of a contiguous float64 array (or None).

    ``out`` may be ``x`` itself (rounding in place is element-wise safe).
    """
    out = np.empty_like(x) if out is None else out
    positions = np.empty(x.size if tau_units > 0 else 0, dtype=np.int64)
    away = np.empty(x.size if tau_units > 0 else 0, dtype=np.bool_)
    count = round_f64_to_f32(x.reshape(-1), x.reshape(-1).view(np.int64), out.reshape(-1),
                             positions, away, float(tau_units))
    if count < 0:
        return None
    return out, positions[:count].copy(), away[:count].copy()
