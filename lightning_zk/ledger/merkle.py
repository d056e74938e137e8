"""The Merkle ledger of a run: one leaf per committed step in ``RUN/ledger.sqlite``.

Why a Merkle log on top of ``steps.jsonl``: a published root (a few dozen bytes) commits the
trainer to every step at once; an inclusion proof shows one step's leaf against that root in
⌈log2 T⌉ hashes (what the bisection dispute exchanges), and a consistency proof shows that a later
root extends an earlier one (append-only evidence).

Leaf format ``lightning-zk/leaf/v1`` (156 bytes, a pure function of a :class:`StepRecord`)::

    offset  size  field
         0    20  domain tag, ASCII "lightning-zk/leaf/v1"
        20     8  step index, uint64 little-endian
        28    32  state digest after the step (StepRecord.state_digest)
        60    32  batch content digest (StepRecord.batch_digest)
        92    32  batch indices digest (see batch_indices_digest)
       124    32  rounding-log digest (StepRecord.log_sha256)

Tree hashing is pymerkle's (RFC 9162 shape) with SHA-256 and its second-preimage protection on:
leaf hash ``H(0x00 || leaf)``, node hash ``H(0x01 || left || right)``, the root of ``n`` leaves
splits at the largest power of two below ``n``; the empty tree's root is ``H(b"")``.
Every check raises a :class:`LedgerError` subclass naming the file, the step and the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hmac import compare_digest
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pymerkle import (
    ConsistencyProof,
    InclusionProof,
    InvalidChallenge,
    InvalidProof,
    SqliteTree,
)

from ..atomic import fsync_dir
from . import safeio
from .errors import RunDirectoryError
from .rundir import StepRecord

LEAF_FORMAT = "lightning-zk/leaf/v1"
LEAF_TAG = LEAF_FORMAT.encode("ascii")
LEAF_SIZE = len(LEAF_TAG) + 8 + 4 * 32
INDICES_TAG = b"lightning-zk/batch-indices/v1"
ALGORITHM = "sha256"
LEDGER_FILE = "ledger.sqlite"
INCLUSION_FORMAT = "lightning-zk/inclusion-proof/v1"
CONSISTENCY_FORMAT = "lightning-zk/consistency-proof/v1"
_U64 = struct.Struct("<Q")
#: Largest ledger file a reader opens (about 1.7 billion steps at ~600 bytes per leaf row).
MAX_LEDGER_BYTES = 1 << 40


class LedgerError(RuntimeError):
    """Base class: a ledger that is missing, damaged, or disagrees with what it should commit."""


class LedgerFileError(LedgerError):
    """The ledger file is missing, not SQLite, not a pymerkle tree, or has malformed rows."""


class LedgerMismatchError(LedgerError):
    """A leaf disagrees with its step record, or the ledger and ``steps.jsonl`` differ in length."""


class LedgerRootError(LedgerError):
    """The ledger's leaves do not hash to a published root."""


class ProofError(LedgerError):
    """An inclusion or consistency proof that does not verify (or cannot be produced)."""


# --- leaves --------------------------------------------------------------------------------------
def _digest32(record: StepRecord, name: str) -> bytes:
    value = getattr(record, name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise LedgerMismatchError(
            f"step {record.step}: {name} {value!r:.80} is not a 64-hex-digit SHA-256 digest; "
            "the step record cannot be committed"
        )
    return raw


def batch_indices_digest(indices: Sequence[int] | None) -> bytes:
    """SHA-256 of the tag, a presence byte, the count and each index as uint64 little-endian.

    ``None`` (an iterable dataset: order committed by content only) differs from ``[]``.
    """
    h = hashlib.sha256(INDICES_TAG)
    if indices is None:
        h.update(b"\x00" + _U64.pack(0))
        return h.digest()
    h.update(b"\x01" + _U64.pack(len(indices)))
    try:
        for index in indices:
            h.update(_U64.pack(index))
    except (struct.error, TypeError) as err:
        raise LedgerMismatchError(f"batch indices {list(indices)!s:.80} are not uint64s: {err}") from err
    return h.digest()


def leaf_bytes(record: StepRecord) -> bytes:
    """The ledger leaf committing ``record`` (format ``lightning-zk/leaf/v1``, module doc)."""
    if not isinstance(record.step, int) or not 0 <= record.step < 2**64:
        raise LedgerMismatchError(f"step index {record.step!r} is not a uint64")
    return b"".join((
        LEAF_TAG,
        _U64.pack(record.step),
        _digest32(record, "state_digest"),
        _digest32(record, "batch_digest"),
        batch_indices_digest(record.batch_indices),
        _digest32(record, "log_sha256"),
    ))


@dataclass(frozen=True)
class Leaf:
    """The fields of one decoded leaf (digests as hex), for messages and the dispute."""

    step: int
    state_digest: str
    batch_digest: str
    batch_indices_digest: str
    log_sha256: str

    FIELDS = ("step", "state_digest", "batch_digest", "batch_indices_digest", "log_sha256")

    def differences(self, other: Leaf) -> list[str]:
        return [f for f in self.FIELDS if getattr(self, f) != getattr(other, f)]


def parse_leaf(data: bytes) -> Leaf:
    """Decode a v1 leaf; :class:`LedgerFileError` for another size or tag."""
    if not isinstance(data, bytes) or len(data) != LEAF_SIZE or not data.startswith(LEAF_TAG):
        raise LedgerFileError(
            f"leaf of {len(data) if isinstance(data, bytes) else type(data).__name__} bytes is not "
            f"a {LEAF_FORMAT} leaf ({LEAF_SIZE} bytes starting with {LEAF_TAG.decode()!r})"
        )
    o = len(LEAF_TAG)
    step = _U64.unpack_from(data, o)[0]
    d = [data[o + 8 + 32 * i: o + 40 + 32 * i].hex() for i in range(4)]
    return Leaf(step, d[0], d[1], d[2], d[3])


def leaf_hash(data: bytes) -> bytes:
    """The tree's hash of a leaf: ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def empty_root() -> bytes:
    return hashlib.sha256(b"").digest()


def parse_root(text: str, what: str = "root") -> bytes:
    """A root given as 64 hex digits (from a manifest, a user, a proof file)."""
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise LedgerError(f"{what} {text!r:.80} is not a SHA-256 digest (64 hex digits)")
    return raw


# --- the ledger file ----------------------------------------------------------------------------
_COMPANIONS = ("-wal", "-shm", "-journal")


def _check_ledger_file(path: Path) -> None:
    """Before SQLite opens an untrusted ledger: a regular file (and companions) inside its
    directory, holding a ``leaf`` table (so that opening it never creates one)."""
    try:
        real = safeio.inside(path.parent, path.name, "the run's Merkle ledger")
        if safeio.regular_size(real, LEDGER_FILE, MAX_LEDGER_BYTES, missing_ok=True) is None:
            raise LedgerFileError(
                f"{path} does not exist: the run has no Merkle ledger. HINT: train with "
                "callbacks=[CommitCallback(...)] to commit steps to a ledger."
            )
        for suffix in _COMPANIONS:
            companion = path.with_name(path.name + suffix)
            if os.path.lexists(companion):
                inner = safeio.inside(path.parent, companion.name, "a SQLite companion file")
                safeio.regular_size(inner, companion.name, MAX_LEDGER_BYTES)
    except RunDirectoryError as err:
        raise LedgerFileError(str(err)) from err
    had_wal = os.path.lexists(path.with_name(path.name + "-wal"))  # before SQLite makes one
    try:
        # immutable: a reader leaves no -wal/-shm behind (only a killed writer's WAL is read)
        mode = "mode=ro" if had_wal else "mode=ro&immutable=1"
        con = sqlite3.connect(f"file:{quote(str(real))}?{mode}", uri=True)
        try:
            found = con.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='leaf'").fetchone()
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            page_size = con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as err:
        raise LedgerFileError(f"{path} is not a readable lightning-zk ledger: {err}") from err
    if not found or found[0] != 1:
        raise LedgerFileError(f"{path} is an SQLite file without a 'leaf' table, not a "
                              "lightning-zk ledger")
    size = os.stat(real).st_size
    if not had_wal and size != pages * page_size:
        raise LedgerFileError(f"{path} is {size} bytes, but its {pages} pages of {page_size} bytes "
                              f"make {pages * page_size}: truncated or with bytes appended")


def _create(path: Path) -> None:
    """Create an empty ledger that appears whole or not at all: SQLite makes the file before its
    'leaf' table, so it is built under a temporary name (leftovers of a killed creation are
    removed first), fsynced and renamed into place."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in _COMPANIONS)):
        leftover.unlink(missing_ok=True)
    try:
        SqliteTree(str(tmp), algorithm=ALGORITHM).close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except (sqlite3.Error, OSError) as err:
        raise LedgerFileError(f"cannot create the ledger {path}: {err}") from err
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Ledger:
    """A run's append-only Merkle log over step records (pymerkle ``SqliteTree``, SHA-256).

    Leaf ``i`` (0-based, = step ``i``) is pymerkle's leaf index ``i + 1``. Each append is one SQLite
    transaction, so a killed writer leaves a prefix.

    Example::

        with Ledger.open("runs/digits") as ledger:
            ledger.check_records(RunDirectory("runs/digits").read_steps())
            print(ledger.size, ledger.root().hex())
    """

    def __init__(self, path: str | Path, create: bool = False) -> None:
        path = Path(path)
        if path.is_dir() and not (path.name == LEDGER_FILE and not (path / LEDGER_FILE).exists()):
            path = path / LEDGER_FILE
        self.path = path
        if not create:
            _check_ledger_file(path)
        elif not os.path.lexists(path):
            _create(path)
        try:
            self.tree = SqliteTree(str(path), algorithm=ALGORITHM)
            self._check_schema()
            if create:
                self._writer_mode()
        except (sqlite3.Error, ValueError) as err:
            raise LedgerFileError(f"{path} is not a readable lightning-zk ledger: {err}") from err

    @classmethod
    def open(cls, run_or_file: str | Path, create: bool = False) -> Ledger:
        return cls(run_or_file, create=create)

    def _writer_mode(self) -> None:
        """WAL journal, ``synchronous=NORMAL``: atomic appends without an fsync per step.

        Why this is enough: the ledger is derived from ``steps.jsonl``, which is fsynced first. A
        killed process loses nothing (the WAL is in the file system); a power cut may lose the
        last appends but never leaves a torn tree (SQLite's WAL guarantee), and the lost leaves
        are re-derived from the records on the next open. Closing checkpoints the WAL into the
        database file and removes it. (Rollback journal with FULL sync costs ~3 fsyncs per leaf.)
        """
        self.tree.con.execute("PRAGMA journal_mode=WAL")
        self.tree.con.execute("PRAGMA synchronous=NORMAL")

    def _check_schema(self) -> None:
        cols = [row for row in self.tree.con.execute("SELECT name FROM pragma_table_info('leaf')")]
        if cols != ["id", "entry", "hash"]:
            raise LedgerFileError(f"{self.path}: table 'leaf' has columns {cols}, not a pymerkle tree")

    def close(self) -> None:
        self.tree.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        try:
            return int(self.tree.get_size())
        except sqlite3.Error as err:
            raise LedgerFileError(f"{self.path} cannot be read: {err}") from err

    def leaf(self, step: int) -> bytes:
        """The stored leaf bytes of ``step`` (0-based)."""
        if not 0 <= step < self.size:
            raise LedgerError(f"{self.path} has {self.size} leaves; there is no leaf for step {step}")
        try:
            data = self.tree.get_entry(step + 1)
        except sqlite3.Error as err:
            raise LedgerFileError(f"{self.path} cannot be read at step {step}: {err}") from err
        if not isinstance(data, bytes):
            raise LedgerFileError(f"{self.path}: the leaf of step {step} is not a blob")
        return data

    def rows(self) -> Iterable[tuple[int, Any, Any]]:
        """(step, leaf, stored hash) in order, straight from SQLite."""
        try:
            cursor = self.tree.con.execute("SELECT id, entry, hash FROM leaf ORDER BY id")
            cursor.row_factory = None
            for rowid, entry, digest in cursor:
                yield rowid - 1, entry, digest
        except sqlite3.Error as err:
            raise LedgerFileError(f"{self.path} cannot be read: {err}") from err

    def check_integrity(self) -> None:
        """Every row holds a v1 leaf for its own step and the tree hash of that leaf."""
        for step, entry, digest in self.rows():
            try:
                leaf = parse_leaf(entry)
            except LedgerFileError as err:
                raise LedgerFileError(f"{self.path}: step {step}: {err}") from err
            if leaf.step != step:
                raise LedgerFileError(
                    f"{self.path}: row {step + 1} holds the leaf of step {leaf.step}, expected "
                    f"step {step}: the ledger was reordered or edited"
                )
            if not isinstance(digest, bytes) or not compare_digest(digest, leaf_hash(entry)):
                got = digest.hex() if isinstance(digest, bytes) else repr(digest)
                raise LedgerFileError(
                    f"{self.path}: the stored hash of step {step} is {got[:16]}…, but its leaf "
                    f"hashes to {leaf_hash(entry).hex()[:16]}…: the SQLite file was tampered with"
                )

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all)."""
        current = self.size
        size = current if size is None else size
        if not 0 <= size <= current:
            raise LedgerError(f"{self.path} has {current} leaves; cannot compute the root of {size}")
        try:
            return self.tree.get_root(size)
        except (sqlite3.Error, TypeError, ValueError) as err:
            raise LedgerFileError(f"{self.path}: cannot compute the root of {size} leaves: {err}") from err

    # --- writing -------------------------------------------------------------------------------
    def append(self, record: StepRecord) -> int:
        """Append the leaf of ``record``, which must be the next step; returns the new size."""
        size = self.size
        if record.step != size:
            raise LedgerMismatchError(
                f"{self.path} holds {size} leaves; the next leaf must be step {size}, not step "
                f"{record.step}: refusing to leave a gap or a duplicate"
            )
        try:
            return int(self.tree.append_entry(leaf_bytes(record)))
        except sqlite3.Error as err:
            raise LedgerFileError(f"{self.path}: appending step {record.step} failed: {err}") from err

    def extend(self, records: Sequence[StepRecord]) -> int:
        """Append the leaves of ``records[size:]`` in one transaction; returns the new size."""
        size = self.size
        todo = list(records[size:])
        for offset, record in enumerate(todo):
            if record.step != size + offset:
                raise LedgerMismatchError(
                    f"{self.path}: record {size + offset} is step {record.step}; records must be "
                    "numbered without gaps"
                )
        if not todo:
            return size
        try:
            return int(self.tree.append_entries([leaf_bytes(r) for r in todo]))
        except sqlite3.Error as err:
            raise LedgerFileError(f"{self.path}: appending steps {size}.. failed: {err}") from err

    # --- checks against records and published roots ---------------------------------------------
    def check_leaf(self, record: StepRecord, source: str = "its step record") -> None:
        """The stored leaf of ``record.step`` equals ``leaf_bytes(record)``."""
        stored, expected = self.leaf(record.step), leaf_bytes(record)
        if stored != expected:
            fields = parse_leaf(stored).differences(parse_leaf(expected))
            raise LedgerMismatchError(
                f"{self.path}: the leaf of step {record.step} disagrees with {source} in "
                f"{', '.join(fields) or 'its encoding'}"
            )

    def check_records(self, records: Sequence[StepRecord], source: str = "steps.jsonl",
                      complete: bool = True) -> None:
        """Integrity, then every leaf equals the leaf of its record.

        ``complete``: the ledger must hold exactly one leaf per record; otherwise it may be a
        prefix (a run killed between committing a record and appending its leaf).
        """
        self.check_integrity()
        size = self.size
        if size > len(records):
            raise LedgerMismatchError(
                f"{self.path} holds {size} leaves, but {source} records only {len(records)} steps: "
                f"leaves {len(records)}..{size - 1} commit steps that were never recorded"
            )
        if complete and size < len(records):
            raise LedgerMismatchError(
                f"{self.path} holds {size} leaves, but {source} records {len(records)} steps: "
                f"steps {size}..{len(records) - 1} are not committed to the ledger"
            )
        for step, entry, _ in self.rows():
            expected = leaf_bytes(records[step])
            if entry != expected:
                fields = parse_leaf(entry).differences(parse_leaf(expected))
                raise LedgerMismatchError(
                    f"{self.path}: the leaf of step {step} disagrees with {source} in "
                    f"{', '.join(fields)}"
                )

    def check_root(self, size: int, root: bytes, source: str = "the published root") -> None:
        """The first ``size`` leaves hash to ``root``."""
        if size > self.size:
            raise LedgerRootError(
                f"{source} covers {size} steps, but {self.path} holds only {self.size} leaves"
            )
        actual = self.root(size)
        if not compare_digest(actual, root):
            raise LedgerRootError(
                f"{self.path}: its first {size} leaves hash to {actual.hex()}, but {source} is "
                f"{root.hex()}"
            )

    # --- proofs --------------------------------------------------------------------------------
    def prove_inclusion(self, step: int, size: int | None = None) -> LeafProof:
        """Inclusion proof of the leaf of ``step`` against the root of ``size`` leaves."""
        size = self.size if size is None else size
        try:
            proof = self.tree.prove_inclusion(step + 1, size)
        except InvalidChallenge as err:
            raise ProofError(
                f"{self.path} has {self.size} leaves: no inclusion proof of step {step} against "
                f"size {size} ({err})"
            ) from err
        return LeafProof(step, size, self.leaf(step), self.root(size), proof)

    def prove_consistency(self, old_size: int, size: int | None = None) -> ConsistencyProof:
        """Proof that the root of ``old_size`` leaves is a prefix of the root of ``size``."""
        size = self.size if size is None else size
        try:
            return self.tree.prove_consistency(old_size, size)
        except InvalidChallenge as err:
            raise ProofError(
                f"{self.path} has {self.size} leaves: no consistency proof from size {old_size} to "
                f"{size} ({err})"
            ) from err


# --- proofs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeafProof:
    """A step's leaf, the root it is claimed under, and pymerkle's inclusion path."""

    step: int
    size: int
    leaf: bytes
    root: bytes
    proof: InclusionProof

    def to_json(self) -> dict[str, object]:
        return {
            "format": INCLUSION_FORMAT,
            "leaf_format": LEAF_FORMAT,
            "step": self.step,
            "size": self.size,
            "root": self.root.hex(),
            "leaf": self.leaf.hex(),
            "proof": self.proof.serialize(),
        }

    @classmethod
    def from_json(cls, data: object) -> LeafProof:
        try:
            if not isinstance(data, dict) or data.get("format") != INCLUSION_FORMAT:
                raise ValueError(f"not a {INCLUSION_FORMAT} object")
            proof = InclusionProof.deserialize(data["proof"])
            return cls(int(data["step"]), int(data["size"]), bytes.fromhex(data["leaf"]),
                       parse_root(data["root"]), proof)
        except (InvalidProof, KeyError, TypeError, ValueError, LedgerError) as err:
            raise ProofError(f"malformed inclusion proof: {err}") from err

    def verify(self, root: bytes | None = None, size: int | None = None,
               step: int | None = None, leaf: bytes | None = None) -> Leaf:
        """Check the proof; pass the root (and size, step, leaf) you trust, else the claimed ones.

        Returns the decoded leaf. Raises :class:`ProofError` naming what did not match.
        """
        if step is not None and step != self.step:
            raise ProofError(f"the proof is for step {self.step}, not step {step}")
        if size is not None and size != self.size:
            raise ProofError(f"the proof is against a ledger of {self.size} leaves, not {size}")
        if leaf is not None and leaf != self.leaf:
            raise ProofError(f"the proven leaf of step {self.step} is not the expected leaf")
        decoded = parse_leaf(self.leaf)
        if decoded.step != self.step:
            raise ProofError(f"the proven leaf commits step {decoded.step}, not step {self.step}")
        trusted = self.root if root is None else root
        try:
            self.proof.verify(leaf_hash(self.leaf), trusted, index=self.step + 1, size=self.size,
                              algorithm=ALGORITHM, security=True)
        except (InvalidProof, TypeError, ValueError) as err:
            raise ProofError(
                f"inclusion proof of step {self.step} does not verify against root "
                f"{trusted.hex()[:16]}… of {self.size} leaves: {err}"
            ) from err
        return decoded


def verify_consistency(proof: ConsistencyProof, old_size: int, old_root: bytes,
                       size: int, root: bytes) -> None:
    """``old_root`` (of ``old_size`` leaves) is a prefix of ``root`` (of ``size`` leaves)."""
    try:
        proof.verify(old_root, root, prior_size=old_size, later_size=size, algorithm=ALGORITHM,
                     security=True)
    except (InvalidProof, TypeError, ValueError) as err:
        raise ProofError(
            f"root {old_root.hex()[:16]}… of {old_size} leaves is not a prefix of root "
            f"{root.hex()[:16]}… of {size} leaves: {err}"
        ) from err


def consistency_to_json(proof: ConsistencyProof, old_root: bytes, root: bytes) -> dict[str, object]:
    return {"format": CONSISTENCY_FORMAT, "prior_size": proof.prior_size, "size": proof.size,
            "prior_root": old_root.hex(), "root": root.hex(), "proof": proof.serialize()}


def consistency_from_json(data: object) -> ConsistencyProof:
    try:
        if not isinstance(data, dict) or data.get("format") != CONSISTENCY_FORMAT:
            raise ValueError(f"not a {CONSISTENCY_FORMAT} object")
        return ConsistencyProof.deserialize(data["proof"])
    except (InvalidProof, KeyError, TypeError, ValueError) as err:
        raise ProofError(f"malformed consistency proof: {err}") from err


def load_json(path: str | Path) -> object:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ProofError(f"{path} is unreadable or not JSON: {err}") from err


__all__ = [
    "ALGORITHM", "LEAF_FORMAT", "LEAF_SIZE", "LEDGER_FILE", "Leaf", "LeafProof", "Ledger",
    "LedgerError", "LedgerFileError", "LedgerMismatchError", "LedgerRootError", "ProofError", "batch_indices_digest", "consistency_from_json", "consistency_to_json",
    "empty_root", "leaf_bytes", "leaf_hash", "load_json", "parse_leaf", "parse_root",
    "verify_consistency",
]
