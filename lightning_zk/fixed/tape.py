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

SGD with weight decay wd and/or momentum mu (public fixed-point constants, 0 when off) adds,
per layer (bias alike: ``Db RDb Vb Mb RMb Vb{l}n``):

=============  ==========  ==========================================================
DW{l} RDW{l}   (dl, dl-1)  weight decay term rescale(wd W) and remainder (wd != 0)
VW{l}          (dl, dl-1)  momentum buffer before the step (0 before step 0; mu != 0)
MW{l} RMW{l}   (dl, dl-1)  rescale(mu VW) and remainder (mu != 0)
VW{l}n         (dl, dl-1)  buffer after: MW + GW + DW (mu != 0)
=============  ==========  ==========================================================

and the update becomes UW = rescale(lr (GW + DW)) without momentum, rescale(lr VW{l}n) with it.

A cross-entropy tape (``loss="xent"``) has y = Yhot = 2^s onehot(labels), G = rescale(c (P -
Yhot)) with c = ``mse_const`` = round(2^s / B) (the loss-gradient constant), and the softmax
witness of :mod:`.softmax` (:data:`.softmax.SOFTMAX_TENSORS`), every tensor (B, dL).

File format (``save``/``load``): an ``.npz`` archive (never pickled, read with
``allow_pickle=False``) holding one int64 array per tensor plus ``__header__``, a uint8 array
with UTF-8 JSON ``{"format": "lightning-zk/tape", "version": 1, "step", "dims", "frac_bits",
"value_bits", "lr", "mse_const", "batch_size", "names"}``; version 2 adds ``"momentum"``,
``"weight_decay"`` and ``"loss"`` (version 1 files are plain-SGD MSE tapes and still load);
version 3 adds ``"conv"``: null, or the first Conv2d layer's public shape [C, H, W, F, k,
stride, padding] (older files have no conv layer and still load); version 4 adds
``"input_ops"``: what the step does to its batch input before the network (:mod:`.scaling`:
[] or a list of ["view", sizes, sample] and [op, const, form]; older files have none and still
load).

A tape whose step scales its input (``net(x / 16)``) has XS RXS (B, like x): XS = rescale(k x) with
remainder RXS, the network's input (layer 1 reads XS, or the conv gathers its patches from it);
x is still the committed batch.

A tape with a first Conv2d layer (:mod:`.conv`) has dims = (C k k, F, d2, ..., dL): layer 1 is a
Linear layer over the patch matrix, so x is (B, C H W) (the flattened images), PA (B H' W', C k k)
= im2col(x) is the layer's input, layer 1's tensors Z1 ... GZ1 have the rows (b, oh, ow) of PA,
W1 is the flattened conv weight (F, C k k) and W2 is (d2, F H' W') in torch's Flatten order.
A conv followed by an average pooling of kernel k (the conv's 8th entry, :mod:`.conv`) also has
PL RPL (the pooled activations and their remainder) and GPL RGPL (layer 2's input gradient, the
pooled output's gradient and its remainder), each (B H'' W'', F) with H'' = H'/k, W'' = W'/k in
rows (b, ph, pw); W2 is then (d2, F H'' W''), and GA1 RGA1 (conv rows) hold the pooling's
backward spread(rescale(c GPL)), c = 2^s / k^2. The header's conv then has 8 entries (no new
tape version: an unpooled conv keeps 7).
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
from .conv import ConvSpec
from .scaling import (
    InputOp,
    InputScale,
    InputScaleError,
    check_input_ops,
    input_ops_from_json,
    input_ops_json,
    scale_of,
)
from .softmax import LOSSES, SOFTMAX_TENSORS

__all__ = [
    "WitnessTape", "TapeFormatError", "tensor_names", "optimizer_names", "TAPE_VERSION",
]

_OPT_W = ("DW", "RDW", "VW", "MW", "RMW")  # per-weight tensors of momentum / weight decay
_OPT_B = ("Db", "RDb", "Vb", "Mb", "RMb")
TAPE_VERSION = 4  # 2: SGD momentum, weight decay, the loss (version 1: plain SGD, MSE); 3: conv;
# 4: the scaling of the batch input
_FORMAT = "lightning-zk/tape"


class TapeFormatError(ValueError):
    """A tape file is malformed, of another version, or inconsistent with its header."""


def tensor_names(num_layers: int, momentum: bool = False, decay: bool = False,
                 loss: str = "mse", conv: bool = False, scaled: bool = False,
                 pooled: bool = False) -> list[str]:
    """All tape tensor names for an MLP with ``num_layers`` Linear layers, in canonical order
    (with the tensors of SGD momentum and weight decay when those are on, the softmax
    witness of a cross-entropy tape, the scaled input XS RXS of a step that scales its input,
    and the patch matrix PA of a first conv layer, with the pooling tensors when it is pooled)."""
    names = ["x", "y"] + (["XS", "RXS"] if scaled else []) + (["PA"] if conv else [])
    names += ["PL", "RPL", "GPL", "RGPL"] if pooled else []
    for layer in range(1, num_layers + 1):
        names += [f"W{layer}", f"b{layer}", f"Z{layer}", f"RZ{layer}"]
        if layer < num_layers:
            names += [f"S{layer}", f"V{layer}", f"A{layer}", f"GA{layer}", f"RGA{layer}"]
            names += [f"GZ{layer}"]
        names += [f"GW{layer}", f"RGW{layer}", f"Gb{layer}", f"UW{layer}", f"RUW{layer}"]
        names += [f"Ub{layer}", f"RUb{layer}", f"W{layer}n", f"b{layer}n"]
        names += optimizer_names(layer, momentum, decay)
    return names + (list(SOFTMAX_TENSORS) if loss == "xent" else []) + ["G", "RG"]


def optimizer_names(layer: int, momentum: bool, decay: bool) -> list[str]:
    """The weight-decay and momentum tensors of one layer (none for plain SGD)."""
    out = []
    for p in ("W", "b"):
        if decay:
            out += [f"D{p}{layer}", f"RD{p}{layer}"]
        if momentum:
            out += [f"V{p}{layer}", f"M{p}{layer}", f"RM{p}{layer}", f"V{p}{layer}n"]
    return out


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
    momentum: int = 0  # public fixed-point constants of SGD (0: off)
    weight_decay: int = 0
    loss: str = "mse"
    conv: ConvSpec | None = None  # a first Conv2d layer (layer 1 over its patch matrix)
    input_ops: tuple[InputOp, ...] = ()  # the step's view and/or x * c, x / c before the network

    @property
    def input_scale(self) -> InputScale | None:
        """The scaling of the batch input (XS = rescale(k x)), if the step has one."""
        return scale_of(self.input_ops)

    @property
    def num_layers(self) -> int:
        return len(self.dims) - 1

    def names(self) -> list[str]:
        """The tensor names this tape holds (by its optimizer settings)."""
        return tensor_names(self.num_layers, self.momentum != 0, self.weight_decay != 0,
                            self.loss, self.conv is not None, self.input_scale is not None,
                            self.conv is not None and self.conv.pool != 0)

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
            "momentum": int(self.momentum),
            "weight_decay": int(self.weight_decay),
            "loss": self.loss,
            "conv": list(self.conv.as_tuple()) if self.conv is not None else None,
            "input_ops": input_ops_json(self.input_ops),
            "names": self.names(),
        }

    def expected_shape(self, name: str) -> tuple[int, ...]:
        d, b = self.dims, self.batch_size
        stem = name.rstrip("n") if name[-1] == "n" and name[0] in "WbV" else name
        digits = "".join(c for c in stem if c.isdigit())
        layer = int(digits) if digits else len(d) - 1
        kind = stem[: len(stem) - len(digits)]
        conv = self.conv
        if name in ("x", "XS", "RXS"):
            return (b, d[0] if conv is None else conv.image)
        if name == "PA" and conv is not None:
            return (b * conv.positions, conv.patch)
        if name in ("PL", "RPL", "GPL", "RGPL") and conv is not None:
            return (b * conv.flat_positions, conv.filters)
        if name in ("y", "G", "RG"):
            return (b, d[-1])
        if kind in ("W", "GW", "RGW", "UW", "RUW", *_OPT_W):
            return (d[layer], d[layer - 1] * (conv.flat_positions if conv and layer == 2 else 1))
        if kind in ("b", "Gb", "Ub", "RUb", *_OPT_B):
            return (d[layer],)
        return (b * (conv.positions if conv and layer == 1 else 1), d[layer])

    def validate(self) -> None:
        """Raise TapeFormatError unless every tensor is present with its shape and int64."""
        if self.loss not in LOSSES:
            raise TapeFormatError(f"tape for step {self.step}: unknown loss {self.loss!r}")
        conv = self.conv
        if conv is not None and (len(self.dims) < 3 or self.dims[:2] != (conv.patch,
                                                                          conv.filters)):
            raise TapeFormatError(f"tape for step {self.step}: dims {self.dims} do not start "
                                  f"with the conv's (C k k, F) = ({conv.patch}, {conv.filters})")
        try:
            check_input_ops(self.input_ops, self.frac_bits, self.value_bits, self.batch_size,
                            self.dims[0], conv is not None)
        except InputScaleError as exc:
                raise TapeFormatError(f"tape for step {self.step}: {exc}") from None
        for name in self.names():
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
        version = head.get("version")
        if version not in (1, 2, 3, TAPE_VERSION) or type(version) is not int:  # noqa: E721
            raise TapeFormatError(f"tape {path}: version {version!r:.20} unsupported")
        optim = [k in head for k in ("momentum", "weight_decay", "loss")]
        if any(optim) if version == 1 else not all(optim):  # exactly from version 2 on
            raise TapeFormatError(f"tape {path}: version {version} and the fields momentum, "
                                  "weight_decay, loss disagree")
        if ("conv" in head) != (version >= 3):
            raise TapeFormatError(f"tape {path}: version {version} and the field conv disagree")
        if ("input_ops" in head) != (version >= 4):
            raise TapeFormatError(
                f"tape {path}: version {version} and the field input_ops disagree")
        try:
            input_ops = input_ops_from_json(head.get("input_ops", []))
        except InputScaleError as exc:
            raise TapeFormatError(f"tape {path}: {exc}") from None
        conv = head.get("conv")
        if conv is not None:
            if not isinstance(conv, list) or len(conv) not in (7, 8) or conv[7:] == [0]:
                raise TapeFormatError(f"tape {path}: conv must be null or 7 integers (8 with "
                                      "the pooling kernel)")
            try:
                conv = ConvSpec(*conv)
            except (TypeError, ValueError) as exc:
                raise TapeFormatError(f"tape {path}: bad conv shape ({exc})") from exc
        loss = head.get("loss", "mse")
        if not isinstance(loss, str) or loss not in LOSSES:
            raise TapeFormatError(f"tape {path}: unknown loss {loss!r:.40}")
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
                momentum=int(head.get("momentum", 0)),
                weight_decay=int(head.get("weight_decay", 0)),
                loss=loss,
                conv=conv,
                input_ops=input_ops,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TapeFormatError(f"tape {path}: bad header field ({exc})") from exc
        extra = set(arrays) - set(tape.names())
        if extra:
            raise TapeFormatError(f"tape {path}: unexpected tensors {sorted(extra)}")
        tape.validate()
        return tape
