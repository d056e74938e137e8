"""Fixed-point engine: exact agreement with the integer reference, rescale rule, bounds, tape."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_zk.fixed import (
    FixedPointConfig,
    FixedPointError,
    FixedPointMLP,
    TapeFormatError,
    WitnessTape,
    dequantize,
    quantize,
    ref_rescale,
    reference_step,
    rescale,
    tensor_names,
)


def _mlp(dims, seed=0, lr=0.125):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(dims[i + 1], dims[i])) * 0.4 for i in range(len(dims) - 1)]
    bs = [rng.normal(size=dims[i + 1]) * 0.1 for i in range(len(dims) - 1)]
    return FixedPointMLP.from_float(ws, bs, lr=lr), rng


@pytest.mark.parametrize("dims", [(4, 8, 3), (5, 6, 7, 2), (3, 2)])
def test_engine_matches_integer_reference_exactly(dims):
    mlp, rng = _mlp(dims, seed=len(dims))
    for _ in range(3):
        x = quantize(rng.normal(size=(4, dims[0])), 16)
        y = quantize(rng.normal(size=(4, dims[-1])), 16)
        ws = [w.tolist() for w in mlp.weights]
        bs = [b.tolist() for b in mlp.biases]
        pred = mlp.forward(x)
        tape = mlp.step(x, y)
        new_w, new_b, out = reference_step(
            ws, bs, x.tolist(), y.tolist(), mlp.lr, tape.mse_const, 16
        )
        assert np.array_equal(np.array(out), pred)
        for a, b in zip(new_w, mlp.weights, strict=True):
            assert np.array_equal(np.array(a, dtype=np.int64), b)
        for a, b in zip(new_b, mlp.biases, strict=True):
            assert np.array_equal(np.array(a, dtype=np.int64), b)


@given(st.integers(-(1 << 60), 1 << 60), st.integers(1, 30))
def test_rescale_rule(raw, s):
    q, r = rescale(np.array([raw], dtype=np.int64), s)
    assert (int(q[0]), int(r[0])) == ref_rescale(raw, s)
    assert int(q[0]) * (1 << s) + int(r[0]) == raw
    assert 0 <= int(r[0]) + (1 << (s - 1)) < 1 << s


def test_rescale_rounds_half_up():
    q, r = rescale(np.array([-3 << 15, -1 << 15, 1 << 15, 3 << 15], dtype=np.int64), 16)
    assert q.tolist() == [-1, 0, 1, 2]


def test_quantize_round_trip_exact_for_representable():
    v = np.array([0.5, -1.25, 3.0, -0.0078125])
    assert np.array_equal(dequantize(quantize(v, 16), 16), v)
    assert quantize(np.array([1.5 / 65536]), 16).tolist() == [2]


def test_magnitude_bound_raises_naming_tensor_step_bound():
    mlp, rng = _mlp((4, 8, 3))
    x = quantize(rng.normal(size=(4, 4)) * 1000.0, 16)
    y = quantize(rng.normal(size=(4, 3)), 16)
    with pytest.raises(FixedPointError) as info:
        mlp.step(x, y)
    err = info.value
    assert err.step == 0 and err.bound == 1 << 23 and err.tensor in tensor_names(2)
    assert repr(err.tensor) in str(err) and str(1 << 23) in str(err)


def test_initial_weights_out_of_bound_raise():
    with pytest.raises(FixedPointError, match="W1"):
        FixedPointMLP([np.full((2, 2), 1 << 30)], [np.zeros(2, np.int64)], lr=100)


def test_config_validation():
    with pytest.raises(ValueError, match="value_bits"):
        FixedPointConfig(frac_bits=16, value_bits=16)
    with pytest.raises(ValueError, match="fan-in"):
        FixedPointConfig(value_bits=40).check_fan_in(1 << 20)


def test_deterministic_bit_identical_runs():
    a, rng_a = _mlp((4, 8, 3), seed=5)
    b, rng_b = _mlp((4, 8, 3), seed=5)
    for _ in range(3):
        x, y = rng_a.normal(size=(4, 4)), rng_a.normal(size=(4, 3))
        rng_b.normal(size=(4, 4)), rng_b.normal(size=(4, 3))
        ta, tb = a.step_float(x, y), b.step_float(x, y)
        assert all(np.array_equal(ta.tensors[k], tb.tensors[k]) for k in ta.tensors)


def test_tape_save_load_round_trip(tmp_path):
    mlp, rng = _mlp((4, 8, 3))
    tape = mlp.step_float(rng.normal(size=(4, 4)), rng.normal(size=(4, 3)))
    tape.save(tmp_path / "t.npz")
    back = WitnessTape.load(tmp_path / "t.npz")
    assert back.header() == tape.header()
    assert all(np.array_equal(back.tensors[k], tape.tensors[k]) for k in tape.tensors)


def test_tape_load_rejects_malformed(tmp_path):
    mlp, rng = _mlp((4, 8, 3))
    tape = mlp.step_float(rng.normal(size=(4, 4)), rng.normal(size=(4, 3)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TapeFormatError):
        WitnessTape.load(bad)
    head = tape.header() | {"version": 99}
    arr = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", __header__=arr, **tape.tensors)
    with pytest.raises(TapeFormatError, match="version"):
        WitnessTape.load(tmp_path / "v.npz")
    obj = np.array([object()], dtype=object)
    np.savez(
        tmp_path / "p.npz",
        __header__=np.frombuffer(json.dumps(tape.header()).encode(), dtype=np.uint8),
        x=obj,
    )
    with pytest.raises(TapeFormatError):
        WitnessTape.load(tmp_path / "p.npz")
    tensors = dict(tape.tensors)
    tensors["Z1"] = tensors["Z1"][:, :2]
    np.savez(
        tmp_path / "s.npz",
        __header__=np.frombuffer(json.dumps(tape.header()).encode(), dtype=np.uint8),
        **tensors,
    )
    with pytest.raises(TapeFormatError, match="Z1"):
        WitnessTape.load(tmp_path / "s.npz")


def test_tape_loss_field_round_trip_and_version_1(tmp_path):
    """Version-2 tapes carry the loss kind; a version-1 file (no "loss") loads as MSE; an xent
    header missing the softmax witness or naming an unknown loss is refused."""
    mlp, rng = _mlp((4, 8, 3))
    tape = mlp.step_float(rng.normal(size=(4, 4)), rng.normal(size=(4, 3)))

    def write(path, head, tensors):
        arr = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
        np.savez(path, __header__=arr, **tensors)

    old = {k: v for k, v in tape.header().items()
           if k not in ("loss", "momentum", "weight_decay", "conv", "input_ops")} | {"version": 1}
    write(tmp_path / "v1.npz", old, tape.tensors)
    assert WitnessTape.load(tmp_path / "v1.npz").loss == "mse"
    write(tmp_path / "x.npz", tape.header() | {"loss": "xent"}, tape.tensors)
    with pytest.raises(TapeFormatError, match="lacks tensor"):
        WitnessTape.load(tmp_path / "x.npz")
    write(tmp_path / "u.npz", tape.header() | {"loss": "hinge"}, tape.tensors)
    with pytest.raises(TapeFormatError, match="unknown loss"):
        WitnessTape.load(tmp_path / "u.npz")
    ce = FixedPointMLP.from_float([rng.normal(size=(8, 4)), rng.normal(size=(3, 8))],
                                  [np.zeros(8), np.zeros(3)], lr=0.125, loss="xent")
    xt = ce.step_float(rng.normal(size=(4, 4)), np.array([0, 2, 1, 2]))
    xt.save(tmp_path / "ce.npz")
    back = WitnessTape.load(tmp_path / "ce.npz")
    assert back.loss == "xent" and back.header() == xt.header()
    assert all(np.array_equal(back.tensors[k], xt.tensors[k]) for k in xt.tensors)
