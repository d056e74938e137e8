"""The public bundle of a run: exactly what a verifier or an auditor needs, nothing private.

A run directory mixes public commitments with the trainer's private files (witness tapes,
weights, the seeds that open commitments, exact losses). ``publish_run(RUN, OUT)`` copies the
public part into a new directory ``OUT`` and writes ``OUT/BUNDLE.json``, which lists every file
included (with its SHA-256) and every file left out with the reason:

* **fixed-point (zero-knowledge) runs** — for ``lightning-zk verify OUT``: the manifest without
  the path of the initial checkpoint, the step records without their private ``extra`` fields
  (exact loss, tape path and tape digest), the (empty) rounding logs the records commit, the
  Merkle ledger, and the proofs with their statements. The records' state and batch digests are
  already hidden (keyed; :mod:`lightning_zk.ledger.hiding`). Left out: ``tapes/`` (witness tapes,
  batch-commitment seeds, chain state, the digest key), ``checkpoints/`` (weights),
  ``config.yaml`` (may name private data), and anything else.
* **rounded runs** — for ``lightning-zk audit OUT`` and ``dispute``: the auditor replays the run
  on the data, so nothing in it is secret from them; the bundle holds the manifest, the records,
  the rounding logs they name, the checkpoints, the ledger and ``config.yaml``, and leaves out
  everything else (Lightning checkpoints, logs, stray files).

Nothing is written into the run directory. ``OUT`` must not exist or be empty.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes, atomic_write_json
from ..ledger.rundir import CHECKPOINT_DIR, MANIFEST, STEPS, RunDirectory, RunDirectoryError
from .proofs import PROOF_DIR, SEAL_FILE, TAPE_DIR, _unit_files

__all__ = ["BUNDLE_FILE", "BundleReport", "publish_run"]

BUNDLE_FILE = "BUNDLE.json"
BUNDLE_FORMAT = "lightning-zk/public-bundle"
_PRIVATE_EXTRA = ("loss", "tape", "tape_sha256")
_REASONS = {
    TAPE_DIR: "private: witness tapes, commitment seeds, chain state and the digest key",
    CHECKPOINT_DIR: "private: the weights of a zero-knowledge run",
    "config.yaml": "not needed to verify proofs; may name private data or code locations",
}


@dataclass
class BundleReport:
    """What ``publish_run`` wrote: the bundle's files and what it left out (and why)."""

    out: Path
    mode: str
    included: dict[str, str] = field(default_factory=dict)  # path -> SHA-256
    left_out: dict[str, str] = field(default_factory=dict)  # path -> reason

    def to_json(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "version": 1, "mode": self.mode,
                "included": self.included, "left_out": self.left_out}


def publish_run(run_dir: str | Path, out_dir: str | Path) -> BundleReport:
    """Write the public bundle of ``run_dir`` into ``out_dir`` (see the module doc).

    Raises:
        RunDirectoryError: not a run directory, an unknown mode, or ``out_dir`` not empty
            (or inside the run directory).
    """
    run = RunDirectory(run_dir)
    manifest = run.read_manifest()
    records = run.read_steps()
    out = Path(out_dir)
    if out.resolve().is_relative_to(run.path.resolve()):
        raise RunDirectoryError(f"the bundle {out} must not lie inside the run {run.path}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirectoryError(f"{out} exists and is not an empty directory")
    strategy = manifest.get("strategy")
    mode = strategy.get("mode") if isinstance(strategy, dict) else None
    if mode not in ("fixed", "rounded"):
        raise RunDirectoryError(f"{run.path}: manifest strategy mode {mode!r} is unknown")
    report = BundleReport(out, mode)
    out.mkdir(parents=True, exist_ok=True)
    public_manifest = dict(manifest)
    if mode == "fixed":
        initial = dict(public_manifest.get("initial_state") or {})
        initial.pop("file", None)  # the initial weights are private
        public_manifest["initial_state"] = initial
        lines = [_public_record_line(r.to_json_line()) for r in records]
    else:
        lines = [r.to_json_line() for r in records]
    _write(report, MANIFEST, (json.dumps(public_manifest, indent=1, sort_keys=True) + "\n").encode())
    _write(report, STEPS, "".join(line + "\n" for line in lines).encode())
    wanted = {r.log_file for r in records}
    if manifest.get("ledger") is not None or (run.path / "ledger.sqlite").is_file():
        wanted.add("ledger.sqlite")
    if mode == "fixed":
        for _, _, unit in _unit_files(run):
            wanted |= {f"{PROOF_DIR}/{unit.name}", f"{PROOF_DIR}/{unit.with_suffix('.json').name}"}
        if (run.path / PROOF_DIR / SEAL_FILE).is_file():
            wanted.add(f"{PROOF_DIR}/{SEAL_FILE}")
    else:
        wanted |= {f"{CHECKPOINT_DIR}/{p.name}" for p in run.checkpoint_dir.glob("*.safetensors")}
        if (run.path / "config.yaml").is_file():
            wanted.add("config.yaml")
    for rel in sorted(wanted):
        _copy(run, report, rel)
    for path in sorted(run.path.rglob("*")):
        rel = path.relative_to(run.path).as_posix()
        if path.is_file() and rel not in report.included:
            top = rel.split("/", 1)[0]
            report.left_out[rel] = _REASONS.get(top, "not part of the run's public record")
    atomic_write_json(out / BUNDLE_FILE, report.to_json())
    return report


def _public_record_line(line: str) -> str:
    """A step record without its private extras (exact loss, tape path and digest)."""
    data = json.loads(line)
    extra = data.get("extra") or {}
    data["extra"] = {k: v for k, v in extra.items() if k not in _PRIVATE_EXTRA}
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _write(report: BundleReport, rel: str, data: bytes) -> None:
    target = report.out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    report.included[rel] = hashlib.sha256(data).hexdigest()


def _copy(run: RunDirectory, report: BundleReport, rel: str) -> None:
    source = run.path / rel
    if source.is_symlink() or not source.is_file() or not source.resolve().is_relative_to(
        run.path.resolve()
    ):
        raise RunDirectoryError(f"{source} is named by the run but is not a regular file in it")
    target = report.out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    report.included[rel] = hashlib.sha256(target.read_bytes()).hexdigest()
