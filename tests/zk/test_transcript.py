"""Transcript: determinism, binding to labels/types/order, uniform-range outputs."""

from __future__ import annotations

import pytest

from lightning_zk.zk import Transcript
from lightning_zk.zk.backend import P
from lightning_zk.zk.errors import ParameterError
from lightning_zk.zk.extension import Fp2


def _t(ops):
    t = Transcript(b"test")
    for op in ops:
        op(t)
    return t.challenge_ext("c")


def test_deterministic_and_ratcheting():
    a, b = Transcript(b"x"), Transcript(b"x")
    assert a.challenge_ext("c") == b.challenge_ext("c")
    assert a.challenge_ext("c") != Transcript(b"x").challenge_ext("c")  # state moved on


def test_binding():
    base = _t([lambda t: t.absorb_u64("n", 1, 2)])
    assert base != _t([lambda t: t.absorb_u64("n", 2, 1)])
    assert base != _t([lambda t: t.absorb_u64("m", 1, 2)])
    assert base != _t([lambda t: t.absorb_u64("n", 1), lambda t: t.absorb_u64("n", 2)])
    assert base != _t(
        [lambda t: t.absorb_bytes("n", (1).to_bytes(8, "little") + (2).to_bytes(8, "little"))]
    )
    assert Transcript(b"a").challenge_ext("c") != Transcript(b"b").challenge_ext("c")


def test_ranges():
    t = Transcript(b"r")
    for x in t.challenge_ext_list("c", 50):
        assert isinstance(x, Fp2) and 0 <= x.c0 < P and 0 <= x.c1 < P
    idx = t.challenge_indices("i", 200, 64)
    assert all(0 <= i < 64 for i in idx) and len(set(idx)) > 30
    with pytest.raises(ParameterError):
        t.challenge_indices("i", 3, 6)
    with pytest.raises(ParameterError):
        Transcript(b"")
