"""Optional one-pass CPU kernels for the two common grids.

Used by :func:`lightning_zk.rounding.precision.round_to_grid` when numba is importable (the
``fast`` extra); tested against the torch path, which they replace bit for bit:

- float64 values rounded to float32 (:func:`run`): one pass does the IEEE cast, the midpoint test
  on the 29 dropped bits and the direction of each logged element, instead of about twenty
  separate torch ops;
- float32 values rounded to ``b < 23`` mantissa bits (:func:`run_f32`, e.g. the bfloat16 grid of
  ``compute_dtype="float32", mantissa_bits=7``): nearest-even on the bit pattern, midpoint test and
  direction in one branch-free pass over the uint32 bits. Float32 has no range issue: subnormals share the
  grid's spacing below 2^-126 and a carry into the exponent is the correct next grid value (or
  infinity).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_LOW_MASK = (1 << 29) - 1
_HALF = 1 << 28
_MIN_NORMAL_F32 = 2.0**-126
_scratch = threading.local()


def _candidates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-thread buffers for up to ``size`` logged positions and directions, reused across
    calls (the kernels fill only their first ``count`` entries, which the caller copies out): a
    fresh full-size int64 buffer per rounded op cost more than the rounding of small tensors."""
    positions = getattr(_scratch, "positions", None)
    if positions is None or positions.size < size:
        positions = _scratch.positions = np.empty(max(size, 1 << 12), dtype=np.int64)
        _scratch.away = np.empty(positions.size, dtype=np.bool_)
        _scratch.addresses = (positions.size, positions.ctypes.data, _scratch.away.ctypes.data)
    return positions, _scratch.away


_BLOCK = 256
# Above this τ (2^-11 ulp, in units of the 29 dropped bits) most 256-element blocks hold a
# candidate, and the block test would only add to the element-by-element scan.
_BLOCK_TAU_UNITS = float(1 << 18)
_ABS_MASK = np.uint64(0x7FFFFFFFFFFFFFFF)
_INF_BITS = np.uint64(0x7FF0000000000000)
_BELOW_MIN_NORMAL_F32 = np.uint64(0x380FFFFFFFFFFFFF)  # bits of 2^-126, minus one


@numba.njit(cache=True, nogil=True)
def _any_candidate(xbits, lo, width):  # pragma: no cover - JIT
    """Does the block hold an element the scan could log: finite with its dropped bits within
    the τ window around the midpoint (unsigned ``low - lo < width``), or nonzero below 2^-126
    (where the scan computes the dropped bits differently)? Integer-only, so it vectorises."""
    hits = np.uint64(0)
    for i in range(xbits.size):
        u = np.uint64(xbits[i]) & _ABS_MASK
        near = (((u & np.uint64(_LOW_MASK)) - lo) < width) & (u < _INF_BITS)
        tiny = (u - np.uint64(1)) < _BELOW_MIN_NORMAL_F32
        hits += np.uint64(near | tiny)
    return hits != 0


@numba.njit(cache=True, nogil=True)
def _cast_block(x, out):  # pragma: no cover - JIT
    for i in range(x.size):
        out[i] = np.float64(np.float32(x[i]))


@numba.njit(cache=True, nogil=True)
def _scan_f64(x, xbits, positions, away, tau_units, start, stop, count):  # pragma: no cover
    """Log the elements ``start..stop`` within τ of a midpoint (reading ``x`` only)."""
    for i in range(start, stop):
        v = x[i]
        a = abs(v)
        if a < _MIN_NORMAL_F32:
            # a + 2^-126 lies in [2^-126, 2^-125]: its mantissa bits are exactly
            # (m - 2^-126) * 2^178 (Sterbenz: the subtraction is exact), bit 52 for 2^-125
            m = a + _MIN_NORMAL_F32
            low = np.int64((m - _MIN_NORMAL_F32) * 2.0**178) & _LOW_MASK
        else:
            low = xbits[i] & _LOW_MASK
        if a == a and a != np.inf and abs(low - _HALF) < tau_units:
            positions[count] = i
            away[count] = abs(np.float64(np.float32(v))) > a
            count += 1
    return count


@numba.njit(cache=True, nogil=True)
def round_f64_to_f32(x, xbits, out, positions, away, tau_units):  # pragma: no cover - JIT
    """Fill ``out``; return the number of logged positions (``out`` may be ``x`` itself).

    The value is the IEEE cast (correct for every float64, subnormal results included). The
    midpoint distance is that of the torch path bit for bit: the low 29 bits of ``|x|``, or below
    2^-126 (where the dropped bits are not at the float32 rounding position) of
    ``|x| + 2^-126`` computed in float64 (:func:`lightning_zk.rounding.precision._split`).
    Without logging (``tau_units == 0``) the loop is the plain cast, which vectorises. With a
    small τ the array goes in blocks of 256: a vectorised test finds the rare blocks holding a
    candidate, only those are scanned element by element (before the block is written), and
    every block is cast by the vectorised loop.
    """
    n = x.size
    if tau_units <= 0.0:
        _cast_block(x, out)
        return 0
    if tau_units > _BLOCK_TAU_UNITS:
        count = _scan_f64(x, xbits, positions, away, tau_units, 0, n, 0)
        _cast_block(x, out)
        return count
    # |low - HALF| < τ over integers is |low - HALF| <= ceil(τ) - 1
    t = np.int64(np.ceil(tau_units))
    lo = np.uint64(_HALF - t + 1)
    width = np.uint64(2 * t - 1)
    count = 0
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        if _any_candidate(xbits[start:stop], lo, width):
            count = _scan_f64(x, xbits, positions, away, tau_units, start, stop, count)
        _cast_block(x[start:stop], out[start:stop])
    return count


def run(
    x: np.ndarray, tau_units: float, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rounded values, logged positions and directions of a contiguous float64 array (or None).

    ``out`` may be ``x`` itself (rounding in place is element-wise safe).
    """
    out = np.empty_like(x) if out is None else out
    positions, away = _candidates(x.size if tau_units > 0 else 0)
    count = round_f64_to_f32(x.reshape(-1), x.reshape(-1).view(np.int64), out.reshape(-1),
                             positions, away, float(tau_units))
    if count < 0:
        return None
    return out, positions[:count].copy(), away[:count].copy()


@numba.njit(cache=True, nogil=True)
def round_f32_bits(xbits, out, positions, away, drop, tau_units):  # pragma: no cover - JIT
    """Round float32 bit patterns to ``23 - drop`` mantissa bits; return the logged count.

    Branch-free per element, so that the plain rounding vectorises and the logging loop does not
    mispredict at high logged densities: nearest-even is ``(mag + half - 1 + lsb)`` with the
    dropped bits cleared (a carry moves to the next grid value, or to infinity); non-finite
    values are kept and never logged. ``out`` may be ``xbits`` itself.
    """
    mask = np.uint32((1 << drop) - 1)
    keep = ~mask
    half = np.int64(1 << (drop - 1))
    bias = np.uint32((1 << (drop - 1)) - 1)
    sign_bit = np.uint32(0x80000000)
    n = xbits.size
    bits = xbits.view(np.uint32)
    obits = out.view(np.uint32)
    if tau_units <= 0.0:
        for i in range(n):
            u = bits[i]
            mag = u & np.uint32(0x7FFFFFFF)
            lsb = (mag >> np.uint32(drop)) & np.uint32(1)
            r = (mag + bias + lsb) & keep
            obits[i] = (u & sign_bit) | (mag if mag >= np.uint32(0x7F800000) else r)
        return 0
    count = 0
    for i in range(n):
        u = bits[i]
        mag = u & np.uint32(0x7FFFFFFF)
        lsb = (mag >> np.uint32(drop)) & np.uint32(1)
        r = (mag + bias + lsb) & keep
        finite = mag < np.uint32(0x7F800000)
        d = np.int64(mag & mask) - half
        near = finite and abs(d) < tau_units
        positions[count] = i
        away[count] = r > mag
        count += near
        obits[i] = (u & sign_bit) | (r if finite else mag)
    return count


def run_f32(
    x: np.ndarray, drop: int, tau_units: float, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounded values, logged positions and directions of a contiguous float32 array.

    ``out`` may be ``x`` itself (rounding in place is element-wise safe).
    """
    out = np.empty_like(x) if out is None else out
    positions, away = _candidates(x.size if tau_units > 0 else 0)
    count = round_f32_bits(x.reshape(-1).view(np.int32), out.reshape(-1).view(np.int32),
                           positions, away, int(drop), float(tau_units))
    return out, positions[:count].copy(), away[:count].copy()


_NO_POSITIONS = np.empty(0, dtype=np.int64)
_NO_AWAY = np.empty(0, dtype=np.bool_)


@intrinsic
def _pointer(typingctx, address):  # pragma: no cover - compile time
    """The integer ``address`` as a ``void*`` (for :func:`numba.carray`)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@numba.njit(cache=True, nogil=True)
def _round_at(address, n, f64, positions_at, away_at, capacity, tau_units, drop
              ):  # pragma: no cover - JIT
    positions = numba.carray(_pointer(positions_at), capacity, np.int64)
    away = numba.carray(_pointer(away_at), capacity, np.bool_)
    if f64:
        x = numba.carray(_pointer(address), n, np.float64)
        return round_f64_to_f32(x, x.view(np.int64), x, positions, away, tau_units)
    bits = numba.carray(_pointer(address), n, np.int32)
    return round_f32_bits(bits, bits, positions, away, drop, tau_units)


def round_inplace_at(address: int, n: int, f64: bool, tau_units: float, drop: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Round the ``n`` contiguous values at ``address`` in place (float64 to float32 if ``f64``,
    else float32 to ``23 - drop`` mantissa bits): a CPU tensor's ``data_ptr()``, which the caller
    keeps alive. Returns the logged positions and directions (fresh arrays; shared empty ones
    when nothing is logged, the common case). Every argument is a scalar: a numba call with
    array arguments, and a tensor's ``.numpy()`` view, cost more than rounding a small tensor."""
    _candidates(n if tau_units > 0 else 0)
    capacity, positions_at, away_at = _scratch.addresses
    count = _round_at(address, n, f64, positions_at, away_at, capacity, tau_units, drop)
    if not count:
        return _NO_POSITIONS, _NO_AWAY
    return _scratch.positions[:count].copy(), _scratch.away[:count].copy()


@numba.njit(cache=True, nogil=True, inline="always")
def _put_varint(x, out, n):  # pragma: no cover - JIT
    """Unsigned LEB128 of the uint64 ``x`` at ``out[n:]``; returns the next free index."""
    while x >= 0x80:
        out[n] = np.uint8((x & np.uint64(0x7F)) | np.uint64(0x80))
        x >>= np.uint64(7)
        n += 1
    out[n] = np.uint8(x)
    return n + 1


@numba.njit(cache=True, nogil=True)
def _varint_bytes(v, out):  # pragma: no cover - JIT
    n = 0
    for i in range(v.size):
        n = _put_varint(np.uint64(v[i]), out, n)
    return n


def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of every value of a contiguous uint64 array, in one pass: the bytes of
    :func:`lightning_zk.rounding.log._encode_varints`' numpy path, which it is tested against."""
    out = np.empty(values.size * 9, dtype=np.uint8)  # at most 9 bytes per value (< 2**63)
    return out[: _varint_bytes(values, out)].tobytes()


@numba.njit(cache=True, nogil=True)
def _gap_varint_bytes(positions, counts, out):  # pragma: no cover - JIT
    n = 0
    k = 0
    for e in range(counts.size):
        previous = np.int64(-1)  # the first position of an entry is coded as itself
        for _ in range(counts[e]):
            p = positions[k]
            k += 1
            n = _put_varint(np.uint64(p - previous - 1), out, n)
            previous = p
    return n


def encode_position_gaps(positions: np.ndarray, counts: np.ndarray) -> bytes:
    """The log's position column in one pass: ``positions`` (contiguous int64, the entries'
    strictly increasing positions one after the other, ``counts[i]`` of entry ``i``) as LEB128
    varints of each entry's first position, then of the gaps ``p[j] - p[j-1] - 1``: the bytes of
    :func:`lightning_zk.rounding.log._encode_varints` of the gap column, without building it."""
    out = np.empty(positions.size * 9, dtype=np.uint8)
    return out[: _gap_varint_bytes(positions, counts, out)].tobytes()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True, nogil=True)
def _uniform_below(key, p, out):  # pragma: no cover - JIT
    for i in range(out.size):
        z = key + np.uint64(i + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
        out[i] = np.float64(z >> np.uint64(11)) * 2.0**-53 < p


def uniform_below(key: int, n: int, p: float) -> np.ndarray:
    """``rng.uniform01(key, n) < p`` in one pass (the splitmix64 stream of :mod:`.rng`, the same
    53-bit uniforms, exact float64 comparison): the mask of dropout and of a Bernoulli draw."""
    out = np.empty(n, dtype=np.bool_)
    _uniform_below(np.uint64(key), float(p), out)
    return out
