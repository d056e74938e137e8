"""Tools users run to check their setup: the hardware-nondeterminism emulator.

The emulator itself lives in :mod:`lightning_zk.rounding.emulator` (no Lightning needed).
"""

from ..rounding.emulator import NondeterminismEmulator

__all__ = ["NondeterminismEmulator"]
