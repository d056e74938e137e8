"""Data-parallel training: plain DDP against VerifiableDDPStrategy, and the one-process replay.

    python benchmarks/ddp.py [--family mlp] [--steps 20] [--devices 1 2] [--threads 1]

Per world size ``N`` (CPU, gloo; Lightning's ``popen`` launcher re-runs this script for the other
ranks): the median step time of plain DDP (float32, Lightning's ``DDPStrategy``) and of
``VerifiableDDPStrategy`` (float64 compute, float32 grid, one shard of the family's batch size per
process), each in its own fresh set of processes; then the audit replay of each verifiable run on
ONE process (``lightning_zk.audit.replay``: the ``N`` shards of a step in turn) and the rounding
log bytes per step. A step's time is the interval between consecutive batch ends (so the
verifiable step includes its commit at the next boundary), median after two warm-up steps.
Ratios are against plain DDP at the same world size, measured in the same run. Every process uses
``--threads`` torch threads (default 1: 2 processes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from common import loader, machine, make_family, print_table

from lightning_zk import RunDirectory, VerifiableDDPStrategy
from lightning_zk.audit import replay


class IntervalTimer(L.Callback):
    """Time between consecutive batch ends: forward, backward, update and the step's commit."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def median(self, warmup: int = 2) -> float:
        gaps = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        return statistics.median(gaps[warmup:] or gaps)


def _trainer_kwargs() -> dict:
    return dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")


def worker(args: argparse.Namespace) -> None:
    """One training run (this process and, under ``popen``, its re-run ranks)."""
    # Lightning's DDP sets the thread count itself (cores / processes) unless OMP_NUM_THREADS is set
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    model, data, batch_size = make_family(args.family)
    timer = IntervalTimer()
    if args.mode == "plain":
        strategy = L.pytorch.strategies.DDPStrategy(start_method="popen", timeout=timedelta(seconds=300))
    else:
        strategy = VerifiableDDPStrategy(run_dir=args.run_dir, timeout=timedelta(seconds=300))
    trainer = L.Trainer(strategy=strategy, devices=args.devices[0], max_steps=args.steps,
                        callbacks=[timer], **_trainer_kwargs())
    trainer.fit(model, train_dataloaders=loader(data, batch_size))
    if trainer.is_global_zero:
        Path(args.out).write_text(json.dumps({"step_s": timer.median(), "ends": timer.ends}))


def launch(family: str, mode: str, devices: int, steps: int, threads: int, out: Path,
           run_dir: Path | None = None) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode, "--family", family,
           "--devices", str(devices), "--steps", str(steps), "--threads", str(threads), "--out", str(out)]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{mode} DDP on {devices} processes failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())["step_s"]


def replay_step(family: str, run_dir: Path, threads: int) -> tuple[float, bool]:
    torch.set_num_threads(threads)
    model, data, batch_size = make_family(family)
    timer = IntervalTimer()
    report = replay(run_dir, model, train_dataloaders=loader(data, batch_size), accelerator="cpu",
                    callbacks=[timer], progress=False)
    return timer.median(), report.ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="mlp", choices=("mlp", "transformer"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("plain", "verifiable"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            plain = launch(args.family, "plain", n, args.steps, args.threads, Path(tmp) / f"plain{n}.json")
            run_dir = Path(tmp) / f"run{n}"
            verifiable = launch(args.family, "verifiable", n, args.steps, args.threads,
                                Path(tmp) / f"ver{n}.json", run_dir)
            replayed, ok = replay_step(args.family, run_dir, args.threads)
            records = RunDirectory(run_dir).read_steps()
            log_bytes = statistics.mean(r.log_bytes for r in records)
            rows.append([n, f"{plain * 1e3:.1f}", f"{verifiable * 1e3:.1f}", f"{verifiable / plain:.2f}x",
                         f"{replayed * 1e3:.1f}", f"{replayed / plain:.2f}x", f"{replayed / verifiable:.2f}x",
                         "OK" if ok else "MISMATCH", f"{log_bytes:.0f}"])
    print(f"machine: {machine()}; family {args.family}, {args.steps} steps, {args.threads} thread(s) "
          "per process, one shard per process")
    print_table("DDP step time (ms, median) and one-process replay",
                ["processes", "plain DDP", "verifiable DDP", "verifiable/plain", "replay on 1 process",
                 "replay/plain", "replay/verifiable", "replay", "log bytes/step"], rows)


if __name__ == "__main__":
    main()
