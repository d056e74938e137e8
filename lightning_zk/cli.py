"""The ``lightning-zk`` command line.

``lightning-zk fit|validate|test|predict ...`` is a LightningCLI: model, data and trainer come from
YAML configs or flags, exactly as with ``LightningCLI``. When the trainer runs under
:class:`~lightning_zk.VerifiableStrategy`, the resolved config is saved as ``RUN/config.yaml`` so
an auditor can rebuild model and data from the run directory alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from . import commands
from .commands.quiet import quiet_lightning
from .strategies.verifiable import VerifiableStrategy

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class VerifiableCLI(LightningCLI):
    """LightningCLI that hands the resolved config to the VerifiableStrategy's run directory."""

    def before_fit(self) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, VerifiableStrategy):
            config = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
            strategy.cli_config = config

    def after_fit(self) -> None:
        session = getattr(self.trainer.strategy, "session", None)
        if session is None or session.run is None or not self.trainer.is_global_zero:
            return  # (under DDP only rank 0 commits)
        ledger = session.manifest.get("ledger") or {}
        root = f", ledger root {ledger['root'][:16]}…" if ledger.get("root") else ""
        print(f"lightning-zk: {session.next_step} steps committed to {session.run.path}{root}\n"
              f"  audit with: lightning-zk audit {session.run.path}")


def _lightning_cli(args: Sequence[str]) -> int:
    # Model and data classes are named by import path in configs: resolve them from the current
    # directory too, as ``python -m`` would.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    with quiet_lightning():
        VerifiableCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            args=list(args),
            auto_configure_optimizers=True,
        )
    return 0


def _fit_command(args: list[str]) -> int:
    """LightningCLI, with lightning-zk's typed errors (a run directory in use, a run of another
    configuration...) as one line; errors of the user's own code keep their traceback."""
    from .commands._guard import DEBUG_FLAG, debug_requested, input_errors, one_line

    debug = debug_requested(args)
    try:
        return _lightning_cli([a for a in args if a != DEBUG_FLAG])
    except Exception as err:
        if debug or not isinstance(err, input_errors()) or isinstance(err, OSError):
            raise
        print(f"lightning-zk {args[0]}: {one_line(err)}", file=sys.stderr)
        return 2


def _usage() -> str:
    lines = [
        "usage: lightning-zk COMMAND [options]",
        "",
        "  fit, validate, test, predict   LightningCLI subcommands (`lightning-zk fit --help`)",
    ]
    for name, text in commands.available().items():
        lines.append(f"  {name:<30} {text}")
    lines += ["", "Every command prints a failure as one line; add --debug for its traceback."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-zk`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] in LIGHTNING_SUBCOMMANDS:
        return _fit_command(args)
    if args[0] in commands.available():
        return commands.run(args[0], args[1:])
    print(f"lightning-zk: unknown command {args[0]!r}; see `lightning-zk --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
