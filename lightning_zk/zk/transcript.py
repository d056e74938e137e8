"""Fiat-Shamir transcript: a SHA-256 hash chain with typed, labelled, length-prefixed absorbs.

State update on absorb:   s <- SHA256("lzk.absorb" || s || enc(label) || type || enc(data))
Squeeze (counter mode):   block_i = SHA256("lzk.squeeze" || s || enc(label) || i), then
                          s <- SHA256("lzk.ratchet" || s || enc(label)) so every squeeze
                          changes the state (two squeezes never repeat).
``enc`` is a u64 little-endian length prefix followed by the bytes, and ``type`` is one tag
byte, so no two different sequences of messages absorb to the same byte string.

Challenges in F_p2 are sampled by rejection from 64-bit words (a word is accepted iff < p; the
rejection probability is 2^-32 per word), so they are *exactly* uniform: no bias term enters any
soundness bound. Indices in [0, 2^b) take b bits, also exact.

Prover and verifier build the same transcript: same domain separator, same public statement,
same prover messages in the same order, before each challenge.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .backend import P, to_numpy
from .errors import ParameterError
from .extension import Fp2

__all__ = ["Transcript"]

_T_BYTES, _T_U64, _T_FP, _T_FP2, _T_DIGEST, _T_STR = 1, 2, 3, 4, 5, 6


def _enc(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


class Transcript:
    """Fiat-Shamir transcript bound to a domain separator.

    Example::

        >>> t = Transcript(b"lightning-zk/example/v1")
        >>> t.absorb_u64("n", 3)
        >>> c = t.challenge_ext("r")
        >>> isinstance(c, Fp2)
        True
    """

    def __init__(self, domain_separator: bytes) -> None:
        if not isinstance(domain_separator, (bytes, bytearray)) or not domain_separator:
            raise ParameterError("Transcript(domain_separator): must be non-empty bytes")
        self._state = hashlib.sha256(b"lzk.transcript.v1" + _enc(bytes(domain_separator))).digest()

    # -- absorb -------------------------------------------------------------------------------

    def _absorb(self, label: str, tag: int, payload: bytes) -> None:
        self._state = hashlib.sha256(
            b"lzk.absorb" + self._state + _enc(label.encode()) + bytes([tag]) + _enc(payload)
        ).digest()

    def absorb_bytes(self, label: str, data: bytes) -> None:
        self._absorb(label, _T_BYTES, bytes(data))

    def absorb_str(self, label: str, text: str) -> None:
        self._absorb(label, _T_STR, text.encode())

    def absorb_digest(self, label: str, digest: bytes) -> None:
        self._absorb(label, _T_DIGEST, bytes(digest))

    def absorb_u64(self, label: str, *values: int) -> None:
        for v in values:
            if not 0 <= int(v) < 1 << 64:
                raise ParameterError(f"absorb_u64({label!r}): {v} is not a u64")
        self._absorb(label, _T_U64, struct.pack(f"<{len(values)}Q", *[int(v) for v in values]))

    def absorb_fp(self, label: str, values: Any) -> None:
        """Absorb base-field elements (array or iterable of ints)."""
        arr = np.asarray(to_numpy(values) if not isinstance(values, list) else values)
        arr = arr.astype(np.uint64).reshape(-1)
        self._absorb(label, _T_FP, arr.astype("<u8").tobytes())

    def absorb_ext(self, label: str, values: Iterable[Fp2] | Fp2) -> None:
        """Absorb extension scalars (one or a sequence)."""
        vals = [values] if isinstance(values, Fp2) else list(values)
        flat = [c for v in vals for c in (v.c0, v.c1)]
        self._absorb(label, _T_FP2, struct.pack(f"<{len(flat)}Q", *flat))

    def absorb_ext_array(self, label: str, arr: Any) -> None:
        """Absorb an extension array (2, ...) as interleaved (c0, c1) pairs."""
        a = to_numpy(arr).reshape(2, -1)
        self._absorb(label, _T_FP2, np.ascontiguousarray(a.T).astype("<u8").tobytes())

    # -- squeeze ------------------------------------------------------------------------------

    def _stream(self, label: str) -> Iterable[bytes]:
        i = 0
        while True:
            yield hashlib.sha256(
                b"lzk.squeeze" + self._state + _enc(label.encode()) + struct.pack("<Q", i)
            ).digest()
            i += 1

    def _ratchet(self, label: str) -> None:
        self._state = hashlib.sha256(b"lzk.ratchet" + self._state + _enc(label.encode())).digest()

    def challenge_fp_list(self, label: str, count: int) -> list[int]:
        """``count`` uniform base-field elements (rejection sampling on 64-bit words)."""
        out: list[int] = []
        for block in self._stream(label):
            for (w,) in struct.iter_unpack("<Q", block):
                if w < P:
                    out.append(w)
                    if len(out) == count:
                        self._ratchet(label)
                        return out
            if count == 0:
                break
        self._ratchet(label)
        return out

    def challenge_ext(self, label: str) -> Fp2:
        """One uniform F_p2 challenge."""
        c0, c1 = self.challenge_fp_list(label, 2)
        return Fp2(c0, c1)

    def challenge_ext_list(self, label: str, count: int) -> list[Fp2]:
        """``count`` independent uniform F_p2 challenges."""
        flat = self.challenge_fp_list(label, 2 * count)
        return [Fp2(flat[2 * i], flat[2 * i + 1]) for i in range(count)]

    def challenge_indices(self, label: str, count: int, bound: int) -> list[int]:
        """``count`` independent uniform indices in [0, bound), bound a power of two."""
        if bound < 1 or bound & (bound - 1):
            raise ParameterError(f"challenge_indices: bound {bound} must be a power of two")
        bits = bound.bit_length() - 1
        out: list[int] = []
        if count:
            for block in self._stream(label):
                for (w,) in struct.iter_unpack("<Q", block):
                    out.append(w & ((1 << bits) - 1))
                    if len(out) == count:
                        break
                if len(out) == count:
                    break
        self._ratchet(label)
        return out

    def fork_state(self) -> bytes:
        """Current 32-byte state (for tests and for binding sub-transcripts)."""
        return self._state

    def absorb_points(self, label: str, points: Sequence[Sequence[Fp2]]) -> None:
        self.absorb_u64(label + ".count", len(points))
        for pt in points:
            self.absorb_ext(label, list(pt))
