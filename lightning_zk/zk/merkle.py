"""SHA-256 Merkle tree over matrix columns, with salted leaves and compact multi-openings.

leaf_j = SHA256("lzk.leaf" || salt_j || column_j as little-endian u64s)
node   = SHA256("lzk.node" || left || right)

The per-leaf random salt (16 bytes) makes the root and the unopened leaves hiding in the
random-oracle model regardless of how much entropy a column has; the salt of an opened leaf is
revealed with it. Domain-separated leaf/node hashing rules out leaf/node confusion.

A multi-opening for a set of leaf indices lists, level by level and in increasing index order,
exactly the sibling hashes the verifier cannot compute itself; the verifier rebuilds the same
traversal, consumes the list and requires it to be used up exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MerkleError, ParameterError, ShapeMismatchError

__all__ = ["SALT_BYTES", "MerkleTree", "leaf_hash", "verify_multiproof"]

SALT_BYTES = 16
_LEAF = b"lzk.leaf"
_NODE = b"lzk.node"


def leaf_hash(salt: bytes, column: np.ndarray) -> bytes:
    return hashlib.sha256(_LEAF + salt + np.asarray(column, dtype="<u8").tobytes()).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


@dataclass
class MerkleTree:
    """Full binary tree; ``levels[0]`` are the leaf hashes, ``levels[-1] == [root]``."""

    levels: list[list[bytes]]

    @classmethod
    def from_columns(cls, columns: np.ndarray, salts: Sequence[bytes]) -> MerkleTree:
        """``columns``: host array (K, rows), K a power of two; one salt per column."""
        k = columns.shape[0]
        if k < 1 or k & (k - 1) or len(salts) != k:
            raise ParameterError(f"MerkleTree: need a power-of-two number of columns, got {k}")
        cols = np.ascontiguousarray(columns, dtype="<u8")
        leaves = [hashlib.sha256(_LEAF + salts[j] + cols[j].tobytes()).digest() for j in range(k)]
        levels = [leaves]
        while len(levels[-1]) > 1:
            prev = levels[-1]
            levels.append([_node(prev[2 * i], prev[2 * i + 1]) for i in range(len(prev) // 2)])
        return cls(levels)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def multiproof(self, indices: Sequence[int]) -> list[bytes]:
        """Sibling hashes needed to authenticate the (distinct, sorted) ``indices``."""
        known = sorted(set(indices))
        proof: list[bytes] = []
        for level in self.levels[:-1]:
            kset = set(known)
            for i in known:
                if i ^ 1 not in kset:
                    proof.append(level[i ^ 1])
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
