"""Tests of the rounding log codec (lightning_zk/rounding/log.py, docs/rounding_log.md)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_zk.rounding import log as L
from lightning_zk.rounding.log import (
    FORMAT_VERSION,
    LogEntry,
    RoundingLogError,
    StepLog,
    StepLogBuilder,
    decode_step_log,
    encode_step_log,
    iter_step_logs,
    read_step_log,
    step_log_path,
    write_step_log,
)

HEADER = struct.Struct("<8sHHQII")  # the layout docs/rounding_log.md documents, restated here
MM, SUM = "aten.mm.default", "aten.sum.default"


def entry(op_seq, positions, away=None, *, name=MM, out=0, numel=100) -> LogEntry:
    pos = np.asarray(positions, dtype=np.int64)
    if away is None:
        away = np.arange(len(pos)) % 2 == 0
    return LogEntry(op_seq, name, out, numel, pos, np.asarray(away, dtype=bool))


def roundtrip(log: StepLog) -> StepLog:
    data = encode_step_log(log)
    back = decode_step_log(data)
    assert back == log
    assert back.logged_elements == log.logged_elements
    for a, b in zip(back.entries, log.entries, strict=True):
        assert a.positions.dtype == np.int64 and a.away.dtype == np.bool_
        assert a.positions.tolist() == b.positions.tolist()
        assert a.away.tolist() == b.away.tolist()
    return back


def wrap(body: bytes, *, step: int = 1, codec: int = 0, body_len: int | None = None,
         version: int = FORMAT_VERSION, flags: int | None = None, payload: bytes | None = None,
         magic: bytes = b"LZKRLOG\0") -> bytes:
    """Build a file around an arbitrary body with a *valid* CRC, to reach the body checks."""
    payload = body if payload is None else payload
    body_len = len(body) if body_len is None else body_len
    flags = codec if flags is None else flags
    head = HEADER.pack(magic, version, flags, step, body_len, 0)[:-4]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def small_log() -> StepLog:
    return StepLog(
        5,
        [entry(0, [3, 4, 10], [True, False, True]),
         entry(2, [130], [False], name=SUM, out=1, numel=200)],
        ops_rounded=3,
        elements_rounded=300,
    )


# The small log's body, byte by byte, exactly as docs/rounding_log.md spells it out.
SMALL_BODY = bytes(
    [0x03, 0xAC, 0x02, 0x02, 0x0F]
    + list(MM.encode())
    + [0x10]
    + list(SUM.encode())
    + [0x02,
       0x00, 0x02,  # op_seq deltas
       0x00, 0x01,  # name indices
       0x00, 0x01,  # output indices
       0x64, 0xC8, 0x01,  # numel 100, 200
       0x03, 0x01,  # counts
       0x03, 0x00, 0x05, 0x82, 0x01,  # positions 3,4,10 | 130
       0xA0]  # directions 1,0,1 | 0 + padding
)


def zlib_log() -> StepLog:
    """Small but compressible, so the body is stored zlib-compressed."""
    return StepLog(9, [entry(i, [1, 2, 3], name=MM, numel=50) for i in range(12)], 12, 600)


def random_log(rng: np.random.Generator, *, nops: int, numel: int, total: int) -> StepLog:
    b = StepLogBuilder(3)
    per = rng.multinomial(total, [1 / nops] * nops)
    for i in range(nops):
        b.count_rounded(numel)
        k = int(per[i])
        pos = np.sort(rng.choice(numel, k, replace=False))
        b.add(i, [MM, SUM, "aten.exp.default"][i % 3], 0, numel, pos, rng.random(k) < 0.5)
    return b.build()


# --------------------------------------------------------------------------- format


def test_documented_layout_byte_by_byte():
    log = small_log()
    data = encode_step_log(log)
    magic, version, flags, step, body_len, crc = HEADER.unpack_from(data)
    assert (magic, version, step, body_len) == (b"LZKRLOG\0", 1, 5, len(SMALL_BODY))
    assert len(SMALL_BODY) == 55
    payload = data[HEADER.size :]
    assert flags in (0, 1)
    assert (payload if flags == 0 else zlib.decompress(payload)) == SMALL_BODY
    assert crc == zlib.crc32(payload, zlib.crc32(data[:24]))
    assert decode_step_log(wrap(SMALL_BODY, step=5)) == log


def test_zlib_codec_used_when_smaller():
    data = encode_step_log(zlib_log())
    assert HEADER.unpack_from(data)[2] == L.CODEC_ZLIB
    assert len(data) - HEADER.size < HEADER.unpack_from(data)[4]
    roundtrip(zlib_log())


def test_empty_step_is_tiny():
    log = StepLog(0)
    data = encode_step_log(log)
    assert len(data) <= 40, len(data)
    back = roundtrip(log)
    assert back.entries == [] and back.logged_elements == 0


def test_module_imports_neither_torch_nor_lightning():
    """Import the codec (and what it imports) with stub parent packages, so that the package's
    ``__init__`` (which registers the Lightning strategy) does not run; then nothing from torch
    or Lightning may be loaded."""
    package = Path(L.__file__).resolve().parents[1]
    code = (
        "import importlib, sys, types\n"
        f"for name, path in (('lightning_zk', {str(package)!r}), "
        f"('lightning_zk.rounding', {str(package / 'rounding')!r})):\n"
        "    m = types.ModuleType(name); m.__path__ = [path]; sys.modules[name] = m\n"
        "importlib.import_module('lightning_zk.rounding.log')\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('torch', 'lightning', "
        "'pytorch_lightning')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- round trips


def test_one_entry():
    roundtrip(StepLog(1, [entry(0, [7])], 1, 100))


def test_many_entries_and_names_table_reuse():
    names = [MM, SUM, "aten.exp.default"]
    entries, seq = [], 0
    for i in range(60):
        seq += i % 3  # repeats op_seq for multi-output ops
        out = (entries[-1].output_index + 1) if entries and entries[-1].op_seq == seq else 0
        entries.append(entry(seq, [i, i + 5, 99], name=names[seq % 3], out=out))
    log = StepLog(2, entries, 200, 20000)
    roundtrip(log)
    data = encode_step_log(log)
    body = data[HEADER.size :]
    body = zlib.decompress(body) if HEADER.unpack_from(data)[2] else body
    assert body.count(MM.encode()) == 1  # each name stored once, then referenced by index


@pytest.mark.parametrize("pattern", ["alternating", "random", "all_away", "none_away"])
def test_dense_step(pattern):
    n = 10**5
    rng = np.random.default_rng(1)
    away = {
        "alternating": np.arange(n) % 2 == 0,
        "random": rng.random(n) < 0.5,
        "all_away": np.ones(n, bool),
        "none_away": np.zeros(n, bool),
    }[pattern]
    log = StepLog(4, [LogEntry(0, MM, 0, n, np.arange(n, dtype=np.int64), away)], 1, n)
    roundtrip(log)
    size = len(encode_step_log(log))
    assert size < (n // 8 + 1000 if pattern == "random" else 2000), size


def test_dense_million_positions():
    n = 10**6
    rng = np.random.default_rng(2)
    log = StepLog(4, [LogEntry(0, MM, 0, n, np.arange(n, dtype=np.int64), rng.random(n) < 0.5)],
                  1, n)
    roundtrip(log)


def test_large_values():
    big = 2**40
    log = StepLog(
        big,
        [entry(big, [0, 1, big - 1], name=MM, out=big, numel=big),
         entry(big + 2**39, [2**39], name=SUM, numel=big + 7)],
        ops_rounded=big,
        elements_rounded=2**62,
    )
    roundtrip(log)
    top = 2**63 - 1
    roundtrip(StepLog(top, [LogEntry(top, MM, top, top, np.array([0, 2**62, top - 1]),
                                     np.array([True, False, True]))], top, top))


def test_varint_boundaries():
    vals = [0, 1, 127, 128, 16383, 16384, 2**56 - 1, 2**56, 2**62, 2**63 - 1]
    enc = L._encode_varints(np.array(vals, dtype=np.uint64))
    assert enc[:5] == bytes([0x00, 0x01, 0x7F, 0x80, 0x01])
    assert len(enc) == sum(max(1, -(-v.bit_length() // 7)) for v in vals)
    r = L._Reader(enc, "t")
    assert r.varints(len(vals), "v").tolist() == vals and r.left == 0


@pytest.mark.parametrize("bits", [1, 7, 8, 14, 15, 30, 62, 63])
def test_varint_paths_agree(bits):
    """The one-pass numba encoder (the ``fast`` extra) writes the numpy path's bytes."""
    kernels = pytest.importorskip("lightning_zk.rounding._numba_kernels")
    rng = np.random.default_rng(bits)
    for n in (1, 65, 5000):
        v = rng.integers(0, 2**bits, n, dtype=np.uint64) if bits < 63 else \
            rng.integers(0, 2**63 - 1, n, dtype=np.uint64)
        v[: min(n, 3)] = [0, 2**bits - 1, 2 ** (bits - 1)][: min(n, 3)]
        assert kernels.encode_varints(v) == L._encode_varints_numpy(v) == L._encode_varints(v)


@pytest.mark.parametrize("seed", range(4))
def test_position_gap_paths_agree(seed):
    """The one-pass gap encoder (numba) writes the varints of the numpy gap column: entries of
    one position, consecutive positions (gap 0), first positions 0 and near 2**63."""
    kernels = pytest.importorskip("lightning_zk.rounding._numba_kernels")
    rng = np.random.default_rng(seed)
    last = 2**63 - 2  # the largest position an entry can hold (numel < 2**63)
    columns = [np.array([0], dtype=np.int64), np.array([last], dtype=np.int64),
               np.arange(5, 80, dtype=np.int64), np.array([0, 1, 2**62, last - 1, last])]
    for _ in range(20):
        n = int(rng.integers(1, 400))
        top = int(rng.choice([200, 2**20, 2**40, 2**63 - 1]))
        columns.append(np.unique(rng.integers(0, top, n, dtype=np.int64)))
    rng.shuffle(columns)
    for k in (1, 3, len(columns)):
        pos = np.concatenate(columns[:k])
        counts = np.array([len(c) for c in columns[:k]], dtype=np.int64)
        expected = L._encode_gaps_numpy(pos, counts)
        assert kernels.encode_position_gaps(pos, counts) == expected
        entries = [entry(i, c, numel=2**63 - 1) for i, c in enumerate(columns[:k])]
        assert L._encode_positions(entries, counts) == expected
    # the numpy column of a hand-made case: firsts as themselves, gaps minus one
    pos, counts = np.array([3, 4, 10, 0, 200], dtype=np.int64), np.array([3, 2], dtype=np.int64)
    assert L._encode_gaps_numpy(pos, counts) == bytes([3, 0, 5, 0, 199, 1])
    assert kernels.encode_position_gaps(pos, counts) == bytes([3, 0, 5, 0, 199, 1])


def test_zlib_level_changes_bytes_not_content():
    """The level is the run's (manifest ``log_zlib_level``): other bytes, the same log."""
    rng = np.random.default_rng(5)
    pos = np.unique(rng.integers(0, 10**6, 50000))
    log = StepLog(1, [entry(0, pos, rng.random(len(pos)) < 0.5, numel=10**6)], 1, 10**6)
    fast, legacy = encode_step_log(log, L.DEFAULT_ZLIB_LEVEL), encode_step_log(log)
    assert legacy == encode_step_log(log, L.LEGACY_ZLIB_LEVEL) != fast
    assert decode_step_log(fast) == decode_step_log(legacy) == log
    for bad in (0, 10, True, 6.0):
        with pytest.raises(RoundingLogError, match="zlib_level"):
            encode_step_log(log, bad)


def test_sparse_realistic_step():
    rng = np.random.default_rng(3)
    log = random_log(rng, nops=20, numel=10**5, total=100)
    assert log.logged_elements == 100
    roundtrip(log)
    assert len(encode_step_log(log)) < 100 * 6


@st.composite
def step_logs(draw) -> StepLog:
    names = ["aten.mm.default", "aten.sum.dim_IntList", "optim.adam", "x"]
    keys = sorted(draw(st.sets(st.tuples(st.integers(0, 2**45), st.integers(0, 3)), max_size=8)))
    entries = []
    for seq, out in keys:
        numel = draw(st.one_of(st.integers(1, 300), st.integers(1, 2**63 - 1)))
        pos = sorted(draw(st.lists(st.integers(0, numel - 1), min_size=1,
                                   max_size=min(numel, 40), unique=True)))
        away = draw(st.lists(st.booleans(), min_size=len(pos), max_size=len(pos)))
        entries.append(LogEntry(seq, names[seq % 4], out, numel, np.array(pos, dtype=np.int64),
                                np.array(away, dtype=bool)))
    u63 = st.integers(0, 2**63 - 1)
    return StepLog(draw(u63), entries, draw(u63), draw(u63))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step_logs())
def test_hypothesis_roundtrip(log):
    back = roundtrip(log)
    assert encode_step_log(back) == encode_step_log(log)  # deterministic encoding


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("make", [small_log, zlib_log])
def test_every_truncation_is_rejected(make):
    data = encode_step_log(make())
    for n in range(len(data)):
        with pytest.raises(RoundingLogError):
            decode_step_log(data[:n], source="f.rlog")


@pytest.mark.parametrize("make", [small_log, zlib_log])
def test_every_byte_flip_is_rejected(make):
    data = encode_step_log(make())
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(RoundingLogError):
                decode_step_log(bytes(bad))


def test_trailing_bytes_rejected():
    data = encode_step_log(small_log())
    with pytest.raises(RoundingLogError, match="checksum"):
        decode_step_log(data + b"\0")
    # ... also when the CRC is made to cover them
    with pytest.raises(RoundingLogError, match="stored body is 56 bytes"):
        decode_step_log(wrap(SMALL_BODY, payload=SMALL_BODY + b"\0", body_len=55))
    with pytest.raises(RoundingLogError, match="trailing bytes after the direction bits"):
        decode_step_log(wrap(SMALL_BODY + b"\0"))
    with pytest.raises(RoundingLogError, match="trailing bytes after the last entry"):
        decode_step_log(wrap(bytes([0, 0, 0, 0, 0])))
    zbody = L._encode_body(zlib_log())
    z = zlib.compress(zbody, 9)
    with pytest.raises(RoundingLogError, match="trailing bytes after the compressed body"):
        decode_step_log(wrap(zbody, codec=1, payload=z + b"\0\0"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_rejected(blob):
    with pytest.raises(RoundingLogError):
        decode_step_log(blob)
    with pytest.raises(RoundingLogError):
        decode_step_log(b"LZKRLOG\0\x01\x00" + blob)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_bodies_with_valid_checksum_never_crash(data):
    """A body that passes the CRC but is malformed must still give RoundingLogError; one that
    decodes must be canonical (re-encodes to the same bytes)."""
    body = bytearray(SMALL_BODY if data.draw(st.booleans()) else L._encode_body(zlib_log()))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        i = data.draw(st.integers(0, len(body) - 1))
        if op == "set":
            body[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            body.insert(i, data.draw(st.integers(0, 255)))
        elif len(body) > 1:
            del body[i]
    try:
        log = decode_step_log(wrap(bytes(body)))
    except RoundingLogError:
        return
    assert L._encode_body(log) == bytes(body)


def test_header_errors():
    good = wrap(SMALL_BODY)
    with pytest.raises(RoundingLogError, match="f.rlog: step \\?: truncated header"):
        decode_step_log(good[:10], source="f.rlog")
    with pytest.raises(RoundingLogError, match="bad magic"):
        decode_step_log(wrap(SMALL_BODY, magic=b"NOTALOG\0"))
    with pytest.raises(RoundingLogError, match="unsupported format version 2"):
        decode_step_log(wrap(SMALL_BODY, version=2))
    with pytest.raises(RoundingLogError, match="unknown flag bits"):
        decode_step_log(wrap(SMALL_BODY, flags=0x100))
    with pytest.raises(RoundingLogError, match="unknown body codec 7"):
        decode_step_log(wrap(SMALL_BODY, codec=7))
    with pytest.raises(RoundingLogError, match="step .* is >= 2\\*\\*63"):
        decode_step_log(wrap(SMALL_BODY, step=2**63))
    with pytest.raises(RoundingLogError, match="body length 3 outside"):
        decode_step_log(wrap(SMALL_BODY[:3]))
    with pytest.raises(RoundingLogError, match="x.rlog: step 5: checksum mismatch"):
        bad = bytearray(wrap(SMALL_BODY, step=5))
        bad[-1] ^= 1
        decode_step_log(bytes(bad), source="x.rlog")


def test_zlib_payload_errors():
    zbody = L._encode_body(zlib_log())
    z = zlib.compress(zbody, 9)
    assert len(z) < len(zbody)
    assert decode_step_log(wrap(zbody, codec=1, payload=z, step=9)) == zlib_log()
    with pytest.raises(RoundingLogError, match="corrupt compressed body"):
        decode_step_log(wrap(zbody, codec=1, payload=b"\x00" * 20))
    with pytest.raises(RoundingLogError, match="compressed body is truncated"):
        decode_step_log(wrap(zbody, codec=1, payload=z[:-6]))
    with pytest.raises(RoundingLogError, match="more than the 60 bytes"):
        decode_step_log(wrap(zbody, codec=1, payload=z, body_len=60))
    with pytest.raises(RoundingLogError, match=f"inflates to {len(zbody)} bytes, header"):
        decode_step_log(wrap(zbody, codec=1, payload=z, body_len=len(zbody) + 1))
    with pytest.raises(RoundingLogError, match="not smaller"):
        decode_step_log(wrap(SMALL_BODY, codec=1, payload=zlib.compress(SMALL_BODY) + bytes(60)))


def test_decompression_bomb_is_capped():
    bomb = zlib.compress(bytes(L.MAX_BODY_BYTES + 4096), 9)  # ~64 KiB inflating to > 64 MiB
    with pytest.raises(RoundingLogError, match="inflates to more than"):
        decode_step_log(wrap(b"", codec=1, payload=bomb, body_len=L.MAX_BODY_BYTES))
    with pytest.raises(RoundingLogError, match="body length .* outside"):
        decode_step_log(wrap(b"", codec=1, payload=bomb, body_len=L.MAX_BODY_BYTES + 1))


def _body(*parts: bytes | list[int]) -> bytes:
    return b"".join(bytes(p) for p in parts)


ONE_NAME = [0x01, 0x0F] + list(MM.encode())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body([0x80] * 9 + [0x01], [0, 0, 0]), "varint longer than 9 bytes"),
        (_body([0x80] * 12), "varint longer than 9 bytes"),
        (_body([0x80, 0x00], [0, 0, 0]), "non-minimal varint"),
        (_body([0, 0, 0, 0x85]), "entry count: truncated"),
        (_body([0, 0, 0x7F, 0]), "name count 127 needs more bytes"),
        (_body([0, 0, 0x01, 0x00, 0]), "length of name 0 is 0"),
        (_body([0, 0, 0x01, 0x02, 0x41, 0x0A, 0]), "not printable ASCII"),
        (_body([0, 0, 0x02, 0x01, 0x41, 0x01, 0x41, 0]), "appears twice"),
        (_body([0, 0], ONE_NAME, [0]), "1 op names but no entries"),
        (_body([0, 0], ONE_NAME, [0x7F], [0] * 20), "entry count 127 needs more bytes"),
        # one entry: op_seq, name, out, numel, count | positions | bits
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 10, 1, 10, 0x80]), "position 10 is >= numel 10"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 10, 2, 3, 6, 0]), "position 10 is >= numel"),
        (_body([0, 0], ONE_NAME, [1, 0, 1, 0, 0, 1, 0, 0]), "op name index 1 >= table size 1"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 0, 1, 0, 0]), "numel is 0"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 5, 0, 0, 0]), "position count 0"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 5, 0x7F, 0, 0]), "position count 127"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 2, 3, 0, 0, 0]), "3 positions but numel is 2"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 5, 3, 0, 0, 0]), "3 positions need more"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 5, 1, 0, 0x40]), "padding bits are not zero"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 100, 2, 0x81, 0x81, 0x81]), "positions: truncated"),
        (_body([0, 0], ONE_NAME, [1, 0, 0, 0, 0x80, 0x02, 2, 0x81, 0x01, 0x00]),
         "direction bits: needs 1 bytes"),
        # two entries with the same op_seq (delta 0) and non-increasing output_index
        (_body([0, 0], ONE_NAME, [2, 4, 0, 0, 0, 1, 1, 5, 5, 1, 1, 0, 0, 0]),
         "entry 1: \\(op_seq, output_index\\) not increasing"),
        (_body([0, 0], ONE_NAME, [2, 4, 0, 0, 0, 0, 0, 5, 5, 1, 1, 0, 0, 0]), "not increasing"),
        # op_seq deltas that sum past 2**63
        (_body([0, 0], ONE_NAME, [2], [0xFF] * 8 + [0x7F], [0xFF] * 8 + [0x7F],
               [0, 0, 0, 0, 5, 5, 1, 1, 0, 0, 0]), "op_seq overflows"),
        # name table not in first-use order / not all used
        (_body([0, 0, 2, 1, 0x41, 1, 0x42, 2, 0, 1, 1, 0, 0, 0, 5, 5, 1, 1, 0, 0, 0]),
         "not in order of first use"),
        (_body([0, 0, 2, 1, 0x41, 1, 0x42, 1, 0, 0, 0, 5, 1, 0, 0]), "only 1 used"),
        # same op_seq, two op names
        (_body([0, 0, 2, 1, 0x41, 1, 0x42, 2, 0, 0, 0, 1, 0, 1, 5, 5, 1, 1, 0, 0, 0]),
         "has two op names"),
    ],
)
def test_malformed_bodies(body, message):
    with pytest.raises(RoundingLogError, match=message):
        decode_step_log(wrap(body, step=42), source="s.rlog")
    with pytest.raises(RoundingLogError, match="s.rlog: step 42"):
        decode_step_log(wrap(body, step=42), source="s.rlog")


def test_position_sum_overflow_rejected():
    """Gaps that individually fit but whose running sum passes 2**63 (and wraps 2**64 on the
    third position) must not alias back to a small, valid-looking position."""
    big = [0xFF] * 8 + [0x7F]  # 2**63 - 1
    near = [0xFE] + [0xFF] * 7 + [0x7F]  # 2**63 - 2
    body = _body([0, 0], ONE_NAME, [1, 0, 0, 0], big, [3], near, big, big, [0])
    with pytest.raises(RoundingLogError, match="overflows"):
        decode_step_log(wrap(body))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positions": np.array([1, 2], dtype=np.int32)}, "1-D int64"),
        ({"positions": np.array([[1, 2]])}, "1-D int64"),
        ({"positions": [1, 2]}, "1-D int64"),
        ({"away": np.array([1, 0])}, "1-D bool"),
        ({"away": np.array([True])}, "differ in length"),
        ({"positions": np.zeros(0, np.int64), "away": np.zeros(0, bool)}, "at least one"),
        ({"positions": np.array([2, 2])}, "strictly increasing"),
        ({"positions": np.array([3, 1])}, "strictly increasing"),
        ({"positions": np.array([-1, 1])}, "in \\[0, numel=10\\)"),
        ({"positions": np.array([1, 10])}, "in \\[0, numel=10\\)"),
        ({"numel": 0}, "numel must be in \\[1"),
        ({"op_seq": -1}, "op_seq must be in"),
        ({"op_seq": 2**63}, "op_seq must be in"),
        ({"op_seq": True}, "op_seq must be an int"),
        ({"output_index": 1.0}, "output_index must be an int"),
        ({"op_name": ""}, "op_name"),
        ({"op_name": "x" * 256}, "op_name"),
        ({"op_name": "aten.mm\n"}, "op_name"),
        ({"op_name": "até"}, "op_name"),
        ({"op_name": b"aten"}, "op_name must be a str"),
    ],
)
def test_log_entry_validation(kwargs, message):
    args = {"op_seq": 0, "op_name": MM, "output_index": 0, "numel": 10,
            "positions": np.array([1, 2], dtype=np.int64), "away": np.array([True, False])}
    args.update(kwargs)
    with pytest.raises(RoundingLogError, match=message):
        LogEntry(**args)


def test_log_entry_is_frozen_copy_and_hashable():
    pos = np.array([1, 2], dtype=np.int64)
    e = entry(0, pos)
    pos[0] = 0  # caller's array changes later: the entry must not
    assert e.positions.tolist() == [1, 2]
    with pytest.raises(ValueError):
        e.positions[0] = 5
    assert e == entry(0, [1, 2]) and hash(e) == hash(entry(0, [1, 2]))
    assert e != entry(0, [1, 3]) and e != entry(0, [1, 2], [True, True])
    assert isinstance(np.int64(3), np.integer) and entry(np.int64(3), [1]).op_seq == 3


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry(1, [1]), entry(0, [1])], "strictly increasing in \\(op_seq, output_index\\)"),
        ([entry(1, [1]), entry(1, [1])], "strictly increasing"),
        ([entry(1, [1], out=2), entry(1, [1], out=1)], "strictly increasing"),
        ([entry(1, [1]), entry(1, [1], out=1, name=SUM)], "two op names"),
        ([entry(1, [1]), "nope"], "not a LogEntry"),
    ],
)
def test_step_log_validation(entries, message):
    with pytest.raises(RoundingLogError, match=message):
        StepLog(0, entries)


def test_step_log_scalar_validation_and_revalidation_on_encode():
    for kw in ({"step": -1}, {"ops_rounded": -1}, {"elements_rounded": 2**63}, {"step": "3"}):
        args = {"step": 0, "entries": []} | kw
        with pytest.raises(RoundingLogError):
            StepLog(**args)
    log = StepLog(0, [entry(1, [1])])
    log.entries.append(entry(0, [1]))  # mutated after construction
    with pytest.raises(RoundingLogError, match="strictly increasing"):
        encode_step_log(log)


def test_builder():
    b = StepLogBuilder(7)
    b.count_rounded(100)
    b.add(0, MM, 0, 100, np.array([], dtype=np.int64), np.array([], dtype=bool))  # ignored
    b.add(0, MM, 0, 100, [], [])  # ignored too
    b.count_rounded(100)
    b.add(1, MM, 0, 100, np.array([5, 9], dtype=np.int32), np.array([True, False]))
    b.add(1, MM, 1, 100, np.array([0], dtype=np.uint64), np.array([False]))
    b.count_rounded(100)
    log = b.build()
    assert (log.step, log.ops_rounded, log.elements_rounded, log.logged_elements) == (7, 3, 300, 3)
    assert [e.key for e in log.entries] == [(1, 0), (1, 1)]
    assert log.entries[0].positions.dtype == np.int64
    roundtrip(log)


def test_builder_owned_arrays_are_kept_read_only_and_still_validated():
    """``owned=True`` (the rounding mode's fresh kernel output): the entry keeps the arrays
    themselves, read-only, after the same checks as a copied entry."""
    b = StepLogBuilder(0)
    pos, away = np.array([1, 4], dtype=np.int64), np.array([True, False])
    b.add(1, MM, 0, 10, pos, away, owned=True)
    b.count_rounded(10)
    e = b.build().entries[0]
    assert e.positions is pos and e.away is away
    assert not pos.flags.writeable and not away.flags.writeable
    assert e == entry(1, [1, 4], [True, False], numel=10)
    strided = np.arange(0, 8, dtype=np.int64)[::2]  # not one block: copied instead
    b.add(2, MM, 0, 10, strided, np.ones(4, dtype=bool), owned=True)
    b.count_rounded(10)
    assert b.build().entries[1].positions is not strided and strided.flags.writeable
    narrow = np.array([3], dtype=np.int32)  # another dtype: converted (a copy)
    b.add(3, MM, 0, 10, narrow, np.array([True]), owned=True)
    b.count_rounded(10)
    assert b.build().entries[2].positions.dtype == np.int64
    for bad, message in (([2, 1], "strictly increasing"), ([1, 10], "numel=10"),
                         ([-1, 1], "numel=10")):
        with pytest.raises(RoundingLogError, match=message):
            b.add(9, MM, 0, 10, np.array(bad, dtype=np.int64), np.array([True, True]),
                  owned=True)
    with pytest.raises(RoundingLogError, match="op_name"):
        b.add(9, "aten.mm\n", 0, 10, np.array([1], dtype=np.int64), np.array([True]),
              owned=True)


def test_decoded_entries_are_read_only():
    log = decode_step_log(encode_step_log(StepLog(0, [entry(1, [1, 5]), entry(2, [0])], 2, 20)))
    for e in log.entries:
        with pytest.raises(ValueError):
            e.positions[0] = 3
        with pytest.raises(ValueError):
            e.away[0] = True
    assert log.entries == [entry(1, [1, 5]), entry(2, [0])]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.add(0, MM, 0, 10, [1], [True]), "strictly increasing"),
        (lambda b: b.add(1, SUM, 1, 10, [1], [True]), "two op names"),
        (lambda b: b.add(2, MM, 0, 10, [1.0], [True]), "integer array"),
        (lambda b: b.add(2, MM, 0, 10, [1], [1]), "bool array"),
        (lambda b: b.add(2, MM, 0, 10, [1, 2], [True]), "differ in length"),
        (lambda b: b.add(2, MM, 0, 10, [2, 1], [True, True]), "strictly increasing"),
        (lambda b: b.add(2, MM, 0, 10, [10], [True]), "numel=10"),
        (lambda b: b.add(2, MM, 0, 10, np.array([2**63], np.uint64), [True]), "2\\*\\*63"),
        (lambda b: b.count_rounded(-1), "elements must be in"),
    ],
)
def test_builder_rejects(call, message):
    b = StepLogBuilder(0)
    b.add(1, MM, 0, 10, [1], [True])
    with pytest.raises(RoundingLogError, match=message):
        call(b)


def test_builder_counters_must_cover_entries():
    b = StepLogBuilder(0)
    b.add(1, MM, 0, 10, [1, 2], [True, True])
    with pytest.raises(RoundingLogError, match="count_rounded"):
        b.build()
    b.count_rounded(1)
    with pytest.raises(RoundingLogError, match="count_rounded"):
        b.build()  # 2 logged elements > 1 rounded element
    b.count_rounded(1)
    assert b.build().logged_elements == 2


# --------------------------------------------------------------------------- files


def test_step_log_path():
    assert step_log_path(Path("d"), 3) == Path("d/step-00000003.rlog")
    assert step_log_path(Path("d"), 123456789).name == "step-123456789.rlog"
    with pytest.raises(RoundingLogError):
        step_log_path(Path("d"), -1)


def test_write_read_atomic(tmp_path):
    d = tmp_path / "rounding"
    p = write_step_log(d, small_log())
    assert p == step_log_path(d, 5) and os.listdir(d) == [p.name]
    assert read_step_log(p) == small_log()
    newer = StepLog(5, [entry(0, [1])], 1, 100)
    write_step_log(d, newer)  # overwrite in place (e.g. resume re-runs the step)
    assert read_step_log(p) == newer and os.listdir(d) == [p.name]


def test_failed_write_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    write_step_log(tmp_path, small_log())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(L.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_step_log(tmp_path, StepLog(5, [entry(0, [1])], 1, 100))
    assert os.listdir(tmp_path) == ["step-00000005.rlog"]
    assert read_step_log(tmp_path / "step-00000005.rlog") == small_log()


def test_read_rejects_misplaced_file(tmp_path):
    p = write_step_log(tmp_path, small_log())
    moved = tmp_path / "step-00000006.rlog"
    p.rename(moved)
    with pytest.raises(RoundingLogError, match="file name says step 6, header says 5"):
        read_step_log(moved)
    other = tmp_path / "anything.bin"
    moved.rename(other)
    assert read_step_log(other) == small_log()  # non-canonical names are not cross-checked


def _write_steps(d: Path, steps) -> None:
    for s in steps:
        write_step_log(d, StepLog(s, [entry(s, [s % 100])], s + 1, 100 * (s + 1)))


def test_iter_step_logs_order_and_ranges(tmp_path):
    _write_steps(tmp_path, [3, 0, 2, 1, 4])
    assert [g.step for g in iter_step_logs(tmp_path)] == [0, 1, 2, 3, 4]
    assert [g.step for g in iter_step_logs(tmp_path, 2)] == [2, 3, 4]
    assert [g.step for g in iter_step_logs(tmp_path, 1, 3)] == [1, 2]
    assert list(iter_step_logs(tmp_path, 5)) == []
    assert list(iter_step_logs(tmp_path, 9)) == []
    assert list(iter_step_logs(tmp_path, 2, 2)) == []
    assert [g.entries[0].op_seq for g in iter_step_logs(tmp_path)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="stop"):
        list(iter_step_logs(tmp_path, 3, 2))
    assert list(iter_step_logs(tmp_path / "empty-but-present", 0, 0)) == []


def test_iter_step_logs_gaps(tmp_path):
    _write_steps(tmp_path, [0, 1, 3, 4])
    it = iter_step_logs(tmp_path)
    assert [next(it).step, next(it).step] == [0, 1]  # streams: the gap surfaces when reached
    with pytest.raises(RoundingLogError, match="step 2 is missing"):
        next(it)
    with pytest.raises(RoundingLogError, match="step 5 is missing"):
        list(iter_step_logs(tmp_path, 3, 6))
    with pytest.raises(RoundingLogError, match="step 0 is missing"):
        list(iter_step_logs(tmp_path / "nope", 0, 1))
    with pytest.raises(RoundingLogError, match="does not exist"):
        list(iter_step_logs(tmp_path / "nope"))


def test_iter_ignores_stray_temp_and_foreign_files(tmp_path):
    _write_steps(tmp_path, [0, 1, 2])
    # a trainer killed mid-write of step 3 leaves its temp file behind
    stray = tmp_path / ".step-00000003.rlog.k2j4x.tmp"
    stray.write_bytes(encode_step_log(StepLog(3))[:10])
    (tmp_path / "step-3.rlog").write_bytes(b"junk")  # not a canonical name
    (tmp_path / "notes.txt").write_text("hi")
    assert [g.step for g in iter_step_logs(tmp_path)] == [0, 1, 2]
    write_step_log(tmp_path, StepLog(3))  # the resumed trainer rewrites step 3
    assert [g.step for g in iter_step_logs(tmp_path)] == [0, 1, 2, 3]


def test_iter_reports_corrupt_file_by_name(tmp_path):
    _write_steps(tmp_path, [0, 1])
    p = step_log_path(tmp_path, 1)
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(RoundingLogError, match=f"{p.name}: step 1: checksum"):
        list(iter_step_logs(tmp_path))
