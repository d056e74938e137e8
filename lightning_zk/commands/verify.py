"""``lightning-zk verify RUN``: check every zk proof of a run, the chain, and the ledger."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._guard import run_command

HELP = "verify a fixed-point run's zero-knowledge proofs, their chain and the ledger"


def main(argv: list[str]) -> int:
    return run_command("lightning-zk verify", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-zk verify", description=HELP,
                                     epilog="Add --debug to see the traceback of a failure.")
    parser.add_argument("run", type=Path)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from ..audit.proofs import verify_run

    report = verify_run(args.run)
    table = Table(title=f"zk verification of {args.run}", show_header=False)
    table.add_row("result", "[green]OK[/green]" if report.ok else "[red]FAILED[/red]")
    table.add_row("proof units", str(report.units))
    table.add_row("steps proven / committed", f"{report.steps_proven} / {report.steps_committed}")
    table.add_row("ledger", report.ledger)
    for problem in report.problems:
        table.add_row("problem", problem)
    Console().print(table)
    return 0 if report.ok else 1
