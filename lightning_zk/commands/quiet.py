"""Keep the command line's output to what matters: progress, results, real warnings."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Lightning's start-up notices that say nothing about this run (hardware it does not use, tips).
_NOISE = ("GPU available", "TPU available", "HPU available", "💡 Tip", "You are using a CUDA device")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Drop Lightning's notices about unused hardware and tips, and known deprecation noise."""
    noise = _DropNoise()
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero",
                                               "lightning.fabric.utilities.rank_zero")]
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            # We pass the arguments on purpose (they came from our own command line).
            warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")
            warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)
