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
- a finished run that holds a ledger but publishes none (``ledger: null``) was edited;
- every state file in ``checkpoints/`` loads and is the state its step committed, and none that
  the run's checkpoint schedule promises (``ledger.checkpoint_every_n_steps``, ``save_last``) is
  missing;
- (``logs=True``) every record's rounding log is present with its committed size and digest. A
  replay reads each log at its step and reports a bad one as a mismatch of that step, so the
  audit skips this; ``verify`` (a fixed-point run's empty logs) and ``ledger --verify`` do not.

An unfinished run (killed, or still training: ``final_state_digest`` is ``null``) claims nothing
about its end; :func:`check_run_claims` refuses it unless the caller accepts a prefix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hmac import compare_digest
from typing import Any

from ..rounding.log import HEADER_SIZE, MAX_BODY_BYTES
from . import safeio
from .errors import RunClaimError
from .hiding import KEY_FILE, DigestKey, DigestKeyError
from .merkle import LEDGER_FILE, Ledger, parse_root
from .rundir import CHECKPOINT_DIR, PRIVATE_DIR, RunDirectory, StepRecord
from .state import StateError, load_snapshot

_CHECKPOINT_RE = re.compile(r"step-(\d{8,})\.safetensors")


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
                     require_finished: bool = True, logs: bool = True,
                     checkpoints: bool = True) -> RunClaims:
    """Check the manifest's claims against ``steps.jsonl`` and the ledger (module doc).

    ``checkpoints=False`` skips the state files: a zero-knowledge verifier neither needs nor
    receives them (they hold the private weights; the public bundle leaves them out).

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
    if checkpoints:
        _check_checkpoints(run, manifest, records, finished)
    if logs and manifest.get("role") != "audit":  # an auditor's run holds no logs of its own
        _check_logs(run, records)
    return RunClaims(finished, len(records), claimed, final, size, root)


def _check_logs(run: RunDirectory, records: Sequence[StepRecord]) -> None:
    for record in records:
        what = f"rounding log of step {record.step}"
        path = run.file(record.log_file, what)
        data = safeio.read_regular(path, what, HEADER_SIZE + MAX_BODY_BYTES)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != record.log_bytes or not compare_digest(digest, record.log_sha256):
            raise RunClaimError(
                f"{path} ({len(data)} bytes, sha256 {digest[:16]}…) is not the rounding log step "
                f"{record.step} committed ({record.log_bytes} bytes, {record.log_sha256[:16]}…)"
            )


def _committed_form(run: RunDirectory, manifest: Mapping[str, Any]):
    """digest, steps -> the form a record commits: plain, or hidden under a zero-knowledge
    run's private key (only the trainer's own directory holds it; checked against the manifest)."""
    fixed = manifest.get("fixed") or {}
    digests = fixed.get("digests")
    if digests is None:
        return lambda digest, steps: digest
    path = run.path / PRIVATE_DIR / KEY_FILE
    try:
        key = DigestKey.load(path, digests["key_commitment"])
    except DigestKeyError as err:
        raise RunClaimError(f"the checkpoints of the zero-knowledge run {run.path} commit hidden "
                            f"digests, which need the run's private key: {err}") from err
    return lambda digest, steps: key.hide("state", steps - 1, digest)


def _check_checkpoints(run: RunDirectory, manifest: Mapping[str, Any],
                       records: Sequence[StepRecord], finished: bool) -> None:
    """Each state file is its step's committed state; the promised ones are all there."""
    committed = {0: manifest["initial_state"]["digest"]}
    committed.update({r.step + 1: r.state_digest for r in records})
    folder = run.file(CHECKPOINT_DIR, "the checkpoint directory")
    found = set()
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    form = _committed_form(run, manifest) if names else None
    for name in names:
        match = _CHECKPOINT_RE.fullmatch(name)
        if match is None:
            continue
        n = int(match.group(1))
        what = f"checkpoint after {n} steps"
        if n not in committed:
            raise RunClaimError(f"{folder / name}: the run commits only {len(records)} steps, so "
                                f"there is no state after {n} steps to checkpoint")
        path = run.file(f"{CHECKPOINT_DIR}/{name}", what)
        safeio.regular_size(path, what, safeio.MAX_CHECKPOINT_BYTES)
        try:
            digest = form(load_snapshot(path).digest(), n)
        except StateError as err:
            raise RunClaimError(f"{what}: {err}") from err
        if not compare_digest(digest, committed[n]):
            raise RunClaimError(f"{path} holds state {digest[:16]}…, but the run committed "
                                f"{committed[n][:16]}… after {n} steps")
        found.add(n)
    expected = {0}
    ledger = manifest.get("ledger")
    if ledger is not None and finished:
        every = ledger["checkpoint_every_n_steps"]
        steps = len(records)
        if every:
            expected.update(range(every, steps + 1, every))
        if ledger.get("save_last") and steps:
            expected.add(steps)
    missing = sorted(expected - found)
    if missing:
        raise RunClaimError(f"{folder} lacks the state after {missing[0]} steps "
                            f"(checkpoints/step-{missing[0]:08d}.safetensors), which the run's "
                            "checkpoint schedule promises")


__all__ = ["RunClaims", "check_run_claims"]
