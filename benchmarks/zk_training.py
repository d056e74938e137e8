"""Benchmark: zk proofs of fixed-point SGD steps vs plain float32 and fixed-point training steps.

Prints one table (and the machine) for the sklearn digits MLP 64-256-256-10 at batch 64 and for
zkDL's benchmark network (8 Linear layers of width 1024, batch 64, ~8M parameters):

* float32 step  — torch forward + MSE backward + SGD step
* fixed step    — the exact integer engine (lightning_zk.fixed, matmuls exact on float64 BLAS),
                  witness tape included; float32 and fixed steps alternate in blocks over
                  --reps repetitions and the medians are reported, with their ratio against
                  the target (fixed step within 10x of float32 on the 8x1024 network)
* zk step       — one step per proof unit (prove / verify / proof size), on all threads
                  (LIGHTNING_ZK_THREADS); the digits step also on 1 thread, for the speedup
* zk epoch      — FAC4DNN aggregation: E steps in one unit, reported per step

Usage:  python benchmarks/zk_training.py [--epoch-steps 4] [--backend auto] [--zkdl-width 128]
        [--zkdl-prove] [--reps 5]
The network of zkDL's shape (8 Linear layers, batch 64) is proved at --zkdl-width; the full
8x1024 only with --zkdl-prove, otherwise its row gives the time and peak memory scaled from the
measured width (both linear in the committed witness). Each proof runs in a fresh process so
its peak memory (ru_maxrss) is its own.
Published reference (zkDL, A100, no Fiat-Shamir, not hiding): ~47 s/step unaggregated,
0.86 s/step aggregated over 1024 steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from torch import nn

from lightning_zk.fixed import tensor_names
from lightning_zk.fixed.torch_bridge import mlp_from_torch
from lightning_zk.zk import get_backend, num_threads, set_num_threads
from lightning_zk.zk.backend import compile_kernels
from lightning_zk.zk.training import (
    build_layout,
    encode_training_proof,
    prove_epoch,
    prove_step,
    verify_unit,
)
from lightning_zk.zk.training.layout import Arch


def _machine(backend: str) -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    be = get_backend(backend)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{mem:.0f} GiB RAM, numpy {np.__version__}, torch {torch.__version__}, "
        f"zk backend {be.describe()}, zk threads {num_threads()}"
    )


def _digits(batch: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data / 16.0
    y = np.eye(10)[d.target]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    return [
        (x[idx[i * batch : (i + 1) * batch]], y[idx[i * batch : (i + 1) * batch]])
        for i in range(steps)
    ]


def _random_batches(dims, batch, steps):
    rng = np.random.default_rng(1)
    return [
        (rng.uniform(-1, 1, (batch, dims[0])), rng.normal(0, 0.5, (batch, dims[-1])))
        for _ in range(steps)
    ]


def _model(dims) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _step_times(dims, batches, lr, reps: int):
    """Medians (ms) of the float32 step and the fixed step, measured alternately in blocks of
    len(batches) steps over ``reps`` repetitions (both see the same machine load), and the
    fixed-point tapes of the first block."""
    model = _model(dims)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    engine = mlp_from_torch(_model(dims), lr=lr)
    f32, fixed, tapes = [], [], []
    for rep in range(reps):
        for x, y in batches:
            xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
            t0 = time.perf_counter()
            opt.zero_grad()
            nn.functional.mse_loss(model(xt), yt).backward()
            opt.step()
            f32.append(time.perf_counter() - t0)
        for x, y in batches:
            t0 = time.perf_counter()
            tape = engine.step_float(x, y)
            fixed.append(time.perf_counter() - t0)
            if rep == 0:
                tapes.append(tape)
    skip = len(batches)  # the first block warms up both (allocations, BLAS threads)
    return 1e3 * float(np.median(f32[skip:])), 1e3 * float(np.median(fixed[skip:])), tapes


def _step_rows(name, dims, batches, lr, reps, target: float | None):
    f32, fixed, tapes = _step_times(dims, batches, lr, reps)
    note = f"tape incl.; {fixed / f32:.2f}x float32"
    if target is not None:
        verdict = "met" if fixed <= target * f32 else "NOT met"
        note += f" (target <= {target:.0f}x: {verdict})"
    rows = [
        (name, "float32 step", 1, f32, None, None, ""),
        (name, "fixed step", 1, fixed, None, None, note),
    ]
    return rows, tapes


def _warm_up() -> None:
    """Compile the numba kernels (parallel ones too), then prove and verify a tiny step once."""
    compile_kernels()
    engine = mlp_from_torch(_model((4, 4, 2)), lr=0.05)
    tiny = engine.step_float(*_random_batches((4, 4, 2), 2, 1)[0])
    proof, stmt, _ = prove_step(tiny, None, backend="numpy", rng=0)
    verify_unit(proof, stmt)


def _prove_child(tapes, backend, epoch: bool, threads: int | None = None):
    import resource

    set_num_threads(threads)
    _warm_up()  # JIT-compile the numba kernels outside the timed proof
    base_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    t0 = time.perf_counter()
    if epoch:
        proof, stmt, _ = prove_epoch(tapes, None, backend=backend)
    else:
        proof, stmt, _ = prove_step(tapes[0], None, backend=backend)
    prove = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify_unit(proof, stmt)
    verify = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return prove, verify, len(encode_training_proof(proof)), peak_gib, base_gib


def _prove_row(tapes, backend, epoch: bool, threads: int | None = None):
    """Prove + verify in a fresh process (so its peak memory is the unit's own)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        args = (tapes, backend, epoch, threads)
        prove, verify, size, peak, base = pool.apply(_prove_child, args)
    n = len(tapes) if epoch else 1
    return prove / n, verify / n, size / 1024 / n, peak, base


def _wit_vars(dims, batch, steps) -> int:
    arch = Arch(tuple(dims), batch, max(2, 1 << (steps - 1).bit_length()))
    return build_layout(arch, tensor_names(len(dims) - 1)).wit_vars


def _print(rows) -> None:
    head = (
        f"{'model':<22} {'mode':<20} {'steps':>5} {'prove ms/step':>14} "
        f"{'verify ms/step':>15} {'proof KiB/step':>15}  notes"
    )
    print(head)
    print("-" * len(head))
    for model, mode, steps, pms, vms, kb, note in rows:
        f = lambda x, w: f"{x:>{w}.1f}" if x is not None else f"{'-':>{w}}"  # noqa: E731
        print(f"{model:<22} {mode:<20} {steps:>5} {f(pms, 14)} {f(vms, 15)} {f(kb, 15)}  {note}")


def _zk_rows(name, dims, tapes, backend, epoch_steps, one_thread: bool = False):
    """zk step (and epoch) rows, plus the step's seconds and GiB (above the process's own
    footprint) per committed Wit entry, for scaling to sizes that are not run. With
    ``one_thread`` the step is also proved on one thread (speedup of the parallel kernels)."""
    rows = []
    nv = _wit_vars(dims, tapes[0].batch_size, 1)
    p, v, kb, peak, base = _prove_row(tapes, backend, epoch=False)
    note = f"Wit 2^{nv}, peak {peak:.1f} GiB, {num_threads()} threads"
    if one_thread:
        p1, v1, _, peak1, _ = _prove_row(tapes, backend, epoch=False, threads=1)
        note += f" (speedup {p1 / p:.2f}x over 1 thread)"
        rows.append((name, "zk step, 1 thread", 1, p1 * 1e3, v1 * 1e3, kb, f"peak {peak1:.1f} GiB"))
    rows.append((name, "zk step", 1, p * 1e3, v * 1e3, kb, note))
    if epoch_steps > 1:
        ep = tapes[:epoch_steps]
        pe, ve, kbe, peake, _ = _prove_row(ep, backend, epoch=True)
        note = f"Wit 2^{_wit_vars(dims, tapes[0].batch_size, len(ep))}, peak {peake:.1f} GiB"
        rows.append((name, "zk epoch (per step)", len(ep), pe * 1e3, ve * 1e3, kbe, note))
    return rows, p / (1 << nv), (peak - base) / (1 << nv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epoch-steps", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument(
        "--zkdl-width",
        type=int,
        default=128,
        help="width of the measured 8-layer network of zkDL's shape (batch 64)",
    )
    ap.add_argument("--zkdl-prove", action="store_true", help="also prove the full 8x1024")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the step timings")
    args = ap.parse_args()
    print("machine:", _machine(args.backend))
    rows = []
    lr = 0.05
    digits = (64, 256, 256, 10)
    name = "digits 64-256-256-10"
    batches = _digits(64, max(args.epoch_steps, 1))
    step_rows, tapes = _step_rows(name, digits, batches, lr, args.reps, None)
    rows += step_rows
    zk, _, _ = _zk_rows(name, digits, tapes, args.backend, args.epoch_steps, one_thread=True)
    rows += zk
    w = args.zkdl_width
    small = (w,) * 9
    name = f"zkDL shape 8x{w}"
    sb = _random_batches(small, 64, 2)
    step_rows, stapes = _step_rows(name, small, sb, lr, args.reps, None)
    rows += step_rows
    zk, rate, gib_per_entry = _zk_rows(name, small, stapes, args.backend, 2)
    rows += zk
    zkdl = (1024,) * 9
    name = "zkDL 8x1024"
    zb = _random_batches(zkdl, 64, 2)
    step_rows, ztapes = _step_rows(name, zkdl, zb, lr, args.reps, 10.0)
    rows += step_rows
    nv = _wit_vars(zkdl, 64, 1)
    if args.zkdl_prove:
        rows += _zk_rows(name, zkdl, ztapes, args.backend, 1)[0]
    else:
        gib = gib_per_entry * (1 << nv)
        hours = rate * (1 << nv) / 3600
        rows.append(
            (
                name,
                "zk step",
                1,
                None,
                None,
                None,
                f"not run: Wit 2^{nv}; scaled from 8x{w} (linear in Wit entries) it needs "
                f"~{gib:.0f} GiB and ~{hours:.1f} h",
            )
        )
    _print(rows)
    print(
        "zkDL reference (A100, no FS, not hiding): ~47000 ms/step unaggregated, "
        "860 ms/step aggregated over 1024 steps"
    )


if __name__ == "__main__":
    main()
