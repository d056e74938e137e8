"""Corrupt every file of a rounded and of a fixed run in every way: no exit 0, no traceback.

Every file kind of each run (manifest, step records, config, ledger, rounding log, initial and
intermediate checkpoint; for the fixed run also a unit proof, its statement, the seal and a
witness tape) gets each mutation that applies to its format: truncation, a flipped byte inside
committed content, appended garbage, deletion, replacement by a directory, a FIFO or a symlink to
an identical copy outside the run, deep nesting and invalid UTF-8 (text formats), and an
out-of-range value. Each command that reads the file must then exit non-zero with a typed
one-line error or a detected mismatch — never 0, never a traceback, never an "internal error",
never a hang (a FIFO is opened by nobody).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_zk.cli import main
from lightning_zk.ledger.merkle import LEAF_TAG
from tests.audit._runs import in_project

TEXT = ("json", "jsonl", "yaml")
MUTATIONS = ("truncate", "flip", "append", "delete", "directory", "fifo", "symlink", "deep_nesting",
             "invalid_utf8", "out_of_range")
# file kind -> (path in the run, format, commands that read it: ("audit"|"ledger"|...))
ROUNDED_FILES = {
    "manifest": ("manifest.json", "json", ("audit", "ledger", "dispute")),
    "steps": ("steps.jsonl", "jsonl", ("audit", "ledger", "dispute")),
    "config": ("config.yaml", "yaml", ("audit",)),
    "ledger": ("ledger.sqlite", "sqlite", ("audit", "ledger", "dispute")),
    "log": ("rounding/step-00000005.rlog", "rlog", ("audit", "ledger")),
    "initial_state": ("checkpoints/step-00000000.safetensors", "safetensors", ("audit", "ledger")),
    "checkpoint": ("checkpoints/step-00000004.safetensors", "safetensors", ("audit", "ledger")),
}
FIXED_FILES = {
    "manifest": ("manifest.json", "json", ("verify", "ledger")),
    "steps": ("steps.jsonl", "jsonl", ("verify", "ledger")),
    "ledger": ("ledger.sqlite", "sqlite", ("verify", "ledger")),
    "log": ("rounding/step-00000002.rlog", "rlog", ("verify", "ledger")),
    # a zk run's checkpoints are private (the public bundle has none): `verify` does not read
    # them, the trainer's own `ledger --verify` does
    "initial_state": ("checkpoints/step-00000000.safetensors", "safetensors", ("ledger",)),
    "checkpoint": ("checkpoints/step-00000002.safetensors", "safetensors", ("ledger",)),
    "unit_proof": ("proofs/unit-00000002-00000002.lzkt", "lzkt", ("verify",)),
    "unit_statement": ("proofs/unit-00000002-00000002.json", "json", ("verify",)),
    "seal": ("proofs/seal.lzkt", "lzkt", ("verify",)),
    "tape": ("tapes/step-00000000.npz", "npz", ("prove",)),
}
OUTCOMES: Counter = Counter()


def _cases(kind: str, files: dict) -> list:
    return [pytest.param(kind, name, mutation, id=f"{kind}-{name}-{mutation}")
            for name, (_, fmt, _) in files.items() for mutation in MUTATIONS
            if fmt in TEXT or mutation not in ("deep_nesting", "invalid_utf8")]


# --- mutations -----------------------------------------------------------------------------------
def _flip_at(data: bytes, fmt: str) -> int:
    """A byte inside committed content (a digest, a leaf, a model size), else the middle."""
    if fmt in ("json", "jsonl"):
        return list(re.finditer(rb"[0-9a-f]{64}", data))[-1].start() + 10
    if fmt == "yaml":
        return re.search(rb"hidden: (\d)", data).start(1)
    if fmt == "sqlite":
        return data.index(LEAF_TAG) + len(LEAF_TAG) + 8 + 5
    return len(data) // 2


def _out_of_range(path: Path, data: bytes, fmt: str, run: Path) -> bytes | None:
    if fmt == "json" and path.name == "manifest.json":
        manifest = json.loads(data)
        manifest["steps_committed"] = -1
        return json.dumps(manifest, indent=2).encode()
    if fmt == "json":  # a statement
        stmt = json.loads(data)
        stmt["step_start"] = -(2**70)
        return json.dumps(stmt).encode()
    if fmt == "jsonl":
        lines = data.splitlines(keepends=True)
        lines[-1] = re.sub(rb'"log_bytes":\s*\d+', b'"log_bytes":1e400', lines[-1])
        return b"".join(lines)
    if fmt == "yaml":
        return re.sub(rb"hidden: \d+", b"hidden: -5", data)
    if fmt == "rlog":
        return data[:16] + struct.pack("<I", 0xFFFFFFFF) + data[20:]
    if fmt == "safetensors":
        return struct.pack("<Q", 2**63) + data[8:]
    if fmt == "lzkt":
        return data[:4] + struct.pack("<H", 0xFFFF) + data[6:]
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays["__header__"].tobytes())
        header["frac_bits"] = 10**6
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez_compressed(path, **arrays)
        return None
    con = sqlite3.connect(path)  # sqlite: a leaf whose step index is 2**64 - 1
    with con:
        con.execute("DROP TRIGGER IF EXISTS leaf_no_update")
        leaf = con.execute("SELECT entry FROM leaf WHERE id = 3").fetchone()[0]
        bad = leaf[:len(LEAF_TAG)] + struct.pack("<Q", 2**64 - 1) + leaf[len(LEAF_TAG) + 8:]
        con.execute("UPDATE leaf SET entry = ? WHERE id = 3", (bad,))
    con.close()
    return None


def mutate(run: Path, rel: str, fmt: str, mutation: str, outside: Path) -> None:
    path = run / rel
    data = path.read_bytes()
    new: bytes | None = None
    if mutation == "truncate":
        new = data[: len(data) // 2]
    elif mutation == "flip":
        at = _flip_at(data, fmt)
        new = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
    elif mutation == "append":
        new = data + b"\x00garbage\xff" * 8
    elif mutation == "deep_nesting":
        depth = 200_000 if fmt != "yaml" else 20_000
        new = b"[" * depth + b"]" * depth + (b"\n" if fmt == "jsonl" else b"")
    elif mutation == "invalid_utf8":
        if fmt == "yaml":
            new = b"# \xc3\x28\n" + data
        else:
            at = data.rindex(b'"', 0, len(data) - 2)  # inside the last string value
            new = data[:at] + b"\xc3\x28" + data[at:]
    elif mutation == "out_of_range":
        new = _out_of_range(path, data, fmt, run)
    else:
        path.unlink()
        if mutation == "directory":
            path.mkdir()
            (path / "inside").write_bytes(data)
        elif mutation == "fifo":
            os.mkfifo(path)
        elif mutation == "symlink":  # identical content, but outside the run directory
            outside.mkdir(exist_ok=True)
            (outside / path.name).write_bytes(data)
            path.symlink_to(outside / path.name)
    if new is not None:
        path.write_bytes(new)


# --- commands --------------------------------------------------------------------------------
def _command(name: str, run: Path, audit: Path | None, tmp: Path) -> list[str]:
    return {
        "audit": ["audit", str(run), "--report", str(tmp / "report.json")],
        "ledger": ["ledger", str(run), "--verify"],
        "dispute": ["dispute", str(run), str(audit), "--out", str(tmp / "verdict.json")],
        "verify": ["verify", str(run)],
        "prove": ["prove", str(run), "--backend", "numpy"],
    }[name]


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("the command did not return within 120 s")


def run_checked(argv: list[str], capsys) -> tuple[int, str]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        with in_project():
            code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    return code, out.out + out.err


def _check(kind: str, name: str, mutation: str, files: dict, source: Path, audit: Path | None,
           tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(source, tmp_path / "run", symlinks=True))
    rel, fmt, commands = files[name]
    mutate(run, rel, fmt, mutation, tmp_path / "outside")
    for command in commands:
        code, text = run_checked(_command(command, run, audit, tmp_path), capsys)
        where = f"{kind} {name} {mutation}: lightning-zk {command} exited {code}:\n{text[-1500:]}"
        assert code != 0, where
        assert "Traceback" not in text and "internal error" not in text, where
        typed = code == 2 or (command == "ledger" and code == 1 and "FAILED: " in text)
        OUTCOMES["typed error" if typed else "detected mismatch"] += 1
        if not typed:  # a replay/verification that ran and reported what differs
            assert code == 1 and ("MISMATCH" in text or "FAILED" in text or "dishonest" in text), where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.audit._runs import fixed_run, rounded_run

    work = tmp_path_factory.mktemp("corruption")
    run, audit = rounded_run(work)
    return {"rounded": (run, audit), "fixed": (fixed_run(work), None)}


@pytest.mark.parametrize("kind,name,mutation", _cases("rounded", ROUNDED_FILES) +
                         _cases("fixed", FIXED_FILES))
def test_corrupted_file_is_refused(runs, kind, name, mutation, tmp_path, capsys):
    files = ROUNDED_FILES if kind == "rounded" else FIXED_FILES
    source, audit = runs[kind]
    _check(kind, name, mutation, files, source, audit, tmp_path, capsys)


def test_every_file_kind_and_mutation_is_covered():
    """The matrix covers each file of both runs and each mutation (so no case can drop out)."""
    cases = _cases("rounded", ROUNDED_FILES) + _cases("fixed", FIXED_FILES)
    assert {c.values[2] for c in cases} == set(MUTATIONS)
    assert len(cases) == 7 * 8 + 3 * 2 + 10 * 8 + 3 * 2


@pytest.mark.parametrize("kind", ["rounded", "fixed"])
def test_a_committed_ledger_must_be_published(runs, kind, tmp_path, capsys):
    """``ledger: null`` in the manifest of a run that holds its ledger: not OK (issue 15, §3)."""
    source, audit = runs[kind]
    run = Path(shutil.copytree(source, tmp_path / "run"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["ledger"] = None
    (run / "manifest.json").write_text(json.dumps(manifest))
    for command in ("audit", "ledger", "dispute") if kind == "rounded" else ("verify", "ledger"):
        code, text = run_checked(_command(command, run, audit, tmp_path), capsys)
        assert code != 0 and "Traceback" not in text, text
        assert "publishes no ledger" in text or "publish" in text, text


@pytest.fixture(scope="module", autouse=True)
def _counts():
    """Print how the commands refused the corrupted runs (``pytest -s`` shows it)."""
    yield
    print(f"\ncorruption matrix: {len(_cases('rounded', ROUNDED_FILES))} rounded + "
          f"{len(_cases('fixed', FIXED_FILES))} fixed cases; command outcomes {dict(OUTCOMES)}")
