"""Versioned binary proof format (see docs/proof_format.md). Decoding never unpickles.

    proof   := magic "LZKP" | version u16 | kind u16 | body        (little-endian throughout)
    body    := the kind's fields in a fixed order, each as  tag u8 | payload

Tags: 1 u32, 2 Fp2 (two u64 < p), 3 Fp2 list (u32 count, pairs), 4 field array (u8 ndim,
u32 dims, u64 < p each), 5 byte array (u8 ndim, u32 dims, raw), 7 optional (u8 0/1, value),
8 commitment (32-byte root, u32 num_vars, u8 extension, u32 num_points, u8 layout), 9 list
(u32 count, values). The decoder checks every tag, every length against the bytes left,
every field element < p, every flag in range, and that no byte is left over; any violation
raises :class:`ProofFormatError` naming the field and the byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .backend import P
from .errors import ProofFormatError
from .extension import Fp2
from .ligero import LigeroProof
from .lookup import RangeProof
from .pcs import LAYOUT_VECTOR, Commitment
from .sumcheck import SumcheckProof

__all__ = ["MAGIC", "VERSION", "KINDS", "encode_proof", "decode_proof"]

MAGIC = b"LZKP"
VERSION = 3  # 2: the range proof sends no logUp sum; 3: sumcheck masks g with F_p2 coefficients
KIND_SUMCHECK, KIND_LIGERO, KIND_RANGE = 1, 2, 3
KINDS = {KIND_SUMCHECK: SumcheckProof, KIND_LIGERO: LigeroProof, KIND_RANGE: RangeProof}
_T_U32, _T_FP2, _T_FP2_LIST, _T_FIELD_ARRAY, _T_BYTE_ARRAY = 1, 2, 3, 4, 5
_T_OPTIONAL, _T_COMMITMENT, _T_LIST = 7, 8, 9
_MAX_NDIM = 4

T = TypeVar("T")


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def raw(self, b: bytes) -> None:
        self.parts.append(b)

    def u32(self, v: int) -> None:
        self.raw(bytes([_T_U32]) + struct.pack("<I", v))

    def fp2(self, v: Fp2) -> None:
        self.raw(bytes([_T_FP2]) + struct.pack("<QQ", v.c0, v.c1))

    def fp2_list(self, vs: list[Fp2]) -> None:
        flat = [c for v in vs for c in (v.c0, v.c1)]
        self.raw(bytes([_T_FP2_LIST]) + struct.pack(f"<I{len(flat)}Q", len(vs), *flat))

    def _array(self, tag: int, a: np.ndarray, dtype: str) -> None:
        self.raw(bytes([tag, a.ndim]) + struct.pack(f"<{a.ndim}I", *a.shape))
        self.raw(np.ascontiguousarray(a).astype(dtype).tobytes())

    def field_array(self, a: np.ndarray) -> None:
        self._array(_T_FIELD_ARRAY, a, "<u8")

    def byte_array(self, a: np.ndarray) -> None:
        self._array(_T_BYTE_ARRAY, a, "u1")

    def optional(self, value: T | None, put: Callable[[T], None]) -> None:
        self.raw(bytes([_T_OPTIONAL, 0 if value is None else 1]))
        if value is not None:
            put(value)

    def commitment(self, c: Commitment) -> None:
        self.raw(bytes([_T_COMMITMENT]) + c.root)
        self.raw(struct.pack("<IBIB", c.num_vars, int(c.extension), c.num_points, c.layout))

    def list_of(self, items: list[T], put: Callable[[T], None]) -> None:
        self.raw(bytes([_T_LIST]) + struct.pack("<I", len(items)))
        for it in items:
            put(it)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def fail(self, msg: str) -> ProofFormatError:
        return ProofFormatError(msg, offset=self.pos)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def tag(self, expected: int, what: str) -> None:
        got = self.take(1, what + " tag")[0]
        if got != expected:
            self.pos -= 1
            raise self.fail(f"bad tag for {what}: expected {expected}, got {got}")

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _u64s(self, count: int, what: str) -> list[int]:
        vals = list(struct.unpack(f"<{count}Q", self.take(8 * count, what)))
        for v in vals:
            if v >= P:
                raise self.fail(f"{what}: {v} is not a canonical field element (>= p)")
        return vals

    def u32(self, what: str) -> int:
        self.tag(_T_U32, what)
        return struct.unpack("<I", self.take(4, what))[0]

    def fp2(self, what: str) -> Fp2:
        self.tag(_T_FP2, what)
        c0, c1 = self._u64s(2, what)
        return Fp2(c0, c1)

    def fp2_list(self, what: str) -> list[Fp2]:
        self.tag(_T_FP2_LIST, what)
        (n,) = struct.unpack("<I", self.take(4, what + " count"))
        if 16 * n > self.remaining():
            raise self.fail(f"{what}: count {n} exceeds the bytes left")
        flat = self._u64s(2 * n, what)
        return [Fp2(flat[2 * i], flat[2 * i + 1]) for i in range(n)]

    def _shape(self, what: str, itemsize: int) -> tuple[int, ...]:
        ndim = self.take(1, what + " ndim")[0]
        if not 1 <= ndim <= _MAX_NDIM:
            raise self.fail(f"{what}: ndim {ndim} not in [1, {_MAX_NDIM}]")
        shape = struct.unpack(f"<{ndim}I", self.take(4 * ndim, what + " shape"))
        size = int(np.prod(shape, dtype=object))
        if size * itemsize > self.remaining():
            raise self.fail(f"{what}: shape {shape} needs more bytes than remain")
        return tuple(shape)

    def field_array(self, what: str) -> np.ndarray:
        self.tag(_T_FIELD_ARRAY, what)
        shape = self._shape(what, 8)
        n = int(np.prod(shape))
        arr = np.frombuffer(self.take(8 * n, what), dtype="<u8").astype(np.uint64)
        if n and bool((arr >= P).any()):
            raise self.fail(f"{what}: element >= p is not a canonical field element")
        return arr.reshape(shape)

    def byte_array(self, what: str) -> np.ndarray:
        self.tag(_T_BYTE_ARRAY, what)
        shape = self._shape(what, 1)
        n = int(np.prod(shape))
        return np.frombuffer(self.take(n, what), dtype=np.uint8).reshape(shape).copy()

    def optional(self, get: Callable[[], T], what: str) -> T | None:
        self.tag(_T_OPTIONAL, what)
        flag = self.take(1, what + " presence")[0]
        if flag not in (0, 1):
            raise self.fail(f"{what}: presence flag {flag} is not 0 or 1")
        return get() if flag else None

    def commitment(self, what: str) -> Commitment:
        self.tag(_T_COMMITMENT, what)
        root = self.take(32, what + " root")
        nv, ext, npts, layout = struct.unpack("<IBIB", self.take(10, what + " shape"))
        if ext not in (0, 1) or layout not in (0, LAYOUT_VECTOR) or nv > 64 or npts > 1 << 16:
            raise self.fail(f"{what}: shape fields out of range ({nv}, {ext}, {npts}, {layout})")
        return Commitment(root, nv, bool(ext), npts, layout)

    def list_of(self, get: Callable[[], T], what: str) -> list[T]:
        self.tag(_T_LIST, what)
        (n,) = struct.unpack("<I", self.take(4, what + " count"))
        if n > self.remaining():
            raise self.fail(f"{what}: count {n} exceeds the bytes left")
        return [get() for _ in range(n)]


# ---- per-kind schemas -------------------------------------------------------------------------


def _put_ligero(w: _Writer, p: LigeroProof) -> None:
    w.field_array(p.combined)
    w.field_array(p.columns)
    w.byte_array(p.salts)
    w.byte_array(p.merkle)


def _get_ligero(r: _Reader) -> LigeroProof:
    return LigeroProof(
        combined=r.field_array("ligero.combined"),
        columns=r.field_array("ligero.columns"),
        salts=r.byte_array("ligero.salts"),
        merkle=r.byte_array("ligero.merkle"),
    )


def _put_sumcheck(w: _Writer, p: SumcheckProof) -> None:
    w.list_of(p.round_polys, w.fp2_list)
    w.fp2_list(p.final_evals)
    w.optional(p.mask_commitment, w.commitment)
    w.optional(p.mask_sum, w.fp2)
    w.optional(p.mask_eval, w.fp2)
    w.optional(p.mask_opening, lambda x: _put_ligero(w, x))


def _get_sumcheck(r: _Reader) -> SumcheckProof:
    return SumcheckProof(
        round_polys=r.list_of(lambda: r.fp2_list("sumcheck.round"), "sumcheck.rounds"),
        final_evals=r.fp2_list("sumcheck.final_evals"),
        mask_commitment=r.optional(
            lambda: r.commitment("sumcheck.mask_commitment"), "mask_commitment"
        ),
        mask_sum=r.optional(lambda: r.fp2("sumcheck.mask_sum"), "mask_sum"),
        mask_eval=r.optional(lambda: r.fp2("sumcheck.mask_eval"), "mask_eval"),
        mask_opening=r.optional(lambda: _get_ligero(r), "mask_opening"),
    )


def _put_range(w: _Writer, p: RangeProof) -> None:
    w.optional(p.limb_commitment, w.commitment)
    for c in (p.mult_commitment, p.h_commitment, p.q_commitment):
        w.commitment(c)
    _put_sumcheck(w, p.sumcheck)
    w.optional(p.limb_opening, lambda x: _put_ligero(w, x))
    for o in (p.h_opening, p.q_opening, p.mult_opening):
        _put_ligero(w, o)


def _get_range(r: _Reader) -> RangeProof:
    return RangeProof(
        limb_commitment=r.optional(
            lambda: r.commitment("range.limb_commitment"), "limb_commitment"
        ),
        mult_commitment=r.commitment("range.mult_commitment"),
        h_commitment=r.commitment("range.h_commitment"),
        q_commitment=r.commitment("range.q_commitment"),
        sumcheck=_get_sumcheck(r),
        limb_opening=r.optional(lambda: _get_ligero(r), "limb_opening"),
        h_opening=_get_ligero(r),
        q_opening=_get_ligero(r),
        mult_opening=_get_ligero(r),
    )


_PUT: dict[type, tuple[int, Callable[[_Writer, Any], None]]] = {
    SumcheckProof: (KIND_SUMCHECK, _put_sumcheck),
    LigeroProof: (KIND_LIGERO, _put_ligero),
    RangeProof: (KIND_RANGE, _put_range),
}
_GET: dict[int, Callable[[_Reader], Any]] = {
    KIND_SUMCHECK: _get_sumcheck,
    KIND_LIGERO: _get_ligero,
    KIND_RANGE: _get_range,
}


@dataclass(frozen=True)
class Framing:
    """The envelope of one family of proofs: magic, version and its kinds.

    ``kinds`` maps each proof class to ``(kind code, writer, reader)``. Every proof file of the
    project is ``magic | version u16 | kind u16 | body``; the envelope is checked here once.
    """

    name: str
    magic: bytes
    version: int
    kinds: dict[type, tuple[int, Callable[[_Writer, Any], None], Callable[[_Reader], Any]]]

    def encode(self, proof: Any) -> bytes:
        if type(proof) not in self.kinds:
            raise ProofFormatError(f"no {self.name} format for {type(proof).__name__}")
        kind, put, _ = self.kinds[type(proof)]
        w = _Writer()
        w.raw(self.magic + struct.pack("<HH", self.version, kind))
        put(w, proof)
        return b"".join(w.parts)

    def decode(self, data: bytes, expected_kind: type | None = None) -> Any:
        """Parse bytes; ProofFormatError (with the byte offset) on anything malformed."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProofFormatError(f"{self.name}: expected bytes, got {type(data).__name__}")
        r = _Reader(bytes(data))
        if r.take(4, "magic") != self.magic:
            raise ProofFormatError(f"bad magic: not a lightning-zk {self.name}", offset=0)
        version, kind = struct.unpack("<HH", r.take(4, "header"))
        if version != self.version:
            raise ProofFormatError(
                f"unsupported {self.name} format version {version} (this is {self.version})",
                offset=4,
            )
        by_code = {code: (cls, get) for cls, (code, _, get) in self.kinds.items()}
        if kind not in by_code:
            raise ProofFormatError(f"unknown {self.name} kind {kind}", offset=6)
        cls, get = by_code[kind]
        if expected_kind is not None and cls is not expected_kind:
            raise ProofFormatError(
                f"proof kind {cls.__name__} where {expected_kind.__name__} was expected", offset=6
            )
        try:
            proof = get(r)
        except ProofFormatError:
            raise
        except (ValueError, struct.error, OverflowError, IndexError, MemoryError) as exc:
            raise ProofFormatError(f"malformed {self.name} body: {exc}", offset=r.pos) from exc
        if r.remaining():
            raise ProofFormatError(f"{r.remaining()} trailing bytes after the proof", offset=r.pos)
        return proof


CORE_PROOFS = Framing(
    "proof", MAGIC, VERSION,
    {cls: (code, _PUT[cls][1], _GET[code]) for code, cls in KINDS.items()},
)


def encode_proof(proof: SumcheckProof | LigeroProof | RangeProof) -> bytes:
    """Serialise a proof object to the versioned binary format."""
    return CORE_PROOFS.encode(proof)


def decode_proof(data: bytes, expected_kind: type | None = None) -> Any:
    """Parse proof bytes; raise ProofFormatError on anything malformed (never unpickles).

    Args:
        expected_kind: if given (e.g. ``RangeProof``), a proof of another kind is rejected.
    """
    return CORE_PROOFS.decode(data, expected_kind)
