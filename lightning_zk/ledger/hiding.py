"""Hiding digests: what a fixed-point (zero-knowledge) run commits about private data.

A plain SHA-256 of a batch or of the weights is binding but not hiding: whoever guesses the data
recomputes the digest and confirms the guess. A zero-knowledge run publishes its step records and
Merkle ledger, so there every digest of private data (state after a step, batch content) is
replaced by a keyed digest

    hidden = HMAC-SHA256(key, "lightning-zk/hidden-digest/v1" || kind || index (i64 LE) || digest)

under a 32-byte run key drawn from the OS CSPRNG at the run's start. Without the key the hidden
digest is a pseudorandom function of (kind, index, digest), so it reveals nothing about the data
(HMAC is a PRF); with the key fixed, two different digests collide only if SHA-256 does (binding).
The key never leaves the private part of the run directory (``RUN/tapes/digest-key.json``); the
manifest publishes only its commitment ``SHA-256("lightning-zk/digest-key/v1" || key)``, so a
trainer who later reveals the key to an auditor or a data owner cannot reveal another one.

Example::

    >>> key = DigestKey(bytes(32))
    >>> key.hide("state", 3, "00" * 32) != key.hide("state", 4, "00" * 32)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_json

__all__ = ["DigestKey", "DigestKeyError", "KEY_FILE", "SCHEME"]

SCHEME = "hmac-sha256/v1"
KEY_FILE = "digest-key.json"  # under RUN/tapes/: private, never published
_KEY_FORMAT = "lightning-zk/digest-key"
_TAG = b"lightning-zk/hidden-digest/v1"
_COMMIT_TAG = b"lightning-zk/digest-key/v1"
_KINDS = ("state", "batch")


class DigestKeyError(RuntimeError):
    """The run's digest key is missing, malformed, or not the one the manifest commits to."""


@dataclass(frozen=True)
class DigestKey:
    """The private key of a run's hidden digests."""

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != 32:
            raise DigestKeyError("a digest key is 32 bytes")

    def __repr__(self) -> str:  # never print the key
        return f"DigestKey(commitment={self.commitment()[:16]}…)"

    @classmethod
    def new(cls) -> DigestKey:
        return cls(os.urandom(32))

    def commitment(self) -> str:
        """Public commitment to the key (hex), published in the manifest."""
        return hashlib.sha256(_COMMIT_TAG + self.key).hexdigest()

    def hide(self, kind: str, index: int, digest: str) -> str:
        """The hidden form (hex) of the SHA-256 ``digest`` (hex) of ``kind`` at ``index``.

        ``index`` is the step after which the state was taken (-1: the initial state) or the
        step that consumed the batch.
        """
        if kind not in _KINDS:
            raise ValueError(f"hidden digest kind {kind!r}: use one of {_KINDS}")
        message = _TAG + kind.encode() + struct.pack("<q", index) + bytes.fromhex(digest)
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    # --- storage (private) -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"format": _KEY_FORMAT, "version": 1, "key": self.key.hex()})

    @classmethod
    def load(cls, path: str | Path, commitment: str | None = None) -> DigestKey:
        """Read the key; with ``commitment`` (the manifest's), check it is the committed key.

        Raises:
            DigestKeyError: missing or malformed file, or a key that does not open
                ``commitment``.
        """
        path = Path(path)
        try:
            if not path.is_file() or path.stat().st_size > 4096:
                raise ValueError("missing, not a regular file, or too large")
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict) or data.get("format") != _KEY_FORMAT or data.get(
                "version"
            ) != 1:
                raise ValueError(f"not a {_KEY_FORMAT} version 1 file")
            key = cls(bytes.fromhex(str(data["key"])))
        except (OSError, ValueError, KeyError, RecursionError, DigestKeyError) as err:
            raise DigestKeyError(f"cannot read the run's digest key {path}: {err}") from err
        if commitment is not None and not hmac.compare_digest(key.commitment(), str(commitment)):
            raise DigestKeyError(
                f"the digest key in {path} is not the key the run's manifest commits to"
            )
        return key
