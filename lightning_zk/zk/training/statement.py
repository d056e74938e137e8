"""Public statement of a training proof unit (T consecutive SGD steps, T >= 1).

Everything here is absorbed into the Fiat-Shamir transcript before the first challenge:
architecture, true batch size, scale s, value bound, learning rate, MSE constant, first step
index, number of steps, stacking width, whether the unit starts a chain, the commitments to the
weights before (B_in) and after (B_out), the commitment to the unit's batch (x and y of every
step, :mod:`.batch`), and the commitment parameters of the verifier.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..errors import ParameterError
from ..ligero import LigeroConfig
from ..pcs import Commitment
from ..transcript import Transcript
from .layout import Arch

__all__ = ["TrainingStatement", "STATEMENT_VERSION"]

STATEMENT_VERSION = 2  # 2: adds the batch commitment


def _com_json(c: Commitment) -> dict:
    return {
        "root": c.root.hex(),
        "num_vars": c.num_vars,
        "extension": c.extension,
        "num_points": c.num_points,
        "layout": c.layout,
    }


def _com_from(d: dict) -> Commitment:
    root = bytes.fromhex(d["root"])
    return Commitment(
        root, int(d["num_vars"]), bool(d["extension"]), int(d["num_points"]), int(d["layout"])
    )


@dataclass(frozen=True)
class TrainingStatement:
    """What a verifier checks a unit proof against (and nothing private)."""

    dims: tuple[int, ...]
    batch_size: int
    frac_bits: int
    value_bits: int
    lr: int
    mse_const: int
    step_start: int
    num_steps: int
    chain_start: bool
    weights_in: Commitment
    weights_out: Commitment
    batch: Commitment
    security_bits: int = 100
    blowup: int = 4

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.step_start < 0:
            raise ParameterError(
                f"TrainingStatement: step_start={self.step_start}, num_steps={self.num_steps}"
            )
        if len(self.dims) < 2 or min(self.dims) < 1 or self.batch_size < 1:
            raise ParameterError(f"TrainingStatement: bad dims {self.dims} / batch size")

    @property
    def arch(self) -> Arch:
        t = max(2, 1 << (self.num_steps - 1).bit_length())
        return Arch(tuple(self.dims), self.batch_size, t)

    @property
    def pcs_config(self) -> LigeroConfig:
        return LigeroConfig(self.security_bits, self.blowup)

    def absorb(self, tr: Transcript) -> None:
        """Absorb the full statement (first thing in every unit transcript)."""
        tr.absorb_u64("stmt.version", STATEMENT_VERSION)
        tr.absorb_u64("stmt.dims", len(self.dims), *self.dims)
        tr.absorb_u64("stmt.batch", self.batch_size)
        tr.absorb_u64("stmt.scale", self.frac_bits, self.value_bits)
        tr.absorb_u64("stmt.constants", self.lr, self.mse_const)
        tr.absorb_u64("stmt.steps", self.step_start, self.num_steps, self.arch.num_instances)
        tr.absorb_u64("stmt.chain_start", int(self.chain_start))
        tr.absorb_u64("stmt.pcs", self.security_bits, self.blowup)
        self.weights_in.absorb_into(tr, "stmt.weights_in")
        self.weights_out.absorb_into(tr, "stmt.weights_out")
        self.batch.absorb_into(tr, "stmt.batch")

    def to_json(self) -> dict:
        return {
            "format": "lightning-zk/training-statement",
            "version": STATEMENT_VERSION,
            "dims": list(self.dims),
            "batch_size": self.batch_size,
            "frac_bits": self.frac_bits,
            "value_bits": self.value_bits,
            "lr": self.lr,
            "mse_const": self.mse_const,
            "step_start": self.step_start,
            "num_steps": self.num_steps,
            "chain_start": self.chain_start,
            "weights_in": _com_json(self.weights_in),
            "weights_out": _com_json(self.weights_out),
            "batch": _com_json(self.batch),
            "security_bits": self.security_bits,
            "blowup": self.blowup,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(b"lzk.statement" + self.to_bytes()).digest()

    @classmethod
    def from_json(cls, d: dict) -> TrainingStatement:
        """Parse a statement dict; raise ParameterError on anything malformed."""
        try:
            if d.get("format") != "lightning-zk/training-statement":
                raise ParameterError("not a lightning-zk training statement")
            if d.get("version") != STATEMENT_VERSION:
                raise ParameterError(
                    f"training statement version {d.get('version')!r} unsupported (this build "
                    f"reads version {STATEMENT_VERSION}; version 1 statements have no batch "
                    "commitment: re-prove the run with `lightning-zk prove RUN`)"
                )
            return cls(
                tuple(int(x) for x in d["dims"]),
                int(d["batch_size"]),
                int(d["frac_bits"]),
                int(d["value_bits"]),
                int(d["lr"]),
                int(d["mse_const"]),
                int(d["step_start"]),
                int(d["num_steps"]),
                bool(d["chain_start"]),
                _com_from(d["weights_in"]),
                _com_from(d["weights_out"]),
                _com_from(d["batch"]),
                int(d["security_bits"]),
                int(d["blowup"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ParameterError):
                raise
            raise ParameterError(f"malformed training statement: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainingStatement:
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParameterError(f"statement is not JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ParameterError("statement JSON must be an object")
        return cls.from_json(d)
