"""ProofCallback and `lightning-zk prove/verify` on fixed-point runs."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest

from lightning_zk import CommitCallback, ProofCallback, VerifiableStrategy
from lightning_zk.audit.proofs import (
    BatchCheckError,
    ProofRunError,
    batch_openings_path,
    check_run_batches,
    load_tapes,
    read_batch_openings,
    verify_run,
)
from lightning_zk.cli import main
from tests.fixed_mode.models import Crash, CrashBefore, make_regressor, regression_loader
from tests.models import make_model, trainer_kwargs


def _fit(run_dir, callbacks, steps=4):
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed"),
                        max_steps=steps, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(make_regressor(), train_dataloaders=regression_loader())


@pytest.fixture(scope="module")
def proven_run(tmp_path_factory):
    """4 steps, 2 per epoch, proved per epoch (aggregated), with a ledger."""
    path = tmp_path_factory.mktemp("proven") / "run"
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=4,
                        callbacks=[CommitCallback(), ProofCallback(aggregate="epoch")], **trainer_kwargs())
    trainer.fit(make_regressor(), train_dataloaders=regression_loader(n=8, batch_size=4))
    return path


def test_epoch_proofs_verify(proven_run, capsys):
    report = verify_run(proven_run)
    assert report.ok, report.problems
    assert report.units == 2 and report.steps_proven == 4 and report.ledger == "verified"
    assert main(["verify", str(proven_run)]) == 0
    assert "OK" in capsys.readouterr().out


def _owner_batches(run_dir, steps):
    """The data owner's float batches (the tapes' quantised data, exactly dequantised)."""
    from lightning_zk.fixed.format import dequantize
    from lightning_zk.ledger.rundir import RunDirectory

    tapes = load_tapes(RunDirectory(run_dir), steps)
    return {t.step: (dequantize(t.tensors["x"], t.frac_bits), dequantize(t.tensors["y"], t.frac_bits))
            for t in tapes}


def test_batch_seeds_are_private_and_let_the_data_owner_check(proven_run):
    import torch

    seeds_file = proven_run / "tapes" / "batch-openings.json"
    assert batch_openings_path(proven_run) == seeds_file and seeds_file.is_file()
    units = {p.stem for p in (proven_run / "proofs").glob("unit-*.lzkt")}
    entries = read_batch_openings(seeds_file)
    assert set(entries) == units and len(units) == 2
    public = b"".join(p.read_bytes() for p in (proven_run / "proofs").iterdir())
    for entry in entries.values():
        assert entry["seed"].encode() not in public and len(bytes.fromhex(entry["seed"])) == 32
    assert not list((proven_run / "proofs").glob("*batch*"))

    batches = _owner_batches(proven_run, range(4))
    assert check_run_batches(proven_run, batches) == [(0, 1), (2, 3)]
    as_tensors = {k: tuple(torch.from_numpy(a) for a in v) for k, v in batches.items() if k >= 2}
    assert check_run_batches(proven_run, as_tensors) == [(2, 3)]
    swapped = dict(batches)
    swapped[0], swapped[1] = batches[1], batches[0]  # same data, other order
    with pytest.raises(BatchCheckError):
        check_run_batches(proven_run, swapped)
    other = {k: (x + 2.0 ** -16 * (k == 3), y) for k, (x, y) in batches.items()}  # one LSB
    assert check_run_batches(proven_run, {k: other[k] for k in (0, 1)}) == [(0, 1)]
    with pytest.raises(BatchCheckError):
        check_run_batches(proven_run, other)
    with pytest.raises(ProofRunError, match="all of them"):
        check_run_batches(proven_run, {0: batches[0]})


def test_data_owner_check_rejects_other_seeds(proven_run, tmp_path):
    from lightning_zk.atomic import atomic_write_json

    batches = _owner_batches(proven_run, range(4))
    data = json.loads((proven_run / "tapes" / "batch-openings.json").read_bytes())
    a, b = sorted(data["units"])
    data["units"][a]["seed"], data["units"][b]["seed"] = data["units"][b]["seed"], data["units"][a]["seed"]
    atomic_write_json(tmp_path / "swapped.json", data)
    with pytest.raises(BatchCheckError):
        check_run_batches(proven_run, batches, openings=tmp_path / "swapped.json")
    with pytest.raises(ProofRunError, match="no batch seed"):
        check_run_batches(proven_run, batches, openings=tmp_path / "missing.json")


def test_step_proofs_verify(tmp_path):
    _fit(tmp_path / "run", [ProofCallback(aggregate="step")], steps=2)
    report = verify_run(tmp_path / "run")
    assert report.ok and report.units == 2


def test_any_altered_proof_byte_is_rejected(proven_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(proven_run, run)
    unit = sorted((run / "proofs").glob("unit-*.lzkt"))[1]
    data = bytearray(unit.read_bytes())
    for offset in (0, 7, len(data) // 3, len(data) // 2, len(data) - 1):
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        unit.write_bytes(bytes(tampered))
        assert not verify_run(run).ok, offset
    unit.write_bytes(bytes(data))
    assert verify_run(run).ok


def test_missing_unit_breaks_the_chain(proven_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(proven_run, run)
    first = sorted((run / "proofs").glob("unit-*.lzkt"))[0]
    first.unlink()
    first.with_suffix(".json").unlink()
    report = verify_run(run)
    assert not report.ok and "proofs" in report.problems[0]
    assert main(["verify", str(run)]) == 1


def test_missing_seal_is_rejected(proven_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(proven_run, run)
    (run / "proofs" / "seal.lzkt").unlink()
    assert not verify_run(run).ok


def test_offline_prove_then_verify(tmp_path):
    _fit(tmp_path / "run", [], steps=2)
    assert main(["verify", str(tmp_path / "run")]) == 1  # nothing proved yet
    assert main(["prove", str(tmp_path / "run"), "--aggregate", "epoch"]) == 0
    assert verify_run(tmp_path / "run").ok
    units = {p.stem for p in (tmp_path / "run" / "proofs").glob("unit-*.lzkt")}
    assert set(read_batch_openings(batch_openings_path(tmp_path / "run"))) == units
    assert main(["prove", str(tmp_path / "run"), "--aggregate", "step"]) == 0  # replaces them
    units = {p.stem for p in (tmp_path / "run" / "proofs").glob("unit-*.lzkt")}
    assert len(units) == 2
    assert set(read_batch_openings(batch_openings_path(tmp_path / "run"))) == units


def test_background_proving(tmp_path):
    _fit(tmp_path / "run", [ProofCallback(background=True)], steps=2)
    assert verify_run(tmp_path / "run").ok
    assert len(read_batch_openings(batch_openings_path(tmp_path / "run"))) == 2


def test_proof_callback_needs_fixed_mode(tmp_path):
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run"), max_steps=1,
                        callbacks=[ProofCallback()], **trainer_kwargs())
    with pytest.raises(TypeError, match="mode='fixed'"):
        trainer.fit(make_model("mlp"))


def test_proof_callback_arguments():
    with pytest.raises(ValueError, match="aggregate='layer'"):
        ProofCallback(aggregate="layer")
    with pytest.raises(ValueError, match="every_n_steps=0"):
        ProofCallback(every_n_steps=0)


def _fit_ckpt(run_dir, ckpt_dir, callbacks, steps=8, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    every = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=run_dir, mode="fixed"), max_steps=steps,
                        callbacks=[*callbacks, every], **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(make_regressor(), train_dataloaders=regression_loader(), ckpt_path=ckpt_path)


@pytest.mark.parametrize("every, ckpt_step, background", [(1, 2, False), (3, 4, False), (3, 4, True)])
def test_resumed_training_continues_the_proof_chain(tmp_path, every, ckpt_step, background):
    """Crash before step 5, resume from a checkpoint: the chain goes on, nothing re-proved.

    every=1: steps 0..4 proved, the resume recomputes 2..4 (skipped) and proves 5..7.
    every=3: steps 0..2 proved, 3 and 4 committed only; the resume starts at 4, so step 3 is
    proved from its tape on disk first.
    """
    from lightning_zk.audit.proofs import chain_progress

    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    with pytest.raises(Crash):
        _fit_ckpt(run, ckpt, [CommitCallback(), ProofCallback(every_n_steps=every), CrashBefore(5)])
    assert chain_progress(run) == (5 if every == 1 else 3, False)
    proved_before = {p.name: p.stat().st_mtime_ns for p in (run / "proofs").glob("unit-*.lzkt")}
    (path,) = ckpt.glob(f"*step={ckpt_step}.ckpt")
    resumed = ProofCallback(every_n_steps=every, background=background)
    _fit_ckpt(run, ckpt, [CommitCallback(), resumed], ckpt_path=path)
    report = verify_run(run)
    assert report.ok, report.problems
    assert report.steps_proven == report.steps_committed == 8 and report.ledger == "verified"
    for name, mtime in proved_before.items():  # published units are never re-proved
        assert (run / "proofs" / name).stat().st_mtime_ns == mtime
    assert chain_progress(run) == (8, True)
    assert not list((run / "tapes" / "chain").glob("*.npz"))  # sealed: nothing to continue


def test_sealed_chain_cannot_be_extended(proven_run, tmp_path):
    from lightning_zk.audit.proofs import ChainProver
    from lightning_zk.ledger.rundir import RunDirectory

    run = tmp_path / "run"
    shutil.copytree(proven_run, run)
    prover = ChainProver(run, backend="numpy")
    assert prover.sealed and prover.next_step == 4
    with pytest.raises(ProofRunError, match="sealed"):
        prover.prove(load_tapes(RunDirectory(run), [3]))


def test_chain_without_its_private_state_cannot_be_continued(tmp_path):
    from lightning_zk.audit.proofs import ChainProver, chain_state_path

    run = tmp_path / "run"
    with pytest.raises(Crash):
        _fit(run, [ProofCallback(), CrashBefore(2)], steps=4)
    chain_state_path(run, "unit-00000001-00000001").unlink()
    with pytest.raises(ProofRunError, match="chain state .* is missing"):
        ChainProver(run, backend="numpy")


def test_a_run_resumed_at_a_fresh_step_records_what_the_uninterrupted_run_records(tmp_path):
    """The first step after a resume is not "new" to the run: its record carries the graph only
    if the graph changed, as in the uninterrupted run (a kill campaign found the difference)."""
    from tests.strategies._runs import snapshot_of

    _fit_ckpt(tmp_path / "a" / "run", tmp_path / "a" / "ckpt", [CommitCallback()])
    run, ckpt = tmp_path / "b" / "run", tmp_path / "b" / "ckpt"
    with pytest.raises(Crash):
        _fit_ckpt(run, ckpt, [CommitCallback(), CrashBefore(4)])
    (path,) = ckpt.glob("*step=4.ckpt")  # saved after step 3: step 4 is trained fresh
    _fit_ckpt(run, ckpt, [CommitCallback()], ckpt_path=path)
    straight, resumed = snapshot_of(tmp_path / "a" / "run"), snapshot_of(run)
    assert ["graph" in json.loads(r)["extra"] for r in resumed["records"]] == [True] + [False] * 7
    assert resumed == straight
