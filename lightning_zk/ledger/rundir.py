"""The run directory: the contract between trainer, auditor and verifier (DESIGN.md §3).

::

    RUN/
      manifest.json          versions, hardware, precision config, seeds, fingerprints, hparams
      steps.jsonl            one JSON record per committed step (append-only, fsynced)
      rounding/              step-XXXXXXXX.rlog rounding logs (docs/rounding_log.md)
      checkpoints/           step-XXXXXXXX.safetensors, step-00000000 = initial state
      proofs/                zk proofs (zk mode)

Every write is atomic (temporary file + rename) or an fsynced append, so a killed run leaves a
consistent prefix: a torn last line of ``steps.jsonl`` is the only possible damage and is ignored
(and reported) on reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import append_line, atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEPS = "steps.jsonl"
ROUNDING_DIR = "rounding"
CHECKPOINT_DIR = "checkpoints"
PROOF_DIR = "proofs"


class RunDirectoryError(RuntimeError):
    """A run directory that is missing, unwritable, foreign, damaged or of another format."""


@dataclass(frozen=True)
class StepRecord:
    """What the trainer commits for one training step (one line of ``steps.jsonl``)."""

    step: int
    epoch: int
    batch_idx: int
    batch_indices: list[int] | None
    batch_digest: str
    state_digest: str
    log_file: str
    log_sha256: str
    log_bytes: int
    logged_elements: int
    rounded_elements: int
    updates: list[int] | None = None  # optimizer index of each update inside the step, in order
    global_step: int | None = None  # Trainer.global_step when the step's batch started
    extra: dict[str, object] = field(default_factory=dict)

    def to_json_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> StepRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})  # type: ignore[arg-type]

    COMMITTED_FIELDS = ("step", "batch_indices", "batch_digest", "updates", "global_step",
                        "log_sha256", "state_digest")
    OPTIONAL_FIELDS = ("updates", "global_step")  # absent from records of older versions

    def differences(self, other: StepRecord) -> list[str]:
        """Committed fields (not statistics) in which ``other`` differs, in commitment order."""
        return [f for f in self.COMMITTED_FIELDS
                if getattr(self, f) != getattr(other, f)
                and not (f in self.OPTIONAL_FIELDS and getattr(self, f) is None)]


class RunDirectory:
    """Paths, manifest and step records of one run.

    Example::

        run = RunDirectory("runs/digits")
        manifest = run.read_manifest()
        steps = run.read_steps()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.torn_tail = False

    # --- paths ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def steps_path(self) -> Path:
        return self.path / STEPS

    @property
    def rounding_dir(self) -> Path:
        return self.path / ROUNDING_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step-{step:08d}.safetensors"

    # --- creation ------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def prepare(self) -> None:
        """Create the layout; fail clearly when the location cannot be written."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"run_dir {self.path} exists and is not a directory")
        try:
            for sub in (self.path, self.rounding_dir, self.checkpoint_dir):
                sub.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise RunDirectoryError(
                f"run_dir {self.path} is not writable ({err.strerror or err}). HINT: pass a "
                "writable VerifiableStrategy(run_dir=...) or fix the directory's permissions."
            ) from err

    def is_empty(self) -> bool:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"run_dir {self.path} exists and is not a directory")
        return not self.path.exists() or not any(self.path.iterdir())

    # --- manifest ------------------------------------------------------------------------
    def write_manifest(self, manifest: Mapping[str, object]) -> None:
        atomic_write_json(self.manifest_path, {**manifest, "format_version": FORMAT_VERSION})

    def read_manifest(self) -> dict[str, object]:
        if not self.manifest_path.is_file():
            raise RunDirectoryError(
                f"{self.path} is not a lightning-zk run directory: {MANIFEST} is missing"
            )
        try:
            manifest = json.loads(self.manifest_path.read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise RunDirectoryError(f"{self.manifest_path} is unreadable or not JSON: {err}") from err
        if not isinstance(manifest, dict):
            raise RunDirectoryError(f"{self.manifest_path} does not hold a JSON object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirectoryError(
                f"{self.manifest_path} has format_version {version!r}; this lightning-zk reads "
                f"format {FORMAT_VERSION}. HINT: use the lightning-zk version that wrote the run."
            )
        return manifest

    # --- step records --------------------------------------------------------------------
    def append_step(self, record: StepRecord) -> None:
        append_line(self.steps_path, record.to_json_line())

    def read_steps(self) -> list[StepRecord]:
        """All complete records, checked to be numbered 0, 1, 2, … without gaps."""
        self.torn_tail = False
        if not self.steps_path.is_file():
            return []
        raw = self.steps_path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()  # a torn final line (killed mid-append): not committed
            self.torn_tail = True
        records = []
        for number, line in enumerate(lines):
            try:
                record = StepRecord.from_json(json.loads(line))
            except (ValueError, TypeError) as err:
                raise RunDirectoryError(
                    f"{self.steps_path} line {number + 1} is not a valid step record: {err}"
                ) from err
            if record.step != number:
                raise RunDirectoryError(
                    f"{self.steps_path} line {number + 1} records step {record.step}, expected "
                    f"step {number}: the step log has a gap or was reordered"
                )
            records.append(record)
        return records

    def repair_torn_tail(self) -> None:
        """Drop a torn final line before appending again (it was never committed)."""
        if not self.steps_path.is_file():
            return
        raw = self.steps_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            keep = raw[: raw.rfind(b"\n") + 1]
            with open(self.steps_path, "r+b") as handle:
                handle.truncate(len(keep))
                handle.flush()
                os.fsync(handle.fileno())
