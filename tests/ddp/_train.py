"""Train a small model with (verifiable or plain) DDP on CPU; run as ``python -m tests.ddp._train``.

Lightning's ``popen`` launcher re-runs this module for every rank > 0 (``--start-method fork``
forks them from this process instead), so everything it needs is importable (``tests.models``,
``tests.ddp.models``). Rank 0 writes ``--out`` (JSON): the final weights as lists of float32 bit
patterns, and the run directory for verifiable runs.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from lightning_zk import CommitCallback, VerifiableDDPStrategy
from lightning_zk.testing import NondeterminismEmulator
from tests.ddp.models import KINDS, make
from tests.models import trainer_kwargs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="mlp", choices=sorted(KINDS))
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--plain", action="store_true", help="Lightning's own DDP, float32")
    parser.add_argument("--shuffle", type=int, default=1)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--ledger", action="store_true")
    parser.add_argument("--bad-shard-at", type=int, default=None,
                        help="(test) rank 1 trains on shard 0's samples at this step")
    parser.add_argument("--diverge-rank1-at", type=int, default=None,
                        help="(test) rank 1's update rounds a near-tie the other way at this step")
    parser.add_argument("--emulate", action="store_true",
                        help="each rank emulates other hardware (NondeterminismEmulator, seed 100 + rank)")
    parser.add_argument("--crash-at", type=int, default=None,
                        help="(test) every rank fails when this step's batch starts")
    parser.add_argument("--seed", type=int, default=0, help="the strategy's seed")
    parser.add_argument("--skip-rank1-update-at", type=int, default=None,
                        help="(test) rank 1 skips its optimizer update at this step")
    parser.add_argument("--ckpt-dir", default=None,
                        help="Lightning checkpoints (ModelCheckpoint) every 2 steps into this folder")
    parser.add_argument("--resume", action="store_true",
                        help="fit from the newest Lightning checkpoint in --ckpt-dir (ckpt_path)")
    parser.add_argument("--start-method", default="popen", choices=("popen", "fork", "spawn"),
                        help="Lightning's DDP launcher (fork: the ranks share this process's imports)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.emulate and args.start_method == "fork":  # the rank is known only after the fork
        parser.error("--emulate keys each rank's emulated hardware by LOCAL_RANK: use popen")
    torch.set_num_threads(1)
    model, data = make(args.kind, batch_size=args.batch_size, shuffle=bool(args.shuffle))
    callbacks = [CommitCallback(checkpoint_every_n_steps=2)] if args.ledger else []
    if args.diverge_rank1_at is not None:
        from tests.ddp.models import Rank1Divergence

        callbacks.append(Rank1Divergence(args.diverge_rank1_at))
    if args.crash_at is not None:
        from tests.ddp.models import CrashAt

        callbacks.append(CrashAt(args.crash_at))
    if args.skip_rank1_update_at is not None:
        from tests.ddp.models import Rank1SkipsUpdate

        callbacks.append(Rank1SkipsUpdate(args.skip_rank1_update_at))
    ckpt_path, kwargs = None, trainer_kwargs()
    if args.ckpt_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=2, save_top_k=-1))
        kwargs = trainer_kwargs(enable_checkpointing=True)
        saved = sorted(Path(args.ckpt_dir).glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        ckpt_path = str(saved[-1]) if args.resume and saved else None
    if args.plain:
        strategy = DDPStrategy(start_method="popen", timeout=timedelta(seconds=120)) \
            if args.devices > 1 else "auto"
    else:
        strategy = VerifiableDDPStrategy(run_dir=args.run_dir, shards=args.shards, seed=args.seed,
                                         start_method=args.start_method, timeout=timedelta(seconds=120))
        if args.bad_shard_at is not None:
            from tests.ddp.models import misroute_shard

            misroute_shard(strategy, args.bad_shard_at)
    trainer = L.Trainer(strategy=strategy, devices=args.devices, max_steps=args.steps,
                        callbacks=callbacks, **kwargs)
    if args.emulate:  # the launcher sets LOCAL_RANK for the ranks it starts (rank 0: unset)
        with NondeterminismEmulator(ulps=8, seed=100 + int(os.environ.get("LOCAL_RANK", "0"))):
            trainer.fit(model, train_dataloaders=data, ckpt_path=ckpt_path)
    else:
        trainer.fit(model, train_dataloaders=data, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        weights = {k: v.detach().to(torch.float32).contiguous().view(torch.int32).flatten().tolist()
                   for k, v in model.state_dict().items()}
        with open(args.out, "w") as f:
            json.dump({"weights": weights, "run_dir": args.run_dir, "pid": os.getpid()}, f)


if __name__ == "__main__":
    main()
