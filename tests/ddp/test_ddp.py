"""VerifiableDDPStrategy: 2-process CPU (gloo) runs replayed bit for bit on one process.

The DDP runs are subprocesses (``python -m tests.ddp._train``). The honest run every test compares
with (``ddp_run``), the emulated-hardware run, the CLI run and the refused start use Lightning's
default ``popen`` launcher, which re-runs that module for every other rank; the others fork their
ranks from one process (``--start-method fork``: one import of Lightning per run, about half the
time of a launch), the strategy being the same. Each run is 4 steps of 2 shards of 8 samples unless
it says otherwise; a launch is shared by several checks wherever they fit one run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_zk import RunDirectory, VerifiableShardedStrategy
from lightning_zk.audit import dispute, replay
from lightning_zk.strategies.ddp import ShardedRunError, sharded_batch_digest
from lightning_zk.testing import NondeterminismEmulator
from tests.audit.test_dispute import _rebuild_ledger
from tests.ddp.models import make
from tests.models import make_data, trainer_kwargs

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
BAD_STEP = 3


def _launch(out: Path, *args: str) -> dict:
    """Run the training module in a fresh interpreter (and its rank-1 child); rank 0's output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "tests.ddp._train", "--out", str(out),
                           "--steps", str(STEPS), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _audit(run: Path, kind: str = "mlp", batch_size: int = 8, **kwargs):
    model, data = make(kind, batch_size=batch_size)
    return replay(run, model, train_dataloaders=data, accelerator="cpu", **kwargs)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """An honest 2-process run with a Merkle ledger (CommitCallback on every rank)."""
    base = tmp_path_factory.mktemp("ddp")
    _launch(base / "out.json", "--devices", "2", "--run-dir", str(base / "run"), "--ledger")
    return base / "run"


def test_ddp_run_directory_is_written_by_rank_0(ddp_run):
    run = RunDirectory(ddp_run)
    manifest, records = run.read_manifest(), run.read_steps()
    assert manifest["strategy"]["shards"] == 2 and manifest["hardware"]["world_size"] == 2
    assert manifest["steps_committed"] == STEPS == len(records)
    assert manifest["ledger"]["size"] == STEPS
    for record in records:  # the global batch in shard order, each shard's op range in the log
        assert len(record.batch_indices) == 16 and len(set(record.batch_indices)) == 16
        (a0, b0), (a1, b1) = record.extra["shards"]
        assert b0 == a1 and b0 - a0 == b1 - a1 > 0
    assert not list(ddp_run.glob("*.tmp")) and not (ddp_run / "rank1").exists()


def test_one_process_replay_is_bit_for_bit(ddp_run):
    report = _audit(ddp_run)
    assert report.ok, report.summary()
    assert report.steps_checked == STEPS and report.logged_elements > 0


def test_one_process_replay_under_emulated_nondeterminism(ddp_run):
    with NondeterminismEmulator(ulps=8, seed=5):
        report = _audit(ddp_run)
    assert report.ok, report.summary()


def test_transformer_ranks_on_emulated_different_hardware_replay_on_one(tmp_path):
    """Attention (MultiheadAttention, SDPA), LayerNorm, GELU and dropout in every shard, AdamW, with
    rank 0 and rank 1 each emulating other hardware (seeded ulp perturbations of every reduction and
    transcendental result): the one-process replay reproduces the run, on this machine and on a
    third emulated one."""
    _launch(tmp_path / "out.json", "--kind", "transformer", "--devices", "2",
            "--run-dir", str(tmp_path / "run"), "--emulate")
    report = _audit(tmp_path / "run", kind="transformer")
    assert report.ok, report.summary()
    assert report.logged_elements > 0
    with NondeterminismEmulator(ulps=8, seed=7):
        report = _audit(tmp_path / "run", kind="transformer")
    assert report.ok, report.summary()
    assert report.corrections > 0  # the log decided roundings this machine would have taken otherwise


def test_one_process_sharded_training_commits_the_same_steps(ddp_run, tmp_path):
    """World size 1 with 2 shards is the same computation as 2 processes: every record agrees."""
    model, data = make("mlp")
    strategy = VerifiableShardedStrategy(run_dir=tmp_path / "one", shards=2)
    L.Trainer(strategy=strategy, max_steps=STEPS, **trainer_kwargs()).fit(model, train_dataloaders=data)
    one, two = RunDirectory(tmp_path / "one"), RunDirectory(ddp_run)
    assert one.read_manifest()["fingerprint"] == two.read_manifest()["fingerprint"]
    assert one.read_manifest()["hardware"]["world_size"] == 1
    fields = ("batch_indices", "batch_digest", "log_sha256", "state_digest", "extra")
    for a, b in zip(one.read_steps(), two.read_steps(), strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert one.read_manifest()["final_state_digest"] == two.read_manifest()["final_state_digest"]


@pytest.fixture(scope="module")
def cnn4_run(tmp_path_factory) -> Path:
    """A CNN run (GroupNorm and BatchNorm2d with running statistics) with 4 shards of 4 samples on
    2 processes (2 shards each)."""
    base = tmp_path_factory.mktemp("cnn4")
    _launch(base / "out.json", "--kind", "cnn", "--devices", "2", "--shards", "4",
            "--batch-size", "4", "--run-dir", str(base / "run"), "--start-method", "fork")
    return base / "run"


def test_cnn_with_two_shards_per_process(cnn4_run, tmp_path):
    """4 shards on 2 processes: the gradient is still ((g0 + g1) + g2) + g3, not a sum of
    per-process sums; a one-process 4-shard run and the one-process replay agree bit for bit."""
    report = _audit(cnn4_run, kind="cnn", batch_size=4)
    assert report.ok, report.summary()
    model, data = make("cnn", batch_size=4)
    L.Trainer(strategy=VerifiableShardedStrategy(run_dir=tmp_path / "one", shards=4), max_steps=STEPS,
              **trainer_kwargs()).fit(model, train_dataloaders=data)
    two, one = RunDirectory(cnn4_run), RunDirectory(tmp_path / "one")
    assert two.read_manifest()["hardware"]["shards_per_process"] == 2
    assert two.read_manifest()["strategy"]["batch_norm"] == "per_shard"
    assert one.read_manifest()["fingerprint"] == two.read_manifest()["fingerprint"]
    assert [r.state_digest for r in one.read_steps()] == [r.state_digest for r in two.read_steps()]
    assert [r.log_sha256 for r in one.read_steps()] == [r.log_sha256 for r in two.read_steps()]
    assert int(model.bn.num_batches_tracked) == STEPS  # once per step (shard 0's update)
    assert model.bn.running_mean.abs().sum() > 0


def test_batchnorm_run_replays_under_emulated_nondeterminism(cnn4_run):
    with NondeterminismEmulator(ulps=8, seed=5):
        report = _audit(cnn4_run, kind="cnn", batch_size=4)
    assert report.ok, report.summary()


def test_manifest_claiming_another_batch_norm_mode_fails_the_replay(cnn4_run, tmp_path):
    """The manifest records how BatchNorm statistics were kept; a replay whose module implies
    another rule (here: a run claiming synchronised statistics, or no BatchNorm rule at all) fails
    naming the field, even with the fingerprint recomputed."""
    from lightning_zk.audit import AuditConfigError
    from lightning_zk.ledger.rundir import RunDirectoryError
    from lightning_zk.ledger.schema import IDENTITY_PARTS, run_fingerprint

    shutil.copytree(cnn4_run, tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    honest = json.loads(run.manifest_path.read_text())
    for claim, error in (("sync", RunDirectoryError), (None, AuditConfigError)):
        manifest = json.loads(json.dumps(honest))
        if claim is None:
            del manifest["strategy"]["batch_norm"]
        else:
            manifest["strategy"]["batch_norm"] = claim
        manifest["fingerprint"] = run_fingerprint({k: manifest[k] for k in IDENTITY_PARTS})
        run.manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(error, match=r"strategy\.batch_norm"):
            _audit(run.path, kind="cnn", batch_size=4)


def _replay_on_processes(run: Path, out: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "tests.ddp._replay", str(run), "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_four_shards_replayed_on_two_processes(cnn4_run, tmp_path):
    """M = 2 processes replay an N = 4-shard run (2 shards each), bit for bit."""
    report = _replay_on_processes(cnn4_run, tmp_path / "r.json", "--kind", "cnn", "--batch-size", "4")
    assert report["ok"] and report["steps_checked"] == STEPS


@pytest.fixture(scope="module")
def mlp4_run(tmp_path_factory) -> Path:
    """An honest 4-process run of the MLP (4 shards of 8 samples, one per process); the ranks are
    forked from one process (Lightning's ``fork`` launcher: one import, not four)."""
    base = tmp_path_factory.mktemp("mlp4")
    _launch(base / "out.json", "--devices", "4", "--run-dir", str(base / "run"), "--start-method", "fork")
    return base / "run"


def test_four_process_run_replays_on_one_and_two_processes(mlp4_run, tmp_path):
    """N = 4 processes, replayed bit for bit on M = 1 (the shards in turn) and M = 2 processes (2
    shards each); a one-process 4-shard run commits the same records."""
    manifest = RunDirectory(mlp4_run).read_manifest()
    assert manifest["strategy"]["shards"] == 4 and manifest["hardware"]["world_size"] == 4
    assert "batch_norm" not in manifest["strategy"]  # no BatchNorm: recorded as before
    report = _audit(mlp4_run)
    assert report.ok and report.steps_checked == STEPS, report.summary()
    two = _replay_on_processes(mlp4_run, tmp_path / "r.json")
    assert two["ok"] and two["steps_checked"] == STEPS
    model, data = make("mlp")
    L.Trainer(strategy=VerifiableShardedStrategy(run_dir=tmp_path / "one", shards=4), max_steps=STEPS,
              **trainer_kwargs()).fit(model, train_dataloaders=data)
    fields = ("batch_indices", "batch_digest", "log_sha256", "state_digest", "extra")
    for a, b in zip(RunDirectory(tmp_path / "one").read_steps(), RunDirectory(mlp4_run).read_steps(),
                    strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_tampered_rank_log_caught_by_a_two_process_replay(ddp_run, tmp_path):
    shutil.copytree(ddp_run, tmp_path / "run")
    _flip_shard(RunDirectory(tmp_path / "run"), 2, shard=1)
    report = _replay_on_processes(tmp_path / "run", tmp_path / "r.json")
    assert not report["ok"] and report["first_mismatch_step"] == 2


def test_plain_ddp_differs_between_world_sizes(tmp_path):
    """Without the strategy, 2 processes (float all-reduce) and 1 process on the same samples
    per step end in different weights: the canonical reduction is what makes them agree."""
    two = _launch(tmp_path / "two.json", "--plain", "--devices", "2", "--shuffle", "0")["weights"]
    model, _ = make("mlp")
    data = DataLoader(make_data("mlp", n=64), batch_size=16, shuffle=False)
    L.Trainer(max_steps=STEPS, devices=1, **trainer_kwargs()).fit(model, train_dataloaders=data)
    one = {k: v.to(torch.float32).contiguous().view(torch.int32).flatten().tolist()
           for k, v in model.state_dict().items()}
    assert one.keys() == two.keys()
    assert one != two


def _flip_shard(run: RunDirectory, step: int, shard: int) -> int:
    """Flip every logged direction of ``shard`` (rank 1's entries) in the step's log, and rewrite
    the record and the ledger to match (a consistent liar); how many entries were flipped."""
    import dataclasses
    import hashlib

    from lightning_zk.rounding.log import StepLog, encode_step_log, read_step_log

    record = run.read_steps()[step]
    lo, hi = record.extra["shards"][shard]
    path = run.path / record.log_file
    log = read_step_log(path)
    entries = [dataclasses.replace(e, away=~e.away) if lo <= e.op_seq < hi else e for e in log.entries]
    data = encode_step_log(StepLog(log.step, entries, log.ops_rounded, log.elements_rounded))
    path.write_bytes(data)
    lines = run.steps_path.read_text().splitlines()
    line = json.loads(lines[step])
    line.update(log_sha256=hashlib.sha256(data).hexdigest(), log_bytes=len(data))
    lines[step] = json.dumps(line, sort_keys=True, separators=(",", ":"))
    run.steps_path.write_text("\n".join(lines) + "\n")
    _rebuild_ledger(run)
    return sum(lo <= e.op_seq < hi for e in log.entries)


def test_tampered_rank_log_caught_at_the_step(ddp_run, tmp_path):
    shutil.copytree(ddp_run, tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    assert _flip_shard(run, 2, shard=1) > 0
    report = _audit(run.path)
    assert not report.ok
    assert report.first_mismatch_step == 2
    assert set(report.mismatch["fields"]) & {"state_digest", "rounding_log"}


def test_rank_that_trained_on_another_shard_is_caught(tmp_path):
    """Rank 1 loads shard 0's samples at step 3: the audit names that step and its batch, and the
    dispute's referee (replaying from the checkpoint of step 2) finds the trainer dishonest."""
    _launch(tmp_path / "out.json", "--devices", "2", "--run-dir", str(tmp_path / "run"),
            "--ledger", "--bad-shard-at", str(BAD_STEP), "--start-method", "fork")
    record = RunDirectory(tmp_path / "run").read_steps()[BAD_STEP]
    assert record.batch_indices[:8] == record.batch_indices[8:]  # what the ranks really loaded
    report = _audit(tmp_path / "run", audit_dir=tmp_path / "audit")
    assert not report.ok and report.first_mismatch_step == BAD_STEP
    assert "batch_indices" in report.mismatch["fields"]
    model, data = make("mlp")
    verdict = dispute(tmp_path / "run", tmp_path / "audit", model, train_dataloaders=data,
                      accelerator="cpu")
    assert verdict.first_disputed_step == BAD_STEP and verdict.dishonest == "trainer"


def test_ranks_whose_update_differs_take_rank0_state(ddp_run, tmp_path):
    """Rank 1's update of step 1 rounds a near-tie the other way (emulated): the ranks' logs of the
    update differ. Rank 1 skips the update of step 2: at that step's boundary its state differs from
    rank 0's (the ranks compare CRC-32s of their states). Each time rank 1 takes rank 0's committed
    state and the record says so; the run is the honest run, step for step, and replays."""
    _launch(tmp_path / "out.json", "--devices", "2", "--run-dir", str(tmp_path / "run"),
            "--diverge-rank1-at", "1", "--skip-rank1-update-at", "2", "--start-method", "fork")
    records = RunDirectory(tmp_path / "run").read_steps()
    assert [r.extra.get("resynced_ranks") for r in records] == [None, [1], [1], None]
    honest = RunDirectory(ddp_run).read_steps()
    assert [r.state_digest for r in records] == [r.state_digest for r in honest]
    report = _audit(tmp_path / "run")
    assert report.ok, report.summary()


def test_crashed_run_restarts_or_resumes_from_a_lightning_checkpoint(ddp_run, tmp_path):
    """Lightning checkpoints every 2 steps (each written once its step is committed, so never ahead
    of the records). Every rank fails when step 2 starts (2 steps committed, the run unfinished);
    the same command again, without a checkpoint, recomputes and re-verifies the committed steps on
    both ranks and goes on, until every rank fails when step 3 starts. ``fit(ckpt_path=...)`` on
    the newest checkpoint (step 2) then resumes every rank at step 2 (rank 0 re-verifies the
    committed step 2, the other ranks continue at rank 0's next step and data position) and
    finishes the run with the records of the uninterrupted run."""
    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    args = ("--devices", "2", "--run-dir", str(run), "--ledger", "--ckpt-dir", str(ckpt),
            "--start-method", "fork")
    with pytest.raises(AssertionError, match="crash at step 2"):
        _launch(tmp_path / "out.json", *args, "--crash-at", "2")
    assert len(RunDirectory(run).read_steps()) == 2
    assert RunDirectory(run).read_manifest()["final_state_digest"] is None
    with pytest.raises(AssertionError, match="crash at step 3"):
        _launch(tmp_path / "out.json", *args, "--crash-at", "3")  # a restart without checkpoint
    assert len(RunDirectory(run).read_steps()) == 3
    newest = max(ckpt.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    assert torch.load(newest, weights_only=False)["lightning_zk"]["step"] == 2
    _launch(tmp_path / "out.json", *args, "--resume")
    fields = ("batch_indices", "batch_digest", "log_sha256", "state_digest", "extra")
    again, honest = RunDirectory(run).read_steps(), RunDirectory(ddp_run).read_steps()
    assert [[getattr(r, f) for f in fields] for r in again] == [[getattr(r, f) for f in fields] for r in honest]
    assert RunDirectory(run).read_manifest()["final_state_digest"] is not None
    assert _audit(run).ok


def test_rank_0_failing_to_start_stops_every_rank(ddp_run, tmp_path):
    """Rank 0 refuses a run directory of another run (another seed): rank 1 learns it at once
    instead of waiting in a collective, and nothing in the directory changes."""
    shutil.copytree(ddp_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(AssertionError, match="belongs to another run"):
        _launch(tmp_path / "out.json", "--devices", "2", "--run-dir", str(tmp_path / "run"),
                "--seed", "1")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()
            if p.is_file() and p.name != ".lock"} == before  # (the lock file names its last holder)


# --- refused configurations (one process, fast) -------------------------------------------------
def _fit_sharded(tmp_path, model, data, **trainer_overrides):
    strategy = VerifiableShardedStrategy(run_dir=tmp_path / "run", shards=2)
    L.Trainer(strategy=strategy, max_steps=2, **trainer_kwargs(**trainer_overrides)).fit(
        model, train_dataloaders=data)


def test_accumulation_and_custom_samplers_are_refused(tmp_path):
    model, data = make("mlp")
    with pytest.raises(ShardedRunError, match="accumulate_grad_batches=2"):
        _fit_sharded(tmp_path, model, data, accumulate_grad_batches=2)
    weighted = DataLoader(make_data("mlp", n=64), batch_size=8, sampler=torch.utils.data.WeightedRandomSampler(
        torch.ones(64), 64))
    from lightning_zk.strategies.data import UnsupportedDataLoaderError

    with pytest.raises(UnsupportedDataLoaderError, match="cannot shard"):
        _fit_sharded(tmp_path, make("mlp")[0], weighted)


def test_one_process_sharded_run_resumes_from_a_lightning_checkpoint(tmp_path):
    """The BatchNorm CNN, 4 shards on one process: a run stopped after 3 steps resumes from its
    step-2 checkpoint (running statistics included) and commits the records of a straight run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(run: str, steps: int, ckpt_path=None) -> list:
        model, data = make("cnn", batch_size=4)
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
        L.Trainer(strategy=VerifiableShardedStrategy(run_dir=tmp_path / run, shards=4),
                  max_steps=steps, callbacks=[saver], **trainer_kwargs(enable_checkpointing=True)).fit(
            model, train_dataloaders=data, ckpt_path=ckpt_path)
        return RunDirectory(tmp_path / run).read_steps()

    fit("run", 3)
    resumed = fit("run", STEPS, ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    straight = fit("straight", STEPS)
    fields = ("batch_indices", "batch_digest", "log_sha256", "state_digest", "extra")
    assert [[getattr(r, f) for f in fields] for r in resumed] == [[getattr(r, f) for f in fields] for r in straight]


def test_sharded_batch_digest_depends_on_the_shard_order():
    a, b = "00" * 32, "11" * 32
    assert sharded_batch_digest([a, b]) != sharded_batch_digest([b, a])


def test_registered_strategy_names():
    from lightning_zk import VerifiableDDPStrategy

    trainer = L.Trainer(strategy="verifiable_ddp", devices=2, **trainer_kwargs())
    assert isinstance(trainer.strategy, VerifiableDDPStrategy)
    assert trainer.strategy._start_method == "popen"
    spawn = L.Trainer(strategy="verifiable_ddp_spawn", devices=2, **trainer_kwargs())
    assert spawn.strategy._start_method == "spawn"


def test_sharded_run_over_two_epochs_replays(tmp_path):
    """6 steps of 2 shards over 64 samples: 4 steps per epoch, epoch 1 in its own seeded order."""
    model, data = make("mlp")
    strategy = VerifiableShardedStrategy(run_dir=tmp_path / "run", shards=2, seed=3)
    L.Trainer(strategy=strategy, max_steps=6, **trainer_kwargs()).fit(model, train_dataloaders=data)
    records = RunDirectory(tmp_path / "run").read_steps()
    assert [r.epoch for r in records] == [0, 0, 0, 0, 1, 1]
    assert sorted(i for r in records[:4] for i in r.batch_indices) == list(range(64))
    assert records[4].batch_indices != records[0].batch_indices
    report = _audit(tmp_path / "run")
    assert report.ok, report.summary()


def test_cli_fit_on_two_processes_audit_on_one(tmp_path):
    """`lightning-zk fit` with the DDP example config (shrunk), then `lightning-zk audit`."""
    import yaml

    from lightning_zk.cli import main
    from tests.audit._runs import in_project

    config = yaml.safe_load((ROOT / "examples" / "configs" / "digits_mlp_ddp.yaml").read_text())
    config["trainer"].update(max_steps=3, default_root_dir=str(tmp_path), enable_progress_bar=False,
                             enable_model_summary=False)
    config["trainer"]["strategy"]["init_args"]["run_dir"] = str(tmp_path / "run")
    config["model"]["init_args"]["hidden"] = 32
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "lightning_zk.cli", "fit", "--config",
                           str(tmp_path / "config.yaml")], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("steps committed") == 1  # rank 0's summary only
    with in_project():
        assert main(["audit", str(tmp_path / "run"), "--out", str(tmp_path / "audit"),
                     "--no-progress"]) == 0
