"""How every ``lightning-zk`` subcommand fails: one line, a non-zero exit, a traceback on request.

A command's input (a run directory, a config, a proof file) may come from someone the user does
not trust, so any failure it provokes is reported, never dumped: :func:`run_command` runs the
command's body and turns an exception into one line ``lightning-zk CMD: ErrorType: what is wrong``
(the typed errors of this package name the file, the field or step). ``--debug`` anywhere on the
command line (or ``LIGHTNING_ZK_DEBUG=1``) also prints the traceback. The flag is removed before
the command parses its arguments, so commands need not declare it.

Exit status: the command's own status for a typed input error (2 unless it says otherwise), and
3 for an unexpected error (a bug, or an input no check anticipated yet).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

DEBUG_FLAG = "--debug"
INTERNAL_ERROR_STATUS = 3
_MAX_MESSAGE = 2000


def input_errors() -> tuple[type[BaseException], ...]:
    """The typed errors by which this package reports bad input (each names what is wrong)."""
    from ..audit.config import ConfigError
    from ..audit.dispute import DisputeError
    from ..audit.proofs import ProofRunError
    from ..audit.untrusted import UntrustedCodeError
    from ..callbacks.proof import ProofError as TrainingProofError
    from ..fixed.format import FixedPointError
    from ..fixed.tape import TapeFormatError
    from ..fixed.torch_bridge import UnsupportedModelError
    from ..ledger.errors import RunDirectoryError
    from ..ledger.merkle import LedgerError
    from ..ledger.state import StateError
    from ..rounding.log import RoundingLogError
    from ..rounding.precision import PrecisionError
    from ..rounding.rng import UnsupportedRandomOpError
    from ..rounding.threshold import ThresholdError
    from ..strategies.data import UnsupportedDataLoaderError
    from ..strategies.replay import AuditConfigError, AuditInputError
    from ..zk.errors import ZkError
    from ..zk.training.witness import WitnessError

    return (RunDirectoryError, LedgerError, StateError, RoundingLogError, PrecisionError,
            ThresholdError, UnsupportedRandomOpError, TapeFormatError, FixedPointError,
            UnsupportedModelError, ZkError, WitnessError, ConfigError, UntrustedCodeError,
            AuditInputError, AuditConfigError, DisputeError, ProofRunError, TrainingProofError,
            UnsupportedDataLoaderError, OSError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (bounded), prefixed with its type."""
    text = " ".join(str(err).split()) or "(no message)"
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return f"{type(err).__name__}: {text}"


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("LIGHTNING_ZK_DEBUG") == "1"


def run_command(prog: str, body: Callable[[list[str]], int], argv: list[str], *,
                status: int = 2, prefix: str = "") -> int:
    """Run ``body(argv without --debug)``; report any exception as one line (module doc)."""
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return int(body(argv))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # every failure of the input: one line, never a raw traceback
        if debug:
            traceback.print_exc()
        if isinstance(err, input_errors()):
            print(f"{prog}: {prefix}{one_line(err)}", file=sys.stderr)
            return status
        print(f"{prog}: {prefix}internal error, {one_line(err)}. HINT: rerun with {DEBUG_FLAG} "
              "for the traceback; please report it if the input looks valid.", file=sys.stderr)
        return INTERNAL_ERROR_STATUS


__all__ = ["DEBUG_FLAG", "INTERNAL_ERROR_STATUS", "debug_requested", "input_errors", "one_line",
           "run_command"]
