"""CPU time per training step of one configuration, for before/after comparisons on a busy machine.

    python benchmarks/step_cpu_time.py FAMILY CONFIG [STEPS]

FAMILY is one of benchmarks/common.py's families; CONFIG is ``32-true`` or ``64-true`` (plain
Lightning), ``f64`` (VerifiableStrategy, float64 compute) or ``bf16`` (float32 compute on the
bfloat16 grid). Prints ``RESULT <median ms>``: ``time.process_time`` per step with one intra-op
thread, median of the steps after the first two. Wall-clock ratios (benchmarks/overhead.py) are
what the issue-14 targets speak of; on a machine shared with other jobs they swing by several
times, while CPU time per step stays comparable: run the code before and after alternately, each
in its own process (``PYTHONPATH=<tree>``), several rounds.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from common import loader, make_family, quiet_trainer


class _CpuTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._t0 = time.process_time()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.process_time() - self._t0)


def main() -> None:
    family, config = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    timer = _CpuTimer()
    model, data, bs = make_family(family)
    with tempfile.TemporaryDirectory() as tmp:
        if config in ("32-true", "64-true"):
            trainer = quiet_trainer(max_steps=steps, precision=config, callbacks=[timer])
        else:
            from lightning_zk import VerifiableStrategy

            kwargs = {"compute_dtype": "float32", "mantissa_bits": 7} if config == "bf16" else {}
            strategy = VerifiableStrategy(run_dir=Path(tmp) / "run", **kwargs)
            trainer = quiet_trainer(max_steps=steps, strategy=strategy, callbacks=[timer])
        trainer.fit(model, train_dataloaders=loader(data, bs))
    print(f"RESULT {statistics.median(timer.times[2:] or timer.times) * 1e3:.2f}")


if __name__ == "__main__":
    main()
