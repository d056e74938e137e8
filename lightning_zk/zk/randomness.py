"""Prover randomness: OS CSPRNG by default, a seeded generator only for reproducible tests.

Zero knowledge rests on the prover's masks, pads and salts being unpredictable, so the default
source is ``os.urandom``. ``ProverRng(seed)`` gives a deterministic stream for tests and
benchmarks; it is *not* suitable for real proofs (documented, and named ``seeded``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .backend import P

__all__ = ["ProverRng", "as_rng"]


class ProverRng:
    """Source of uniform field elements and bytes for the prover.

    Args:
        seed: ``None`` (default) draws from ``os.urandom``; an int gives a deterministic,
            non-cryptographic stream for tests.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seeded = seed is not None
        self._gen = np.random.default_rng(seed) if seed is not None else None

    def bytes(self, n: int) -> bytes:
        if self._gen is not None:
            return self._gen.bytes(n)
        return os.urandom(n)

    def _words(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * n), dtype="<u8").astype(np.uint64)

    def field(self, shape: Any, xp: Any = np) -> Any:
        """Uniform elements of F_p (rejection sampling: a 64-bit word is kept iff < p)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = int(np.prod(shape)) if shape else 1
        out = self._words(n)
        bad = out >= P
        while bad.any():
            out[bad] = self._words(int(bad.sum()))
            bad = out >= P
        out = out.reshape(shape)
        return out if xp is np else xp.asarray(out)

    def ext(self, shape: Any, xp: Any = np) -> Any:
        """Uniform extension array of shape (2, *shape)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return self.field((2, *shape), xp)


def as_rng(rng: ProverRng | int | None) -> ProverRng:
    """Accept a ProverRng, a test seed, or None (secure)."""
    return rng if isinstance(rng, ProverRng) else ProverRng(rng)
