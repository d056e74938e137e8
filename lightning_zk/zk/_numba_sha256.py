"""SHA-256 of many Merkle leaves or nodes at once: numba loops calling OpenSSL's libcrypto.

``hashlib`` costs ~0.5-1 us of Python per call and holds the GIL for inputs under 2 KiB, which
is most Ligero columns and every Merkle node, so a commitment of 2^16 columns spends most of its
hashing time in the interpreter, on one core. Here a numba loop calls libcrypto's
``SHA256_Init/Update/Final`` (the same library, with the same SHA-NI/AVX code, that ``hashlib``
uses) directly through ctypes: no Python per hash and no GIL, so pieces of leaves/nodes run on
all threads (:func:`._numba_parallel.run_ranges`; measured on this machine: 72-byte nodes
0.68 us/hash with hashlib, 0.10 us here on one thread).

SHA-256 is a function, so the digests are those of ``hashlib`` byte for byte; the module still
checks itself against ``hashlib`` when it loads (several lengths around the block size) and is
unavailable (:func:`available` is False: callers use ``hashlib``) if libcrypto or those symbols cannot
be found, the check fails, or the machine is big-endian (columns are hashed as little-endian
uint64s). Not cached by numba: the kernels embed the library's function addresses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys
from typing import Any

import numba
import numpy as np

from . import _numba_parallel as _par

_CTX_WORDS = 16  # SHA256_CTX is 112 bytes; 128 leaves room and keeps 8-byte alignment


def _load() -> tuple[Any, Any, Any] | None:
    if sys.byteorder != "little":
        return None
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes, init.restype = [ctypes.c_void_p], ctypes.c_int
        update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        update.restype = ctypes.c_int
        final.argtypes, final.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
        return init, update, final
    return None


_FUNCS = _load()
if _FUNCS is not None:
    _init, _update, _final = _FUNCS

    @numba.njit(nogil=True)  # compiled on first call (no signature): nothing at import
    def _leaves(cols, salts, prefix, out):  # pragma: no cover - compiled
        # out[j] = SHA256(prefix || salts[j] || cols[j] as little-endian u64s)
        ctx = np.empty(_CTX_WORDS, dtype=np.uint64)
        c = ctx.ctypes.data
        nbytes = cols.shape[1] * 8
        for j in range(cols.shape[0]):
            _init(c)
            _update(c, prefix.ctypes.data, prefix.shape[0])
            _update(c, salts[j].ctypes.data, salts.shape[1])
            _update(c, cols[j].ctypes.data, nbytes)
            _final(out[j].ctypes.data, c)

    @numba.njit(nogil=True)
    def _leaves_rows(mat, salts, prefix, out, lo, hi):  # pragma: no cover - compiled
        # the same digests for the columns lo..hi-1 of a row-major (rows, K) matrix: each
        # column is gathered into a scratch buffer (consecutive columns share cache lines)
        rows = mat.shape[0]
        ctx = np.empty(_CTX_WORDS, dtype=np.uint64)
        col = np.empty(max(rows, 1), dtype=np.uint64)
        c = ctx.ctypes.data
        for j in range(lo, hi):
            for i in range(rows):
                col[i] = mat[i, j]
            _init(c)
            _update(c, prefix.ctypes.data, prefix.shape[0])
            _update(c, salts[j].ctypes.data, salts.shape[1])
            _update(c, col.ctypes.data, rows * 8)
            _final(out[j].ctypes.data, c)

    @numba.njit(nogil=True)
    def _nodes(children, prefix, out):  # pragma: no cover - compiled
        # out[i] = SHA256(prefix || children[2i] || children[2i+1]) (64 contiguous bytes)
        ctx = np.empty(_CTX_WORDS, dtype=np.uint64)
        c = ctx.ctypes.data
        for i in range(out.shape[0]):
            _init(c)
            _update(c, prefix.ctypes.data, prefix.shape[0])
            _update(c, children[2 * i].ctypes.data, 64)
            _final(out[i].ctypes.data, c)



def _parallel(count: int, words: int) -> bool:
    """Worth the threads: enough leaves/nodes and hashing (~ words of 8 bytes in total)."""
    return count >= 2 * 256 and words >= _par.PAR_MIN and _par.threads() >= 2


def _pieces(fn: Any, count: int) -> None:
    """fn(lo, hi) over pieces of ``count`` leaves or nodes (at least 256 per piece)."""
    n = max(1, min(4 * _par.threads(), count // 256))
    step = -(-count // n)
    parts = [(lo, min(count, lo + step)) for lo in range(0, count, step)]
    _par.run_pieces(lambda i: fn(*parts[i]), len(parts))


def leaf_digests(
    data: np.ndarray, salts: np.ndarray, prefix: bytes, *, row_major: bool = False
) -> np.ndarray:
    """(K, 32) digests SHA256(prefix || salts[j] || column_j) of K uint64 columns.

    ``data`` is (K, rows) with one column per row, or with ``row_major`` the (rows, K) matrix
    whose columns are hashed (no transposed copy is made).
    """
    data = np.ascontiguousarray(data, dtype=np.uint64)
    salts = np.ascontiguousarray(salts, dtype=np.uint8)
    pre = np.frombuffer(prefix, dtype=np.uint8)
    k = data.shape[1] if row_major else data.shape[0]
    out = np.empty((k, 32), dtype=np.uint8)
    if row_major:
        fn = lambda lo, hi: _leaves_rows(data, salts, pre, out, lo, hi)  # noqa: E731
    else:
        fn = lambda lo, hi: _leaves(data[lo:hi], salts[lo:hi], pre, out[lo:hi])  # noqa: E731
    if _parallel(k, data.size + 4 * k):
        _pieces(fn, k)
    else:
        fn(0, k)
    return out


def node_digests(children: np.ndarray, prefix: bytes) -> np.ndarray:
    """(n, 32) digests SHA256(prefix || children[2i] || children[2i+1]) of (2n, 32) children."""
    children = np.ascontiguousarray(children, dtype=np.uint8)
    pre = np.frombuffer(prefix, dtype=np.uint8)
    out = np.empty((children.shape[0] // 2, 32), dtype=np.uint8)

    def fn(lo: int, hi: int) -> None:
        _nodes(children[2 * lo : 2 * hi], pre, out[lo:hi])

    if _parallel(out.shape[0], 10 * out.shape[0]):
        _pieces(fn, out.shape[0])
    else:
        fn(0, out.shape[0])
    return out


def _self_test() -> bool:
    rng = np.random.default_rng(0)
    for rows in (0, 1, 3, 5, 6, 7, 8, 9, 255, 300):
        cols = rng.integers(0, 1 << 63, (3, rows), dtype=np.uint64)
        salts = rng.integers(0, 256, (3, 16), dtype=np.uint8)
        got = leaf_digests(cols, salts, b"lzk.leaf")
        if not np.array_equal(got, leaf_digests(cols.T, salts, b"lzk.leaf", row_major=True)):
            return False
        for j in range(3):
            want = hashlib.sha256(b"lzk.leaf" + salts[j].tobytes() + cols[j].tobytes()).digest()
            if got[j].tobytes() != want:
                return False
    kids = rng.integers(0, 256, (4, 32), dtype=np.uint8)
    got = node_digests(kids, b"lzk.node")
    return got[1].tobytes() == hashlib.sha256(b"lzk.node" + kids[2:].tobytes()).digest()


def compile_all() -> None:
    """Compile the hashing kernels now (the self-test calls each of them)."""
    available()


_STATUS: list[bool] = []


def available() -> bool:
    """Whether the libcrypto kernels load and agree with hashlib (checked once, on first use)."""
    if not _STATUS:
        ok = _FUNCS is not None
        if ok:
            try:
                ok = _self_test()
            except Exception:  # a broken libcrypto must never break proving: hashlib takes over
                ok = False
        _STATUS.append(ok)
    return _STATUS[0]
