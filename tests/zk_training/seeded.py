"""Seeded proofs shared by the 1-vs-2-threads test (tests/zk/test_parallel_kernels.py), which also
runs them in fresh processes."""

from __future__ import annotations

from lightning_zk.zk.training import encode_training_proof, prove_epoch, prove_step

from .conftest import make_tapes


def seeded_proofs(epoch: bool = True) -> list[bytes]:
    """Encoded bytes of a seeded step proof (and an epoch proof of 2 steps)."""
    step, _, _ = prove_step(make_tapes(1, seed=5)[0], None, backend="numpy", rng=11)
    out = [encode_training_proof(step)]
    if epoch:
        proof, _, _ = prove_epoch(make_tapes(2, seed=6), None, backend="numpy", rng=12)
        out.append(encode_training_proof(proof))
    return out
