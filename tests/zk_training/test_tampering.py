"""Tampered witnesses and tampered proof bytes are rejected."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lightning_zk.fixed import tensor_names
from lightning_zk.zk import ProofFormatError, VerificationError
from lightning_zk.zk.training import (
    WitnessError,
    decode_training_proof,
    encode_training_proof,
    prove_step,
    verify_unit,
)
from lightning_zk.zk.training import prover as prover_mod

from .conftest import assert_cheat_rejected, make_tapes

TAPES = make_tapes(2, seed=3)


def _tampered(name: str, delta: int = 1, index=0):
    tape = copy.deepcopy(TAPES[0])
    arr = tape.tensors[name]
    flat = arr.reshape(-1)
    flat[index] += delta
    return tape


@pytest.mark.parametrize("name", tensor_names(2))
def test_any_tensor_element_altered_fails_proving(name):
    with pytest.raises(WitnessError) as info:
        prove_step(_tampered(name), backend="numpy", rng=1)
    assert info.value.step == 0


def test_chain_altered_weights_fail_proving():
    _, _, link = prove_step(TAPES[0], backend="numpy", rng=1)
    tape = copy.deepcopy(TAPES[1])
    tape.tensors["W2"][0, 0] += 1
    with pytest.raises(WitnessError, match="chain|forward"):
        prove_step(tape, link, backend="numpy", rng=2)


@pytest.mark.parametrize("name", ["x", "y", "W1", "Z1", "S1", "RZ2", "GW1", "UW2", "b2n"])
def test_altered_element_rejected_by_verifier(name):
    assert_cheat_rejected(_tampered(name))


def test_rescale_off_by_one_caught_by_range_check():
    """UW + 1, RUW - 2^s, W' - 1 satisfies every equation; only the remainder range fails."""
    tape = copy.deepcopy(TAPES[0])
    tape.tensors["UW2"][0, 0] += 1
    tape.tensors["RUW2"][0, 0] -= 1 << 16
    tape.tensors["W2n"][0, 0] -= 1
    assert_cheat_rejected(tape, check="range check")


def _consistent_step(x, y, flip=None, bias_rows=None):
    """All tensors of a 2-layer step recomputed from (x, y, W, b) with one deliberate cheat.

    ``flip``: force the sign bit of Z1[flip] to 0. ``bias_rows``: rows that get the bias
    (padding rows of a hidden extra example get none, as the circuit's ind(b) expects).
    Everything else is consistent, so only the targeted check can catch the cheat.
    """
    from lightning_zk.fixed import rescale

    src = TAPES[0]
    t = {k: src.tensors[k].copy() for k in ("W1", "b1", "W2", "b2")}
    t["x"], t["y"] = x, y
    s, lr, c = src.frac_bits, src.lr, src.mse_const
    rows = np.ones((x.shape[0], 1), dtype=np.int64)
    if bias_rows is not None:
        rows[bias_rows:] = 0
    t["Z1"], t["RZ1"] = rescale(x @ t["W1"].T + rows * (t["b1"] << s)[None, :], s)
    sign = (t["Z1"] > 0).astype(np.int64)
    if flip is not None:
        sign[flip] = 0
    z = t["Z1"]
    t["S1"], t["V1"], t["A1"] = sign, 2 * sign * z - z - sign, z * sign
    t["Z2"], t["RZ2"] = rescale(t["A1"] @ t["W2"].T + rows * (t["b2"] << s)[None, :], s)
    t["G"], t["RG"] = rescale(c * (t["Z2"] - y), s)
    t["GW2"], t["RGW2"] = rescale(t["G"].T @ t["A1"], s)
    t["Gb2"] = t["G"].sum(axis=0)
    t["GA1"], t["RGA1"] = rescale(t["G"] @ t["W2"], s)
    t["GZ1"] = t["GA1"] * sign
    t["GW1"], t["RGW1"] = rescale(t["GZ1"].T @ x, s)
    t["Gb1"] = t["GZ1"].sum(axis=0)
    for i in (1, 2):
        t[f"UW{i}"], t[f"RUW{i}"] = rescale(lr * t[f"GW{i}"], s)
        t[f"Ub{i}"], t[f"RUb{i}"] = rescale(lr * t[f"Gb{i}"], s)
        t[f"W{i}n"], t[f"b{i}n"] = t[f"W{i}"] - t[f"UW{i}"], t[f"b{i}"] - t[f"Ub{i}"]
    return t


def test_wrong_sign_bit_caught_by_range_check():
    """A positive Z declared negative (S = 0, V = -Z < 0) with a consistent rest of the step."""
    from lightning_zk.fixed import WitnessTape

    src = TAPES[0]
    flip = tuple(np.argwhere(src.tensors["Z1"] > 0)[0])
    t = _consistent_step(src.tensors["x"], src.tensors["y"], flip=flip)
    tape = WitnessTape(
        src.step,
        src.dims,
        src.frac_bits,
        src.value_bits,
        src.lr,
        src.mse_const,
        src.batch_size,
        t,
    )
    with pytest.raises(WitnessError, match="relu sign"):
        prove_step(tape, backend="numpy", rng=5)
    assert_cheat_rejected(tape, check="range check")


def test_nonzero_padding_rejected(monkeypatch):
    """An extra example hidden in the batch padding (batch 3 -> 4 rows) is caught."""
    src = TAPES[0]
    x = np.vstack([src.tensors["x"], src.tensors["x"][:1] * 2])
    y = np.vstack([src.tensors["y"], src.tensors["y"][:1] + 9000])
    fake = copy.deepcopy(src)
    fake.tensors = _consistent_step(x, y, bias_rows=3)
    monkeypatch.setattr(prover_mod, "_check_tapes", lambda tapes, prev: None)  # 4-row tensors
    real_commit = prover_mod.commit_batch

    def public_rows_only(pcs, layout, xs, ys, seed, xp):  # the statement shows the real 3 rows
        return real_commit(pcs, layout, [x[:3] for x in xs], [y[:3] for y in ys], seed, xp)

    monkeypatch.setattr(prover_mod, "commit_batch", public_rows_only)
    assert_cheat_rejected(fake, check="relation elementwise")  # its padding terms see the hidden row


def _positions(n: int) -> list[int]:
    rng = np.random.default_rng(0)
    body = sorted(rng.choice(np.arange(8, n - 16), size=16, replace=False).tolist())
    return [0, 3, 4, 6, *body, n - 9, n - 1]


def test_any_byte_altered_rejected(run):
    proof, stmt = run.step_proofs[0]
    data = encode_training_proof(proof)
    for pos in _positions(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        try:
            decoded = decode_training_proof(bytes(bad))
        except ProofFormatError:
            continue
        with pytest.raises(VerificationError):
            verify_unit(decoded, stmt)


def test_truncated_and_trailing_bytes_rejected(run):
    data = encode_training_proof(run.step_proofs[0][0])
    for bad in (data[:-1], data + b"\0", data[:10], b"LZKP" + data[4:]):
        with pytest.raises(ProofFormatError):
            decode_training_proof(bad)


def test_seal_bytes_round_trip(run):
    from lightning_zk.zk.training import SealProof

    data = encode_training_proof(run.step_seal)
    assert isinstance(decode_training_proof(data, SealProof), SealProof)
    with pytest.raises(ProofFormatError):
        decode_training_proof(data, type(run.step_proofs[0][0]))
