"""Start two trainers on one run directory at the same moment, many times (test_two_writers.py).

    python _race_driver.py WORKDIR TRIALS SEED

Prints one JSON line. Per trial two forked children wait on a pipe and are released together
(or the second after a random delay, while the first trains); each runs the same training
command on the same ``run_dir``. Required: exactly one of them trains, the other is refused
(by the writer lock, naming the holder's pid, or — when it came after the first had finished — as
a run that already holds committed steps), and the directory holds the first run intact: equal to
an uninterrupted run, its claims and ledger verifying.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)

from lightning_zk.ledger.claims import check_run_claims  # noqa: E402
from lightning_zk.ledger.errors import RunDirectoryError, RunLockedError  # noqa: E402
from lightning_zk.ledger.rundir import RunDirectory  # noqa: E402
from tests.strategies._runs import snapshot_of, train  # noqa: E402

REFUSED, FAILED = 3, 1


def contender(gate: int, delay: float, run_dir: Path, out: Path) -> None:
    """Wait for the gate, train; exit 0 when trained, REFUSED with the message when refused."""
    os.read(gate, 1)
    time.sleep(delay)
    code, message = 0, ""
    try:
        train("rounded", run_dir, out.with_suffix(".ckpt"), resume=False)
    except RunLockedError as err:
        code, message = REFUSED, f"locked: {err}"
    except RunDirectoryError as err:
        code, message = REFUSED, f"refused: {err}"
    except BaseException as err:
        code, message = FAILED, f"{type(err).__name__}: {err}"
    out.write_text(json.dumps({"pid": os.getpid(), "message": message}))
    os._exit(code)


def main(workdir: str, trials: str, seed: str) -> None:
    work, rng = Path(workdir), random.Random(int(seed))
    train("rounded", work / "reference", work / "reference.ckpt", resume=False)
    reference = snapshot_of(work / "reference")
    started = time.monotonic()
    train("rounded", work / "timing", work / "timing.ckpt", resume=False)
    duration = time.monotonic() - started
    summary = {"seed": int(seed), "trials": 0, "simultaneous": 0, "one_writer": 0,
               "refused_by_lock": 0, "refused_finished": 0, "first_run_intact": 0, "failures": []}
    for i in range(int(trials)):
        run_dir, gate_r, gate_w = work / f"trial{i}", *os.pipe()
        simultaneous = i % 2 == 0
        delays = (0.0, 0.0 if simultaneous else rng.uniform(0.0, duration))
        pids = {}
        for k, delay in enumerate(delays):
            out = work / f"trial{i}-{k}.json"
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                contender(gate_r, delay, run_dir, out)
            pids[pid] = out
        os.write(gate_w, b"go")  # both start now
        os.close(gate_r)
        os.close(gate_w)
        codes = {}
        for pid, out in pids.items():
            status = os.waitpid(pid, 0)[1]
            codes[pid] = (os.waitstatus_to_exitcode(status), json.loads(out.read_text()))
        summary["trials"] += 1
        summary["simultaneous"] += simultaneous
        try:
            winners = [pid for pid, (code, _) in codes.items() if code == 0]
            losers = [info for code, info in codes.values() if code == REFUSED]
            if len(winners) != 1 or len(losers) != 1:
                raise AssertionError(f"outcomes {[(c, i['message'][:200]) for c, i in codes.values()]}")
            summary["one_writer"] += 1
            message = losers[0]["message"]
            if message.startswith("locked:"):
                if not re.search(rf"pid {winners[0]}\b", message):
                    raise AssertionError(f"the refusal does not name the holder: {message}")
                summary["refused_by_lock"] += 1
            elif "already holds" in message:
                summary["refused_finished"] += 1
            else:
                raise AssertionError(f"refused for another reason: {message}")
            if snapshot_of(run_dir) != reference:
                raise AssertionError("the run differs from an uninterrupted run")
            check_run_claims(RunDirectory(run_dir))
            summary["first_run_intact"] += 1
        except Exception as err:
            summary["failures"].append(f"trial {i}: {type(err).__name__}: {err}"[:600])
    print("RACE-SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
