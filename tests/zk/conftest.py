"""Shared fixtures: every backend that can run here (NumPy always, CuPy when a GPU is usable)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_zk.zk.backend import cupy_available, get_backend, numba_available

BACKENDS = ["numpy-limbs", "numpy-numba", "cupy"]


def _make(name: str):
    if name == "numpy-limbs":
        return get_backend("numpy", use_numba=False)
    if name == "numpy-numba":
        if not numba_available():
            pytest.skip("numba is not installed: the optional JIT kernel is not tested here")
        return get_backend("numpy", use_numba=True)
    if not cupy_available():
        pytest.skip("CuPy unavailable (not installed or cupy.is_available() is False)")
    return get_backend("cupy")


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request):
    return _make(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
