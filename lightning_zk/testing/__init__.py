"""Tools users run to check their setup: the hardware-nondeterminism emulator."""

from .emulator import NondeterminismEmulator

__all__ = ["NondeterminismEmulator"]
