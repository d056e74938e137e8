"""``lightning-zk publish RUN OUT``: write the public bundle of a run (nothing private)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._guard import run_command

HELP = "write the public bundle of a run: what a verifier or auditor needs, nothing private"


def main(argv: list[str]) -> int:
    return run_command("lightning-zk publish", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-zk publish", description=HELP,
                                     epilog="Add --debug to see the traceback of a failure.")
    parser.add_argument("run", type=Path, help="the run directory")
    parser.add_argument("out", type=Path, help="a new (or empty) directory for the bundle")
    args = parser.parse_args(argv)

    from ..audit.publish import BUNDLE_FILE, publish_run

    report = publish_run(args.run, args.out)
    print(f"public bundle of the {report.mode} run {args.run} in {args.out}: "
          f"{len(report.included)} files")
    groups: dict[tuple[str, str], int] = {}
    for rel, reason in report.left_out.items():
        top = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
        groups[(top, reason)] = groups.get((top, reason), 0) + 1
    for (top, reason), count in sorted(groups.items()):
        files = f" ({count} files)" if count > 1 else ""
        print(f"  left out {top}{files}: {reason}")
    check = "verify" if report.mode == "fixed" else "audit"
    print(f"listing: {args.out / BUNDLE_FILE}; check it with `lightning-zk {check} {args.out}`")
    return 0
