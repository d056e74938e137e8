"""Witness tape: every integer tensor the zk relations of one training step need.

Names (layers l = 1..L, hidden layers l < L):

=========  ===========  ===============================================================
x, y       (B, d0/dL)   batch inputs and labels (fixed point)
W{l} b{l}  (dl, dl-1)   weights and bias before the step
Z{l} RZ{l} (B, dl)      pre-activation rescale(A{l-1} W^T + 2^s b) and its remainder
S{l} V{l}  (B, dl)      sign bits [Z > 0] and V = 2 S Z - Z - S >= 0 (sign witness)
A{l}       (B, dl)      activation Z * S
G RG       (B, dL)      output gradient rescale(c (Z{L} - y)) and remainder
GA{l} RGA  (B, dl)      input gradient rescale(GZ{l+1} W{l+1}) and remainder
GZ{l}      (B, dl)      backward mask GA{l} * S{l}  (GZ{L} is G)
GW{l} RGW  (dl, dl-1)   weight gradient rescale(GZ^T A{l-1}) and remainder
Gb{l}      (dl,)        bias gradient sum_b GZ (exact)
UW{l} RUW  (dl, dl-1)   update rescale(lr W-grad) and remainder; same for Ub{l} RUb{l}
W{l}n b{l}n             weights and bias after the step
=========  ===========  ===============================================================

A cross-entropy tape (``loss="xent"``) has y = Yhot = 2^s onehot(labels), G = rescale(c (P -
Yhot)) with c = ``mse_const`` = round(2^s / B) (the loss-gradient constant), and the softmax
witness of :mod:`.softmax` (:data:`.softmax.SOFTMAX_TENSORS`), every tensor (B, dL).

File format (``save``/``load``): an ``.npz`` archive (never pickled, read with
``allow_pickle=False``) holding one int64 array per tensor plus ``__header__``, a uint8 array
with UTF-8 JSON ``{"format": "lightning-zk/tape", "version": 1, "step", "dims", "frac_bits",
"value_bits", "lr", "mse_const", "batch_size", "loss", "names"}`` (version 2; a version-1
file has no ``"loss"`` and is an MSE tape).
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..atomic import atomic_write_bytes
from .softmax import LOSSES, SOFTMAX_TENSORS

__all__ = ["WitnessTape", "TapeFormatError", "tensor_names", "TAPE_VERSION"]

TAPE_VERSION = 2
_FORMAT = "lightning-zk/tape"


class TapeFormatError(ValueError):
    """A tape file is malformed, of another version, or inconsistent with its header."""


def tensor_names(num_layers: int, loss: str = "mse") -> list[str]:
    """All tape tensor names for an MLP with ``num_layers`` Linear layers, in canonical order."""
    names = ["x", "y"]
    for layer in range(1, num_layers + 1):
        names += [f"W{layer}", f"b{layer}", f"Z{layer}", f"RZ{layer}"]
        if layer < num_layers:
            names += [f"S{layer}", f"V{layer}", f"A{layer}", f"GA{layer}", f"RGA{layer}"]
            names += [f"GZ{layer}"]
        names += [f"GW{layer}", f"RGW{layer}", f"Gb{layer}", f"UW{layer}", f"RUW{layer}"]
        names += [f"Ub{layer}", f"RUb{layer}", f"W{layer}n", f"b{layer}n"]
    return names + (list(SOFTMAX_TENSORS) if loss == "xent" else []) + ["G", "RG"]


@dataclass
class WitnessTape:
    """One step's witness: public parameters plus the named int64 tensors."""

    step: int
    dims: tuple[int, ...]
    frac_bits: int
    value_bits: int
    lr: int
    mse_const: int
    batch_size: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    loss: str = "mse"

    @property
    def num_layers(self) -> int:
        return len(self.dims) - 1

    def header(self) -> dict:
        return {
            "format": _FORMAT,
            "version": TAPE_VERSION,
            "step": int(self.step),
            "dims": [int(d) for d in self.dims],
            "frac_bits": int(self.frac_bits),
            "value_bits": int(self.value_bits),
            "lr": int(self.lr),
            "mse_const": int(self.mse_const),
            "batch_size": int(self.batch_size),
            "loss": self.loss,
            "names": tensor_names(self.num_layers, self.loss),
        }

    def expected_shape(self, name: str) -> tuple[int, ...]:
        d, b = self.dims, self.batch_size
        stem = name.rstrip("n") if name[-1] == "n" and name[0] in "Wb" else name
        digits = "".join(c for c in stem if c.isdigit())
        layer = int(digits) if digits else len(d) - 1
        kind = stem[: len(stem) - len(digits)]
        if name == "x":
            return (b, d[0])
        if name in ("y", "G", "RG"):
            return (b, d[-1])
        if kind in ("W", "GW", "RGW", "UW", "RUW"):
            return (d[layer], d[layer - 1])
        if kind in ("b", "Gb", "Ub", "RUb"):
            return (d[layer],)
        return (b, d[layer])

    def validate(self) -> None:
        """Raise TapeFormatError unless every tensor is present with its shape and int64."""
        if self.loss not in LOSSES:
            raise TapeFormatError(f"tape for step {self.step}: unknown loss {self.loss!r}")
        for name in tensor_names(self.num_layers, self.loss):
            if name not in self.tensors:
                raise TapeFormatError(f"tape for step {self.step} lacks tensor {name!r}")
            arr = self.tensors[name]
            if arr.dtype != np.int64 or arr.shape != self.expected_shape(name):
                raise TapeFormatError(
                    f"tape tensor {name!r}: expected int64 {self.expected_shape(name)}, "
                    f"got {arr.dtype} {arr.shape}"
                )

    def save(self, path: str | Path) -> None:
        """Write the documented npz format atomically (temp file, fsync, rename)."""
        self.validate()
        head = np.frombuffer(json.dumps(self.header(), sort_keys=True).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, __header__=head, **self.tensors)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path | IO[bytes], source: str | None = None) -> WitnessTape:
        """Read a tape (a file, or its bytes in a file object named ``source``); never
        unpickles; raise TapeFormatError on anything malformed."""
        file = Path(path) if isinstance(path, (str, Path)) else path
        path = source or path
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {k: np.array(data[k]) for k in data.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise TapeFormatError(f"cannot read tape {path}: {exc}") from exc
        if "__header__" not in arrays:
            raise TapeFormatError(f"tape {path} has no __header__")
        try:
            head = json.loads(arrays.pop("__header__").astype(np.uint8).tobytes())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise TapeFormatError(f"tape {path}: header is not JSON") from exc
        if not isinstance(head, dict) or head.get("format") != _FORMAT:
            raise TapeFormatError(f"tape {path}: not a lightning-zk tape")
        if head.get("version") not in (1, TAPE_VERSION):
            raise TapeFormatError(f"tape {path}: version {head.get('version')} unsupported")
        loss = head.get("loss", "mse") if head["version"] == TAPE_VERSION else "mse"
        if not isinstance(loss, str) or loss not in LOSSES:
            raise TapeFormatError(f"tape {path}: unknown loss {loss!r}")
        try:
            tape = cls(
                step=int(head["step"]),
                dims=tuple(int(d) for d in head["dims"]),
                frac_bits=int(head["frac_bits"]),
                value_bits=int(head["value_bits"]),
                lr=int(head["lr"]),
                mse_const=int(head["mse_const"]),
                batch_size=int(head["batch_size"]),
                tensors=arrays,
                loss=loss,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TapeFormatError(f"tape {path}: bad header field ({exc})") from exc
        extra = set(arrays) - set(tensor_names(tape.num_layers, tape.loss))
        if extra:
            raise TapeFormatError(f"tape {path}: unexpected tensors {sorted(extra)}")
        tape.validate()
        return tape
