"""Train on one machine configuration, audit on another; report whether every step matched.

    python benchmarks/cross_device.py [--steps 30]

Pairs: GPU trainer vs CPU auditor when CUDA is available; on CPU-only machines, different thread
counts (different reduction splits) and, as a stand-in for different hardware, the
NondeterminismEmulator with two seeds. For contrast, the same pair trains plain float32 without
the strategy and compares the final weights.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch
from common import FAMILIES, loader, machine, make_family, print_table, quiet_trainer

from lightning_zk import VerifiableStrategy
from lightning_zk.audit import replay
from lightning_zk.testing import NondeterminismEmulator


def _config(name: str):
    """(context manager factory, device) of a machine configuration."""
    if name.startswith("threads:"):
        n = int(name.split(":")[1])

        @contextlib.contextmanager
        def threads():
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                yield
            finally:
                torch.set_num_threads(before)

        return threads, "cpu"
    if name.startswith("emulator:"):
        seed = int(name.split(":")[1])
        return (lambda: NondeterminismEmulator(ulps=8, seed=seed)), "cpu"
    if name == "cuda":
        return contextlib.nullcontext, "cuda"
    return contextlib.nullcontext, "cpu"


def _plain_weights(family, steps, config):
    ctx, device = _config(config)
    model, data, bs = make_family(family)
    with ctx():
        quiet_trainer(max_steps=steps, accelerator="gpu" if device == "cuda" else "cpu").fit(
            model, train_dataloaders=loader(data, bs))
    return torch.cat([p.detach().float().cpu().reshape(-1) for p in model.parameters()])


def run_pair(family, steps, trainer_cfg, auditor_cfg, tmp: Path) -> list[object]:
    ctx, device = _config(trainer_cfg)
    model, data, bs = make_family(family)
    with ctx():
        quiet_trainer(max_steps=steps, strategy=VerifiableStrategy(run_dir=tmp / family, device=device),
                      accelerator="gpu" if device == "cuda" else "cpu").fit(model, train_dataloaders=loader(data, bs))
    ctx, device = _config(auditor_cfg)
    model, data, bs = make_family(family, seed=1)
    with ctx():
        report = replay(tmp / family, model, train_dataloaders=loader(data, bs), device=device,
                        accelerator="gpu" if device == "cuda" else "cpu")
    plain_equal = torch.equal(_plain_weights(family, steps, trainer_cfg), _plain_weights(family, steps, auditor_cfg))
    return [family, trainer_cfg, auditor_cfg, f"{report.steps_checked}/{report.steps_committed}",
            "yes" if report.ok else f"NO (step {report.first_mismatch_step})", report.corrections,
            "identical" if plain_equal else "differ"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    args = parser.parse_args()
    if torch.cuda.is_available():
        pairs = [("cuda", "cpu")]
    else:
        pairs = [(f"threads:{max(2, torch.get_num_threads())}", "threads:1"), ("emulator:1", "emulator:2")]
    rows = []
    for trainer_cfg, auditor_cfg in pairs:
        with tempfile.TemporaryDirectory() as tmp:
            for family in args.families:
                rows.append(run_pair(family, args.steps, trainer_cfg, auditor_cfg, Path(tmp)))
    print_table(
        f"Cross-machine audit ({args.steps} steps; {machine()}; CUDA: {torch.cuda.is_available()})",
        ["model", "trainer", "auditor", "steps checked", "every step matched", "corrections",
         "plain float32 weights"],
        rows,
    )


if __name__ == "__main__":
    main()
