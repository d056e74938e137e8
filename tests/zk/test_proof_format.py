"""Binary proof format: round trip, and clean rejection of truncated/extended/random/altered bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_zk.zk import (
    Ligero,
    ProofFormatError,
    SumcheckSpec,
    Transcript,
    decode_proof,
    encode_proof,
    prove_range,
    prove_sumcheck,
    verify_range,
    verify_sumcheck,
)
from lightning_zk.zk.backend import P
from lightning_zk.zk.ligero import LigeroProof
from lightning_zk.zk.lookup import RangeProof
from lightning_zk.zk.sumcheck import SumcheckProof


@pytest.fixture(scope="module")
def proofs():
    rng = np.random.default_rng(2)
    tabs = [rng.integers(0, P, 8, dtype=np.uint64) for _ in range(3)]
    spec = SumcheckSpec.of(3, 3, [(1, [0, 1, 2])])
    sc, claim = prove_sumcheck(spec, tabs, Transcript(b"f"), rng=1)
    v = rng.integers(0, 2**20, 4, dtype=np.uint64)
    rp, _ = prove_range(Transcript(b"r"), v, bits=20, rng=1)
    pcs = Ligero()
    com, stt = pcs.commit(tabs[0], num_points=1, rng=1)
    lp = pcs.open(stt, [claim.point], Transcript(b"l"))
    total = sum(int(x) * int(y) * int(z) for x, y, z in zip(*tabs, strict=True)) % P
    return {"sumcheck": (spec, sc, claim), "range": rp, "ligero": lp, "sum": total}


def test_roundtrip_and_verify_after_decode(proofs):
    spec, sc, _ = proofs["sumcheck"]
    data = encode_proof(sc)
    back = decode_proof(data, SumcheckProof)
    assert encode_proof(back) == data
    verify_sumcheck(spec, back, Transcript(b"f"), proofs["sum"])
    rp = decode_proof(encode_proof(proofs["range"]), RangeProof)
    verify_range(Transcript(b"r"), rp, num_vars=2, bits=20, value_masked=False)
    lp = decode_proof(encode_proof(proofs["ligero"]), LigeroProof)
    assert (lp.columns == proofs["ligero"].columns).all()
    assert encode_proof(lp) == encode_proof(proofs["ligero"])


@pytest.mark.parametrize("name", ["sumcheck", "range", "ligero"])
def test_truncated_and_extended_rejected(proofs, name):
    obj = proofs[name][1] if name == "sumcheck" else proofs[name]
    data = encode_proof(obj)
    for cut in (0, 3, 8, 9, len(data) // 2, len(data) - 1):
        with pytest.raises(ProofFormatError):
            decode_proof(data[:cut])
    with pytest.raises(ProofFormatError, match="trailing"):
        decode_proof(data + b"\x00")


def test_header_errors(proofs):
    data = encode_proof(proofs["ligero"])
    with pytest.raises(ProofFormatError, match="magic"):
        decode_proof(b"XXXX" + data[4:])
    with pytest.raises(ProofFormatError, match="version"):
        decode_proof(data[:4] + struct.pack("<H", 99) + data[6:])
    with pytest.raises(ProofFormatError, match="unknown proof kind"):
        decode_proof(data[:6] + struct.pack("<H", 77) + data[8:])
    with pytest.raises(ProofFormatError, match="where RangeProof was expected"):
        decode_proof(data, RangeProof)
    with pytest.raises(ProofFormatError, match="expected bytes"):
        decode_proof("not bytes")  # type: ignore[arg-type]


def test_non_canonical_field_element_rejected(proofs):
    data = bytearray(encode_proof(proofs["ligero"]))
    # first field array: header 8, tag 1, ndim 1, 3 dims * 4 -> data at 8 + 2 + 12
    start = 8 + 2 + 12
    data[start : start + 8] = struct.pack("<Q", P)
    with pytest.raises(ProofFormatError, match="canonical"):
        decode_proof(bytes(data))


def test_bad_tag_and_flag(proofs):
    data = bytearray(encode_proof(proofs["ligero"]))
    data[8] = 42
    with pytest.raises(ProofFormatError, match="bad tag"):
        decode_proof(bytes(data))
    sc = bytearray(encode_proof(proofs["sumcheck"][1]))
    i = sc.index(bytes([7, 1]))  # first optional presence flag
    sc[i + 1] = 2
    with pytest.raises(ProofFormatError, match="presence flag"):
        decode_proof(bytes(sc))


def test_huge_length_fields_rejected_without_allocation(proofs):
    data = bytearray(encode_proof(proofs["ligero"]))
    data[10:14] = struct.pack("<I", 2**31)
    with pytest.raises(ProofFormatError, match="more bytes than remain"):
        decode_proof(bytes(data))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_random_bytes_rejected_cleanly(blob):
    with pytest.raises(ProofFormatError):
        decode_proof(blob)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_random_corruptions_never_crash(proofs, data):
    """Flip random bytes of a valid proof: decode raises ProofFormatError or yields an object."""
    blob = bytearray(encode_proof(proofs["range"]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        decode_proof(bytes(blob))
    except ProofFormatError:
        pass
