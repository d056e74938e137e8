"""Subcommands of ``lightning-zk`` besides the LightningCLI ones.

Each subcommand is a module ``lightning_zk.commands.<name>`` exposing ``HELP: str`` and
``main(argv: list[str]) -> int`` (exit status). A name whose module does not exist is not offered.
"""

from __future__ import annotations

import importlib
import importlib.util

SUBCOMMANDS = ("audit", "ledger", "dispute", "prove", "verify", "publish", "report")


def available() -> dict[str, str]:
    """Subcommand name → one-line help, for the modules present in this installation."""
    found = {}
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            found[name] = importlib.import_module(f"{__name__}.{name}").HELP
    return found


def run(name: str, argv: list[str]) -> int:
    return int(importlib.import_module(f"{__name__}.{name}").main(argv))
