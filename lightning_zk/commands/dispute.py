"""``lightning-zk dispute TRAINER_RUN AUDITOR_RUN``: bisect two ledgers, let the referee judge."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._guard import run_command

HELP = "bisect a trainer's and an auditor's ledgers to the first disputed step and judge it"


def main(argv: list[str]) -> int:
    return run_command("lightning-zk dispute", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-zk dispute", description=HELP,
                                     epilog="Add --debug to see the traceback of a failure.")
    parser.add_argument("trainer_run", type=Path)
    parser.add_argument("auditor_run", type=Path)
    parser.add_argument("--config", type=Path, help="model/data config (default: "
                        "TRAINER_RUN/config.yaml; pass your own to build only classes you chose)")
    parser.add_argument("--out", type=Path, default=Path("verdict.json"), help="verdict JSON path")
    parser.add_argument("--device", help="device the referee replays on")
    args = parser.parse_args(argv)

    from ..audit.config import load_model_and_data
    from ..audit.dispute import dispute
    from ..audit.untrusted import RunCodeGuard
    from .audit import _announce

    runs = [args.trainer_run, args.auditor_run]
    with RunCodeGuard(runs):
        model, data = load_model_and_data(args.config or args.trainer_run / "config.yaml",
                                          untrusted=runs, announce=_announce)
        verdict = dispute(args.trainer_run, args.auditor_run, model, datamodule=data,
                          device=args.device)
    verdict.save(args.out)
    print(verdict.summary())
    for entry in verdict.evidence.get("rounds", []):
        if "round" in entry:
            state = "agree" if entry["agree"] else "differ"
            print(f"  round {entry['round']}: roots of the first {entry['prefix']} steps {state}")
        else:
            print(f"  step {entry['step']}: leaves differ in {', '.join(entry['differing'])}")
    print(f"verdict: {args.out}")
    return 0 if verdict.honest in (None, "trainer") else 1
