"""Forge a run the way a consistent liar would: edit records, then re-commit ledger and manifest.

Tests of the audit and the dispute need a trainer whose claims hold together (records, ledger and
published root agree) yet whose steps are wrong; a plain edit of ``steps.jsonl`` is already
caught by the claims check, before any replay.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lightning_zk.atomic import atomic_write_json
from lightning_zk.ledger.merkle import LEDGER_FILE, Ledger
from lightning_zk.ledger.rundir import RunDirectory


def rewrite_records(run_dir: str | Path, edit: Callable[[list[dict]], None]) -> None:
    """Apply ``edit`` to the records (JSON objects), then rebuild the ledger and the claims."""
    run = RunDirectory(run_dir)
    records = [json.loads(line) for line in run.steps_path.read_text().splitlines()]
    edit(records)
    run.steps_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    manifest = json.loads(run.manifest_path.read_text())
    if records:
        manifest["final_state_digest"] = records[-1]["state_digest"]
    manifest["steps_committed"] = len(records)
    if manifest.get("ledger"):
        (run.path / LEDGER_FILE).unlink()
        with Ledger(run.path, create=True) as ledger:
            ledger.extend(run.read_steps())
            manifest["ledger"].update(size=ledger.size, root=ledger.root().hex())
    atomic_write_json(run.manifest_path, manifest)
