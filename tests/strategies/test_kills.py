"""SIGKILL training at random points: every kill leaves a consistent, resumable run that ends
equal to the uninterrupted one (rounded runs, and fixed-point runs with ProofCallback).

The campaign runs in a subprocess (``_kill_driver.py``, which forks a child per kill so imports are
paid once); the seed is random per run and printed, ``LZK_KILL_SEED`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("_kill_driver.py")


def campaign(script: Path, prefix: str, *args: object, timeout: int = 900) -> dict:
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
    assert proc.returncode == 0 and lines, f"{script.name} failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len(prefix):])


@pytest.mark.parametrize("mode,trials", [("rounded", 12), ("fixed", 6)])
def test_random_kills_are_consistent_resumable_and_equal(tmp_path, mode, trials):
    seed = int(os.environ.get("LZK_KILL_SEED", random.randrange(2**31)))
    summary = campaign(DRIVER, "KILL-SUMMARY ", mode, tmp_path, trials, seed, 300)
    print(f"\nkill campaign: {summary}")
    assert not summary["failures"], f"LZK_KILL_SEED={seed}: {summary}"
    assert summary["trials"] >= 2 and summary["event_kills"] >= 1, summary
    assert summary["killed"] >= summary["event_kills"], summary  # every write-event kill landed
    assert summary["consistent"] == summary["resumed_equal"] == summary["trials"], summary
