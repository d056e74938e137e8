"""Cost of committing each training step's state, inline and in the background, at 1 M-100 M params.

    python benchmarks/commit.py [--sizes 1M 10M 100M] [--steps 20 10 4] [--batch 64]
                                [--modes plain legacy copy-v2 inline-v1 inline-v2 background-v1 background-v2]

Model: a stack of ``Linear(width, width)`` + ReLU layers sized to about 1 M, 10 M and 100 M
parameters (widths 512, 1024, 4096), trained with Adam on random data in float32 on the CPU (a
plain torch loop: the commit path is measured without Lightning or the rounding mode, whose own
costs ``benchmarks/overhead.py`` reports). The committed state is the weights and Adam's two
moments: 12 bytes per parameter (1.2 GB at 100 M).

Per step, each mode does what the training session does at a step boundary (the ledger's own
functions, no copies of them):

- ``plain``: the training step only (measured before each mode; the median of those runs is
  the baseline);
- ``legacy``: the commit as before this benchmark existed (a freshly allocated copy of the state,
  SHA-256 over a second ``bytes`` copy of every tensor), inline;
- ``copy-v2``: the inline commit before live snapshots: copy into the buffers of an earlier
  snapshot, digest in format v2 (BLAKE3) on the training thread, then the rounding log (atomic
  write) and the step record (fsynced append);
- ``inline-v1`` / ``inline-v2``: what the session does inline: digest the state in place (a live
  snapshot, no copy: nothing trains until the step is committed) in format v1 (SHA-256) or v2
  (BLAKE3), then the log and the record;
- ``background-v1`` / ``background-v2``: a copy into reused buffers on the training thread, the digest on the
  worker thread (:class:`~lightning_zk.ledger.digester.StateDigester`, two in flight), records
  written in order once their digests are known; the final drain is part of the measured time.

Columns: the per-step time (median of ``--steps`` steps after three warm-up steps, in which the
snapshot buffers are allocated once and for all, plus the final
drain spread over the steps), the commit's cost (mode − plain) and its ratio to the plain step;
then the same in CPU time (every thread of the process), which load from other processes
disturbs less than wall-clock time; and the resident memory the commit keeps beyond the plain
loop's (its snapshot buffers), read from the process after the timed steps; and the commit
call alone (median), which the spread of the training step between runs does not blur — the
step-time difference also shows what a commit costs the *next* step (a copy evicts caches).
The machine may be shared: the plain step is measured again before every mode and the table
shows their spread; compare ratios, and repeat a size when the spread is large. With ``--profile``, the
inline phases of one commit: copy, digest v1, digest v2, log + record with fsync.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_zk.atomic import atomic_write_bytes  # noqa: E402
from lightning_zk.ledger.digester import StateDigester  # noqa: E402
from lightning_zk.ledger.rundir import RunDirectory, StepRecord  # noqa: E402
from lightning_zk.ledger.state import (  # noqa: E402
    STATE_DIGEST_V1,
    STATE_DIGEST_V2,
    StateSnapshot,
    snapshot,
)
from lightning_zk.rounding.log import StepLog, encode_step_log  # noqa: E402

SIZES = {"1M": (512, 4), "10M": (1024, 10), "100M": (4096, 6)}  # width, layers
DEFAULT_STEPS = {"1M": 20, "10M": 10, "100M": 4}
WARMUP = 3  # steps before timing: the snapshot buffers (up to four states) are allocated by then
MODES = ("plain", "legacy", "copy-v2", "inline-v1", "inline-v2", "background-v1", "background-v2")


def make(size: str, batch: int, seed: int = 0):
    width, depth = SIZES[size]
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, width), torch.randn(batch, width)
    return model, opt, x, y


def train_step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()


def legacy_digest(snap: StateSnapshot) -> str:
    """The v1 digest as it was computed before: ``bytes`` copies of every tensor."""
    def feed(h, data):
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    h = hashlib.sha256(b"lightning-zk/state/v1")
    feed(h, struct.pack("<Q", len(snap.tensors)))
    for name in sorted(snap.tensors):
        t = snap.tensors[name].contiguous()
        feed(h, name.encode())
        feed(h, str(t.dtype).removeprefix("torch.").encode())
        feed(h, struct.pack(f"<{t.dim()}Q", *t.shape))
        feed(h, t.reshape(-1).view(torch.uint8).numpy().tobytes())
    feed(h, json.dumps(snap.meta, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


class Committer:
    """The session's per-step commit, without Lightning: snapshot, digest, log, record."""

    def __init__(self, run_dir: Path, mode: str) -> None:
        self.run = RunDirectory(run_dir)
        self.run.prepare()
        self.mode = mode
        self.fmt = STATE_DIGEST_V2 if mode.endswith("v2") else STATE_DIGEST_V1
        digest = legacy_digest if mode == "legacy" else None
        self.digester = StateDigester(background=mode.startswith("background"), digest=digest)
        self.spare: list[StateSnapshot] = []
        self.last: StateSnapshot | None = None
        self.step = 0

    def commit(self, model, opt) -> None:
        reuse = None if self.mode == "legacy" else (self.spare.pop() if self.spare else None)
        snap = snapshot(model, [opt], torch.float32, digest_format=self.fmt, reuse=reuse,
                        live=self.mode.startswith("inline"))  # digested below, before training on
        self.digester.submit(snap, self.step)
        self.step += 1
        self._write(self.digester.ready())

    def _write(self, done) -> None:
        for step, snap, digest in done:
            data = encode_step_log(StepLog(step, []))  # an empty rounding log, written atomically
            log = self.run.rounding_dir / f"step-{step:08d}.rlog"
            atomic_write_bytes(log, data)
            self.run.append_step(StepRecord(
                step=step, epoch=0, batch_idx=step, batch_indices=None, batch_digest="0" * 64,
                state_digest=digest, log_file=f"rounding/step-{step:08d}.rlog",
                log_sha256=hashlib.sha256(data).hexdigest(), log_bytes=len(data),
                logged_elements=0, rounded_elements=0, updates=[0], global_step=step))
            if self.last is not None and len(self.spare) < self.digester.max_in_flight:
                self.spare.append(self.last)  # as the session keeps them
            self.last = snap

    def finish(self) -> None:
        while self.digester.in_flight:
            self._write(self.digester.drain())
        self.digester.close()


def _resident_bytes() -> int:
    """The process's resident memory now (Linux; 0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_mode(size: str, mode: str, steps: int, batch: int) -> tuple[float, float, int, float]:
    """Seconds per step (training + commit), wall-clock and CPU (all of the process's threads):
    the median over ``steps`` steps after ``WARMUP`` steps, plus the final drain of the queued
    digests spread over the steps (a median, so a burst of load from another process on a shared
    machine does not decide the result; CPU time is what such load disturbs least), and the
    resident memory the commit keeps (the snapshot buffers) beside the plain loop's, and the
    median time of the commit call alone (the part of the cost no run-to-run spread of the
    training step blurs)."""
    model, opt, x, y = make(size, batch)
    train_step(model, opt, x, y)  # Adam's moments exist from here on
    times, cpu, phase = [], [], []
    resident = _resident_bytes()
    with tempfile.TemporaryDirectory(prefix="lzk-commit-") as tmp:
        committer = None if mode == "plain" else Committer(Path(tmp) / "run", mode)
        for i in range(steps + WARMUP):
            start, start_cpu = time.perf_counter(), time.process_time()
            train_step(model, opt, x, y)
            trained = time.perf_counter()
            if committer is not None:
                committer.commit(model, opt)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
                phase.append(time.perf_counter() - trained)
        kept = _resident_bytes() - resident
        start, start_cpu = time.perf_counter(), time.process_time()
        if committer is not None:
            committer.finish()
        drain = (time.perf_counter() - start) / steps
        return (statistics.median(times) + drain,
                statistics.median(cpu) + (time.process_time() - start_cpu) / steps, kept,
                statistics.median(phase) + drain)


def profile(size: str, batch: int) -> dict[str, float]:
    """Inline phases of one commit (median of 3): copy, digest v1/v2, log + record + fsync."""
    model, opt, x, y = make(size, batch)
    train_step(model, opt, x, y)
    out: dict[str, list[float]] = {"fresh copy": [], "copy": [], "digest v1": [], "digest v2": [],
                                   "legacy digest v1": [], "write+fsync": []}
    spare = snapshot(model, [opt], torch.float32)
    with tempfile.TemporaryDirectory(prefix="lzk-commit-") as tmp:
        committer = Committer(Path(tmp) / "run", "inline-v1")
        for _ in range(3):
            t0 = time.perf_counter()
            fresh = snapshot(model, [opt], torch.float32)
            t1 = time.perf_counter()
            snap = snapshot(model, [opt], torch.float32, reuse=spare)
            t2 = time.perf_counter()
            snap.digest()
            t3 = time.perf_counter()
            StateSnapshot(snap.tensors, snap.meta, STATE_DIGEST_V2).digest()
            t4 = time.perf_counter()
            legacy_digest(snap)
            t5 = time.perf_counter()
            committer.digester = StateDigester(background=False, digest=lambda s: "0" * 64)
            committer.digester.submit(snap, committer.step)
            committer.step += 1
            committer._write(committer.digester.ready())
            t6 = time.perf_counter()
            del fresh
            for key, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                out[key].append(dt)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", nargs="+", type=int, default=None,
                        help="steps per mode, one per size (default 20 10 4)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--profile", action="store_true", help="also time the inline phases")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or [DEFAULT_STEPS[s] for s in args.sizes]
    if len(steps) == 1:
        steps = steps * len(args.sizes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"float32 + Adam (state = 12 bytes/parameter)")
    modes = [m for m in args.modes if m != "plain"]
    for size, n in zip(args.sizes, steps, strict=True):
        model, _, _, _ = make(size, 1)
        params = sum(p.numel() for p in model.parameters())
        del model
        plain, times = [], {}
        for m in modes:
            plain.append(run_mode(size, "plain", n, args.batch))
            times[m] = run_mode(size, m, n, args.batch)
        plain.append(run_mode(size, "plain", n, args.batch))
        base = statistics.median(p[0] for p in plain)
        base_cpu = statistics.median(p[1] for p in plain)
        base_mem = statistics.median(p[2] for p in plain)  # (p[3]: no commit call in plain)
        print(f"\n{size}: {params / 1e6:.1f} M parameters, state {12 * params / 1e9:.2f} GB, "
              f"{n} steps per mode; plain step {base * 1e3:.0f} ms, {base_cpu * 1e3:.0f} ms CPU "
              f"(runs: {', '.join(f'{p[0] * 1e3:.0f}' for p in plain)} ms)")
        print(f"  {'mode':<15}{'step ms':>10}{'commit ms':>11}{'ratio':>9}"
              f"{'CPU ms':>10}{'commit CPU':>12}{'CPU ratio':>11}{'memory GB':>11}"
              f"{'call ms':>9}{'call/plain':>11}")
        target = "  (target: commit <= +10 % of the step at 100 M)" if size == "100M" else ""
        for m in modes:
            t, c, mem, call = times[m]
            print(f"  {m:<15}{t * 1e3:>10.0f}{(t - base) * 1e3:>11.0f}{(t - base) / base:>+9.1%}"
                  f"{c * 1e3:>10.0f}{(c - base_cpu) * 1e3:>12.0f}{(c - base_cpu) / base_cpu:>+11.1%}"
                  f"{(mem - base_mem) / 1e9:>+11.2f}{call * 1e3:>9.0f}{call / base:>+11.1%}")
        if target:
            print(target)
        if args.profile:
            phases = profile(size, args.batch)
            print("  inline phases (ms): " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in phases.items()))


if __name__ == "__main__":
    main()
