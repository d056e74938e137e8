"""``lightning-zk audit RUN``: replay a committed run on this machine, step by step."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._guard import run_command

HELP = "replay a committed run bit-for-bit and report the first mismatching step"


def _print_summary(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"audit of {report.run_dir}", show_header=False)
    table.add_row("result", "[green]OK[/green]" if report.ok else "[red]MISMATCH[/red]")
    claimed = report.steps_claimed if report.steps_claimed is not None else "none (unfinished run)"
    table.add_row("steps claimed by the trainer", str(claimed))
    table.add_row("steps checked", f"{report.steps_checked} / {report.steps_committed}")
    if report.claims:
        table.add_row("claims checked", report.claims)
    table.add_row("first mismatching step", str(report.first_mismatch_step))
    if report.mismatch:
        table.add_row("what differs", ", ".join(report.mismatch.get("fields", [])))
        if report.mismatch.get("detail"):
            table.add_row("detail", report.mismatch["detail"])
    table.add_row("logged elements used", str(report.logged_elements))
    table.add_row("corrections", str(report.corrections))
    table.add_row("replay time", f"{report.elapsed_s:.1f} s")
    Console().print(table)


def _announce(sources) -> None:
    """Say which classes the audit will build and from which files, before building any."""
    print("building from the config (code installed on this machine, never from the run):")
    for source in sources:
        print(f"  {source}")


def main(argv: list[str]) -> int:
    return run_command("lightning-zk audit", _main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-zk audit", description=HELP,
                                     epilog="Add --debug to see the traceback of a failure.")
    parser.add_argument("run", type=Path, help="the trainer's run directory")
    parser.add_argument("--config", type=Path, help="config with model/data (default: RUN/config.yaml; "
                        "pass your own to build only classes you chose)")
    parser.add_argument("--out", type=Path, help="commit the auditor's own run directory here")
    parser.add_argument("--report", type=Path, help="JSON report path (default: OUT/audit_report.json "
                        "or ./audit-<run name>.json)")
    parser.add_argument("--device", help="device to replay on (default: cuda if available, else cpu)")
    parser.add_argument("--prefix", action="store_true",
                        help="accept an unfinished run (killed or still training) and replay the "
                             "steps it has recorded so far")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: shown on an interactive terminal)")
    args = parser.parse_args(argv)

    from ..audit.config import load_run_config
    from ..audit.replay import replay
    from ..audit.untrusted import RunCodeGuard
    from .quiet import quiet_lightning

    config = args.config or args.run / "config.yaml"
    with RunCodeGuard([args.run]):  # also covers imports made while the replay runs
        # Built as `lightning-zk fit` built them (seed first); the config's Trainer settings must
        # be the committed ones (the replay applies those).
        built = load_run_config(config, untrusted=[args.run], announce=_announce)
        accelerator = "cpu" if (args.device or "cpu").startswith("cpu") else "gpu"
        with quiet_lightning():
            report = replay(args.run, built.model, datamodule=built.datamodule, audit_dir=args.out,
                            device=args.device, accelerator=accelerator, prefix=args.prefix,
                            progress=False if args.no_progress else None, **built.trainer_settings)
    report_path = args.report or (args.out / "audit_report.json" if args.out else
                                  Path(f"audit-{args.run.resolve().name}.json"))
    report.save(report_path)
    _print_summary(report)
    print(report.summary())
    print(f"report: {report_path}")
    return 0 if report.ok else 1
