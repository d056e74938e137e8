"""``lightning-zk verify RUN``: check every zk proof of a run, the chain, and the ledger.

RUN is a fixed-point run directory or its public bundle (``lightning-zk publish``). The security
level is the verifier's choice (``--security-bits``, at least 100): proofs made under less are
rejected, whatever their statements say. Nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._guard import run_command

HELP = "verify a fixed-point run's zero-knowledge proofs, their chain and the ledger"


def main(argv: list[str]) -> int:
    return run_command("lightning-zk verify", _main, argv)


def _main(argv: list[str]) -> int:
    from ..zk.policy import MAX_SECURITY_BITS, MIN_SECURITY_BITS

    parser = argparse.ArgumentParser(prog="lightning-zk verify", description=HELP,
                                     epilog="Add --debug to see the traceback of a failure.")
    parser.add_argument("run", type=Path, help="the run directory or its public bundle")
    parser.add_argument(
        "--security-bits", type=int, default=MIN_SECURITY_BITS, metavar="N",
        help=f"minimum soundness of every commitment opening, {MIN_SECURITY_BITS}..."
        f"{MAX_SECURITY_BITS} (default {MIN_SECURITY_BITS}); proofs made under less are rejected")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from ..audit.proofs import verify_run
    from ..zk.policy import VerifierPolicy

    policy = VerifierPolicy(security_bits=args.security_bits)  # ParameterError: one line, exit 2
    report = verify_run(args.run, policy)
    table = Table(title=f"zk verification of {args.run}", show_header=False)
    table.add_row("result", "[green]OK[/green]" if report.ok else "[red]FAILED[/red]")
    table.add_row("proof units", str(report.units))
    table.add_row("steps proven / committed", f"{report.steps_proven} / {report.steps_committed}")
    checked = f"{report.security_bits} bits per opening" if report.security_bits else "not reached"
    table.add_row("security checked", f"{checked} (verifier minimum {report.policy_bits} bits)")
    table.add_row("ledger", report.ledger)
    for problem in report.problems:
        table.add_row("problem", problem)
    Console().print(table)
    return 0 if report.ok else 1
