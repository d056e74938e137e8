"""SIGKILL training runs at random points, check the directory, resume, compare (test_kills.py).

    python _kill_driver.py {rounded,fixed} WORKDIR TRIALS SEED DEADLINE_S

Prints one JSON line: the counts and every failure. Each trial forks a child (imports are paid
once) that trains a fresh run directory and is killed either

- at a *write event*: the n-th atomic rename (``os.replace``), step-record append, ledger
  transaction or Lightning checkpoint, before it, after it, or in the middle (an append torn
  half-way, a temporary file written but not renamed); n and the phase are drawn at random from
  every point the uninterrupted run goes through, so the windows between writes are hit on
  purpose, not by luck; or
- at a random time (SIGKILL from the parent).

Then the parent checks the killed directory (a consistent prefix: manifest and records pass the
schema, the published ledger and every checkpoint match the records, the ledger is a prefix of the
records, a fixed run's proof chain verifies as far as it goes), re-runs the same training command
(from the newest Lightning checkpoint, or from scratch when there is none) in another child, and
requires the result to equal the uninterrupted run: the same records, ledger root, checkpoints,
final state, and (fixed mode) a verifying proof chain over every step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)  # no thread pool to inherit across fork

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import lightning_zk.ledger.rundir as rundir_module  # noqa: E402
from lightning_zk.audit.proofs import ChainProver, _read_chain, verify_run  # noqa: E402
from lightning_zk.ledger.claims import check_run_claims  # noqa: E402
from lightning_zk.ledger.merkle import LEDGER_FILE, Ledger  # noqa: E402
from lightning_zk.ledger.rundir import RunDirectory  # noqa: E402
from lightning_zk.zk.training import verify_chain  # noqa: E402
from tests.strategies._runs import in_child, snapshot_of, train  # noqa: E402


# --- kill switch at write events -----------------------------------------------------------------
class Switch:
    at: int | None = None  # kill at this event (1-based)
    workdir: Path | None = None  # only renames into the campaign's directories are events
    tearable: list[bool] = []  # per event of the run: whether it has a "during" (torn) variant
    phase = "before"
    count = 0

    @classmethod
    def event(cls, phase: str) -> None:
        if phase == "before":
            cls.count += 1
        if cls.at == cls.count and cls.phase == phase:
            os.kill(os.getpid(), signal.SIGKILL)


def _wrap(call, torn=None, ours=lambda *args, **kwargs: True):
    def wrapped(*args, **kwargs):
        if not ours(*args, **kwargs):  # e.g. numba writing its cache on the first run only
            return call(*args, **kwargs)
        Switch.event("before")
        Switch.tearable.append(torn is not None)
        if torn is not None and Switch.at == Switch.count and Switch.phase == "during":
            torn(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        out = call(*args, **kwargs)
        Switch.event("after")
        return out
    return wrapped


def _torn_append(path, line):  # half a record line, as a kill mid-write leaves it
    with open(path, "ab") as handle:
        handle.write(line.encode()[: max(1, len(line) // 2)])
        handle.flush()
        os.fsync(handle.fileno())


def _torn_replace(src, dst):  # the temporary file is written, the rename never happens
    pass


def _in_workdir(src, dst, *args, **kwargs) -> bool:
    return Switch.workdir is not None and Path(os.path.abspath(dst)).is_relative_to(Switch.workdir)


os.replace = _wrap(os.replace, _torn_replace, ours=_in_workdir)
rundir_module.append_line = _wrap(rundir_module.append_line, _torn_append)
Ledger.append = _wrap(Ledger.append)
Ledger.extend = _wrap(Ledger.extend)
ModelCheckpoint._save_checkpoint = _wrap(ModelCheckpoint._save_checkpoint)


def killed_run(n: int, phase: str, *args) -> None:
    """The training command, with the kill switch set at write event ``n`` (``phase``)."""
    Switch.at, Switch.phase, Switch.count = n, phase, 0
    train(*args, resume=False)


# --- checks --------------------------------------------------------------------------------------
def check_consistent(mode: str, run_dir: Path) -> None:
    """What a kill may leave: nothing committed, or a consistent prefix (module doc)."""
    run = RunDirectory(run_dir)
    if not run.exists():
        if not (run.is_empty() or run.is_uncommitted_start()):
            raise AssertionError(f"no manifest, but files: {sorted(os.listdir(run_dir))}")
        return
    manifest, records = run.read_manifest(), run.read_steps()
    check_run_claims(run, manifest, records, require_finished=False)
    if (run.path / LEDGER_FILE).exists():
        with Ledger(run.path) as ledger:
            ledger.check_records(records, complete=False)
    if mode == "fixed" and (run.path / "proofs").is_dir():
        statements, proofs, seal = _read_chain(run)
        if seal is not None:
            proven = verify_chain(statements, proofs, seal)
        else:  # an open chain: consecutive units from step 0 that a new prover can continue
            proven = 0
            for stmt in statements:
                if stmt.step_start != proven:
                    raise AssertionError(f"unit at step {stmt.step_start}, expected {proven}")
                proven += stmt.num_steps
            ChainProver(run.path)  # verifies the last unit and loads its private chain state
        if proven > len(records):
            raise AssertionError(f"{proven} steps proven, {len(records)} committed")


def check_equal(mode: str, run_dir: Path, reference: dict) -> None:
    mine = snapshot_of(run_dir)
    for key in reference:
        if mine[key] != reference[key]:
            raise AssertionError(f"{key} differs from the uninterrupted run")
    check_run_claims(RunDirectory(run_dir))
    if mode == "fixed":
        report = verify_run(run_dir)
        if not report.ok or report.steps_proven != len(reference["records"]):
            raise AssertionError(f"verify: {report.problems} ({report.steps_proven} steps proven)")


# --- the campaign --------------------------------------------------------------------------------
def main(mode: str, workdir: str, trials: str, seed: str, deadline_s: str) -> None:
    work, rng = Path(workdir), random.Random(int(seed))
    Switch.workdir = Path(os.path.abspath(work))
    stop_at = time.monotonic() + float(deadline_s)
    ref_dir = work / "reference"
    Switch.count, Switch.tearable = 0, []
    train(mode, ref_dir / "run", ref_dir / "ckpt", resume=False)  # warms every JIT before forking
    events, tearable = Switch.count, list(Switch.tearable)
    reference = snapshot_of(ref_dir / "run")
    check_equal(mode, ref_dir / "run", reference)
    started = time.monotonic()  # a second uninterrupted run, in a child: the timed kills' range
    if in_child(partial(train, mode, work / "again" / "run", work / "again" / "ckpt", False)) != 0:
        raise SystemExit("the uninterrupted run failed in a child process")
    duration = time.monotonic() - started
    check_equal(mode, work / "again" / "run", reference)
    # "during" only where a torn variant exists (an append cut half-way, a rename never done):
    # elsewhere it would be a kill point that never fires
    points = [(n, phase) for n in range(1, events + 1)
              for phase in ("before", "during", "after") if phase != "during" or tearable[n - 1]]
    rng.shuffle(points)
    summary = {"mode": mode, "seed": int(seed), "write_events": events, "kill_points": len(points),
               "trials": 0, "event_kills": 0, "timed_kills": 0, "killed": 0, "consistent": 0,
               "resumed_equal": 0, "failures": []}
    for i in range(int(trials)):
        if time.monotonic() > stop_at:
            break
        case = work / f"trial{i}"
        run_dir, ckpt_dir = case / "run", case / "ckpt"
        timed = i % 4 == 3  # one trial in four: a kill at a random time
        if timed:
            delay = rng.uniform(0.0, 0.9 * duration)
            what = f"time {delay:.2f}s"
            status = in_child(partial(train, mode, run_dir, ckpt_dir, False), kill_after=delay)
            summary["timed_kills"] += 1
        else:
            n, phase = points.pop()
            what = f"write event {n}/{events} {phase}"

            status = in_child(partial(killed_run, n, phase, mode, run_dir, ckpt_dir))
            summary["event_kills"] += 1
        summary["trials"] += 1
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        summary["killed"] += killed
        try:
            stage = "consistency"
            check_consistent(mode, run_dir)
            summary["consistent"] += 1
            stage = "resume"
            if in_child(partial(train, mode, run_dir, ckpt_dir, True)) != 0:
                raise AssertionError("the resumed training failed")
            stage = "equality"
            check_equal(mode, run_dir, reference)
            summary["resumed_equal"] += 1
            shutil.rmtree(case)
        except Exception as err:  # keep the directory for inspection
            summary["failures"].append(f"{what} (killed={killed}): {stage}: "
                                       f"{type(err).__name__}: {err}"[:600])
    print("KILL-SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
