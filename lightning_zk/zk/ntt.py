"""Batched number-theoretic transform over Goldilocks (radix-2, iterative Cooley-Tukey DIT).

``ntt(a)`` evaluates every row of ``a`` (coefficients along the last axis, length K a power of
two <= 2^32) on the subgroup <w> of order K: out[j] = sum_i a[i] * w^(i*j). ``intt`` inverts it.
All rows are transformed at once, so Reed-Solomon encoding of a whole matrix is log2(K)
vectorised butterfly stages. Works on NumPy or CuPy arrays; extension arrays (2, ..., K) are
transformed componentwise (the transform is F_p-linear).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from . import field as F
from .backend import P, array_module, backend_of, to_numpy
from .errors import ParameterError

__all__ = ["ntt", "intt", "naive_dft", "domain"]


def _log2(k: int, who: str) -> int:
    if k < 1 or k & (k - 1) or k > 1 << F.TWO_ADICITY:
        raise ParameterError(f"{who}: length {k} must be a power of two <= 2^32")
    return k.bit_length() - 1


@lru_cache(maxsize=64)
def _bitrev(k: int) -> np.ndarray:
    bits = k.bit_length() - 1
    idx = np.arange(k, dtype=np.uint64)
    rev = np.zeros(k, dtype=np.uint64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev.astype(np.int64)


@lru_cache(maxsize=128)
def _twiddles_np(h: int, inverse: bool) -> np.ndarray:
    """w_{2h}^j for j < h (w^-1 for the inverse transform), built by doubling."""
    w = F.root_of_unity(2 * h)
    if inverse:
        w = pow(w, P - 2, P)
    tw = np.ones(h, dtype=np.uint64)
    step = 1
    while step < h:
        tw[step : 2 * step] = F.mul(tw[:step], np.uint64(pow(w, step, P)))
        step *= 2
    return tw


@lru_cache(maxsize=64)
def _twiddles_flat(k: int, inverse: bool) -> np.ndarray:
    """All stages' twiddles for length K in one array: stage h at [h - 1, 2h - 1) (length K-1)."""
    parts = [_twiddles_np(1 << s, inverse) for s in range(k.bit_length() - 1)]
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0, np.uint64))


_DEVICE_CACHE: dict[tuple[int, bool, int], Any] = {}


def _twiddles(h: int, inverse: bool, xp: Any) -> Any:
    tw = _twiddles_np(h, inverse)
    if xp is np:
        return tw
    key = (h, inverse, id(xp))
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = xp.asarray(tw)
    return _DEVICE_CACHE[key]


def _transform(a: Any, inverse: bool, who: str, overwrite: bool = False) -> Any:
    xp = array_module(a)
    a = xp.asarray(a, dtype=xp.uint64)
    _log2(a.shape[-1], who)
    kernel = backend_of(a).ntt_rows
    if kernel is not None:
        return _transform_fused(a, inverse, kernel, overwrite)
    return _transform_xp(a, inverse)


def _transform_fused(
    a: np.ndarray, inverse: bool, kernel: Any, overwrite: bool = False
) -> np.ndarray:
    """Per-row kernel (numba): the same butterflies as ``_transform_xp``, without temporaries.

    The kernel works in place: on a copy, or on ``a`` itself when ``overwrite`` and ``a`` is a
    writeable C-contiguous uint64 array.
    """
    k = a.shape[-1]
    if overwrite and a.flags.c_contiguous and a.flags.writeable and a.dtype == np.uint64:
        x = a
    else:
        x = np.array(a, dtype=np.uint64, order="C", copy=True)
    kinv = pow(k, P - 2, P) if inverse else 1
    kernel(x.reshape(-1, k), _twiddles_flat(k, inverse), _bitrev(k), kinv, inverse)
    return x


def _transform_xp(a: Any, inverse: bool) -> Any:
    """Vectorised stages on any array module: all rows at once, log2(K) butterfly passes."""
    xp = array_module(a)
    k = a.shape[-1]
    lead = a.shape[:-1]
    idx = _bitrev(k)
    x = a[..., idx if xp is np else xp.asarray(idx)]
    h = 1
    while h < k:
        x = x.reshape(*lead, k // (2 * h), 2, h)
        u = x[..., 0, :]
        v = F.mul(x[..., 1, :], _twiddles(h, inverse, xp))
        x = xp.stack([F.add(u, v), F.sub(u, v)], axis=-2)
        h *= 2
    x = x.reshape(*lead, k)
    if inverse:
        x = F.mul(x, np.uint64(pow(k, P - 2, P)))
    return x


def ntt(a: Any, *, overwrite: bool = False) -> Any:
    """Forward NTT along the last axis (coefficients -> evaluations on the order-K subgroup).

    ``overwrite=True`` lets the fused (numba) path transform ``a`` in place and return it,
    saving a copy; pass it only for an array you no longer need. Other paths ignore it.
    """
    return _transform(a, False, "ntt", overwrite)


def intt(a: Any) -> Any:
    """Inverse NTT along the last axis (evaluations -> coefficients)."""
    return _transform(a, True, "intt")


def domain(k: int) -> list[int]:
    """The evaluation points w^0, ..., w^(K-1) of ``ntt`` (Python ints; for references/tests)."""
    _log2(k, "domain")
    w = F.root_of_unity(k)
    return [pow(w, j, P) for j in range(k)]


def naive_dft(coeffs: Any) -> list[int]:
    """O(K^2) reference: evaluate the polynomial with these coefficients on ``domain(K)``."""
    c = [int(v) for v in to_numpy(coeffs).reshape(-1)]
    pts = domain(len(c))
    out = []
    for x in pts:
        acc = 0
        for coef in reversed(c):
            acc = (acc * x + coef) % P
        out.append(acc)
    return out
