"""CommitCallback in real training: ledger, checkpoints, resume, SIGKILL, and the ledger CLI."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_zk import RunDirectory, VerifiableStrategy
from lightning_zk.callbacks import CommitCallback
from lightning_zk.commands import ledger as ledger_cli
from lightning_zk.ledger.merkle import (
    LEAF_FORMAT,
    Ledger,
    LedgerMismatchError,
    LedgerRootError,
    leaf_bytes,
    leaf_hash,
)
from lightning_zk.ledger.state import load_snapshot
from lightning_zk.strategies.session import StepListener
from tests.models import loader, make_model, trainer_kwargs

STEPS = 14
EVERY = 4
KILL_SCRIPT = Path(__file__).with_name("_killed_run.py")


class _Crash(RuntimeError):
    pass


class CrashAt(L.Callback, StepListener):
    """Raise when ``step`` is committed: after its record, before CommitCallback's leaf when it
    is listed before CommitCallback (listeners are told in the order of the callbacks)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_committed(self, session, record, state):
        if record.step == self.step:
            raise _Crash(f"crash at step {self.step}")


class CrashBefore(L.Callback):
    """Raise in on_train_batch_start of ``step``: the step is never committed."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Crash(f"crash before step {self.step}")


def fit(run_dir, steps=STEPS, callbacks=(), model=None, ckpt_dir=None, ckpt_path=None,
        commit_first=True, **strategy_kwargs):
    commit = CommitCallback(checkpoint_every_n_steps=EVERY)
    extra = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1)] if ckpt_dir else []
    cbs = [commit, *callbacks] if commit_first else [*callbacks, commit]
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, **strategy_kwargs), max_steps=steps,
                        callbacks=[*cbs, *extra],
                        **trainer_kwargs(enable_checkpointing=ckpt_dir is not None))
    trainer.fit(model or make_model("mlp"), train_dataloaders=loader("mlp"), ckpt_path=ckpt_path)
    return trainer


def latest_ckpt(ckpt_dir: Path) -> Path:
    return max(ckpt_dir.glob("*.ckpt"), key=lambda p: int(re.search(r"step=(\d+)", p.name)[1]))


def ledger_state(run_dir) -> tuple[int, str]:
    with Ledger(run_dir) as ledger:
        ledger.check_records(RunDirectory(run_dir).read_steps())
        return ledger.size, ledger.root().hex()


def checkpoint_steps(run_dir) -> list[int]:
    return sorted(int(p.stem[5:]) for p in (Path(run_dir) / "checkpoints").glob("step-*.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted reference run of STEPS steps."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    fit(run_dir)
    return run_dir


@pytest.fixture
def run_copy(straight, tmp_path) -> Path:
    return Path(shutil.copytree(straight, tmp_path / "run"))


# --- a finished run ------------------------------------------------------------------------------
def test_ledger_checkpoints_and_manifest(straight):
    run = RunDirectory(straight)
    records = run.read_steps()
    size, root = ledger_state(straight)
    assert size == len(records) == STEPS
    published = run.read_manifest()["ledger"]
    assert published == {"file": "ledger.sqlite", "leaf_format": LEAF_FORMAT, "algorithm": "sha256",
                         "size": STEPS, "root": root, "checkpoint_every_n_steps": EVERY,
                         "save_last": True}
    assert checkpoint_steps(straight) == [0, 4, 8, 12, 14]
    for n in (4, 8, 12, 14):
        assert load_snapshot(run.checkpoint_path(n)).digest() == records[n - 1].state_digest
    with Ledger(straight) as ledger:
        assert [ledger.leaf(r.step) for r in records] == [leaf_bytes(r) for r in records]


@pytest.mark.parametrize("value", [0, -3, True, 2.0, "4"])
def test_invalid_interval(value):
    with pytest.raises(ValueError, match="checkpoint_every_n_steps"):
        CommitCallback(checkpoint_every_n_steps=value)


def test_requires_verifiable_strategy(tmp_path):
    trainer = L.Trainer(max_steps=2, callbacks=[CommitCallback()],
                        **trainer_kwargs(default_root_dir=tmp_path))
    with pytest.raises(TypeError, match="VerifiableStrategy"):
        trainer.fit(make_model("mlp"), train_dataloaders=loader("mlp"))


def test_state_changed_after_the_batch_belongs_to_its_step(tmp_path):
    """on_train_batch_end runs before the step boundary: its change is committed with the step."""
    class Meddle(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pl_module.net[0].bias.data += 1.0

    model = make_model("mlp")
    fit(tmp_path / "run", steps=6, callbacks=[Meddle()], model=model, commit_first=False)
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert checkpoint_steps(tmp_path / "run") == [0, 4, 6]
    for n in (4, 6):
        assert load_snapshot(run.checkpoint_path(n)).digest() == records[n - 1].state_digest
    assert run.read_manifest()["final_state_digest"] == records[-1].state_digest
    final = load_snapshot(run.checkpoint_path(6)).tensors["model/net.0.bias"]
    assert torch.equal(final, model.net[0].bias.detach())  # the committed state is the user's model


@pytest.mark.parametrize("compute", [{}, {"compute_dtype": torch.float32, "mantissa_bits": 7}],
                         ids=["float64-compute", "float32-compute"])
def test_the_last_checkpoint_holds_the_committed_state_when_on_train_end_changes_the_model(
        tmp_path, compute):
    """Inline commits digest in place what needs no conversion (all of a float32-compute state);
    the last state is copied when training ends, so a change made after it (a callback's
    ``on_train_end``) is not what the last checkpoint saves."""
    class Late(L.Callback):
        def on_train_end(self, trainer, pl_module):
            pl_module.net[0].bias.data += 1.0

    model = make_model("mlp")
    fit(tmp_path / "run", steps=6, callbacks=[Late()], model=model, **compute)
    run = RunDirectory(tmp_path / "run")
    records = run.read_steps()
    assert checkpoint_steps(tmp_path / "run") == [0, 4, 6]
    last = load_snapshot(run.checkpoint_path(6))
    assert last.digest() == records[-1].state_digest == run.read_manifest()["final_state_digest"]
    assert torch.equal(last.tensors["model/net.0.bias"] + 1.0, model.net[0].bias.detach())


# --- resume ---------------------------------------------------------------------------------------
def _crashed_run(tmp_path, how: str) -> tuple[Path, Path]:
    """Crash at step 7 (checkpoints of Lightning at steps 3 and 6)."""
    run_dir, ckpt_dir = tmp_path / "run", tmp_path / "ckpt"
    if how == "before-step":
        with pytest.raises(_Crash):
            fit(run_dir, callbacks=[CrashBefore(7)], ckpt_dir=ckpt_dir)
    else:
        with pytest.raises(_Crash):
            fit(run_dir, callbacks=[CrashAt(7)], ckpt_dir=ckpt_dir, commit_first=False)
    return run_dir, ckpt_dir


@pytest.mark.parametrize("how", ["before-step", "before-leaf"])
@pytest.mark.parametrize("ckpt_step", [3, 6])
def test_resume_keeps_ledger_gap_free(tmp_path, straight, how, ckpt_step):
    run_dir, ckpt_dir = _crashed_run(tmp_path, how)
    records = RunDirectory(run_dir).read_steps()
    assert len(records) == (7 if how == "before-step" else 8)
    with Ledger(run_dir) as ledger:
        assert ledger.size == 7  # before-leaf: record 7 committed, its leaf not
        ledger.check_records(records, complete=False)
    assert checkpoint_steps(run_dir) == [0, 4]
    fit(run_dir, ckpt_path=ckpt_dir / f"epoch=0-step={ckpt_step}.ckpt")
    assert ledger_state(run_dir) == ledger_state(straight)  # no gap, no duplicate, same leaves
    assert checkpoint_steps(run_dir) == checkpoint_steps(straight)
    assert RunDirectory(run_dir).read_manifest()["ledger"]["root"] == ledger_state(straight)[1]


def test_resume_rejects_a_ledger_that_disagrees_with_the_records(tmp_path):
    run_dir, ckpt_dir = _crashed_run(tmp_path, "before-step")
    forged = leaf_bytes(replace(RunDirectory(run_dir).read_steps()[1], batch_indices=[0, 1]))
    con = sqlite3.connect(run_dir / "ledger.sqlite")
    with con:
        con.execute("DROP TRIGGER leaf_no_update")
        con.execute("UPDATE leaf SET entry = ?, hash = ? WHERE id = 2", (forged, leaf_hash(forged)))
    con.close()
    with pytest.raises(LedgerMismatchError, match="step 1 disagrees with steps.jsonl in batch_indices"):
        fit(run_dir, ckpt_path=latest_ckpt(ckpt_dir))


def test_resume_rejects_rewritten_history(tmp_path):
    """Records edited before the checkpoint and the ledger rebuilt: the checkpoint's root catches it."""
    run_dir, ckpt_dir = _crashed_run(tmp_path, "before-step")
    run = RunDirectory(run_dir)
    lines = run.steps_path.read_text().splitlines()
    first = json.loads(lines[1])
    first["batch_digest"] = "ab" * 32
    lines[1] = json.dumps(first, sort_keys=True, separators=(",", ":"))
    run.steps_path.write_text("\n".join(lines) + "\n")
    (run_dir / "ledger.sqlite").unlink()
    with pytest.raises(LedgerRootError, match="root recorded in the Lightning checkpoint"):
        fit(run_dir, ckpt_path=ckpt_dir / "epoch=0-step=6.ckpt")


# --- a real process killed with SIGKILL ---------------------------------------------------------
@pytest.mark.parametrize("where", ["before-leaf", "after-leaf"])
def test_sigkilled_run_leaves_a_verifiable_prefix_and_resumes(tmp_path, straight, where, capsys):
    run_dir, ckpt_dir = tmp_path / "run", tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, str(KILL_SCRIPT), str(run_dir), str(ckpt_dir), str(STEPS), "7", where],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run_dir / "ledger.sqlite-wal").exists()  # committed leaves still in the WAL: recovered
    run = RunDirectory(run_dir)
    records = run.read_steps()
    assert len(records) == 8
    with Ledger(run_dir) as ledger:
        assert ledger.size == (7 if where == "before-leaf" else 8)
        ledger.check_records(records, complete=False)
    assert checkpoint_steps(run_dir) == ([0, 4] if where == "before-leaf" else [0, 4, 8])
    for n in checkpoint_steps(run_dir)[1:]:
        assert load_snapshot(run.checkpoint_path(n)).digest() == records[n - 1].state_digest
    assert ledger_cli.main([str(run_dir), "--verify", "--prefix"]) == 0
    assert ledger_cli.main([str(run_dir), "--verify"]) == (1 if where == "before-leaf" else 0)
    capsys.readouterr()

    fit(run_dir, ckpt_path=latest_ckpt(ckpt_dir))
    assert ledger_state(run_dir) == ledger_state(straight)
    assert checkpoint_steps(run_dir) == checkpoint_steps(straight)
    assert ledger_cli.main([str(run_dir), "--verify"]) == 0


# --- the ledger command line --------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    code = ledger_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_info_and_verify(straight, capsys):
    size, root = ledger_state(straight)
    code, out, _ = cli(capsys, straight)
    assert code == 0 and f"size    {size}" in out and root in out
    code, out, _ = cli(capsys, straight, "--verify")
    assert code == 0 and "matches manifest.json" in out


def test_cli_inclusion_proof_round_trip(straight, tmp_path, capsys):
    proof = tmp_path / "p.json"
    assert cli(capsys, straight, "--prove", 5, "--out", proof)[0] == 0
    assert json.loads(proof.read_text())["step"] == 5
    code, out, _ = cli(capsys, straight, "--check-proof", proof)
    assert code == 0 and "step 5" in out
    code, out, _ = cli(capsys, straight, "--prove", 2, "--size", 6)  # to stdout, earlier root
    assert code == 0 and json.loads(out)["size"] == 6
    with Ledger(straight) as ledger:
        root6 = ledger.root(6).hex()
    stdout_proof = tmp_path / "p6.json"
    stdout_proof.write_text(out)
    assert cli(capsys, straight, "--check-proof", stdout_proof, "--root", root6)[0] == 0
    code, _, err = cli(capsys, straight, "--check-proof", proof, "--root", root6)
    assert code == 1 and "does not verify" in err
    data = json.loads(proof.read_text())
    data["step"] = 6
    proof.write_text(json.dumps(data))
    code, _, err = cli(capsys, straight, "--check-proof", proof)
    assert code == 1 and "FAILED" in err
    code, _, err = cli(capsys, straight, "--prove", STEPS)
    assert code == 1 and "no inclusion proof of step 14" in err


def test_cli_consistency(straight, tmp_path, capsys):
    with Ledger(straight) as ledger:
        old = ledger.root(9).hex()
    assert cli(capsys, straight, "--consistency", 9, old, "--out", tmp_path / "c.json")[0] == 0
    assert json.loads((tmp_path / "c.json").read_text())["prior_size"] == 9
    code, _, err = cli(capsys, straight, "--consistency", 8, old)
    assert code == 1 and "is not a prefix" in err
    code, _, err = cli(capsys, straight, "--consistency", 20, old)
    assert code == 1 and "no consistency proof" in err
    assert cli(capsys, straight, "--consistency", "nine", old)[0] == 1


def test_cli_verify_catches_a_record_that_disagrees(run_copy, capsys):
    steps = run_copy / "steps.jsonl"
    lines = steps.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["log_sha256"] = "cd" * 32
    lines[3] = json.dumps(rec)
    steps.write_text("\n".join(lines) + "\n")
    code, _, err = cli(capsys, run_copy, "--verify")
    assert code == 1 and "step 3 disagrees with" in err and "log_sha256" in err


def test_cli_verify_catches_a_wrong_published_root(run_copy, capsys):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["ledger"]["root"] = "00" * 32
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(capsys, run_copy, "--verify")
    assert code == 1 and "root published in manifest.json" in err


def test_cli_verify_catches_a_tampered_sqlite_file(run_copy, capsys):
    con = sqlite3.connect(run_copy / "ledger.sqlite")
    with con:
        con.execute("DROP TRIGGER leaf_no_update")
        con.execute("UPDATE leaf SET hash = ? WHERE id = 5", (b"\x07" * 32,))
    con.close()
    code, _, err = cli(capsys, run_copy, "--verify")
    assert code == 1 and "stored hash of step 4" in err
    (run_copy / "ledger.sqlite").write_bytes(b"garbage" * 1000)
    code, _, err = cli(capsys, run_copy)
    assert code == 1 and "not a readable lightning-zk ledger" in err


def test_cli_bad_input(run_copy, tmp_path, capsys):
    (run_copy / "ledger.sqlite").unlink()
    code, _, err = cli(capsys, run_copy, "--verify")
    assert code == 1 and "has no Merkle ledger" in err
    assert not (run_copy / "ledger.sqlite").exists()  # reading never creates a ledger
    code, _, err = cli(capsys, tmp_path / "nowhere")
    assert code == 1 and "not a run directory" in err
    assert cli(capsys, run_copy, "--prove")[0] == 2
    assert cli(capsys, run_copy, "--size", 3)[0] == 2
    assert cli(capsys, run_copy, "--verify", "--prove", 1)[0] == 2


def test_cli_registered():
    from lightning_zk import commands

    assert "ledger" in commands.available()
