"""Replay a sharded run on ``--devices`` DDP processes; run as ``python -m tests.ddp._replay``.

Lightning's ``popen`` launcher re-runs this module for rank 1; rank 0 writes the report (JSON).
"""

from __future__ import annotations

import argparse
import json
import os

from lightning_zk.audit import replay
from tests.ddp.models import make


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--kind", default="mlp")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, data = make(args.kind, batch_size=args.batch_size)
    report = replay(args.run, model, train_dataloaders=data, accelerator="cpu", devices=args.devices,
                    progress=False)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        with open(args.out, "w") as f:
            json.dump(report.to_json(), f)


if __name__ == "__main__":
    main()
