"""Benchmark of the zk core engine: field mul/s, NTT, Ligero commit/open/verify and proof size.

Usage:
    python benchmarks/zk_core.py                 # full: NTT 2^16, 2^20; PCS 2^16, 2^20, 2^22
    python benchmarks/zk_core.py --quick         # small sizes, seconds
    python benchmarks/zk_core.py --pcs-sizes 16,20 --ntt-sizes 16 --backends numpy-limbs
    python benchmarks/zk_core.py --threads-only  # only the 1-vs-N-threads kernel table

The threads table times each parallel kernel (numba backend) with 1 thread and with
--threads (default: all cores), alternating the two settings for every repetition and
reporting medians, so both columns see the same machine load; the ratio is the speedup.

Every backend that can run here is measured: NumPy with the limb-split kernel, NumPy with the
numba kernel (when numba is importable), CuPy (only when cupy.is_available(); otherwise the
row says why it was skipped). The machine is printed first: quote it with every number.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_zk.zk import Fp2, Ligero, Transcript, encode_proof
from lightning_zk.zk import field as F
from lightning_zk.zk.backend import (
    P,
    clipped_bincount,
    cupy_available,
    get_backend,
    num_threads,
    numba_available,
    set_num_threads,
    to_numpy,
)
from lightning_zk.zk.merkle import MerkleTree
from lightning_zk.zk.ntt import ntt


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    gpu = "no usable GPU (CuPy unavailable)"
    if cupy_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        gpu = f"GPU {props['name'].decode()}"
    return (
        f"{cpu}, {os.cpu_count()} logical cores{mem}; {gpu}; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, {platform.system()} {platform.release()}"
    )


def backends(names: list[str]) -> list[tuple[str, Any, str]]:
    out = []
    for name in names:
        if name == "numpy-limbs":
            out.append((name, get_backend("numpy", use_numba=False), ""))
        elif name == "numpy-numba":
            ok = numba_available()
            out.append(
                (
                    name,
                    get_backend("numpy", use_numba=True) if ok else None,
                    "" if ok else "numba not installed",
                )
            )
        elif name == "cupy":
            ok = cupy_available()
            out.append(
                (
                    name,
                    get_backend("cupy") if ok else None,
                    "" if ok else "CuPy unavailable (no GPU / not installed)",
                )
            )
    return out


def timeit(fn: Callable[[], Any], sync: Callable[[], None], repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _sync(be: Any) -> Callable[[], None]:
    if be.name == "cupy":
        return lambda: be.xp.cuda.Stream.null.synchronize()
    return lambda: None


def bench_mul(be: Any, n: int) -> str:
    rng = np.random.default_rng(0)
    a = be.xp.asarray(rng.integers(0, P, n, dtype=np.uint64))
    b = be.xp.asarray(rng.integers(0, P, n, dtype=np.uint64))
    be.mul(a, b)
    t, _ = timeit(lambda: be.mul(a, b), _sync(be), 5)
    return f"{n / t / 1e6:10.1f} M mul/s   (arrays of 2^{n.bit_length() - 1})"


def bench_ntt(be: Any, logn: int) -> str:
    rng = np.random.default_rng(1)
    a = be.xp.asarray(rng.integers(0, P, 1 << logn, dtype=np.uint64))
    t, _ = timeit(lambda: ntt(a), _sync(be), 2 if logn >= 20 else 3)
    return f"NTT 2^{logn:<2d}             {t * 1e3:10.1f} ms"


def bench_pcs(be: Any, logn: int) -> str:
    rng = np.random.default_rng(2)
    table = be.xp.asarray(rng.integers(0, P, 1 << logn, dtype=np.uint64))
    pcs = Ligero()
    point = [Fp2.random(rng) for _ in range(logn)]
    t0 = time.perf_counter()
    com, state = pcs.commit(table, num_points=1, rng=3)
    _sync(be)()
    t_commit = time.perf_counter() - t0
    value = pcs.masked_evaluate(state, point, 0)
    t0 = time.perf_counter()
    proof = pcs.open(state, [point], Transcript(b"bench"))
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    pcs.verify(com, [point], [value], proof, Transcript(b"bench"))
    t_verify = time.perf_counter() - t0
    size = len(encode_proof(proof))
    p = state.params
    del state, table
    return (
        f"PCS 2^{logn:<2d} commit {t_commit:8.2f} s  open {t_open:7.2f} s  verify {t_verify:6.3f} s  "
        f"proof {size / 1024:8.1f} KiB  (m={p.num_rows} rows, k={p.k}, K={p.code_len}, t={p.num_queries}, "
        f"{p.soundness:.1f} bits)"
    )


def _thread_kernels(quick: bool) -> list[tuple[str, Callable[[], Any]]]:
    """(label, call) of every parallel kernel at a size where the prover meets it."""
    from lightning_zk.zk.lookup import prove_range
    from lightning_zk.zk.sumcheck import SumcheckSpec, prove_sumcheck

    be = get_backend("numpy", use_numba=True)
    rng = np.random.default_rng(5)
    big, mid = (16, 14) if quick else (22, 20)

    def field(*shape: int) -> np.ndarray:
        return rng.integers(1, P, shape, dtype=np.uint64)

    a, b = field(1 << big), field(1 << big)
    ea, eb = field(2, 1 << mid), field(2, 1 << mid)
    t = field(2, 1 << (mid + 1))
    rows, cols = (36, 1 << 12) if quick else (132, 1 << 15)
    msg, coeffs = field(rows, cols), field(2, rows)
    code = field(rows, 4 * cols)
    salts = [bytes(16)] * code.shape[1]
    vals = rng.integers(0, 1 << 16, 1 << (mid + 1), dtype=np.uint64)
    sc_vars = 12 if quick else 18
    tabs = [field(2, 1 << sc_vars) for _ in range(3)]
    spec = SumcheckSpec.of(sc_vars, 3, [(1, [0, 1, 2]), (5, [0])], zk=False)
    rc = rng.integers(0, 1 << 24, 1 << (sc_vars - 1), dtype=np.uint64)
    return [
        (f"field mul 2^{big}", lambda: be.mul(a, b)),
        (f"field add 2^{big}", lambda: be.add(a, b)),
        (f"F_p2 mul 2^{mid}", lambda: be.e_mul(ea, eb)),
        (f"fold 2^{mid + 1} -> 2^{mid}", lambda: be.fold(t, 12345, 678)),
        (f"fsum 2^{big}", lambda: F.fsum(a)),
        (f"row combination {rows} x 2^{cols.bit_length() - 1}", lambda: be.combine_rows(msg, coeffs)),
        (f"NTT {rows} rows x 2^{cols.bit_length() + 1}", lambda: ntt(code)),
        (f"batch inverse 2^{mid}", lambda: F.batch_inverse(a[: 1 << mid])),
        (f"bincount 2^{mid + 1} -> 2^16", lambda: clipped_bincount(vals, 1 << 16)),
        (
            f"Merkle tree 2^{code.shape[1].bit_length() - 1} cols x {rows}",
            lambda: MerkleTree.from_rows(code, salts),
        ),
        (
            f"sumcheck 2^{sc_vars}, deg 3, 3 tables",
            lambda: prove_sumcheck(spec, tabs, Transcript(b"bench")),
        ),
        (
            f"logUp range 2^{sc_vars - 1} x 24 bits",
            lambda: prove_range(Transcript(b"bench"), rc, bits=24, rng=1),
        ),
        (f"Ligero commit 2^{big}", lambda: Ligero().commit(a, num_points=1, rng=3)),
    ]


def bench_threads(threads: int, quick: bool, repeat: int) -> None:
    """1 thread vs ``threads`` per kernel: medians of alternating repetitions."""
    print(f"\n== threads: 1 vs {threads} (numpy-numba; medians of {repeat} alternating runs)")
    if not numba_available():
        print("   skipped: numba not installed")
        return
    head = f"   {'kernel':<36} {'1 thread ms':>12} {f'{threads} threads ms':>14} {'speedup':>8}"
    print(head)
    print("   " + "-" * (len(head) - 3))
    for label, fn in _thread_kernels(quick):
        times: dict[int, list[float]] = {1: [], threads: []}
        for n in (1, threads):  # warm-up: JIT-compile both paths
            set_num_threads(n)
            fn()
        for _ in range(repeat):
            for n in (1, threads):
                set_num_threads(n)
                t0 = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - t0)
        set_num_threads(None)
        one, many = (1e3 * float(np.median(times[n])) for n in (1, threads))
        print(f"   {label:<36} {one:12.2f} {many:14.2f} {one / many:7.2f}x")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (NTT 2^12, PCS 2^10, 2^12)")
    ap.add_argument("--ntt-sizes", default=None, help="comma-separated log2 sizes (default 16,20)")
    ap.add_argument(
        "--pcs-sizes", default=None, help="comma-separated log2 sizes (default 16,20,22)"
    )
    ap.add_argument(
        "--mul-size", type=int, default=None, help="log2 length of the mul arrays (default 22)"
    )
    ap.add_argument("--backends", default="numpy-limbs,numpy-numba,cupy")
    ap.add_argument("--threads", type=int, default=None, help="threads to compare with 1")
    ap.add_argument("--threads-only", action="store_true", help="only the threads table")
    ap.add_argument("--repeat", type=int, default=7, help="repetitions in the threads table")
    args = ap.parse_args(argv)
    ntt_sizes = [int(x) for x in (args.ntt_sizes or ("12" if args.quick else "16,20")).split(",")]
    pcs_sizes = [
        int(x) for x in (args.pcs_sizes or ("10,12" if args.quick else "16,20,22")).split(",")
    ]
    mul_n = 1 << (args.mul_size or (16 if args.quick else 22))

    print("lightning-zk zk core benchmark")
    print(f"machine: {machine()}")
    print(f"threads: {num_threads()} (LIGHTNING_ZK_THREADS / set_num_threads; default all cores)")
    print("Ligero: security 100 bits, blowup 4, one opening point; proof size = encoded bytes")
    for name, be, why in [] if args.threads_only else backends(args.backends.split(",")):
        print(f"\n== backend {name} " + ("" if be is None else f"[{be.describe()}]"))
        if be is None:
            print(f"   skipped: {why}")
            continue
        print("   field mul  " + bench_mul(be, mul_n))
        for logn in ntt_sizes:
            print("   " + bench_ntt(be, logn))
        for logn in pcs_sizes:
            try:
                print("   " + bench_pcs(be, logn))
            except MemoryError:
                print(f"   PCS 2^{logn}: skipped (out of memory)")
        sys.stdout.flush()
    bench_threads(args.threads or max(2, num_threads()), args.quick, args.repeat)
    _ = to_numpy
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
