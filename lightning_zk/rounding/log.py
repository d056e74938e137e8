"""Rounding log codec: the sparse, per-step record of which way near-midpoint elements were rounded.

A trainer rounds every hardware-sensitive op result from the compute dtype to the committed
precision. Elements whose high-precision value lies within tau of a rounding midpoint could round
either way on other hardware, so the trainer records the direction it took; an auditor replaying
the run forces those elements the same way. Such elements are rare, so the log stores only their
flat positions (delta-coded LEB128 varints) and one direction bit each.

One file per training step (``step-XXXXXXXX.rlog``); the byte layout is documented in
``docs/rounding_log.md``. This module depends on numpy and the standard library only, so that the
ledger, the auditor and third-party verifiers can read logs without torch or Lightning.

Every decoding failure -- truncation, corruption, bad magic, unknown version, malformed body --
raises :class:`RoundingLogError`; the decoder never lets an ``IndexError``/``zlib.error`` escape
and never allocates more than :data:`MAX_BODY_BYTES` for a body.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes

try:  # optional one-pass varint encoders (the ``fast`` extra: numba); decoding needs numpy only
    from ._numba_kernels import encode_position_gaps as _fast_gaps
    from ._numba_kernels import encode_varints as _fast_varints
except ImportError:  # pragma: no cover - depends on the installation
    _fast_gaps = _fast_varints = None

__all__ = [
    "DEFAULT_ZLIB_LEVEL",
    "FORMAT_VERSION",
    "LEGACY_ZLIB_LEVEL",
    "MAGIC",
    "MAX_BODY_BYTES",
    "LogEntry",
    "RoundingLogError",
    "StepLog",
    "StepLogBuilder",
    "decode_step_log",
    "encode_step_log",
    "iter_step_logs",
    "read_step_log",
    "step_log_path",
    "write_step_log",
]

FORMAT_VERSION = 1
MAGIC = b"LZKRLOG\0"

# Header: magic, version u16, flags u16, step u64, body_len u32, crc32 u32 (little-endian).
_HEADER = struct.Struct("<8sHHQII")
HEADER_SIZE = _HEADER.size  # 28
_CRC_OFFSET = HEADER_SIZE - 4

#: Flags bits 0-3 select how the body is stored; all other bits must be zero.
CODEC_STORED = 0
CODEC_ZLIB = 1
_CODEC_MASK = 0x000F
#: zlib level of the logs of runs that record none (every run before ``log_zlib_level``): the
#: committed bytes of a step's log depend on it, so a resumed run encodes with its own level.
LEGACY_ZLIB_LEVEL = 6
#: zlib level of new runs: level 1 deflates a bfloat16-grid step's log several times faster than
#: level 6 for ~6 % more bytes. The reader accepts every level (deflate streams do not depend on
#: it); only a re-encoding (a resume re-verifying its steps) must use the run's own level.
DEFAULT_ZLIB_LEVEL = 1

#: Hard cap on a decoded body: bounds memory for hostile input (decompression bombs) and
#: is far above any real step (about 50 million logged elements).
MAX_BODY_BYTES = 64 * 1024 * 1024

#: All integers in the log are < 2**63, so they fit int64 and a varint is at most 9 bytes.
_INT_LIMIT = 1 << 63
_MAX_VARINT_BYTES = 9
_MAX_NAME_BYTES = 255
# Smallest possible body: four one-byte varints (ops, elements, names, entries).
_MIN_BODY_BYTES = 4
# Smallest possible entry: five one-byte column varints + one position varint.
_MIN_ENTRY_BYTES = 6

_NAME_RE = re.compile(r"^step-(\d{8,})\.rlog$")


class RoundingLogError(ValueError):
    """Malformed, truncated or corrupted rounding log (or an invalid log object)."""


def _where(source: str | None, step: int | None) -> str:
    src = source if source is not None else "<bytes>"
    return f"{src}: step {step if step is not None else '?'}"


# --------------------------------------------------------------------------- validation


def _check_int(value: object, what: str, *, minimum: int = 0) -> int:
    """Return ``value`` as a Python int in [minimum, 2**63); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RoundingLogError(f"{what} must be an int, got {type(value).__name__}")
    v = int(value)
    if v < minimum or v >= _INT_LIMIT:
        raise RoundingLogError(f"{what} must be in [{minimum}, 2**63), got {v}")
    return v


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise RoundingLogError(f"op_name must be a str, got {type(name).__name__}")
    if name in _VALID_NAMES:  # a step checks the same few hundred names over and over
        return name
    if not name or len(name) > _MAX_NAME_BYTES or not all(" " <= c <= "~" for c in name):
        raise RoundingLogError(
            f"op_name must be 1..{_MAX_NAME_BYTES} printable ASCII characters, got {name!r}"
        )
    if len(_VALID_NAMES) < 1 << 16:
        _VALID_NAMES.add(name)
    return name


_VALID_NAMES: set[str] = set()  # names that passed :func:`_check_name` (bounded)


def _frozen_copy(arr: np.ndarray) -> np.ndarray:
    out = np.array(arr, copy=True, order="C")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class LogEntry:
    """The logged elements of one output tensor of one rounded op.

    Arrays are copied and made read-only, so an entry cannot change after validation (the log's
    digest goes into the ledger) and can be hashed.
    """

    op_seq: int
    op_name: str
    output_index: int
    numel: int
    positions: np.ndarray
    away: np.ndarray

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "positions", _frozen_copy(self.positions))
        object.__setattr__(self, "away", _frozen_copy(self.away))

    @classmethod
    def _owning(cls, op_seq: int, op_name: str, output_index: int, numel: int,
                positions: np.ndarray, away: np.ndarray) -> LogEntry:
        """An entry that keeps ``positions`` and ``away`` themselves (made read-only), validated
        like any other: for arrays nobody else holds or writes (fresh from the rounding kernel,
        or views of a decoded log's read-only columns), where the copy would only cost time."""
        if not (isinstance(positions, np.ndarray) and isinstance(away, np.ndarray)
                and positions.flags.c_contiguous and away.flags.c_contiguous):
            return cls(op_seq, op_name, output_index, numel, positions, away)
        entry = object.__new__(cls)
        for name, value in (("op_seq", op_seq), ("op_name", op_name),
                            ("output_index", output_index), ("numel", numel),
                            ("positions", positions), ("away", away)):
            object.__setattr__(entry, name, value)
        entry._validate()
        positions.flags.writeable = False
        away.flags.writeable = False
        return entry

    def _validate(self) -> None:
        object.__setattr__(self, "op_seq", _check_int(self.op_seq, "op_seq"))
        object.__setattr__(self, "op_name", _check_name(self.op_name))
        object.__setattr__(self, "output_index", _check_int(self.output_index, "output_index"))
        object.__setattr__(self, "numel", _check_int(self.numel, "numel", minimum=1))
        pos, away = self.positions, self.away
        where = f"entry (op_seq={self.op_seq}, output_index={self.output_index})"
        if not isinstance(pos, np.ndarray) or pos.dtype != np.int64 or pos.ndim != 1:
            raise RoundingLogError(f"{where}: positions must be a 1-D int64 numpy array")
        if not isinstance(away, np.ndarray) or away.dtype != np.bool_ or away.ndim != 1:
            raise RoundingLogError(f"{where}: away must be a 1-D bool numpy array")
        if len(pos) != len(away):
            raise RoundingLogError(
                f"{where}: positions and away differ in length ({len(pos)} != {len(away)})"
            )
        if len(pos) == 0:
            raise RoundingLogError(f"{where}: an entry needs at least one position")
        if len(pos) > 1 and not bool(np.all(pos[1:] > pos[:-1])):
            i = int(np.flatnonzero(pos[1:] <= pos[:-1])[0])
            raise RoundingLogError(
                f"{where}: positions must be strictly increasing "
                f"(positions[{i}]={int(pos[i])}, positions[{i + 1}]={int(pos[i + 1])})"
            )
        if int(pos[0]) < 0 or int(pos[-1]) >= self.numel:
            raise RoundingLogError(
                f"{where}: positions must lie in [0, numel={self.numel}), "
                f"got range [{int(pos[0])}, {int(pos[-1])}]"
            )

    @property
    def key(self) -> tuple[int, int]:
        """Sort key: entries of a step are strictly increasing in (op_seq, output_index)."""
        return (self.op_seq, self.output_index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogEntry):
            return NotImplemented
        return (
            self.op_seq == other.op_seq
            and self.op_name == other.op_name
            and self.output_index == other.output_index
            and self.numel == other.numel
            and np.array_equal(self.positions, other.positions)
            and np.array_equal(self.away, other.away)
        )

    def __hash__(self) -> int:
        return hash(
            (
                self.op_seq,
                self.op_name,
                self.output_index,
                self.numel,
                self.positions.tobytes(),
                self.away.tobytes(),
            )
        )


@dataclass
class StepLog:
    """Everything the auditor needs to round one training step the trainer's way."""

    step: int
    entries: list[LogEntry] = field(default_factory=list)
    ops_rounded: int = 0
    elements_rounded: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types, ranges and entry order; called on construction and again on encode
        because ``entries`` is a mutable list."""
        self.step = _check_int(self.step, "step")
        self.ops_rounded = _check_int(self.ops_rounded, "ops_rounded")
        self.elements_rounded = _check_int(self.elements_rounded, "elements_rounded")
        if not isinstance(self.entries, list):
            raise RoundingLogError(f"step {self.step}: entries must be a list")
        prev: LogEntry | None = None
        for i, e in enumerate(self.entries):
            if not isinstance(e, LogEntry):
                raise RoundingLogError(
                    f"step {self.step}: entries[{i}] is a {type(e).__name__}, not a LogEntry"
                )
            if prev is not None:
                _check_order(prev, e, f"step {self.step}: entries[{i}]")
            prev = e

    @property
    def logged_elements(self) -> int:
        """Number of logged elements (sum of the entries' position counts)."""
        return sum(len(e.positions) for e in self.entries)


def _check_order(prev: LogEntry, e: LogEntry, where: str) -> None:
    if e.key <= prev.key:
        raise RoundingLogError(
            f"{where}: entries must be strictly increasing in (op_seq, output_index), "
            f"got {e.key} after {prev.key}"
        )
    if e.op_seq == prev.op_seq and e.op_name != prev.op_name:
        raise RoundingLogError(
            f"{where}: op_seq {e.op_seq} has two op names ({prev.op_name!r}, {e.op_name!r})"
        )


# --------------------------------------------------------------------------- varints


def _encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of every value (uint64, each < 2**63): in one pass where numba is
    installed (the ``fast`` extra), else :func:`_encode_varints_numpy`."""
    v = np.ascontiguousarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    if _fast_varints is not None and v.size > 64:
        return _fast_varints(v)
    return _encode_varints_numpy(v)


def _encode_varints_numpy(v: np.ndarray) -> bytes:
    """Unsigned LEB128 of a non-empty contiguous uint64 array, vectorised over the array.

    Passes over the whole array are few: one per byte length actually present (positions are
    mostly one- or two-byte gaps), the bytes beyond the first written for those values only.
    """
    top = int(v.max())
    if top < 0x80:  # every value one byte
        return v.astype(np.uint8).tobytes()
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, _MAX_VARINT_BYTES):
        if top < 1 << (7 * k):
            break
        nbytes += v >= np.uint64(1 << (7 * k))
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    first = (v & np.uint64(0x7F)).astype(np.uint8)
    longer = np.flatnonzero(nbytes > 1)
    first[longer] |= 0x80
    out[starts] = first
    for k in range(1, int(nbytes.max())):
        longer = longer[nbytes[longer] > k]  # the values with a byte k (a shrinking subset)
        chunk = ((v[longer] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        chunk[nbytes[longer] > k + 1] |= 0x80
        out[starts[longer] + k] = chunk
    return out.tobytes()


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Reader:
    """Bounds-checked cursor over a decoded body; every failure is a RoundingLogError."""

    def __init__(self, body: bytes, where: str) -> None:
        self.buf = np.frombuffer(body, dtype=np.uint8)
        self.pos = 0
        self.where = where

    def fail(self, msg: str) -> RoundingLogError:
        return RoundingLogError(f"{self.where}: {msg} (body offset {self.pos})")

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def varints(self, n: int, what: str) -> np.ndarray:
        """Read ``n`` varints as uint64 (all < 2**63 by construction of the 9-byte cap)."""
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        if n > self.left:
            raise self.fail(f"{what}: {n} values need at least {n} bytes, only {self.left} left")
        window = self.buf[self.pos : self.pos + _MAX_VARINT_BYTES * n]
        ends = np.flatnonzero(window < 0x80)[:n]
        starts = np.empty(len(ends), dtype=np.int64)
        if len(ends):
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
        lengths = ends - starts + 1
        if len(ends) and int(lengths.max()) > _MAX_VARINT_BYTES:
            raise self.fail(f"{what}: varint longer than {_MAX_VARINT_BYTES} bytes (>= 2**63)")
        if len(ends) < n:
            tail = len(window) - (int(ends[-1]) + 1 if len(ends) else 0)
            if tail >= _MAX_VARINT_BYTES:
                raise self.fail(f"{what}: varint longer than {_MAX_VARINT_BYTES} bytes (>= 2**63)")
            raise self.fail(f"{what}: truncated ({len(ends)} of {n} varints present)")
        last = window[ends]
        if bool(np.any((lengths > 1) & (last == 0))):
            raise self.fail(f"{what}: non-minimal varint encoding")
        vals = (window[starts] & 0x7F).astype(np.uint64)
        for k in range(1, int(lengths.max())):
            m = lengths > k
            vals[m] |= (window[starts[m] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        self.pos += int(ends[-1]) + 1
        return vals

    def varint(self, what: str) -> int:
        return int(self.varints(1, what)[0])

    def take(self, n: int, what: str) -> np.ndarray:
        if n > self.left:
            raise self.fail(f"{what}: needs {n} bytes, only {self.left} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


# --------------------------------------------------------------------------- encode


def _encode_body(log: StepLog) -> bytes:
    """Columnar body: counters, op-name table, per-entry columns, all positions, all bits."""
    entries = log.entries
    names: dict[str, int] = {}
    name_idx = np.empty(len(entries), dtype=np.uint64)
    op_seq = np.empty(len(entries), dtype=np.uint64)
    out_idx = np.empty(len(entries), dtype=np.uint64)
    numel = np.empty(len(entries), dtype=np.uint64)
    counts = np.empty(len(entries), dtype=np.int64)
    for i, e in enumerate(entries):
        name_idx[i] = names.setdefault(e.op_name, len(names))
        op_seq[i] = e.op_seq
        out_idx[i] = e.output_index
        numel[i] = e.numel
        counts[i] = len(e.positions)

    parts = [_uvarint(log.ops_rounded), _uvarint(log.elements_rounded), _uvarint(len(names))]
    for name in names:  # dicts keep insertion order = order of first use
        raw = name.encode("ascii")
        parts += [_uvarint(len(raw)), raw]
    parts.append(_uvarint(len(entries)))
    if entries:
        seq_delta = op_seq.copy()
        seq_delta[1:] = op_seq[1:] - op_seq[:-1]
        away = np.concatenate([e.away for e in entries])
        parts += [
            _encode_varints(seq_delta),
            _encode_varints(name_idx),
            _encode_varints(out_idx),
            _encode_varints(numel),
            _encode_varints(counts.astype(np.uint64)),
            _encode_positions(entries, counts),
            np.packbits(away).tobytes(),
        ]
    return b"".join(parts)


def _encode_positions(entries: list[LogEntry], counts: np.ndarray) -> bytes:
    """Varints of each entry's first position and of the gaps ``p[j] - p[j-1] - 1`` after it
    (in one compiled pass where numba is installed, else :func:`_encode_gaps_numpy`)."""
    pos = np.concatenate([e.positions for e in entries])
    if _fast_gaps is not None and pos.size > 64:
        return _fast_gaps(pos, counts)
    return _encode_gaps_numpy(pos, counts)


def _encode_gaps_numpy(positions: np.ndarray, counts: np.ndarray) -> bytes:
    pos = positions.astype(np.uint64)
    gaps = pos.copy()
    gaps[1:] = pos[1:] - pos[:-1] - np.uint64(1)
    firsts = np.cumsum(counts) - counts
    gaps[firsts] = pos[firsts]
    return _encode_varints(gaps)


def encode_step_log(log: StepLog, zlib_level: int = LEGACY_ZLIB_LEVEL) -> bytes:
    """Serialise one step's log (header + zlib-compressed body, or stored if that is smaller).

    ``zlib_level`` (1–9) is the run's (manifest ``log_zlib_level``): the bytes, hence the log
    digest a step record commits, depend on it; decoding does not.
    """
    if not isinstance(log, StepLog):
        raise TypeError(f"expected a StepLog, got {type(log).__name__}")
    if isinstance(zlib_level, bool) or not isinstance(zlib_level, int) or not 1 <= zlib_level <= 9:
        raise RoundingLogError(f"zlib_level must be an int in [1, 9], got {zlib_level!r}")
    log.validate()
    body = _encode_body(log)
    if len(body) > MAX_BODY_BYTES:
        raise RoundingLogError(
            f"step {log.step}: encoded body is {len(body)} bytes, above the "
            f"{MAX_BODY_BYTES}-byte limit; is tau far too large?"
        )
    packed = zlib.compress(body, zlib_level)
    if len(packed) < len(body):
        codec, payload = CODEC_ZLIB, packed
    else:
        codec, payload = CODEC_STORED, body
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, codec, log.step, len(body), 0)[:_CRC_OFFSET]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


# --------------------------------------------------------------------------- decode


def decode_step_log(data: bytes, *, source: str | None = None) -> StepLog:
    """Parse and fully validate one encoded step log; ``source`` names the file in errors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    where = _where(source, None)
    if len(data) < HEADER_SIZE:
        raise RoundingLogError(
            f"{where}: truncated header ({len(data)} bytes, need {HEADER_SIZE})"
        )
    magic, version, flags, step, body_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RoundingLogError(f"{where}: bad magic {magic!r}, not a rounding log")
    if version != FORMAT_VERSION:
        raise RoundingLogError(
            f"{where}: unsupported format version {version} (this reader knows {FORMAT_VERSION})"
        )
    payload = data[HEADER_SIZE:]
    actual = zlib.crc32(payload, zlib.crc32(data[:_CRC_OFFSET]))
    if actual != crc:
        raise RoundingLogError(
            f"{_where(source, step)}: checksum mismatch (stored {crc:#010x}, computed "
            f"{actual:#010x}): the file is truncated, has trailing bytes or is corrupted"
        )
    where = _where(source, step)
    if step >= _INT_LIMIT:
        raise RoundingLogError(f"{where}: step {step} is >= 2**63")
    if flags & ~_CODEC_MASK:
        raise RoundingLogError(f"{where}: unknown flag bits {flags & ~_CODEC_MASK:#06x}")
    if not _MIN_BODY_BYTES <= body_len <= MAX_BODY_BYTES:
        raise RoundingLogError(
            f"{where}: body length {body_len} outside [{_MIN_BODY_BYTES}, {MAX_BODY_BYTES}]"
        )
    codec = flags & _CODEC_MASK
    if codec == CODEC_STORED:
        if len(payload) != body_len:
            raise RoundingLogError(
                f"{where}: stored body is {len(payload)} bytes, header says {body_len}"
            )
        body = payload
    elif codec == CODEC_ZLIB:
        if len(payload) >= body_len:
            raise RoundingLogError(
                f"{where}: compressed body ({len(payload)} bytes) not smaller than the "
                f"{body_len}-byte body it claims to hold"
            )
        body = _inflate(payload, body_len, where)
    else:
        raise RoundingLogError(f"{where}: unknown body codec {codec}")
    return _decode_body(body, step, where)


def _inflate(payload: bytes, body_len: int, where: str) -> bytes:
    """zlib-decompress at most ``body_len + 1`` bytes, so a bomb cannot exhaust memory."""
    d = zlib.decompressobj()
    try:
        body = d.decompress(payload, body_len + 1)
    except zlib.error as exc:
        raise RoundingLogError(f"{where}: corrupt compressed body ({exc})") from None
    if len(body) > body_len or d.unconsumed_tail:
        raise RoundingLogError(
            f"{where}: compressed body inflates to more than the {body_len} bytes the header "
            "declares"
        )
    if not d.eof:
        raise RoundingLogError(f"{where}: compressed body is truncated")
    if len(body) != body_len:
        raise RoundingLogError(
            f"{where}: compressed body inflates to {len(body)} bytes, header declares {body_len}"
        )
    if d.unused_data:
        raise RoundingLogError(
            f"{where}: {len(d.unused_data)} trailing bytes after the compressed body"
        )
    return body


def _decode_body(body: bytes, step: int, where: str) -> StepLog:
    r = _Reader(body, where)
    ops_rounded = r.varint("ops_rounded")
    elements_rounded = r.varint("elements_rounded")
    n_names = r.varint("name count")
    if n_names > r.left // 2:
        raise r.fail(f"name count {n_names} needs more bytes than the {r.left} left")
    names: list[str] = []
    for i in range(n_names):
        ln = r.varint(f"length of name {i}")
        if not 1 <= ln <= _MAX_NAME_BYTES:
            raise r.fail(f"length of name {i} is {ln}, not in [1, {_MAX_NAME_BYTES}]")
        raw = r.take(ln, f"name {i}").tobytes()
        if not all(0x20 <= b <= 0x7E for b in raw):
            raise r.fail(f"name {i} ({raw!r}) is not printable ASCII")
        name = raw.decode("ascii")
        if name in names:
            raise r.fail(f"name {name!r} appears twice in the name table")
        names.append(name)
    n = r.varint("entry count")
    if n > r.left // _MIN_ENTRY_BYTES:
        raise r.fail(f"entry count {n} needs more bytes than the {r.left} left")
    if n == 0:
        if n_names:
            raise r.fail(f"{n_names} op names but no entries")
        if r.left:
            raise r.fail(f"{r.left} trailing bytes after the last entry")
        return StepLog(step, [], ops_rounded, elements_rounded)

    seq_delta = r.varints(n, "op_seq column")
    name_idx = r.varints(n, "op name column")
    out_idx = r.varints(n, "output_index column")
    numel = r.varints(n, "numel column")
    counts_u = r.varints(n, "count column")

    op_seq = np.cumsum(seq_delta, dtype=np.uint64)  # wraps silently; checked next
    if n > 1 and bool(np.any(op_seq[1:] < op_seq[:-1])) or int(op_seq[-1]) >= _INT_LIMIT:
        raise r.fail("op_seq overflows 2**63")
    same = seq_delta[1:] == 0
    if bool(np.any(same & (out_idx[1:] <= out_idx[:-1]))):
        i = int(np.flatnonzero(same & (out_idx[1:] <= out_idx[:-1]))[0]) + 1
        raise r.fail(
            f"entry {i}: (op_seq, output_index) not increasing "
            f"(output_index {int(out_idx[i])} after {int(out_idx[i - 1])} at op_seq "
            f"{int(op_seq[i])})"
        )
    if bool(np.any(name_idx >= n_names)):
        i = int(np.flatnonzero(name_idx >= n_names)[0])
        raise r.fail(f"entry {i}: op name index {int(name_idx[i])} >= table size {n_names}")
    seen = np.maximum.accumulate(name_idx)
    if int(name_idx[0]) != 0 or bool(np.any(name_idx[1:] > seen[:-1] + np.uint64(1))):
        raise r.fail("op name table is not in order of first use")
    if int(seen[-1]) + 1 != n_names:
        raise r.fail(f"op name table has {n_names} names, only {int(seen[-1]) + 1} used")
    if bool(np.any(same & (name_idx[1:] != name_idx[:-1]))):
        i = int(np.flatnonzero(same & (name_idx[1:] != name_idx[:-1]))[0]) + 1
        raise r.fail(f"entry {i}: op_seq {int(op_seq[i])} has two op names")
    if bool(np.any(numel == 0)):
        raise r.fail(f"entry {int(np.flatnonzero(numel == 0)[0])}: numel is 0")
    if bool(np.any(counts_u == 0)) or bool(np.any(counts_u > np.uint64(r.left))):
        i = int(np.flatnonzero((counts_u == 0) | (counts_u > np.uint64(r.left)))[0])
        raise r.fail(f"entry {i}: position count {int(counts_u[i])} is 0 or exceeds the data")
    if bool(np.any(counts_u > numel)):
        i = int(np.flatnonzero(counts_u > numel)[0])
        raise r.fail(f"entry {i}: {int(counts_u[i])} positions but numel is {int(numel[i])}")
    counts = counts_u.astype(np.int64)  # each <= left <= 64 MiB: sums cannot overflow
    total = int(counts.sum())
    if total + (total + 7) // 8 > r.left:
        raise r.fail(f"{total} positions need more bytes than the {r.left} left")

    gaps = r.varints(total, "positions")
    firsts = np.cumsum(counts) - counts
    inc = gaps + np.uint64(1)
    inc[firsts] = gaps[firsts]
    csum = np.cumsum(inc, dtype=np.uint64)  # modular; within-entry values checked below
    base = csum[firsts] - inc[firsts]
    pos = csum - np.repeat(base, counts)
    limit = np.repeat(numel, counts)
    inside = np.ones(total, dtype=bool)
    inside[firsts] = False
    bad = (pos >= limit) | np.concatenate([[False], inside[1:] & (pos[1:] <= pos[:-1])])
    if bool(np.any(bad)):
        k = int(np.flatnonzero(bad)[0])
        i = int(np.searchsorted(firsts, k, side="right")) - 1
        raise r.fail(
            f"entry {i}: position {int(pos[k])} is >= numel {int(numel[i])} or overflows"
        )

    nbits = (total + 7) // 8
    bits = r.take(nbits, "direction bits")
    if total % 8 and int(bits[-1]) & ((1 << (8 - total % 8)) - 1):
        raise r.fail("direction bits: padding bits are not zero")
    if r.left:
        raise r.fail(f"{r.left} trailing bytes after the direction bits")
    away = np.unpackbits(bits, count=total).astype(bool)
    pos64 = pos.astype(np.int64)
    pos64.flags.writeable = False  # the entries keep read-only views of both columns
    away.flags.writeable = False

    entries = []
    bounds = np.append(firsts, total).tolist()
    seq_l, nidx_l, out_l, numel_l = (op_seq.tolist(), name_idx.tolist(), out_idx.tolist(),
                                     numel.tolist())
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        entries.append(
            LogEntry._owning(seq_l[i], names[nidx_l[i]], out_l[i], numel_l[i], pos64[a:b],
                             away[a:b])
        )
    try:
        return StepLog(step, entries, ops_rounded, elements_rounded)
    except RoundingLogError as exc:  # defensive: the checks above should make this unreachable
        raise RoundingLogError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- files


def step_log_path(log_dir: Path, step: int) -> Path:
    """Canonical file of a step: ``log_dir / f"step-{step:08d}.rlog"``."""
    step = _check_int(step, "step")
    return Path(log_dir) / f"step-{step:08d}.rlog"


def write_step_log(log_dir: Path, log: StepLog) -> Path:
    """Write atomically (temp file in the same dir, fsync, rename, fsync dir), so a killed
    trainer leaves either the old file, the complete new one, or a stray ``.tmp`` file that
    readers ignore -- never a half-written ``.rlog``."""
    data = encode_step_log(log)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = step_log_path(log_dir, log.step)
    atomic_write_bytes(path, data)
    return path


def read_step_log(path: Path) -> StepLog:
    """Read one step file; a canonical file name must agree with the step in its header."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(HEADER_SIZE + MAX_BODY_BYTES + 1)
    if len(data) > HEADER_SIZE + MAX_BODY_BYTES:
        raise RoundingLogError(f"{path}: step ?: file larger than any valid rounding log")
    log = decode_step_log(data, source=str(path))
    m = _NAME_RE.match(path.name)
    if m and path.name == step_log_path(path.parent, log.step).name:
        return log
    if m:
        raise RoundingLogError(
            f"{path}: step {log.step}: file name says step {int(m.group(1))}, header says "
            f"{log.step} (renamed or misplaced file)"
        )
    return log


def _existing_steps(log_dir: Path) -> list[int]:
    steps = []
    for name in os.listdir(log_dir):
        m = _NAME_RE.match(name)
        if m and name == f"step-{int(m.group(1)):08d}.rlog":
            steps.append(int(m.group(1)))
    return sorted(steps)


def iter_step_logs(log_dir: Path, start: int = 0, stop: int | None = None) -> Iterator[StepLog]:
    """Yield the logs of steps ``start, start+1, ...`` in order, one file at a time.

    ``stop=None`` means up to the highest step present. Every step in the range must have its
    file: a missing one is a RoundingLogError naming it, because a replay that silently skipped a
    step's log would round that step differently from the trainer.
    """
    log_dir = Path(log_dir)
    start = _check_int(start, "start")
    if stop is None:
        if not log_dir.is_dir():
            raise RoundingLogError(f"{log_dir}: rounding log directory does not exist")
        steps = _existing_steps(log_dir)
        stop = steps[-1] + 1 if steps else start
        stop = max(stop, start)
    else:
        stop = _check_int(stop, "stop")
        if stop < start:
            raise ValueError(f"stop ({stop}) < start ({start})")
    for step in range(start, stop):
        path = step_log_path(log_dir, step)
        try:
            log = read_step_log(path)
        except FileNotFoundError:
            raise RoundingLogError(
                f"{path}: step {step}: rounding log of step {step} is missing "
                f"(range [{start}, {stop}))"
            ) from None
        yield log


# --------------------------------------------------------------------------- builder


class StepLogBuilder:
    """Collects a step's entries while it runs; checks each call so a recorder bug surfaces at
    the op that caused it rather than at encode time."""

    def __init__(self, step: int) -> None:
        self.step = _check_int(step, "step")
        self._entries: list[LogEntry] = []
        self._last_key: tuple[int, int] | None = None
        self._last_name: str | None = None
        self.ops_rounded = 0
        self.elements_rounded = 0

    def add(
        self,
        op_seq: int,
        op_name: str,
        output_index: int,
        numel: int,
        positions: np.ndarray,
        away: np.ndarray,
        *,
        owned: bool = False,
    ) -> None:
        """Record the logged elements of one op output; an empty ``positions`` is a no-op.

        ``owned=True``: ``positions`` (int64) and ``away`` (bool) are the caller's to give away
        (fresh arrays it never touches again): the entry keeps them, read-only, instead of a copy.
        """
        op_seq = _check_int(op_seq, "op_seq")
        op_name = _check_name(op_name)
        output_index = _check_int(output_index, "output_index")
        numel = _check_int(numel, "numel", minimum=1)
        positions = np.asarray(positions)
        away = np.asarray(away)
        if positions.ndim != 1 or not (
            np.issubdtype(positions.dtype, np.integer) or positions.size == 0
        ):
            raise RoundingLogError(
                f"op_seq {op_seq}: positions must be a 1-D integer array, got "
                f"{positions.dtype} with shape {positions.shape}"
            )
        if away.ndim != 1 or not (away.dtype == np.bool_ or away.size == 0):
            raise RoundingLogError(
                f"op_seq {op_seq}: away must be a 1-D bool array, got {away.dtype} with shape "
                f"{away.shape}"
            )
        if len(positions) != len(away):
            raise RoundingLogError(
                f"op_seq {op_seq}: positions and away differ in length "
                f"({len(positions)} != {len(away)})"
            )
        if len(positions) == 0:
            return
        if positions.dtype == np.uint64 and int(positions.max()) >= _INT_LIMIT:
            raise RoundingLogError(f"op_seq {op_seq}: position >= 2**63")
        if owned and positions.dtype == np.int64 and away.dtype == np.bool_:
            entry = LogEntry._owning(op_seq, op_name, output_index, numel, positions, away)
        else:  # (LogEntry copies: no conversion copy before that)
            entry = LogEntry(op_seq, op_name, output_index, numel,
                             positions.astype(np.int64, copy=False), away.astype(bool, copy=False))
        if self._entries:
            _check_order(self._entries[-1], entry, f"step {self.step}: add")
        self._entries.append(entry)

    def count_rounded(self, elements: int) -> None:
        """Account for one rounded op output of ``elements`` elements (logged or not)."""
        elements = _check_int(elements, "elements")
        self.ops_rounded += 1
        self.elements_rounded += elements

    def build(self) -> StepLog:
        """Return the step's log; the counters must cover every logged entry and element."""
        log = StepLog(self.step, list(self._entries), self.ops_rounded, self.elements_rounded)
        if len(log.entries) > log.ops_rounded or log.logged_elements > log.elements_rounded:
            raise RoundingLogError(
                f"step {self.step}: {len(log.entries)} entries / {log.logged_elements} logged "
                f"elements but only {log.ops_rounded} op outputs / {log.elements_rounded} "
                "elements counted as rounded (missing count_rounded calls?)"
            )
        return log
