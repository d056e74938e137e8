"""Merkle multiproofs: sibling pairs, tampered leaves and proofs, wrong lengths."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.zk import merkle as M
from lightning_zk.zk.errors import MerkleError, ShapeMismatchError


@pytest.fixture()
def tree():
    rng = np.random.default_rng(3)
    mat = rng.integers(0, 2**61, size=(4, 64), dtype=np.uint64)
    salts = [rng.bytes(16) for _ in range(64)]
    return M.MerkleTree.from_rows(mat, salts), mat, salts


@pytest.mark.parametrize("idx", [[0], [4, 5], [0, 1, 2, 3], [6, 7, 8, 40, 41, 63], list(range(64))])
def test_openings_verify_and_any_change_is_rejected(tree, idx):
    t, mat, salts = tree
    leaves = {i: M.leaf_hash(salts[i], mat[:, i]) for i in idx}
    proof = t.multiproof(idx)
    M.verify_multiproof(t.root, 64, leaves, proof)
    for i in idx[:3]:  # a changed column
        bad = dict(leaves)
        bad[i] = M.leaf_hash(salts[i], mat[:, i] + np.uint64(1))
        with pytest.raises(MerkleError):
            M.verify_multiproof(t.root, 64, bad, proof)
    for k in range(len(proof)):  # a changed sibling
        bad_proof = list(proof)
        bad_proof[k] = bytes(32)
        with pytest.raises(MerkleError):
            M.verify_multiproof(t.root, 64, leaves, bad_proof)
    with pytest.raises(ShapeMismatchError):
        M.verify_multiproof(t.root, 64, leaves, [*proof, bytes(32)])
    if proof:
        with pytest.raises(ShapeMismatchError):
            M.verify_multiproof(t.root, 64, leaves, proof[:-1])
