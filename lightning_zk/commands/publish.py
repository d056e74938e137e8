"""``lightning-zk publish RUN OUT``: write the public bundle of a run (nothing private)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write the public bundle of a run: what a verifier or auditor needs, nothing private"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-zk publish", description=HELP)
    parser.add_argument("run", type=Path, help="the run directory")
    parser.add_argument("out", type=Path, help="a new (or empty) directory for the bundle")
    args = parser.parse_args(argv)

    from ..audit.publish import BUNDLE_FILE, publish_run
    from ..ledger.rundir import RunDirectoryError

    try:
        report = publish_run(args.run, args.out)
    except (RunDirectoryError, OSError) as err:
        print(f"lightning-zk publish: {err}", file=sys.stderr)
        return 2
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
