"""The Merkle ledger on its own: leaf format, roots, tampering, inclusion and consistency proofs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_zk.ledger.merkle import (
    LEAF_SIZE,
    LEAF_TAG,
    LeafProof,
    Ledger,
    LedgerError,
    LedgerFileError,
    LedgerMismatchError,
    LedgerRootError,
    ProofError,
    batch_indices_digest,
    consistency_from_json,
    consistency_to_json,
    empty_root,
    leaf_bytes,
    leaf_hash,
    parse_leaf,
    verify_consistency,
)
from lightning_zk.ledger.rundir import StepRecord


def _hex(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def record(step: int, salt: str = "") -> StepRecord:
    return StepRecord(
        step=step, epoch=0, batch_idx=step, batch_indices=[step, step + 1],
        batch_digest=_hex("batch", step, salt), state_digest=_hex("state", step, salt),
        log_file=f"rounding/step-{step:08d}.rlog", log_sha256=_hex("log", step, salt),
        log_bytes=10, logged_elements=0, rounded_elements=5,
    )


def records(n: int, salt: str = "") -> list[StepRecord]:
    return [record(i, salt) for i in range(n)]


def make_ledger(tmp_path, n: int, salt: str = "", name: str = "ledger.sqlite") -> Ledger:
    ledger = Ledger(tmp_path / name, create=True)
    ledger.extend(records(n, salt))
    return ledger


def rfc9162_root(leaves: list[bytes]) -> bytes:
    """Independent reference: RFC 9162 §2.1.1 MTH over leaf data."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + rfc9162_root(leaves[:k]) + rfc9162_root(leaves[k:])).digest()


def _tamper(path, sql: str, *params) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute("DROP TRIGGER IF EXISTS leaf_no_update")
        con.execute("DROP TRIGGER IF EXISTS leaf_no_delete")
        con.execute(sql, params)
    con.close()


# --- leaf format ------------------------------------------------------------------------------
def test_leaf_layout_known_answer():
    r = record(7)
    leaf = leaf_bytes(r)
    expected = (b"lightning-zk/leaf/v1" + struct.pack("<Q", 7) + bytes.fromhex(r.state_digest)
                + bytes.fromhex(r.batch_digest)
                + hashlib.sha256(b"lightning-zk/batch-indices/v1\x01" + struct.pack("<3Q", 2, 7, 8)).digest()
                + bytes.fromhex(r.log_sha256))
    assert leaf == expected and len(leaf) == LEAF_SIZE == 156 and leaf.startswith(LEAF_TAG)
    decoded = parse_leaf(leaf)
    assert (decoded.step, decoded.state_digest, decoded.log_sha256) == (7, r.state_digest, r.log_sha256)
    assert leaf_hash(leaf) == hashlib.sha256(b"\x00" + leaf).digest()


def test_every_committed_field_changes_the_leaf():
    base = record(3)
    variants = [replace(base, step=4), replace(base, state_digest=_hex("x")),
                replace(base, batch_digest=_hex("y")), replace(base, batch_indices=[3, 5]),
                replace(base, batch_indices=None), replace(base, log_sha256=_hex("z"))]
    leaves = {leaf_bytes(v) for v in variants} | {leaf_bytes(base)}
    assert len(leaves) == len(variants) + 1
    assert batch_indices_digest(None) != batch_indices_digest([])
    # statistics are not committed
    assert leaf_bytes(replace(base, log_bytes=99, logged_elements=3)) == leaf_bytes(base)


@pytest.mark.parametrize("field,value", [("state_digest", "abc"), ("batch_digest", ""),
                                         ("log_sha256", "zz" * 32), ("batch_indices", [-1])])
def test_malformed_record_is_a_typed_error(field, value):
    with pytest.raises(LedgerMismatchError, match="step 2|uint64"):
        leaf_bytes(replace(record(2), **{field: value}))


def test_parse_leaf_rejects_other_formats():
    with pytest.raises(LedgerFileError, match="not a lightning-zk/leaf/v1 leaf"):
        parse_leaf(b"lightning-zk/leaf/v2" + bytes(136))
    with pytest.raises(LedgerFileError):
        parse_leaf(leaf_bytes(record(0))[:-1])


# --- roots and appends -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 13])
def test_root_matches_rfc9162_reference(tmp_path, n):
    with make_ledger(tmp_path, n) as ledger:
        assert ledger.size == n
        assert ledger.root() == rfc9162_root([leaf_bytes(r) for r in records(n)])
        assert ledger.root(0) == empty_root()


def test_append_refuses_gaps_and_duplicates(tmp_path):
    with make_ledger(tmp_path, 3) as ledger:
        with pytest.raises(LedgerMismatchError, match="must be step 3, not step 5"):
            ledger.append(record(5))
        with pytest.raises(LedgerMismatchError, match="must be step 3, not step 2"):
            ledger.append(record(2))
        assert ledger.append(record(3)) == 4
        assert ledger.extend(records(4)) == 4  # nothing new: no duplicates
        assert ledger.extend(records(6)) == 6


def test_reopen_keeps_leaves(tmp_path):
    make_ledger(tmp_path, 5).close()
    with Ledger(tmp_path) as ledger:  # a run directory works too
        ledger.check_records(records(5))
        assert ledger.root() == rfc9162_root([leaf_bytes(r) for r in records(5)])


# --- checks against records, published roots, tampering ----------------------------------------
def test_check_records_names_step_and_field(tmp_path):
    with make_ledger(tmp_path, 6) as ledger:
        ledger.check_records(records(6))
        edited = records(6)
        edited[4] = replace(edited[4], state_digest=_hex("poisoned"))
        with pytest.raises(LedgerMismatchError, match=r"step 4 disagrees with steps.jsonl in state_digest"):
            ledger.check_records(edited)
        with pytest.raises(LedgerMismatchError, match="records only 5 steps"):
            ledger.check_records(records(5))
        with pytest.raises(LedgerMismatchError, match="steps 6..6 are not committed"):
            ledger.check_records(records(7))
        ledger.check_records(records(7), complete=False)  # a prefix is fine when allowed


def test_published_root_mismatch(tmp_path):
    with make_ledger(tmp_path, 6) as ledger, make_ledger(tmp_path, 6, "other", "b.sqlite") as other:
        ledger.check_root(4, ledger.root(4))
        with pytest.raises(LedgerRootError, match="first 6 leaves hash to"):
            ledger.check_root(6, other.root())
        with pytest.raises(LedgerRootError, match="covers 9 steps"):
            ledger.check_root(9, ledger.root())


def test_tampered_hash_column(tmp_path):
    ledger = make_ledger(tmp_path, 6)
    published = ledger.root()
    ledger.close()
    _tamper(tmp_path / "ledger.sqlite", "UPDATE leaf SET hash = ? WHERE id = 3", b"\x11" * 32)
    with Ledger(tmp_path) as ledger:
        with pytest.raises(LedgerFileError, match="stored hash of step 2 .*tampered"):
            ledger.check_integrity()
        with pytest.raises(LedgerRootError):
            ledger.check_root(6, published)


def test_tampered_entry_column(tmp_path):
    make_ledger(tmp_path, 6).close()
    forged = leaf_bytes(replace(record(1), batch_digest=_hex("forged")))
    _tamper(tmp_path / "ledger.sqlite", "UPDATE leaf SET entry = ?, hash = ? WHERE id = 2",
            forged, leaf_hash(forged))
    with Ledger(tmp_path) as ledger, pytest.raises(LedgerMismatchError, match="step 1 .*batch_digest"):
        ledger.check_records(records(6))


def test_reordered_rows(tmp_path):
    make_ledger(tmp_path, 4).close()
    moved = leaf_bytes(record(3))
    _tamper(tmp_path / "ledger.sqlite", "UPDATE leaf SET entry = ?, hash = ? WHERE id = 2",
            moved, leaf_hash(moved))
    with Ledger(tmp_path) as ledger, pytest.raises(LedgerFileError, match="row 2 holds the leaf of step 3"):
        ledger.check_integrity()


def test_deleted_row_is_detected_on_open(tmp_path):
    make_ledger(tmp_path, 5).close()
    _tamper(tmp_path / "ledger.sqlite", "DELETE FROM leaf WHERE id = 2")
    with pytest.raises(LedgerFileError, match="not contiguous"):
        Ledger(tmp_path)


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b""])
def test_garbage_or_missing_file(tmp_path, content):
    path = tmp_path / "ledger.sqlite"
    if content:
        path.write_bytes(content)
    with pytest.raises(LedgerFileError, match="ledger.sqlite"):
        Ledger(path)


def test_corrupted_database_pages(tmp_path):
    make_ledger(tmp_path, 40).close()
    path = tmp_path / "ledger.sqlite"
    data = bytearray(path.read_bytes())
    data[100:] = bytes(len(data) - 100)  # keep the header, zero every page
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError):
        with Ledger(path) as ledger:
            ledger.check_records(records(40))


def test_foreign_sqlite_schema(tmp_path):
    con = sqlite3.connect(tmp_path / "ledger.sqlite")
    con.execute("CREATE TABLE leaf(id INTEGER PRIMARY KEY, payload TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LedgerFileError, match="not a pymerkle tree"):
        Ledger(tmp_path)


# --- inclusion proofs --------------------------------------------------------------------------
def test_inclusion_proofs_verify_and_fail_for_anything_else(tmp_path):
    with make_ledger(tmp_path, 13) as ledger, make_ledger(tmp_path, 13, "x", "b.sqlite") as other:
        root = ledger.root()
        for step in range(13):
            proof = LeafProof.from_json(json.loads(json.dumps(ledger.prove_inclusion(step).to_json())))
            assert proof.verify(root, size=13, step=step).step == step
        proof = ledger.prove_inclusion(5)
        with pytest.raises(ProofError, match="does not verify"):
            proof.verify(other.root())                           # another root
        with pytest.raises(ProofError, match="not step 6"):
            proof.verify(root, step=6)                           # another step
        with pytest.raises(ProofError, match="not the expected leaf"):
            proof.verify(root, leaf=leaf_bytes(record(5, "x")))   # another leaf
        forged = replace(proof, leaf=leaf_bytes(record(5, "x")))
        with pytest.raises(ProofError, match="does not verify"):
            forged.verify(root)                                  # a swapped-in leaf
        relabelled = replace(proof, step=6, leaf=leaf_bytes(record(6)))
        with pytest.raises(ProofError, match="does not verify"):
            relabelled.verify(root)                              # path of step 5 for step 6
        with pytest.raises(ProofError, match="not 12"):
            proof.verify(root, size=12)
        old = ledger.prove_inclusion(5, size=8)                  # against an earlier root
        old.verify(ledger.root(8))
        with pytest.raises(ProofError):
            old.verify(root)


def test_inclusion_proof_requests_out_of_range(tmp_path):
    with make_ledger(tmp_path, 4) as ledger:
        for step, size in [(4, None), (-1, None), (2, 2), (0, 9)]:
            with pytest.raises(ProofError, match="no inclusion proof"):
                ledger.prove_inclusion(step, size)


@pytest.mark.parametrize("edit", [
    lambda d: d["proof"]["path"].__setitem__(1, "00" * 32),
    lambda d: d["proof"]["rule"].append(0),
    lambda d: d["proof"]["metadata"].__setitem__("security", False),
    lambda d: d["proof"]["metadata"].__setitem__("algorithm", "sha512"),
    lambda d: d.__setitem__("format", "something-else"),
    lambda d: d["proof"].pop("path"),
    lambda d: d.__setitem__("leaf", "zz"),
])
def test_edited_inclusion_proof_json_fails(tmp_path, edit):
    with make_ledger(tmp_path, 9) as ledger:
        data = ledger.prove_inclusion(4).to_json()
        root = ledger.root()
    edit(data)
    with pytest.raises(ProofError):
        LeafProof.from_json(data).verify(root)


# --- consistency proofs ------------------------------------------------------------------------
def test_consistency_proofs_for_true_prefixes_only(tmp_path):
    forked_records = records(11)
    forked_records[2] = record(2, "fork")
    with make_ledger(tmp_path, 11) as ledger, Ledger(tmp_path / "fork.sqlite", create=True) as fork:
        fork.extend(forked_records)
        size, root, fork_root = ledger.size, ledger.root(), fork.root()
        for old in range(1, 12):
            proof = consistency_from_json(json.loads(json.dumps(
                consistency_to_json(ledger.prove_consistency(old), ledger.root(old), root))))
            verify_consistency(proof, old, ledger.root(old), size, root)
        proof = ledger.prove_consistency(6)
        with pytest.raises(ProofError, match="is not a prefix"):
            verify_consistency(proof, 6, fork.root(6), size, root)      # another history
        with pytest.raises(ProofError):
            verify_consistency(proof, 6, ledger.root(6), size, fork_root)
        with pytest.raises(ProofError):
            verify_consistency(proof, 5, ledger.root(5), size, root)    # wrong size
        with pytest.raises(ProofError):
            verify_consistency(fork.prove_consistency(6), 6, ledger.root(6), size, fork_root)
        # the fork does agree on its first two leaves
        verify_consistency(fork.prove_consistency(2), 2, ledger.root(2), size, fork_root)
        with pytest.raises(ProofError, match="no consistency proof"):
            ledger.prove_consistency(12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), data=st.data())
def test_proofs_property(tmp_path_factory, n, data):
    tmp = tmp_path_factory.mktemp("prop")
    with make_ledger(tmp, n) as ledger:
        step = data.draw(st.integers(0, n - 1))
        size = data.draw(st.integers(step + 1, n))
        ledger.prove_inclusion(step, size).verify(ledger.root(size), size=size, step=step)
        old = data.draw(st.integers(1, n))
        verify_consistency(ledger.prove_consistency(old), old, ledger.root(old), n, ledger.root())
        if old < n:
            with pytest.raises(ProofError):
                verify_consistency(ledger.prove_consistency(old), old, ledger.root(n), n, ledger.root())


def test_a_ledger_killed_while_it_is_created_leaves_no_file_without_its_table(tmp_path, monkeypatch):
    """SQLite makes the file before the 'leaf' table: a kill in between must not leave a file
    that readers refuse as "not a lightning-zk ledger" (found by the random-kill test)."""
    from lightning_zk.ledger import merkle

    real = merkle.SqliteTree

    def killed(dbfile, **kwargs):
        sqlite3.connect(dbfile).execute("CREATE TABLE other(x)")  # the file, but no 'leaf' table
        raise KeyboardInterrupt  # the process dies here

    path = tmp_path / "ledger.sqlite"
    monkeypatch.setattr(merkle, "SqliteTree", killed)
    with pytest.raises(KeyboardInterrupt):
        Ledger(path, create=True)
    assert not path.exists()  # readers see no ledger yet (a run killed before its first leaf)
    monkeypatch.setattr(merkle, "SqliteTree", real)
    with Ledger(path, create=True) as ledger:  # the next writer creates it, leftovers removed
        assert ledger.size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]
    with Ledger(path) as ledger:
        assert ledger.size == 0
