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

Reading treats the directory as untrusted input: every file is resolved inside the directory and
read with a size bound (:mod:`.safeio`), and the manifest and every record are checked against the
one schema (:mod:`.schema`) before anyone uses a field. Writing takes the directory's writer lock
(:mod:`.lock`) first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import append_line, atomic_write_json
from . import safeio, schema
from .errors import RunDirectoryError
from .hiding import KEY_FILE
from .lock import LOCK_FILE, RunLock

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEPS = "steps.jsonl"
ROUNDING_DIR = "rounding"
CHECKPOINT_DIR = "checkpoints"
PROOF_DIR = "proofs"
CONFIG = "config.yaml"
PRIVATE_DIR = "tapes"  # fixed point: witness tapes and the digest key, never published
INITIAL_STATE = f"{CHECKPOINT_DIR}/step-00000000.safetensors"


@dataclass(frozen=True)
class StepRecord:
    """What the trainer commits for one training step (one line of ``steps.jsonl``).

    The fields and their ranges are declared in :data:`lightning_zk.ledger.schema.STEP_RECORD`.
    """

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
    def from_json(cls, data: Mapping[str, object], file: str = STEPS,
                  line: int | None = None) -> StepRecord:
        """A record from its JSON object, checked field by field (:class:`SchemaError`)."""
        schema.check_record(data, file, line)
        return cls(**data)  # type: ignore[arg-type]

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

    def file(self, name: object, what: str) -> Path:
        """``name`` (from a record, the manifest or a fixed name) resolved inside the run, or
        :class:`~lightning_zk.ledger.errors.UnsafePathError`."""
        return safeio.inside(self.path, name, what)

    # --- creation and the writer lock ----------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def lock(self, purpose: str = "training") -> RunLock:
        """Take the directory's writer lock (creating the directory); see :mod:`.lock`."""
        return RunLock(self.path, purpose).acquire()

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
        """No files but the writer lock (the lock is taken before anything is written)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"run_dir {self.path} exists and is not a directory")
        return not self.path.exists() or all(p.name == LOCK_FILE for p in self.path.iterdir())

    def is_uncommitted_start(self) -> bool:
        """A start killed before its manifest: only the lock, the layout, the initial state and
        (fixed point) the private digest key that the manifest was about to commit to.

        The manifest is written last when a run starts, so a directory without one holds
        nothing committed; a restart may begin again there (with a new key).
        """
        if self.exists() or not self.path.is_dir():
            return False
        allowed = {LOCK_FILE, ROUNDING_DIR, CHECKPOINT_DIR, CONFIG, PRIVATE_DIR, ".write-probe"}
        for entry in self.path.iterdir():
            if entry.name not in allowed and not _is_temp(entry.name):
                return False
        if self.rounding_dir.is_dir() and any(not _is_temp(p.name) for p in self.rounding_dir.iterdir()):
            return False
        private = self.path / PRIVATE_DIR
        if private.exists() and (private.is_symlink() or not private.is_dir() or any(
                p.name != KEY_FILE and not _is_temp(p.name) for p in private.iterdir())):
            return False
        initial = self.checkpoint_path(0).name
        return not self.checkpoint_dir.is_dir() or all(
            p.name == initial or _is_temp(p.name) for p in self.checkpoint_dir.iterdir())

    # --- manifest ------------------------------------------------------------------------
    def write_manifest(self, manifest: Mapping[str, object]) -> None:
        data = {**manifest, "format_version": FORMAT_VERSION}
        schema.check_manifest(data, f"{self.manifest_path} (being written)")
        atomic_write_json(self.manifest_path, data)

    def read_manifest(self) -> dict[str, object]:
        """The manifest, every field checked against :data:`~.schema.MANIFEST`."""
        if not self.path.is_dir():
            raise RunDirectoryError(f"{self.path} is not a lightning-zk run directory: it is not "
                                    "a directory")
        path = self.file(MANIFEST, "the run's manifest")
        if safeio.regular_size(path, MANIFEST, safeio.MAX_MANIFEST_BYTES, missing_ok=True) is None:
            raise RunDirectoryError(
                f"{self.path} is not a lightning-zk run directory: {MANIFEST} is missing"
            )
        data = safeio.read_regular(path, MANIFEST, safeio.MAX_MANIFEST_BYTES)
        manifest = schema.parse_json(data, str(self.manifest_path))
        if not isinstance(manifest, dict):
            raise RunDirectoryError(f"{self.manifest_path} does not hold a JSON object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirectoryError(
                f"{self.manifest_path} has format_version {version!r:.40}; this lightning-zk reads "
                f"format {FORMAT_VERSION}. HINT: use the lightning-zk version that wrote the run."
            )
        schema.check_manifest(manifest, str(self.manifest_path))
        return manifest

    # --- step records --------------------------------------------------------------------
    def append_step(self, record: StepRecord) -> None:
        schema.check_record(asdict(record), f"{self.steps_path} (being written)")
        append_line(self.steps_path, record.to_json_line())

    def read_steps(self) -> list[StepRecord]:
        """All complete records, each checked by the schema and numbered 0, 1, 2, … without gaps.

        Streams the file with a bounded line length; a torn final line (a writer killed
        mid-append) was never committed: it is skipped and ``torn_tail`` is set.
        """
        self.torn_tail = False
        path = self.file(STEPS, "the step records")
        if safeio.regular_size(path, STEPS, 1 << 62, missing_ok=True) is None:
            return []
        records = []
        for number, (line, complete) in enumerate(
                safeio.iter_lines(path, STEPS, safeio.MAX_RECORD_LINE_BYTES)):
            if not complete:
                self.torn_tail = True  # killed mid-append: not committed
                break
            data = schema.parse_json(line, str(self.steps_path), line=number + 1)
            if not isinstance(data, dict):
                raise RunDirectoryError(
                    f"{self.steps_path} line {number + 1} is not a valid step record: not a JSON "
                    "object"
                )
            record = StepRecord.from_json(data, str(self.steps_path), number + 1)
            if record.step != number:
                raise RunDirectoryError(
                    f"{self.steps_path} line {number + 1} records step {record.step}, expected "
                    f"step {number}: the step log has a gap or was reordered"
                )
            records.append(record)
        return records

    def repair_torn_tail(self) -> None:
        """Drop a torn final line before appending again (it was never committed)."""
        path = self.file(STEPS, "the step records")
        if safeio.regular_size(path, STEPS, 1 << 62, missing_ok=True) is None:
            return
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep, pos = 0, size
            while pos > 0:  # find the last newline, reading backwards in blocks
                start = max(0, pos - (1 << 16))
                handle.seek(start)
                block = handle.read(pos - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                pos = start
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())


def _is_temp(name: str) -> bool:
    """Temporary files of atomic writes (``.NAME.XXXX.tmp``, ``.NAME.partial``)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".partial"))
