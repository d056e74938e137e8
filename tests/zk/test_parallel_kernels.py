"""Parallel kernels and the threads knob: every parallel kernel equals its serial twin, the NumPy
path and the pure-int references, bit for bit; proofs are byte-identical with 1 and 2 threads.

The wrappers run with ``PAR_MIN = 1`` and two threads, so work is cut into pieces even for tiny
inputs; sizes are odd (partial last pieces). The pool itself is tested for its one promise: the
caller never waits for a helper that has not started.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lightning_zk.zk import ParameterError
from lightning_zk.zk import field as F
from lightning_zk.zk import merkle as M
from lightning_zk.zk.backend import (
    P,
    _add_where,
    _mul_limbs,
    _neg_where,
    _sub_where,
    clipped_bincount,
    num_threads,
    set_num_threads,
)

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not importable")
ROOT = Path(__file__).resolve().parents[2]
EDGE = np.array([0, 1, 2, P - 1, P - 2, 2**32, 2**32 - 1, 2**32 + 1, 2**63, P // 2], np.uint64)


@pytest.fixture
def par(monkeypatch):
    """The dispatch module with every call forced onto the multi-threaded path (2 threads)."""
    from lightning_zk.zk import _numba_parallel

    monkeypatch.setattr(_numba_parallel, "PAR_MIN", 1)
    set_num_threads(2)
    yield _numba_parallel
    set_num_threads(None)


def _field(rng, *shape):
    a = rng.integers(0, P, shape, dtype=np.uint64)
    flat = a.reshape(-1)
    flat[: EDGE.size] = EDGE[: flat.size]
    return a


def _sizes(par):
    return [1, 5, 1000, par.PIECE_MIN + 3]


# ---- the threads knob ----------------------------------------------------------------------


def test_num_threads_knob(monkeypatch):
    monkeypatch.delenv("LIGHTNING_ZK_THREADS", raising=False)
    assert num_threads() >= 1
    monkeypatch.setenv("LIGHTNING_ZK_THREADS", "3")
    assert num_threads() == 3
    set_num_threads(1)
    assert num_threads() == 1  # the function wins over the environment
    set_num_threads(None)
    assert num_threads() == 3
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("LIGHTNING_ZK_THREADS", bad)
        with pytest.raises(ParameterError, match="LIGHTNING_ZK_THREADS"):
            num_threads()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ParameterError, match="set_num_threads"):
            set_num_threads(bad)


# ---- elementwise and F_p2 kernels ----------------------------------------------------------


@needs_numba
def test_elementwise_kernels_match_numpy(par, rng):
    for n in _sizes(par):
        a, b = _field(rng, n), _field(rng, n)[::-1].copy()
        for wrapper, ref in ((par.add, _add_where), (par.sub, _sub_where), (par.mul, _mul_limbs)):
            assert np.array_equal(wrapper(a, b), ref(a, b))
        assert np.array_equal(par.neg(a), _neg_where(a))
    # rows of a (2, 2h) table's halves are contiguous but the halves are not
    t = _field(rng, 2, 2 * 1007)
    h = t.shape[1] // 2
    assert np.array_equal(par.add(t[:, :h], t[:, h:]), _add_where(t[:, :h], t[:, h:]))
    assert np.array_equal(par.sub(t[:, h:], t[:, :h]), _sub_where(t[:, h:], t[:, :h]))
    # broadcasting falls back to the ufunc, same values
    assert np.array_equal(par.mul(a, np.uint64(7)), _mul_limbs(a, np.uint64(7)))


@needs_numba
def test_extension_fold_sum_kernels_match_serial(par, rng):
    from lightning_zk.zk import _numba_kernels as K

    for n in _sizes(par):
        a, b = _field(rng, 2, n), _field(rng, 2, n)
        assert np.array_equal(par.e_mul(a, b), K.numba_e_mul(a, b))
        for s0, s1 in ((5, 0), (P - 1, 3), (2**40, P - 2)):
            assert np.array_equal(par.e_scale(a, s0, s1), K.numba_e_scale(a, s0, s1))
        t = _field(rng, 2, 2 * n)
        assert np.array_equal(par.fold(t, P - 3, 11), K.numba_fold(t, P - 3, 11))
        big = np.full(n, P - 1, dtype=np.uint64)  # largest half-sums
        for x in (a.reshape(-1), big):
            assert par.halves_sum(x) == K.numba_halves_sum(x)
            assert F.fsum(x) == sum(int(v) for v in x) % P


@needs_numba
def test_combine_rows_matches_serial_and_reference(par, rng):
    from lightning_zk.zk import _numba_kernels as K

    msg = _field(rng, 9, 1005)
    coeffs = _field(rng, 2, 9)
    got = par.combine_rows(msg, coeffs)
    assert np.array_equal(got, K.numba_combine_rows(msg, coeffs))
    for j in (0, 1, msg.shape[1] - 1):
        for c in range(2):
            want = sum(int(coeffs[c, i]) * int(msg[i, j]) for i in range(9)) % P
            assert int(got[c, j]) == want


@needs_numba
def test_batch_inverse_and_bincount(par, rng):
    for n in _sizes(par):
        a = _field(rng, n)
        a[a == 0] = 3
        inv = par.batch_inverse(a)
        assert np.array_equal(_mul_limbs(inv, a), np.ones(n, dtype=np.uint64))
        assert all(int(inv[i]) == F.ref_inv(int(a[i])) for i in range(min(n, 20)))
        serial = np.empty_like(a)
        par._batch_inv_loop(a, serial)
        assert np.array_equal(inv, serial)
        v = rng.integers(0, 1 << 12, n, dtype=np.uint64)
        v[::5] = np.uint64(P - 1)  # clipped to the top entry
        want = np.bincount(np.minimum(v, 4095).astype(np.int64), minlength=4096)
        assert np.array_equal(par.clipped_bincount(v, 4096), want)
        assert np.array_equal(clipped_bincount(v, 4096), want)
    with pytest.raises(ParameterError, match="zero"):
        F.batch_inverse(np.array([1, 0, 2], dtype=np.uint64))


@needs_numba
@pytest.mark.parametrize("rows,logk", [(5, 10), (1, 12), (3, 12)])
def test_ntt_rows_in_parallel_match_serial_and_stages(par, rng, rows, logk):
    from lightning_zk.zk import _numba_kernels as K
    from lightning_zk.zk.ntt import _bitrev, _transform_xp, _twiddles_flat

    k = 1 << logk
    x = _field(rng, rows, k)
    for inverse in (False, True):
        tw, rev = _twiddles_flat(k, inverse), _bitrev(k)
        kinv = pow(k, P - 2, P) if inverse else 1
        want = x.copy()
        K.numba_ntt_rows(want, tw, rev, kinv, inverse)
        got = x.copy()
        par.ntt_rows(got, tw, rev, kinv, inverse)
        assert np.array_equal(got, want)
        assert np.array_equal(got, _transform_xp(x, inverse))


@needs_numba
def test_pool_caller_never_waits_for_unstarted_helpers(par, monkeypatch):
    """The promise that keeps a busy machine at one-thread speed: pieces no helper has started
    are done by the caller; exceptions come back; helpers, when they run, share the work."""
    done: list[int] = []

    class Idle:  # helpers that never get a CPU
        def submit(self, fn):
            return None

    with monkeypatch.context() as m:
        m.setattr(par, "_helpers", lambda n: Idle())
        par.run_pieces(done.append, 50)
    assert sorted(done) == list(range(50))

    def boom(i: int) -> None:
        if i == 7:
            raise ValueError("piece 7")

    with pytest.raises(ValueError, match="piece 7"):
        par.run_pieces(boom, 20)
    seen: list[str] = []
    par.run_pieces(lambda i: seen.append(threading.current_thread().name), 400)
    assert len(seen) == 400


@needs_numba
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_rebuilds_its_helper_threads(par, rng):
    """A child forked after the parent used its helpers gets fresh ones (same results)."""
    a, b = _field(rng, 5000), _field(rng, 5000)
    want = par.mul(a, b)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(write, b"ok" if np.array_equal(par.mul(a, b), want) else b"bad")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 8) == b"ok" and status == 0
    os.close(read)


# ---- hashing -------------------------------------------------------------------------------


def _ref_leaves(cols, salts):
    return [
        hashlib.sha256(b"lzk.leaf" + salts[j] + cols[j].astype("<u8").tobytes()).digest()
        for j in range(cols.shape[0])
    ]


def _ref_root(leaves):
    level = list(leaves)
    while len(level) > 1:
        level = [
            hashlib.sha256(b"lzk.node" + level[2 * i] + level[2 * i + 1]).digest()
            for i in range(len(level) // 2)
        ]
    return level[0]


@pytest.mark.parametrize("rows", [1, 6, 300])
@pytest.mark.parametrize("threads", [1, 2])
def test_hash_columns_and_tree_match_hashlib(monkeypatch, rng, rows, threads):
    if HAVE_NUMBA:
        from lightning_zk.zk import _numba_parallel

        monkeypatch.setattr(_numba_parallel, "PAR_MIN", 1)
    set_num_threads(threads)
    try:
        k = 1024
        mat = _field(rng, rows, k)
        salts = [rng.bytes(16) for _ in range(k)]
        want = _ref_leaves(mat.T, salts)
        for got in (M.hash_columns(mat.T, salts), M.hash_columns(mat, salts, row_major=True)):
            assert [g.tobytes() for g in got] == want
        tree = M.MerkleTree.from_rows(mat, salts)
        assert tree.root == _ref_root(want)
        assert tree.root == M.MerkleTree.from_columns(np.ascontiguousarray(mat.T), salts).root
        idx = [3, 4, 700]
        leaves = {i: M.leaf_hash(salts[i], mat[:, i]) for i in idx}
        M.verify_multiproof(tree.root, k, leaves, tree.multiproof(idx))
        # the hashlib fallback (no numba, or libcrypto unusable) gives the same digests
        monkeypatch.setattr(M, "_fast", lambda: None)
        assert [g.tobytes() for g in M.hash_columns(mat, salts, row_major=True)] == want
        assert M.MerkleTree.from_rows(mat, salts).root == tree.root
    finally:
        set_num_threads(None)


@needs_numba
def test_libcrypto_hashing_is_used_when_available():
    from lightning_zk.zk import _numba_sha256

    if not _numba_sha256.available():
        pytest.skip("libcrypto's SHA256_* symbols are not loadable here (hashlib is used)")
    assert M._fast() is _numba_sha256


def test_hash_nodes_rejects_bad_shapes():
    with pytest.raises(ParameterError):
        M.hash_nodes(np.zeros((3, 32), dtype=np.uint8))
    with pytest.raises(ParameterError):
        M.MerkleTree.from_leaves(np.zeros((6, 32), dtype=np.uint8))
    with pytest.raises(ParameterError, match="salts"):
        M.hash_columns(np.zeros((4, 2), dtype=np.uint64), [b"x" * 16] * 3)


# ---- whole proofs: identical bytes with 1 and 2 threads (and without numba) -----------------

_PROVE = """
import hashlib, sys
from tests.zk_training.seeded import seeded_proofs
for blob in seeded_proofs(epoch="epoch" in sys.argv):
    print(hashlib.sha256(blob).hexdigest())
"""


def _prove_in(env_extra: dict[str, str], *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.Popen(
        [sys.executable, "-c", _PROVE, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


@needs_numba
def test_proof_bytes_identical_with_one_and_two_threads():
    """Seeded step and epoch proofs: on one thread here, and in fresh processes on two threads
    (LIGHTNING_ZK_THREADS=2, with PAR_MIN = 512 so that every kernel kind runs in parallel in
    this tiny proof, not only every large call) and on the pure-NumPy path
    (LIGHTNING_ZK_NUMBA=0, step only); the encoded proofs must be byte-identical."""
    from tests.zk_training.seeded import seeded_proofs

    two = {"LIGHTNING_ZK_THREADS": "2", "NUMBA_NUM_THREADS": "2", "LIGHTNING_ZK_PAR_MIN": "512"}
    procs = {
        "2 threads": _prove_in(two, "epoch"),
        "numpy": _prove_in({"LIGHTNING_ZK_NUMBA": "0", "LIGHTNING_ZK_THREADS": "2"}),
    }
    set_num_threads(1)
    try:
        want = [hashlib.sha256(b).hexdigest() for b in seeded_proofs(epoch=True)]
    finally:
        set_num_threads(None)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        got = out.split()
        assert got == want[: len(got)] and got, (name, got, want)
