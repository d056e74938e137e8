"""Array backends: NumPy on CPU, CuPy on GPU, chosen once and used by every kernel.

This is the only module that imports CuPy (or numba). Every other module writes its math against
the array module ``xp`` of its inputs, so one implementation serves both devices; only the
field kernels below are device-specific:

* multiplication (64x64->128 bits, then reduce): on NumPy a 32-bit limb split in uint64
  arithmetic (pure NumPy, always available), or a numba JIT kernel when numba is importable
  (optional; see ``docs/zk_core.md`` for the measurement); on CuPy an ``ElementwiseKernel``
  using ``__umul64hi``.
* add / sub / neg: ``xp.where``-based corrections (NumPy and CuPy), or fused numba loops.

Threads: :func:`num_threads` is the one knob for how many CPU threads the prover's parallel
kernels use (numba kernels run on pieces by the caller and helper threads, SHA-256 leaf/node
hashing, the hashlib thread pool):
:func:`set_num_threads`, else the environment variable ``LIGHTNING_ZK_THREADS``, else every
core this process may run on. Every parallel kernel computes exactly what its serial twin does
(field arithmetic and integer sums are exact, so no order of reduction changes a bit), hence
proofs are byte-identical for any thread count.

``get_backend("auto")`` picks CuPy only when ``import cupy`` succeeds *and*
``cupy.is_available()`` is true (``import cupy`` succeeds on machines without a GPU).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ParameterError

__all__ = [
    "Backend",
    "get_backend",
    "array_module",
    "backend_of",
    "clipped_bincount",
    "compile_kernels",
    "cupy_available",
    "numba_available",
    "num_threads",
    "set_num_threads",
    "to_numpy",
]

THREADS_ENV = "LIGHTNING_ZK_THREADS"
_threads_override: int | None = None


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """CPU threads for the parallel kernels: :func:`set_num_threads`, else ``LIGHTNING_ZK_THREADS``,
    else all cores this process may use.

    Raises:
        ParameterError: ``LIGHTNING_ZK_THREADS`` is not a positive integer.
    """
    if _threads_override is not None:
        return _threads_override
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return _cores()
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ParameterError(
            f"{THREADS_ENV}={raw!r}: must be a positive integer (number of threads). "
            f"HINT: unset it to use every core ({_cores()} here)."
        )
    return n


def set_num_threads(n: int | None) -> None:
    """Use ``n`` threads in the parallel kernels from now on (``None``: back to the default).

    Results do not depend on it (proof bytes are identical for any count); only speed does.

    Raises:
        ParameterError: ``n`` is not a positive integer.

    Example::

        >>> set_num_threads(1); num_threads()
        1
        >>> set_num_threads(None)
    """
    global _threads_override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ParameterError(f"set_num_threads(n={n!r}): n must be a positive integer or None")
    _threads_override = n

P = 0xFFFF_FFFF_0000_0001
EPS = 0xFFFF_FFFF  # 2^64 mod p
M32 = 0xFFFF_FFFF

MulKernel = Callable[[Any, Any], Any]
BinaryKernel = Callable[[Any, Any], Any]
UnaryKernel = Callable[[Any], Any]
# (x (rows, K) C-contiguous uint64, flat twiddles, bit-reversal, 1/K, scale?) -> None, in place
NttKernel = Callable[[Any, Any, Any, int, bool], None]


def _mul_limbs(a: Any, b: Any) -> Any:
    """Goldilocks a*b for uint64 arrays of any module: 32-bit limb split, then reduce mod p.

    64x64->128: a = a1*2^32 + a0, b = b1*2^32 + b0; no partial sum below overflows uint64.
    Reduction of hi*2^64 + lo uses 2^64 = 2^32 - 1 and 2^96 = -1 (mod p).
    """
    a0 = a & M32
    a1 = a >> 32
    b0 = b & M32
    b1 = b >> 32
    t = a0 * b0
    m1 = a1 * b0
    m1 += t >> 32
    m2 = a0 * b1
    m2 += m1 & M32
    t &= M32
    lo = m2 << 32
    lo |= t
    hi = a1 * b1
    hi += m1 >> 32
    hi += m2 >> 32
    return reduce128(hi, lo)


def reduce128(hi: Any, lo: Any) -> Any:
    """Reduce hi*2^64 + lo (two uint64 arrays) to the canonical representative in [0, p)."""
    xp = array_module(lo)
    hh = hi >> 32
    hl = hi & M32
    t0 = lo - hh
    t0 = xp.where(lo < hh, t0 - EPS, t0)  # borrow: add 2^64 == subtract eps; cannot underflow
    t1 = hl << 32
    t1 -= hl  # hl * (2^32 - 1) < 2^64
    t2 = t0 + t1
    t2 = xp.where(t2 < t1, t2 + EPS, t2)  # carry: 2^64 == eps; cannot overflow again
    return xp.where(t2 >= P, t2 - P, t2)


def _add_where(a: Any, b: Any) -> Any:
    """a + b mod p for canonical uint64 arrays of any module (broadcasting)."""
    xp = array_module(a)
    s = a + b
    # wrapped (s < a) means a+b >= 2^64 > p; subtracting p with wraparound is then exact
    return xp.where((s < a) | (s >= P), s - P, s)


def _sub_where(a: Any, b: Any) -> Any:
    """a - b mod p for canonical uint64 arrays of any module (broadcasting)."""
    xp = array_module(a)
    d = a - b
    return xp.where(a < b, d + P, d)


def _neg_where(a: Any) -> Any:
    """-a mod p for a canonical uint64 array of any module."""
    xp = array_module(a)
    return xp.where(a == 0, a, P - a)


_CUDA_MUL_BODY = r"""
unsigned long long lo = a * b;
unsigned long long hi = __umul64hi(a, b);
unsigned long long hh = hi >> 32;
unsigned long long hl = hi & 0xFFFFFFFFull;
unsigned long long t0 = lo - hh;
if (lo < hh) { t0 -= 0xFFFFFFFFull; }
unsigned long long t1 = (hl << 32) - hl;
unsigned long long t2 = t0 + t1;
if (t2 < t1) { t2 += 0xFFFFFFFFull; }
if (t2 >= 0xFFFFFFFF00000001ull) { t2 -= 0xFFFFFFFF00000001ull; }
c = t2;
"""


@dataclass
class Backend:
    """An array module plus its field kernels.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: the array module.
        mul: elementwise Goldilocks multiplication of two uint64 arrays (broadcasting).
        mul_impl: which kernel ``mul`` is (``"limbs"``, ``"numba"``, ``"cuda"``).
        add, sub, neg: elementwise a + b, a - b, -a mod p on uint64 arrays (broadcasting);
            ``xp.where``-based unless a fused kernel (numba) is available.
        ntt_rows: in-place NTT of every row of a C-contiguous (rows, K) array, or ``None``
            (the vectorised ``xp`` stages of :mod:`.ntt` are used).
        e_mul, e_scale, fold, halves_sum: fused kernels for :mod:`.extension` and
            :mod:`.multilinear` (product of two equal-shape extension arrays; extension array
            times scalar (s0, s1); binding a (2, 2h) table's first variable to (s0, s1); exact
            sums of the 32-bit halves for ``fsum``), or ``None`` to use the generic ``xp`` code.
        combine_rows: Ligero's coeffs^T msg (the ``fsum(mul(...), axis=0)`` of
            ``ligero._combine_rows`` in one pass), or ``None``.
        batch_inverse: inverses of a 1-D array of nonzero elements (Montgomery's trick per
            chunk), or ``None`` (``field.batch_inverse``'s product tree).
        bincount: ``(values, size) -> int64 counts of min(v, size - 1)``, or ``None``.
        round_sums, round_poly_sums, fold_table: the sumcheck prover's round sums (round 1 of
            a hiding sumcheck as a polynomial in X (1 - X)) and general fold, each in one fused
            pass (:mod:`._numba_sumcheck`), or ``None`` (the generic ``xp`` code of
            :mod:`.sumcheck`).
        eq_table: ``(z0, z1) -> (2, 2^n)`` table of eq(z, x) (:func:`.multilinear.eq_table`) in
            one kernel call, or ``None``.
        twist_fold: Ligero's twist and fold of the message rows for one class of code columns
            (``ligero._encode_class``) in one pass, or ``None``.

    With numba every kernel above cuts large inputs into pieces run by :func:`num_threads`
    threads (:mod:`._numba_parallel`), with results identical to one thread.
    """

    name: str
    xp: Any
    mul: MulKernel
    mul_impl: str
    extras: dict[str, Any] = field(default_factory=dict)
    add: BinaryKernel = _add_where
    sub: BinaryKernel = _sub_where
    neg: UnaryKernel = _neg_where
    ntt_rows: NttKernel | None = None
    e_mul: BinaryKernel | None = None
    e_scale: Callable[[Any, int, int], Any] | None = None
    fold: Callable[[Any, int, int], Any] | None = None
    combine_rows: BinaryKernel | None = None
    halves_sum: Callable[[Any], tuple[int, int]] | None = None
    batch_inverse: UnaryKernel | None = None
    bincount: Callable[[Any, int], Any] | None = None
    round_sums: Callable[..., Any] | None = None
    round_poly_sums: Callable[..., Any] | None = None
    fold_table: Callable[..., Any] | None = None
    twist_fold: Callable[..., Any] | None = None
    eq_table: Callable[..., Any] | None = None

    def asarray(self, a: Any) -> Any:
        """Move ``a`` to this backend as a uint64 array (no copy when already there)."""
        if self.name == "cupy":
            return self.xp.asarray(a, dtype=self.xp.uint64)
        return np.asarray(to_numpy(a), dtype=np.uint64)

    def describe(self) -> str:
        return f"{self.name} (field mul: {self.mul_impl})"


def cupy_available() -> bool:
    """True when CuPy imports and sees a usable GPU."""
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, CUDA driver errors at import time
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def numba_available() -> bool:
    """True when numba imports (optional CPU JIT kernel) and it is not disabled."""
    if os.environ.get("LIGHTNING_ZK_NUMBA", "1") == "0":
        return False
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


_CACHE: dict[str, Backend] = {}


def _numpy_backend(use_numba: bool | None) -> Backend:
    key = f"numpy-{use_numba}"
    if key in _CACHE:
        return _CACHE[key]
    want = numba_available() if use_numba is None else use_numba
    if want:
        from . import _numba_parallel as par
        from . import _numba_sumcheck as nsc

        be = Backend(
            "numpy",
            np,
            par.mul,
            "numba",
            add=par.add,
            sub=par.sub,
            neg=par.neg,
            ntt_rows=par.ntt_rows,
            e_mul=par.e_mul,
            e_scale=par.e_scale,
            fold=par.fold,
            combine_rows=par.combine_rows,
            halves_sum=par.halves_sum,
            batch_inverse=par.batch_inverse,
            bincount=par.clipped_bincount,
            round_sums=nsc.round_sums,
            round_poly_sums=nsc.round_poly_sums,
            fold_table=nsc.fold_table,
            twist_fold=par.twist_fold,
            eq_table=nsc.eq_table,
        )
    else:
        be = Backend("numpy", np, _mul_limbs, "limbs")
    _CACHE[key] = be
    return be


def _cupy_backend() -> Backend:
    if "cupy" in _CACHE:
        return _CACHE["cupy"]
    import cupy

    kernel = cupy.ElementwiseKernel(
        "uint64 a, uint64 b", "uint64 c", _CUDA_MUL_BODY, "goldilocks_mul"
    )

    def mul(a: Any, b: Any) -> Any:
        return kernel(cupy.asarray(a, dtype=cupy.uint64), cupy.asarray(b, dtype=cupy.uint64))

    be = Backend("cupy", cupy, mul, "cuda")
    _CACHE["cupy"] = be
    return be


def get_backend(name: str = "auto", *, use_numba: bool | None = None) -> Backend:
    """Return the backend called ``name``: ``"auto"``, ``"numpy"`` or ``"cupy"``.

    ``"auto"`` is CuPy only when a GPU is usable, else NumPy. ``use_numba`` forces the CPU
    multiplication kernel (``None``: numba when importable, since it measured faster).

    Raises:
        ParameterError: unknown name, or ``"cupy"`` requested where CuPy has no GPU.

    Example::

        >>> get_backend("numpy").name
        'numpy'
    """
    if name == "auto":
        return _cupy_backend() if cupy_available() else _numpy_backend(use_numba)
    if name == "numpy":
        return _numpy_backend(use_numba)
    if name == "cupy":
        if not cupy_available():
            raise ParameterError(
                "get_backend('cupy'): CuPy is not installed or cupy.is_available() is False. "
                "HINT: use get_backend('auto') or 'numpy' on machines without a GPU."
            )
        return _cupy_backend()
    raise ParameterError(f"get_backend(name={name!r}): name must be 'auto', 'numpy' or 'cupy'")


def _is_cupy_array(a: Any) -> bool:
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(a, cp.ndarray)


def array_module(a: Any) -> Any:
    """The array module (numpy or cupy) that owns ``a``."""
    if _is_cupy_array(a):
        return sys.modules["cupy"]
    return np


def backend_of(a: Any) -> Backend:
    """The backend whose kernels operate on ``a`` (CuPy arrays -> CuPy, anything else -> NumPy)."""
    if _is_cupy_array(a):
        return _cupy_backend()
    return _numpy_backend(None)


def compile_kernels() -> None:
    """JIT-compile every numba kernel now instead of on first use (the hashing ones included).

    For benchmarks and latency-sensitive callers; results never depend on it. A no-op without
    numba.
    """
    if not numba_available():
        return
    from . import _numba_parallel, _numba_sha256, _numba_sumcheck

    _numpy_backend(None)
    _numba_parallel.compile_all()
    _numba_sumcheck.compile_all()
    _numba_sha256.compile_all()


def clipped_bincount(values: Any, size: int) -> np.ndarray:
    """Counts of min(v, size - 1) for v in a host uint64 array (int64, length ``size``).

    logUp's multiplicities (:mod:`.lookup`); parallel with numba, ``np.bincount`` otherwise.
    """
    v = np.asarray(to_numpy(values), dtype=np.uint64).reshape(-1)
    fast = _numpy_backend(None).bincount
    if fast is not None:
        return fast(v, size)
    return np.bincount(np.minimum(v, np.uint64(size - 1)).astype(np.int64), minlength=size)


def to_numpy(a: Any) -> np.ndarray:
    """Host copy of ``a`` (no copy for NumPy input)."""
    if _is_cupy_array(a):
        return sys.modules["cupy"].asnumpy(a)
    return np.asarray(a)
