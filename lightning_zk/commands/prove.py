"""``lightning-zk prove RUN``: prove a fixed-point run offline from its witness tapes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._guard import run_command

HELP = "prove every step of a fixed-point run in zero knowledge, from RUN/tapes/"


def main(argv: list[str]) -> int:
    return run_command("lightning-zk prove", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-zk prove", description=HELP,
                                     epilog="Add --debug to see the traceback of a failure.")
    parser.add_argument("run", type=Path)
    parser.add_argument("--aggregate", choices=("step", "epoch"), default="step",
                        help="one proof per step, or one aggregated proof per epoch")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    args = parser.parse_args(argv)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..audit.proofs import plan_units, prove_run
    from ..ledger.rundir import RunDirectory

    total = len(plan_units(RunDirectory(args.run), args.aggregate))
    with Progress(TextColumn("proving"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("units", total=total)
        units = prove_run(args.run, args.aggregate, args.backend,
                          on_unit=lambda steps: bar.advance(task))
    print(f"proved {units} unit(s) into {args.run / 'proofs'}")
    return 0
