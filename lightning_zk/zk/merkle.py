"""SHA-256 Merkle tree over matrix columns, with salted leaves and compact multi-openings.

leaf_j = SHA256("lzk.leaf" || salt_j || column_j as little-endian u64s)
node   = SHA256("lzk.node" || left || right)

The per-leaf random salt (16 bytes) makes the root and the unopened leaves hiding in the
random-oracle model regardless of how much entropy a column has; the salt of an opened leaf is
revealed with it. Domain-separated leaf/node hashing rules out leaf/node confusion.

A multi-opening for a set of leaf indices lists, level by level and in increasing index order,
exactly the sibling hashes the verifier cannot compute itself; the verifier rebuilds the same
traversal, consumes the list and requires it to be used up exactly.

Hashing many leaves or nodes (:func:`hash_columns`, :func:`hash_nodes`) runs, when numba and
libcrypto are there, as numba loops calling OpenSSL directly over all threads
(:mod:`._numba_sha256`); otherwise ``hashlib``, with a thread pool when columns are long enough
(>= 2 KiB) for ``hashlib`` to release the GIL. The digests are the same either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import num_threads, numba_available
from .errors import MerkleError, ParameterError, ShapeMismatchError

__all__ = [
    "SALT_BYTES",
    "MerkleTree",
    "leaf_hash",
    "hash_columns",
    "hash_nodes",
    "verify_multiproof",
]

SALT_BYTES = 16
_LEAF = b"lzk.leaf"
_NODE = b"lzk.node"


def leaf_hash(salt: bytes, column: np.ndarray) -> bytes:
    return hashlib.sha256(_LEAF + salt + np.asarray(column, dtype="<u8").tobytes()).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


_GIL_FREE_BYTES = 2048  # hashlib releases the GIL while hashing inputs at least this long


def _fast() -> Any:
    """The numba + libcrypto hashing module, or None (then hashlib)."""
    if not numba_available():
        return None
    from . import _numba_sha256

    return _numba_sha256 if _numba_sha256.available() else None


def _salt_array(salts: Sequence[bytes] | np.ndarray, count: int) -> np.ndarray:
    if isinstance(salts, np.ndarray):
        arr = np.ascontiguousarray(salts, dtype=np.uint8)
    else:
        arr = np.frombuffer(b"".join(salts), dtype=np.uint8)
    if arr.size != count * SALT_BYTES:
        raise ParameterError(f"hash_columns: need {count} salts of {SALT_BYTES} bytes")
    return arr.reshape(count, SALT_BYTES)


def _leaves_hashlib(cols: np.ndarray, salts: np.ndarray) -> np.ndarray:
    """hashlib leaf digests of (K, rows) little-endian columns; threads when the GIL is freed."""
    k = cols.shape[0]
    out = np.empty((k, 32), dtype=np.uint8)

    def work(lo: int, hi: int) -> None:
        for j in range(lo, hi):
            msg = _LEAF + salts[j].tobytes() + cols[j].tobytes()
            out[j] = np.frombuffer(hashlib.sha256(msg).digest(), dtype=np.uint8)

    n = num_threads()
    if n > 1 and k >= 2 * 64 and cols.shape[1] * 8 >= _GIL_FREE_BYTES:
        step = -(-k // (4 * n))
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda lo: work(lo, min(k, lo + step)), range(0, k, step)))
    else:
        work(0, k)
    return out


def hash_columns(
    columns: np.ndarray, salts: Sequence[bytes] | np.ndarray, *, row_major: bool = False
) -> np.ndarray:
    """Leaf digests (K, 32) uint8 of a block of K columns and their K salts (16 bytes each).

    leaf_j = SHA256("lzk.leaf" || salt_j || column_j as little-endian u64s). ``columns`` is
    (K, rows), one column per row; with ``row_major`` it is the (rows, K) matrix whose columns
    are hashed (no transposed copy with numba). Any block of columns can be hashed on its own,
    so a streaming commitment can feed blocks and assemble the leaves with
    :meth:`MerkleTree.from_leaves`.
    """
    data = np.asarray(columns)
    k = data.shape[1] if row_major else data.shape[0]
    salt_arr = _salt_array(salts, k)
    fast = _fast()
    if fast is not None:
        return fast.leaf_digests(data, salt_arr, _LEAF, row_major=row_major)
    cols = data.T if row_major else data
    return _leaves_hashlib(np.ascontiguousarray(cols, dtype="<u8"), salt_arr)


def hash_nodes(children: np.ndarray) -> np.ndarray:
    """Parent digests (n, 32) of (2n, 32) children: SHA256("lzk.node" || left || right)."""
    kids = np.ascontiguousarray(children, dtype=np.uint8)
    if kids.ndim != 2 or kids.shape[1] != 32 or kids.shape[0] % 2:
        raise ParameterError(f"hash_nodes: need (2n, 32) child digests, got {kids.shape}")
    fast = _fast()
    if fast is not None:
        return fast.node_digests(kids, _NODE)
    pairs = kids.reshape(-1, 64)
    out = np.empty((pairs.shape[0], 32), dtype=np.uint8)
    for i in range(pairs.shape[0]):
        out[i] = np.frombuffer(hashlib.sha256(_NODE + pairs[i].tobytes()).digest(), np.uint8)
    return out


@dataclass
class MerkleTree:
    """Full binary tree; ``levels[0]`` are the leaf digests, ``levels[-1]`` the root, each an
    (n, 32) uint8 array."""

    levels: list[np.ndarray]

    @classmethod
    def from_columns(cls, columns: np.ndarray, salts: Sequence[bytes]) -> MerkleTree:
        """``columns``: host array (K, rows), K a power of two; one salt per column."""
        return cls.from_leaves(hash_columns(columns, salts))

    @classmethod
    def from_rows(cls, matrix: np.ndarray, salts: Sequence[bytes]) -> MerkleTree:
        """The tree of the K columns of a host (rows, K) matrix (no transposed copy)."""
        return cls.from_leaves(hash_columns(matrix, salts, row_major=True))

    @classmethod
    def from_leaves(cls, leaves: np.ndarray) -> MerkleTree:
        """The tree over (K, 32) leaf digests, K a power of two."""
        k = leaves.shape[0]
        if k < 1 or k & (k - 1) or leaves.shape[1:] != (32,):
            raise ParameterError(
                f"MerkleTree: need a power-of-two number of 32-byte leaves, got {leaves.shape}"
            )
        levels = [np.ascontiguousarray(leaves, dtype=np.uint8)]
        while levels[-1].shape[0] > 1:
            levels.append(hash_nodes(levels[-1]))
        return cls(levels)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0].tobytes()

    def multiproof(self, indices: Sequence[int]) -> list[bytes]:
        """Sibling hashes needed to authenticate the (distinct, sorted) ``indices``."""
        known = sorted(set(indices))
        proof: list[bytes] = []
        for level in self.levels[:-1]:
            kset = set(known)
            for i in known:
                if i ^ 1 not in kset:
                    proof.append(level[i ^ 1].tobytes())
            known = sorted({i >> 1 for i in known})
        return proof


def verify_multiproof(
    root: bytes,
    num_leaves: int,
    leaves: dict[int, bytes],
    proof: Sequence[bytes],
) -> None:
    """Check that ``leaves`` (index -> leaf hash) lie under ``root``; raise MerkleError if not."""
    depth = num_leaves.bit_length() - 1
    if not leaves:
        raise ShapeMismatchError("merkle opening", expected="at least one leaf", got=0)
    for i in leaves:
        if not 0 <= i < num_leaves:
            raise ShapeMismatchError("merkle leaf index", expected=f"< {num_leaves}", got=i)
    nodes = dict(leaves)
    pos = 0
    for level in range(depth):
        parents: dict[int, bytes] = {}
        for i in sorted(nodes):
            if i ^ 1 in nodes:
                if i & 1:  # the pair's parent was made from its left child
                    continue
                sib = nodes[i ^ 1]
            else:
                if pos >= len(proof):
                    raise ShapeMismatchError(
                        "merkle multiproof length",
                        round=level,
                        expected=f"> {len(proof)}",
                        got=len(proof),
                    )
                sib = proof[pos]
                pos += 1
            left, right = (nodes[i], sib) if i % 2 == 0 else (sib, nodes[i])
            parents[i >> 1] = _node(left, right)
        nodes = parents
    if pos != len(proof):
        raise ShapeMismatchError("merkle multiproof length", expected=pos, got=len(proof))
    got = nodes.get(0)
    if got != root:
        raise MerkleError(
            "merkle root", expected=root.hex(), got=None if got is None else got.hex()
        )
