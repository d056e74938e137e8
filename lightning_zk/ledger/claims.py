"""What a run claims, checked against what it holds: no "OK" on a truncated or edited run.

A finished run's manifest claims three things: how many steps were committed
(``steps_committed``), the state after the last one (``final_state_digest``) and, when it kept a
Merkle ledger, the root over all its leaves (``ledger.size``/``ledger.root``). Every reader that
passes judgement on a whole run (``audit``, ``verify``, ``dispute``, ``ledger --verify``) checks
them first with :func:`check_run_claims`:

- ``steps.jsonl`` holds exactly the claimed number of records (a dropped, truncated or appended
  record is found even when every remaining record is well formed), with no torn last line;
- the last record's state digest is the claimed final state;
- a run that publishes a ledger presents it: ``ledger.sqlite`` is a regular file in the run, every
  leaf equals the leaf of its record, and the leaves hash to the published root;
- a finished run that holds a ledger but publishes none (``ledger: null``) was edited.

An unfinished run (killed, or still training: ``final_state_digest`` is ``null``) claims nothing
about its end; :func:`check_run_claims` refuses it unless the caller accepts a prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RunClaimError
from .merkle import LEDGER_FILE, Ledger, parse_root
from .rundir import RunDirectory, StepRecord


@dataclass(frozen=True)
class RunClaims:
    """The claims of a run that were checked (``None`` where the run makes no claim)."""

    finished: bool
    steps_recorded: int
    steps_claimed: int | None
    final_state_digest: str | None
    ledger_size: int | None
    ledger_root: str | None

    def describe(self) -> str:
        if not self.finished:
            text = f"unfinished run: {self.steps_recorded} steps recorded, no final state claimed"
        else:
            text = f"the trainer claims {self.steps_claimed} steps"
        if self.ledger_root is not None:
            text += f"; ledger root {self.ledger_root[:16]}… of {self.ledger_size} leaves verified"
        else:
            text += "; no ledger published"
        return text


def _has_ledger_file(run: RunDirectory) -> bool:
    return any(os.path.lexists(run.path / (LEDGER_FILE + suffix)) for suffix in ("", "-wal"))


def check_run_claims(run: RunDirectory, manifest: Mapping[str, Any] | None = None,
                     records: Sequence[StepRecord] | None = None,
                     require_finished: bool = True) -> RunClaims:
    """Check the manifest's claims against ``steps.jsonl`` and the ledger (module doc).

    Raises:
        RunClaimError: an unfinished run (with ``require_finished``), a record count or final
            state that differs from the claim, or a ledger that is present but not published.
        LedgerError: a published ledger that is missing, damaged, disagrees with the records or
            does not hash to its published root (subclasses name file and step).
    """
    manifest = run.read_manifest() if manifest is None else manifest
    records = run.read_steps() if records is None else records
    final = manifest["final_state_digest"]
    finished = final is not None
    claimed: int | None = None
    if not finished and require_finished:
        raise RunClaimError(
            f"{run.path} is an unfinished run: its manifest claims no final state (the trainer "
            f"was killed or is still training; {len(records)} step records are present). HINT: "
            "resume the run to finish it, then check it again."
        )
    if finished:
        claimed = manifest["steps_committed"]
        if run.torn_tail:
            raise RunClaimError(f"{run.steps_path} ends in a torn line, but the run is finished: "
                                "the file was truncated or appended to")
        if len(records) != claimed:
            raise RunClaimError(
                f"{run.steps_path} holds {len(records)} step records, but {run.manifest_path.name} "
                f"claims {claimed} committed steps: records were dropped or added"
            )
        last = records[-1].state_digest if records else manifest["initial_state"]["digest"]
        if last != final:
            raise RunClaimError(
                f"the last record of {run.steps_path} ends in state {last[:16]}…, but "
                f"{run.manifest_path.name} claims the final state {final[:16]}…"
            )
    published = manifest.get("ledger")
    size = root = None
    if published is not None:
        size, root = published["size"], published["root"]
        with Ledger(run.path) as ledger:
            ledger.check_records(records, complete=finished)
            ledger.check_root(size, parse_root(root, "manifest ledger.root"),
                              source=f"the root published in {run.manifest_path.name}")
    elif finished and _has_ledger_file(run):
        raise RunClaimError(
            f"{run.path} holds {LEDGER_FILE}, but its finished manifest publishes no ledger "
            "(ledger is null or missing): the manifest was edited. A run that committed a "
            "ledger must publish its root."
        )
    return RunClaims(finished, len(records), claimed, final, size, root)


__all__ = ["RunClaims", "check_run_claims"]
