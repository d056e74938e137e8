"""Two trainers started on one run directory at once, many times: one writes, the other is
refused naming the holder, and the first run is intact (``_race_driver.py`` forks the pairs)."""

from __future__ import annotations

import random
from pathlib import Path

from tests.strategies.test_kills import campaign

DRIVER = Path(__file__).with_name("_race_driver.py")


def test_two_writers_started_at_once(tmp_path):
    seed = random.randrange(2**31)
    summary = campaign(DRIVER, "RACE-SUMMARY ", tmp_path, 10, seed)
    print(f"\nwriter race: {summary}")
    assert not summary["failures"], summary
    assert summary["one_writer"] == summary["first_run_intact"] == summary["trials"] == 10, summary
    # started together, the second always meets the first's lock (it cannot have finished)
    assert summary["refused_by_lock"] >= summary["simultaneous"], summary
