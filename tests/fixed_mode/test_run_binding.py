"""A proof belongs to one run: statements bound to the manifest and the ledger, checked by
`verify`; the verifier's own security level; and the public bundle that leaks nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import lightning as L
import numpy as np
import pytest

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import prove_run, verify_run
from lightning_zk.audit.publish import BUNDLE_FILE, publish_run
from lightning_zk.cli import main
from lightning_zk.fixed import WitnessTape
from lightning_zk.ledger.errors import RunDirectoryError
from lightning_zk.ledger.state import batch_digest
from lightning_zk.zk.policy import VerifierPolicy
from lightning_zk.zk.training import TrainingStatement
from tests.fixed_mode.models import make_regressor, regression_data, regression_loader
from tests.models import trainer_kwargs


def _train(path, seed=0, n=8):
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=2,
                        callbacks=[CommitCallback(), ProofCallback()], **trainer_kwargs())
    trainer.fit(make_regressor(seed), train_dataloaders=regression_loader(n=n, batch_size=4))
    return trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two proved runs of the same architecture on other data and other initial weights."""
    base = tmp_path_factory.mktemp("binding")
    _train(base / "a", seed=0)
    _train(base / "b", seed=1, n=12)
    return base


@pytest.fixture
def run_a(runs, tmp_path):
    shutil.copytree(runs / "a", tmp_path / "a")
    return tmp_path / "a"


def _problems(path, **kw) -> str:
    report = verify_run(path, **kw)
    assert not report.ok
    return "\n".join(report.problems)


def _edit_manifest(path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_both_runs_verify(runs):
    for name in ("a", "b"):
        report = verify_run(runs / name)
        assert report.ok, report.problems
        assert report.security_bits == 100 and report.ledger == "verified"


def test_proofs_copied_from_another_run_rejected(runs, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(runs / "b", target)
    shutil.rmtree(target / "proofs")
    shutil.copytree(runs / "a" / "proofs", target / "proofs")
    problems = _problems(target)
    assert "statement field run_id" in problems and "ledger_leaves" in problems


def test_renamed_unit_rejected(run_a):
    proofs = run_a / "proofs"
    for suffix in (".lzkt", ".json"):
        os.rename(proofs / f"unit-00000001-00000001{suffix}", proofs / f"unit-00000007-00000007{suffix}")
    assert "names steps 7..7, its statement proves steps 1..1" in _problems(run_a)


def test_stray_files_in_proofs_rejected(run_a):
    (run_a / "proofs" / "unit-00000000-00000000.lzkt").unlink()  # an earlier unit's proof gone
    assert "not proof units or the seal" in _problems(run_a)


def test_interrupted_publication_is_not_a_unit(run_a):
    """A kill while the last unit was published leaves its statement and a temporary file: they
    are not a unit (the proofs then miss a step), and a resuming prover removes them."""
    from lightning_zk.audit.proofs import ChainProver, ProofRunError

    proofs = run_a / "proofs"
    (proofs / "seal.lzkt").unlink()
    (proofs / "unit-00000001-00000001.lzkt").rename(proofs / ".unit-00000001-00000001.lzkt.x1.tmp")
    problems = _problems(run_a)
    assert "not proof units" not in problems and "chain seal" in problems
    with pytest.raises(ProofRunError, match="chain state"):  # (this simulation dropped it)
        ChainProver(run_a)
    assert sorted(p.name for p in proofs.iterdir()) == [
        "unit-00000000-00000000.json", "unit-00000000-00000000.lzkt"]


@pytest.mark.parametrize(
    "field,edit",
    [
        ("run_id", lambda m: m.update(run_id="0" * 32)),
        ("dims", lambda m: m["fixed"].update(dims=[4, 9, 3])),
        ("frac_bits", lambda m: m["fixed"].update(frac_bits=15)),
        ("value_bits", lambda m: m["fixed"].update(value_bits=25)),
        ("lr", lambda m: m["fixed"].update(lr=m["fixed"]["lr"] + 1)),
        ("batch_size", lambda m: m["fixed"].update(batch_size=5)),
        ("security_bits", lambda m: m["fixed"]["proof"].update(security_bits=110)),
        ("blowup", lambda m: m["fixed"]["proof"].update(blowup=8)),
    ],
)
def test_every_statement_field_checked_against_the_manifest(run_a, field, edit):
    """Each mismatch is refused, naming the field: by the statement comparison, or earlier by
    the manifest schema where the edit also contradicts the manifest itself (frac_bits and
    value_bits are in the strategy section too)."""
    _edit_manifest(run_a, edit)
    try:
        problems = _problems(run_a)
    except RunDirectoryError as err:
        assert field in str(err) and field in ("frac_bits", "value_bits"), err
        return
    assert f"statement field {field} is" in problems


def test_statement_leaves_checked_against_the_ledger(run_a):
    """A record changed after proving: its leaf no longer is the one the statement binds."""
    lines = (run_a / "steps.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["batch_digest"] = "ab" * 32
    lines[1] = json.dumps(record)
    (run_a / "steps.jsonl").write_text("\n".join(lines) + "\n")
    problems = _problems(run_a)
    assert "statement field ledger_leaves[0]" in problems and "disagrees with steps.jsonl" in problems


@pytest.mark.parametrize("damage", ["delete", "directory", "null"])
def test_a_committed_ledger_must_be_present(run_a, damage):
    if damage == "null":
        _edit_manifest(run_a, lambda m: m.update(ledger=None))
    else:
        (run_a / "ledger.sqlite").unlink()
        if damage == "directory":
            (run_a / "ledger.sqlite").mkdir()
    assert "ledger" in _problems(run_a)


def test_low_security_statements_rejected_by_default_and_on_request(run_a, capsys):
    """A run re-proved at 1-bit openings (its manifest edited to declare it) never verifies."""
    _edit_manifest(run_a, lambda m: m["fixed"]["proof"].update(security_bits=1))
    prove_run(run_a)
    stmt = TrainingStatement.from_bytes((run_a / "proofs" / "unit-00000000-00000000.json").read_bytes())
    assert stmt.security_bits == 1
    problems = _problems(run_a)
    assert "security_bits" in problems and "expected=100 got=1" in problems
    assert main(["verify", str(run_a)]) == 1
    assert "SecurityPolicyError" in capsys.readouterr().out


def test_verifier_chooses_a_higher_level(runs, capsys):
    assert verify_run(runs / "a", VerifierPolicy(security_bits=100)).ok
    assert "expected=110 got=100" in _problems(runs / "a", policy=VerifierPolicy(security_bits=110))
    assert main(["verify", str(runs / "a"), "--security-bits", "110"]) == 1
    assert main(["verify", str(runs / "a"), "--security-bits", "99"]) == 2
    assert main(["verify", str(runs / "a")]) == 0
    assert "100 bits per opening" in capsys.readouterr().out


def _tree_state(path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.rglob("*"))}


def test_verify_writes_nothing(runs):
    before = _tree_state(runs / "a")
    assert verify_run(runs / "a").ok
    main(["verify", str(runs / "a")])
    assert _tree_state(runs / "a") == before


# --- the public bundle ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "public"
    assert main(["publish", str(runs / "a"), str(out)]) == 0
    return out


def _secrets(run) -> dict[str, list[bytes]]:
    """What a leak would look like: the exact losses, plain digests of the batches and of the
    weights (which a guess reproduces), the tapes' digests, and the private files' bytes."""
    rd = RunDirectory(run)
    out: dict[str, list[bytes]] = {"loss": [], "digest": [], "file": []}
    for record in rd.read_steps():
        loss = record.extra["loss"]
        out["loss"] += [repr(loss).encode(), struct.pack("<d", loss), struct.pack("<f", loss)]
        x, y = regression_data(8)[record.batch_indices]
        tape = WitnessTape.load(run / record.extra["tape"])
        weights = b"".join(tape.tensors[k].tobytes() for k in sorted(tape.tensors) if k.endswith("n"))
        for d in (batch_digest([x, y]), record.extra["tape_sha256"],
                  hashlib.sha256(weights).hexdigest()):
            out["digest"] += [d.encode(), bytes.fromhex(d)]
    for private in list((run / "tapes").rglob("*.*")) + list((run / "checkpoints").glob("*")):
        data = private.read_bytes()
        out["digest"] += [hashlib.sha256(data).hexdigest().encode()]
        out["file"].append(data[-64:] if len(data) > 64 else data)
    key = json.loads((run / "tapes" / "digest-key.json").read_text())["key"]
    out["digest"] += [key.encode(), bytes.fromhex(key)]
    return out


def test_bundle_holds_only_public_files_and_says_what_it_left_out(bundle):
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert not [f for f in files if f.startswith(("tapes/", "checkpoints/")) or f.endswith(".npz")]
    assert {"manifest.json", "steps.jsonl", "ledger.sqlite", "proofs/seal.lzkt", BUNDLE_FILE} <= set(files)
    listing = json.loads((bundle / BUNDLE_FILE).read_text())
    assert set(listing["included"]) == set(files) - {BUNDLE_FILE}
    assert "tapes/digest-key.json" in listing["left_out"]
    assert any(k.startswith("checkpoints/") for k in listing["left_out"])
    assert "file" not in json.loads((bundle / "manifest.json").read_text())["initial_state"]


def test_bundle_leaks_no_loss_no_guessable_digest_no_private_bytes(runs, bundle):
    secrets = _secrets(runs / "a")
    assert all(secrets.values())
    blob = b"".join(p.read_bytes() for p in bundle.rglob("*") if p.is_file())
    for kind, items in secrets.items():
        for item in items:
            assert item not in blob, f"the bundle leaks a {kind}: {item[:40]!r}"
    # the run directory itself holds them (so the check can fail)
    private = (runs / "a" / "steps.jsonl").read_bytes()
    assert any(item in private for item in secrets["loss"] + secrets["digest"])


def test_bundle_verifies_alone(bundle, capsys):
    report = verify_run(bundle)
    assert report.ok, report.problems
    assert main(["verify", str(bundle)]) == 0


def test_publish_refuses_a_non_empty_target(runs, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert main(["publish", str(runs / "a"), str(tmp_path / "x")]) == 2
    assert main(["publish", str(runs / "a"), str(runs / "a" / "inside")]) == 2


def test_rounded_run_bundle_audits(tmp_path):
    """A rounded run's bundle is what an auditor replays: records, logs, checkpoints, ledger."""
    from lightning_zk.audit import replay
    from tests.models import loader, make_model

    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=3,
                        callbacks=[CommitCallback()], **trainer_kwargs())
    trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"))
    (tmp_path / "run" / "notes.txt").write_text("trainer's scratch file")
    report = publish_run(tmp_path / "run", tmp_path / "out")
    assert report.mode == "rounded" and "notes.txt" in report.left_out
    assert any(k.startswith("rounding/") for k in report.included)
    audit = replay(tmp_path / "out", make_model("mlp"), train_dataloaders=loader("mlp"))
    assert audit.ok and audit.steps_checked == 3
    np.testing.assert_equal(sorted(report.included), sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
        if p.is_file() and p.name != BUNDLE_FILE))
