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

and the same rows for the digits classifier (issue 12: the same network with softmax
cross-entropy on the integer labels and SGD with momentum 0.9 and weight decay 1e-3), plus its
test accuracy trained by the fixed-point engine against float32 torch from the same initial
weights and batches (--accuracy-epochs, target: within 1 point).

Usage:  python benchmarks/zk_training.py [--epoch-steps 8] [--backend auto]
        [--zkdl-widths 128 256] [--skip-zkdl] [--memory-cap-gib 20] [--reps 5]
Networks of zkDL's shape (8 Linear layers, batch 64) are proved at each --zkdl-widths and at the
full width 1024 (skipped only with --skip-zkdl); every row is measured, never scaled. Each proof
runs in a fresh process so its peak memory (ru_maxrss) is its own; that process's address space
is capped at --memory-cap-gib, so a proof that does not fit the machine ends in a MemoryError
row (with the time it ran) instead of swapping or meeting the OOM killer.
Every zk row prints its targets (issue 11) with met / NOT met, the fill of the committed witness
(true entries / Wit's 2^n domain), the share of prove time per phase (commitments, sumchecks,
lookup, openings, the rest) and, for the digits step, the proof's bytes per part.
Published reference (zkDL, A100, no Fiat-Shamir, not hiding): ~47 s/step unaggregated,
0.86 s/step aggregated over 1024 steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from lightning_zk.fixed import FixedPointMLP, tensor_names
from lightning_zk.zk import get_backend, num_threads, set_num_threads
from lightning_zk.zk.backend import compile_kernels
from lightning_zk.zk.training import (
    build_layout,
    encode_training_proof,
    proof_part_sizes,
    prove_epoch,
    prove_step,
    verify_unit,
)
from lightning_zk.zk.training.layout import Arch


def _machine(backend: str) -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    be = get_backend(backend)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{mem:.0f} GiB RAM, numpy {np.__version__}, torch {torch.__version__}, "
        f"zk backend {be.describe()}, zk threads {num_threads()}"
    )


def _digits(batch: int, steps: int, labels: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled digits batches: one-hot float targets (MSE) or integer labels (cross-entropy)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data / 16.0
    y = d.target if labels else np.eye(10)[d.target]
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


def _model(dims):
    """The float32 torch MLP (imported here: the prover processes never load torch)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _step_times(dims, batches, lr, reps: int, loss: str = "mse", momentum: float = 0.0,
                weight_decay: float = 0.0):
    """Medians (ms) of the float32 step and the fixed step, measured alternately in blocks of
    len(batches) steps over ``reps`` repetitions (both see the same machine load), and the
    fixed-point tapes of the first block. ``loss``: "mse" or "xent" (integer labels)."""
    import torch
    from torch import nn

    from lightning_zk.fixed.torch_bridge import mlp_from_torch

    model = _model(dims)
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    opt = torch.optim.SGD(model.parameters(), **sgd)
    engine = mlp_from_torch(_model(dims), config=None, loss=loss, **sgd)
    loss_fn = nn.functional.cross_entropy if loss == "xent" else nn.functional.mse_loss
    f32, fixed, tapes = [], [], []
    for rep in range(reps):
        for x, y in batches:
            xt = torch.tensor(x, dtype=torch.float32)
            yt = torch.tensor(y) if loss == "xent" else torch.tensor(y, dtype=torch.float32)
            t0 = time.perf_counter()
            opt.zero_grad()
            loss_fn(model(xt), yt).backward()
            opt.step()
            f32.append(time.perf_counter() - t0)
        for x, y in batches:
            t0 = time.perf_counter()
            tape = engine.step_float(x, y)
            fixed.append(time.perf_counter() - t0)
            if rep == 0:
                tapes.append(tape)
    skip = len(batches) if reps > 1 else 0  # the first block warms up both (allocations, BLAS
    # threads); with --reps 1 it is all there is, so it is reported (warm-up included)
    return 1e3 * float(np.median(f32[skip:])), 1e3 * float(np.median(fixed[skip:])), tapes


def _step_rows(name, dims, batches, lr, reps, target: float | None, **opt):
    f32, fixed, tapes = _step_times(dims, batches, lr, reps, **opt)
    note = f"tape incl.; {fixed / f32:.2f}x float32"
    if target is not None:
        verdict = "met" if fixed <= target * f32 else "NOT met"
        note += f" (target <= {target:.0f}x: {verdict})"
    rows = [
        (name, "float32 step", 1, f32, None, None, ""),
        (name, "fixed step", 1, fixed, None, None, note),
    ]
    return rows, tapes


def _accuracy(dims, lr, momentum, weight_decay, batch: int, epochs: int) -> tuple[float, float]:
    """Test accuracy of the digits classifier trained by the exact fixed-point engine and by
    float32 torch from the same initial weights on the same batches (the last 397 images are the
    test split of the seeded permutation, as in examples/digits_fixed.py)."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    from lightning_zk.fixed import dequantize
    from lightning_zk.fixed.torch_bridge import mlp_from_torch

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.data))
    x, y = d.data[order] / 16.0, d.target[order]
    cut = len(x) - 397
    model = _model(dims)
    engine = mlp_from_torch(model, lr, momentum=momentum, weight_decay=weight_decay, loss="xent")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = rng.permutation(cut)
        for i in range(cut // batch):
            idx = order[i * batch:(i + 1) * batch]
            engine.step_float(x[idx], y[idx])
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.tensor(x[idx], dtype=torch.float32)),
                                        torch.tensor(y[idx])).backward()
            opt.step()
    s = engine.config.frac_bits

    def hits(weights, biases) -> float:
        a = x[cut:]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            a = a @ w.T + b
            a = np.maximum(a, 0) if i < len(weights) - 1 else a
        return float(np.mean(a.argmax(axis=1) == y[cut:]))

    lins = [m for m in model if isinstance(m, nn.Linear)]
    fixed = hits([dequantize(w, s) for w in engine.weights], [dequantize(b, s) for b in engine.biases])
    plain = hits([m.weight.detach().double().numpy() for m in lins],
                 [m.bias.detach().double().numpy() for m in lins])
    return fixed, plain


def _warm_up() -> None:
    """Compile the numba kernels (parallel ones too), then prove and verify a tiny step once."""
    compile_kernels()
    rng = np.random.default_rng(0)
    engine = FixedPointMLP.from_float([rng.normal(size=(4, 4)), rng.normal(size=(2, 4))],
                                      [np.zeros(4), np.zeros(2)], lr=0.05)
    tiny = engine.step_float(*_random_batches((4, 4, 2), 2, 1)[0])
    proof, stmt, _ = prove_step(tiny, None, backend="numpy", rng=0)
    verify_unit(proof, stmt)


# issue 11's targets per row: (prove s/step, peak GiB, verify s, proof MiB/step)
TARGETS = {
    "digits step": (1.5, 300 / 1024, 0.1, 3.0),
    "digits epoch": (0.75, 1.0, None, 1.0),
    "zkDL 8x1024 step": (120.0, 12.0, 2.0, 40.0),
}


class _Phases:
    """Wall time per prover phase, by wrapping the zk entry points (benchmark only)."""

    def __init__(self) -> None:
        import lightning_zk.zk.training.claims as claims
        import lightning_zk.zk.training.prover as prover
        import lightning_zk.zk.training.ranges as ranges
        from lightning_zk.zk.ligero import Ligero

        self.times: dict[str, float] = {}
        self._range_specs: set[int] = set()
        self._depth = 0
        for name in ("commit_tables", "commit_rows"):
            if hasattr(Ligero, name):
                setattr(Ligero, name, self._timed("commitments", getattr(Ligero, name)))
        Ligero.open_queries = self._timed("openings", Ligero.open_queries)
        for mod in (prover, ranges):
            for name in ("range_columns", "range_inverses", "range_tables"):
                if hasattr(mod, name):
                    setattr(mod, name, self._timed("lookup", getattr(ranges, name)))
        spec_fn = prover.range_spec

        def range_spec(*a, **k):
            spec = spec_fn(*a, **k)
            self._range_specs.add(id(spec))
            return spec

        prover.range_spec = range_spec
        for mod in (prover, claims):
            mod.prove_sumcheck = self._sumcheck(mod.prove_sumcheck)

    def _timed(self, phase: str, fn):
        def run(*a, **k):
            if self._depth:
                return fn(*a, **k)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth -= 1
                self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - t0
        return run

    def _sumcheck(self, fn):
        def run(spec, *a, **k):
            phase = "lookup" if id(spec) in self._range_specs else "sumchecks"
            return self._timed(phase, fn)(spec, *a, **k)
        return run

    def shares(self, total: float) -> str:
        named = sum(self.times.values())
        parts = {**self.times, "rest": max(0.0, total - named)}
        order = ("commitments", "sumchecks", "lookup", "openings", "rest")
        return " ".join(f"{k} {100 * parts.get(k, 0.0) / total:.0f}%" for k in order)


def _prove_child(tapes, backend, epoch: bool, threads: int | None, cap_gib: float | None):
    import resource

    if cap_gib:
        cap = int(cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    set_num_threads(threads)
    _warm_up()  # JIT-compile the numba kernels outside the timed proof
    phases = _Phases()
    t0 = time.perf_counter()
    try:
        if epoch:
            proof, stmt, _ = prove_epoch(tapes, None, backend=backend)
        else:
            proof, stmt, _ = prove_step(tapes[0], None, backend=backend)
    except MemoryError:
        elapsed = time.perf_counter() - t0
        return {"error": f"MemoryError after {elapsed:.0f} s under a {cap_gib:.0f} GiB cap"}
    prove = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify_unit(proof, stmt)
    verify = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    import sys

    if "torch" in sys.modules:  # the peak would include torch's ~300 MiB
        raise RuntimeError("the prover process imported torch")
    return {"prove": prove, "verify": verify, "size": len(encode_training_proof(proof)),
            "peak": peak_gib, "phases": phases.shares(prove),
            "parts": proof_part_sizes(proof) if not epoch else {}}


def _prove_row(tapes, backend, epoch: bool, threads: int | None = None, cap: float | None = None):
    """Prove + verify in a fresh process (so its peak memory is the unit's own)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(_prove_child, (tapes, backend, epoch, threads, cap))
        except Exception as exc:  # the child died (e.g. killed for memory)
            return {"error": f"prover process failed: {type(exc).__name__}: {exc}"}


def _print(rows) -> None:
    head = (
        f"{'model':<22} {'mode':<20} {'steps':>5} {'prove ms/step':>14} "
        f"{'verify ms/step':>15} {'proof KiB/step':>15}  notes"
    )
    print(head)
    print("-" * len(head))
    for model, mode, steps, pms, vms, kb, note in rows:
        f = lambda x, w: f"{x:>{w}.1f}" if x is not None else f"{'-':>{w}}"  # noqa: E731
        steps = "-" if steps is None else steps
        print(f"{model:<22} {mode:<20} {steps:>5} {f(pms, 14)} {f(vms, 15)} {f(kb, 15)}  {note}")


def _fill(dims, batch, steps, names=None) -> tuple[int, float, float]:
    """(Wit variables, true entries / committed entries, true entries / 2^n) of the unit's
    witness; committed entries are the Ligero rows times the columns of Wit's column support."""
    import math

    from lightning_zk.zk.ligero import LAYOUT_MULTILINEAR, LigeroConfig, derive_params

    arch = Arch(tuple(dims), batch, max(1, 1 << (steps - 1).bit_length()) if steps > 1 else 1)
    lay = build_layout(arch, names or tensor_names(len(dims) - 1))
    n = lay.wit_vars
    true = sum(math.prod(s.sizes) * steps for s in lay.wit.values() if s.sizes)
    params = derive_params(((n, False),), False, 1, LAYOUT_MULTILINEAR, LigeroConfig(),
                           lay.wit_support())
    committed = params.k << (n - params.col_vars)
    return n, true / committed, true / (1 << n)


def _verdict(res: dict, target) -> str:
    if target is None:
        return ""
    checks = zip(("prove", "peak", "verify", "size"), target, strict=True)
    out = []
    for key, limit in checks:
        if limit is None:
            continue
        got = res[key] / 2**20 if key == "size" else res[key]
        shown = {"prove": f"<= {limit:g} s", "peak": f"<= {limit * 1024:.0f} MiB",
                 "verify": f"<= {limit:g} s", "size": f"<= {limit:g} MiB"}[key]
        out.append(f"{key} {shown}: {'met' if got <= limit else 'NOT met'}")
    return "; ".join(out)


def _zk_rows(name, dims, tapes, backend, epoch_steps, one_thread=False, targets=(None, None),
             cap=None):
    """zk step (and epoch) rows; with ``one_thread`` the step is also proved on one thread
    (speedup of the parallel kernels). Returns the rows and the step's proof parts."""
    rows, notes = [], []
    nv, fill, dom = _fill(dims, tapes[0].batch_size, 1, tapes[0].names())
    res = _prove_row(tapes, backend, epoch=False, cap=cap)
    if "error" in res:
        return [(name, "zk step", 1, None, None, None, f"Wit 2^{nv}: {res['error']}")], notes, {}
    note = (f"Wit 2^{nv} fill {fill:.2f} ({dom:.2f} of 2^{nv}), peak {res['peak'] * 1024:.0f} MiB, {num_threads()} "
            f"threads; {res['phases']}")
    if one_thread:
        r1 = _prove_row(tapes, backend, epoch=False, threads=1, cap=cap)
        if "error" not in r1:
            note += f"; speedup {r1['prove'] / res['prove']:.2f}x over 1 thread"
            rows.append((name, "zk step, 1 thread", 1, r1["prove"] * 1e3, r1["verify"] * 1e3,
                         r1["size"] / 1024, f"peak {r1['peak'] * 1024:.0f} MiB"))
    rows.append((name, "zk step", 1, res["prove"] * 1e3, res["verify"] * 1e3, res["size"] / 1024,
                 note))
    notes.append(f"{name}, zk step: {_verdict(res, targets[0])}")
    if epoch_steps > 1:
        ep = tapes[:epoch_steps]
        n = len(ep)
        re = _prove_row(ep, backend, epoch=True, cap=cap)
        nve, fille, dome = _fill(dims, tapes[0].batch_size, n, tapes[0].names())
        if "error" in re:
            rows.append((name, "zk epoch (per step)", n, None, None, None, re["error"]))
        else:
            per = {k: re[k] / n for k in ("prove", "verify", "size")} | {"peak": re["peak"]}
            rows.append((name, "zk epoch (per step)", n, per["prove"] * 1e3, per["verify"] * 1e3,
                         per["size"] / 1024,
                         f"Wit 2^{nve} fill {fille:.2f} ({dome:.2f} of 2^{nve}), peak {re['peak'] * 1024:.0f} MiB; "
                         f"{re['phases']}"))
            notes.append(f"{name}, zk epoch of {n}: {_verdict(per, targets[1])}")
    return rows, notes, res.get("parts", {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epoch-steps", type=int, default=8)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--zkdl-widths", type=int, nargs="*", default=[128, 256],
                    help="widths of the 8-layer networks of zkDL's shape proved besides 1024")
    ap.add_argument("--skip-zkdl", action="store_true", help="do not prove the full 8x1024")
    ap.add_argument("--memory-cap-gib", type=float, default=20.0,
                    help="address-space cap of each prover process")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the step timings (the first is warm-up, unless it is the only one)")
    ap.add_argument("--accuracy-epochs", type=int, default=10,
                    help="epochs of the digits classifier's accuracy comparison")
    args = ap.parse_args()
    cap = args.memory_cap_gib
    print("machine:", _machine(args.backend))
    rows, notes = [], []
    lr = 0.05
    digits = (64, 256, 256, 10)
    name = "digits 64-256-256-10"
    batches = _digits(64, max(args.epoch_steps, 1))
    step_rows, tapes = _step_rows(name, digits, batches, lr, args.reps, None)
    rows += step_rows
    zk, zk_notes, parts = _zk_rows(
        name, digits, tapes, args.backend, args.epoch_steps, one_thread=True,
        targets=(TARGETS["digits step"], TARGETS["digits epoch"]), cap=cap)
    rows += zk
    notes += zk_notes
    # the digits classifier (issue 12): the same network, softmax cross-entropy on the integer
    # labels, SGD with momentum 0.9 and weight decay 1e-3
    name, opt = "digits classifier", {"loss": "xent", "momentum": 0.9, "weight_decay": 1e-3}
    step_rows, ctapes = _step_rows(name, digits, _digits(64, max(args.epoch_steps, 1), True), lr,
                                   args.reps, None, **opt)
    rows += step_rows
    zk, zk_notes, _ = _zk_rows(name, digits, ctapes, args.backend, args.epoch_steps, cap=cap)
    rows += zk
    fixed_acc, plain_acc = _accuracy(digits, lr, 0.9, 1e-3, 64, args.accuracy_epochs)
    gap = 100 * (plain_acc - fixed_acc)
    rows.append((name, "test accuracy", None, None, None, None,
                 f"fixed point {fixed_acc:.1%}, float32 {plain_acc:.1%} ({args.accuracy_epochs} "
                 f"epochs, same initial weights and batches; target within 1 point: "
                 f"{'met' if gap <= 1.0 else 'NOT met'})"))
    for w in args.zkdl_widths:
        small = (w,) * 9
        name = f"zkDL shape 8x{w}"
        step_rows, stapes = _step_rows(name, small, _random_batches(small, 64, 2), lr, args.reps,
                                       None)
        rows += step_rows + _zk_rows(name, small, stapes, args.backend, 1, cap=cap)[0]
    zkdl = (1024,) * 9
    name = "zkDL 8x1024"
    step_rows, ztapes = _step_rows(name, zkdl, _random_batches(zkdl, 64, 2), lr, args.reps, 10.0)
    rows += step_rows
    if args.skip_zkdl:
        rows.append((name, "zk step", 1, None, None, None, "skipped (--skip-zkdl): not measured"))
    else:
        zk, zk_notes, _ = _zk_rows(name, zkdl, ztapes, args.backend, 1,
                                   targets=(TARGETS["zkDL 8x1024 step"], None), cap=cap)
        rows += zk
        notes += zk_notes or [f"{name}, zk step: not proved on this machine (see its row)"]
    _print(rows)
    print("\ntargets (issue 11):")
    for line in notes:
        print("  " + line)
    if parts:
        total = sum(parts.values())
        print("\ndigits step proof, bytes per part:")
        for part, size in parts.items():
            print(f"  {part:<28} {size / 1024:>9.1f} KiB  {100 * size / total:>5.1f}%")
    print(
        "\nzkDL reference (A100, no FS, not hiding): ~47000 ms/step unaggregated, "
        "860 ms/step aggregated over 1024 steps"
    )


if __name__ == "__main__":
    main()
