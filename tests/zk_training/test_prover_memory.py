"""The prover's memory work changes no proof byte, and its peak memory stays near linear in Wit.

The recorded digests are those of the seeded proofs of :mod:`.seeded` made by the prover before
it stopped keeping codewords and lifted tables (commit 591a230; re-recorded for format LZKT 6,
F_p2 sumcheck masks, from the prover before the memory work, which gave the same bytes): the savings (class-wise
encoding, base and periodic tables, chunked sums, ``consume``) are pure prover-side
refactorings, so every byte must stay the same. A deliberate change of the proof format or of
the prover's randomness use updates them. Re-recorded for statement version 5 (issue 12: the
transcript absorbs the statement version, SGD's momentum and weight decay, and the loss kind);
with version 3's absorption the same prover gives the previous digests (ff95c621…, 8aa6d71f…)
byte for byte (checked when the two branches were merged). Re-recorded for statement version 6
(issue 12, Conv2d: the transcript absorbs the conv shape) and version 7 (the steps' graph
digests); absorbing version 5 without the conv and graph fields, the same prover gives the
previous digests (150921d9…, 90e41532…) byte for byte (checked at the merge). Re-recorded for
statement version 8 (the input ops: the transcript absorbs them); absorbing version 7 without
it, the same prover gives the previous digests (4046604b…, f2db70c9…) byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from .seeded import seeded_proofs

STEP_SHA256 = "7c9688d7f293501a7b383ec0623c154d2a8fb04ca5ea38bbc84f78677084da38"
EPOCH_SHA256 = "f21d3f6d99c33f80a0b9300ce12d763928e4be639dd7f12fb0541da5ee5ce2a1"


def test_seeded_proofs_are_byte_identical_to_before():
    step, epoch = seeded_proofs()
    assert hashlib.sha256(step).hexdigest() == STEP_SHA256
    assert hashlib.sha256(epoch).hexdigest() == EPOCH_SHA256


def test_chunk_sizes_change_no_byte(monkeypatch):
    """Tiny chunks force every chunked path (several chunks per table, a shorter table spread
    over a chunk, periodic reads across chunks) on the small seeded proof."""
    from lightning_zk.zk import ligero, multilinear, sumcheck
    from lightning_zk.zk.training import ranges

    monkeypatch.setattr(sumcheck, "_CHUNK", 4)
    monkeypatch.setattr(ligero, "_ROW_CHUNK", 3)
    monkeypatch.setattr(multilinear, "_EQ_CHUNK", 2)
    monkeypatch.setattr(ranges, "_CHUNK", 8)
    (step,) = seeded_proofs(epoch=False)
    assert hashlib.sha256(step).hexdigest() == STEP_SHA256


_PEAK_SCRIPT = textwrap.dedent("""
    import resource
    import numpy as np
    from lightning_zk.fixed import FixedPointMLP
    from lightning_zk.zk.training import prove_step

    def tape(dims, batch):
        rng = np.random.default_rng(0)
        n = len(dims) - 1
        ws = [rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(n)]
        bs = [np.zeros(dims[i + 1]) for i in range(n)]
        x = rng.integers(0, 17, size=(batch, dims[0])) / 16.0
        y = np.eye(dims[-1])[rng.integers(0, dims[-1], size=batch)]
        return FixedPointMLP.from_float(ws, bs, lr=0.05).step_float(x, y)

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    prove_step(tape((4, 8, 3), 3), backend="numpy", rng=1)  # kernels compiled: the floor
    floor = peak()
    prove_step(tape((64, 256, 256, 10), 64), backend="numpy", rng=1)  # Wit: 2^20 entries
    print(floor, peak())
""")

# measured: 191 MiB above the floor (827 MiB while the prover kept its codewords and lifted
# every table); the ceiling leaves 1.5x for allocators and platforms
CEILING_MIB = 290


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB on Linux")
def test_peak_memory_of_a_digits_step():
    """A digits MLP 64-256-256-10 step at batch 64, in a fresh process: the peak resident
    memory above the process floor (numba kernels compiled, a tiny proof made)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True,
                         env=env, check=True, timeout=600)
    floor, peak = (float(v) for v in out.stdout.split())
    assert peak - floor < CEILING_MIB, f"peak {peak:.0f} MiB, floor {floor:.0f} MiB"
