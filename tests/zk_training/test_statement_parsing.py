"""Statements are parsed strictly: exact JSON types, no missing or unknown field, ranges."""

from __future__ import annotations

import json

import pytest

from lightning_zk.zk import ParameterError
from lightning_zk.zk.pcs import Commitment
from lightning_zk.zk.training import TrainingStatement
from lightning_zk.zk.training.statement import MAX_STATEMENT_BYTES

_COM = Commitment(bytes(range(32)), 8, False, 2)
STMT = TrainingStatement(
    (4, 8, 3), 3, 16, 24, 16384, 14564, 5, 2, False, _COM, _COM, Commitment(bytes(32), 9, False, 2),
    run_id="d598911246ed471d9b7821a533f18ea3", ledger_leaves=(bytes([1]) * 32, bytes([2]) * 32),
    momentum=58982, weight_decay=7, graphs=(bytes([3]) * 32, bytes([4]) * 32),
)

INT_FIELDS = ["batch_size", "frac_bits", "value_bits", "lr", "mse_const", "step_start",
              "num_steps", "security_bits", "blowup", "momentum", "weight_decay"]


def _parse(d):
    return TrainingStatement.from_bytes(json.dumps(d).encode())


def test_round_trip():
    assert TrainingStatement.from_bytes(STMT.to_bytes()) == STMT
    assert STMT.to_json()["version"] == 8 and STMT.to_json()["loss"] == "mse"
    assert STMT.to_json()["graphs"] == ["03" * 32, "04" * 32]
    assert STMT.to_json()["conv"] is None and STMT.conv == ()


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("bad", [True, 3.0, "3", None, [3], {"v": 3}, -1, 2**63])
def test_integer_fields_take_only_integers_in_range(name, bad):
    d = STMT.to_json()
    d[name] = bad
    with pytest.raises(ParameterError, match=name):
        _parse(d)


@pytest.mark.parametrize("bad", [1, 0, "true", None, 1.0])
def test_chain_start_takes_only_a_bool(bad):
    d = STMT.to_json()
    d["chain_start"] = bad
    with pytest.raises(ParameterError, match="chain_start"):
        _parse(d)


@pytest.mark.parametrize("bad", [[4.0, 8, 3], [4, True, 3], ["4", 8, 3], [4], "4,8,3", [4, 0, 3]])
def test_dims(bad):
    d = STMT.to_json()
    d["dims"] = bad
    with pytest.raises(ParameterError, match="dims"):
        _parse(d)


@pytest.mark.parametrize("bad", [5, None, ["abc"], "x" * 200, "é"])
def test_run_id(bad):
    d = STMT.to_json()
    d["run_id"] = bad
    with pytest.raises(ParameterError, match="run_id"):
        _parse(d)


@pytest.mark.parametrize("bad", ["03" * 32, ["03" * 31], ["zz" * 32], [3] * 2, ["03" * 32] * 3,
                                 None])
def test_graphs(bad):
    d = STMT.to_json()
    d["graphs"] = bad
    with pytest.raises(ParameterError, match="graph"):
        _parse(d)


@pytest.mark.parametrize("bad", ["00" * 32, ["00" * 31], ["zz" * 32], [1] * 2, ["01" * 32] * 3])
def test_ledger_leaves(bad):
    d = STMT.to_json()
    d["ledger_leaves"] = bad
    with pytest.raises(ParameterError, match="ledger"):
        _parse(d)


@pytest.mark.parametrize("com", ["weights_in", "weights_out", "batch"])
@pytest.mark.parametrize(
    "key,bad",
    [("root", "00" * 31), ("root", 5), ("num_vars", "8"), ("num_vars", 8.0), ("num_vars", 0),
     ("extension", 0), ("num_points", True), ("layout", 2)],
)
def test_commitment_fields(com, key, bad):
    d = STMT.to_json()
    d[com][key] = bad
    with pytest.raises(ParameterError):
        _parse(d)


@pytest.mark.parametrize("com", ["weights_in", "weights_out", "batch"])
def test_commitment_missing_or_unknown_keys(com):
    d = STMT.to_json()
    del d[com]["layout"]
    with pytest.raises(ParameterError, match="missing fields \\['layout'\\]"):
        _parse(d)
    d = STMT.to_json()
    d[com]["salt"] = "00"
    with pytest.raises(ParameterError, match="unknown fields \\['salt'\\]"):
        _parse(d)


@pytest.mark.parametrize("name", sorted(STMT.to_json()))
def test_every_field_is_required(name):
    d = STMT.to_json()
    del d[name]
    with pytest.raises(ParameterError):
        _parse(d)


def test_unknown_field_rejected():
    d = STMT.to_json()
    d["comment"] = "harmless?"
    with pytest.raises(ParameterError, match="unknown fields \\['comment'\\]"):
        _parse(d)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError inside json
        b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
        b"\xff\xfe not utf-8",
        b'{"format": NaN}',
        b"[]",
        b"null",
    ],
)
def test_malformed_bytes_are_parameter_errors(data):
    with pytest.raises(ParameterError):
        TrainingStatement.from_bytes(data)


def test_duplicate_keys_and_oversized_input_rejected():
    text = STMT.to_bytes().decode()
    with pytest.raises(ParameterError, match="duplicate key"):
        TrainingStatement.from_bytes(text.replace('"blowup": 4', '"blowup": 4, "blowup": 2').encode())
    with pytest.raises(ParameterError, match="bytes"):
        TrainingStatement.from_bytes(b" " * (MAX_STATEMENT_BYTES + 1))
