"""Public statement of a training proof unit (T consecutive SGD steps, T >= 1).

Everything here is absorbed into the Fiat-Shamir transcript before the first challenge:
architecture, true batch size, scale s, value bound, learning rate, MSE constant, first step
index, number of steps, stacking width, whether the unit starts a chain, the commitment
parameters, the commitments to the weights before (B_in) and after (B_out) and to the unit's
batch (x and y of every step, :mod:`.batch`), and the **run binding**: the identifier of the run
the steps belong to and the ledger leaf of every step the unit proves (version 3), and SGD's
momentum and weight decay (fixed-point constants, 0 when off; version 4) and the loss kind
(``mse`` or ``xent``, softmax cross-entropy; version 5), the public shape of a first Conv2d
layer ``conv`` = [C, H, W, F, k, stride, padding] (null without one; version 6), and the digest
of each step's traced op graph (the user's ``training_step`` as executed,
``lightning_zk.fixed.template``; version 7), and the public scaling of the batch input that the
step applies before its network, ``input_ops``: a view to (B, d0) (["view", sizes, sample]) and/or
a scaling [op, c 2^s, form] (``x * c`` or ``x / c``), in execution order (:mod:`lightning_zk.fixed.
scaling`; version 8). A conv followed by an average pooling (``nn.AvgPool2d(k)``) has the kernel
k as ``conv``'s 8th entry (still version 8: an unpooled conv keeps 7 entries and is absorbed and
hashed as before; a build without pooling refuses 8 entries). A proof
therefore verifies only against the statement of *its* run and steps; which run and which
ledger that is, is the caller's check (``lightning_zk.audit.proofs.verify_run`` compares every
field with the run's manifest and Merkle ledger).

Parsing is strict (:meth:`TrainingStatement.from_json`): every field must be present with its
exact JSON type (an int is never a bool, a float or a string), no unknown field is allowed, and
integers must lie in their documented ranges; anything else is a ``ParameterError`` naming the
field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...fixed.conv import ConvSpec
from ...fixed.scaling import (
    InputOp,
    InputScale,
    InputScaleError,
    check_input_ops,
    input_ops_from_json,
    input_ops_json,
    scale_of,
)
from ..errors import ParameterError
from ..ligero import LigeroConfig
from ..pcs import LAYOUT_MULTILINEAR, LAYOUT_VECTOR, Commitment
from ..transcript import Transcript
from .layout import Arch, instances_for

__all__ = ["TrainingStatement", "STATEMENT_VERSION", "STATEMENT_FORMAT", "MAX_STATEMENT_BYTES"]

STATEMENT_VERSION = 8  # 2: batch commitment; 3: run binding (run_id, ledger leaves); 4: momentum,
# weight decay; 5: the loss kind; 6: the conv layer's shape; 7: the traced graph of every step;
# 8: the scaling of the batch input
LOSS_KINDS = ("mse", "xent")  # the output gradient the relations prove
STATEMENT_FORMAT = "lightning-zk/training-statement"
MAX_STATEMENT_BYTES = 1 << 24  # 16 MiB: a statement of 2^18 steps; larger input is refused unread
_U63 = (1 << 63) - 1
MAX_PATCH_ENTRIES = 1 << 22  # H' W' C k k: the im2col selection is evaluated entry by entry
_MAX_RUN_ID = 128


def _com_json(c: Commitment) -> dict:
    return {
        "root": c.root.hex(),
        "num_vars": c.num_vars,
        "extension": c.extension,
        "num_points": c.num_points,
        "layout": c.layout,
    }


# --- strict JSON reading -------------------------------------------------------------------------
def _fail(name: str, rule: str, value: Any) -> ParameterError:
    return ParameterError(f"training statement field {name!r}: {rule}, got {value!r:.80}")


def _int(d: Mapping[str, Any], name: str, lo: int = 0, hi: int = _U63) -> int:
    v = d[name]
    if type(v) is not int:  # noqa: E721 - bool and float are not ints here
        raise _fail(name, "expected a JSON integer", v)
    if not lo <= v <= hi:
        raise _fail(name, f"must be in [{lo}, {hi}]", v)
    return v


def _bool(d: Mapping[str, Any], name: str) -> bool:
    v = d[name]
    if type(v) is not bool:  # noqa: E721
        raise _fail(name, "expected true or false", v)
    return v


def _hex32(v: Any, name: str) -> bytes:
    if not isinstance(v, str) or len(v) != 64:
        raise _fail(name, "expected 64 hexadecimal digits", v)
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise _fail(name, "expected 64 hexadecimal digits", v) from None


def _exact_keys(d: Any, keys: set[str], what: str) -> None:
    if not isinstance(d, dict):
        raise _fail(what, "expected a JSON object", d)
    missing, unknown = sorted(keys - d.keys()), sorted(d.keys() - keys)
    if missing or unknown:
        raise ParameterError(
            f"{what}: missing fields {missing}, unknown fields {unknown} (format "
            f"{STATEMENT_FORMAT} version {STATEMENT_VERSION})"
        )


_COM_KEYS = {"root", "num_vars", "extension", "num_points", "layout"}


def _com_from(d: Any, name: str) -> Commitment:
    _exact_keys(d, _COM_KEYS, f"training statement field {name!r}")
    return Commitment(
        _hex32(d["root"], f"{name}.root"),
        _int(d, "num_vars", 1, 64),
        _bool(d, "extension"),
        _int(d, "num_points", 1, 1 << 16),
        _int(d, "layout", LAYOUT_MULTILINEAR, LAYOUT_VECTOR),
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
    run_id: str = ""  # the run the steps belong to ("" = not bound to a run)
    ledger_leaves: tuple[bytes, ...] = field(default=())  # one 32-byte leaf hash per step
    momentum: int = 0  # SGD's momentum and weight decay, fixed-point integers (0: off)
    weight_decay: int = 0
    loss: str = "mse"  # "mse" or "xent" (softmax cross-entropy): which output-gradient relations
    graphs: tuple[bytes, ...] = field(default=())  # one 32-byte traced-graph digest per step
    conv: tuple[int, ...] = ()  # a first Conv2d's (C, H, W, F, k, stride, padding[, pool]); ()
    input_ops: tuple[InputOp, ...] = ()  # the step's view and/or x * c, x / c before the network

    def __post_init__(self) -> None:
        conv = tuple(self.conv)
        object.__setattr__(self, "conv", conv)
        if conv:
            try:
                spec = ConvSpec(*conv)
            except (TypeError, ValueError) as err:
                raise ParameterError(f"TrainingStatement: conv {conv}: {err}") from None
            if self.batch_size < 2 or spec.filters < 2:  # (a 1-wide axis still takes one bit of
                # the layout, and the Flatten's relabelling of (b, p) and (f, p) needs it exact)
                raise ParameterError(
                    f"TrainingStatement: conv {conv} with batch size {self.batch_size} and "
                    f"{spec.filters} filters: the conv relations need a batch of 2 or more and 2 "
                    "or more filters")
            if spec.positions * spec.patch > MAX_PATCH_ENTRIES:
                raise ParameterError(
                    f"TrainingStatement: conv {conv} has {spec.positions * spec.patch} patch "
                    f"entries per image, more than {MAX_PATCH_ENTRIES} (prover and verifier "
                    "evaluate the im2col selection entry by entry)")
            if spec.pool and spec.pool * spec.pool > 1 << self.frac_bits:
                raise ParameterError(
                    f"TrainingStatement: conv {conv}: average pooling {spec.pool}x{spec.pool} "
                    f"needs k^2 <= 2^frac_bits = 2^{self.frac_bits}")
            if len(conv) == 8 and not spec.pool:
                raise ParameterError(f"TrainingStatement: conv {conv}: a pooling kernel of 0 "
                                     "is written as no 8th entry")
            if len(self.dims) < 3 or self.dims[0] != spec.patch or self.dims[1] != spec.filters:
                raise ParameterError(
                    f"TrainingStatement: conv {conv} needs dims (C k k = {spec.patch}, F = "
                    f"{spec.filters}, ...) and a Linear layer after it, got {self.dims}")
        if self.num_steps < 1 or self.step_start < 0:
            raise ParameterError(
                f"TrainingStatement: step_start={self.step_start}, num_steps={self.num_steps}"
            )
        if len(self.dims) < 2 or min(self.dims) < 1 or self.batch_size < 1:
            raise ParameterError(f"TrainingStatement: bad dims {self.dims} / batch size")
        if not isinstance(self.run_id, str) or len(self.run_id) > _MAX_RUN_ID or not (
            self.run_id.isascii() and self.run_id.isprintable()
        ):
            raise ParameterError(
                f"TrainingStatement: run_id {self.run_id!r:.80} must be printable ASCII of at "
                f"most {_MAX_RUN_ID} characters"
            )
        if self.loss not in LOSS_KINDS:
            raise ParameterError(f"TrainingStatement: loss {self.loss!r} is not one of {LOSS_KINDS}")
        object.__setattr__(self, "input_ops", tuple(self.input_ops))
        try:
            check_input_ops(self.input_ops, self.frac_bits, self.value_bits, self.batch_size,
                            self.dims[0], bool(self.conv))
        except InputScaleError as exc:
            raise ParameterError(f"TrainingStatement: input_ops: {exc}") from None
        for name, what in (("ledger_leaves", "ledger leaves"), ("graphs", "graph digests")):
            digests = tuple(bytes(x) for x in getattr(self, name))
            if digests and (len(digests) != self.num_steps or any(len(x) != 32 for x in digests)):
                raise ParameterError(
                    f"TrainingStatement: {len(digests)} {what} for {self.num_steps} steps (need "
                    "one 32-byte digest per step, or none for an unbound statement)")
            object.__setattr__(self, name, digests)

    @property
    def arch(self) -> Arch:
        return Arch(tuple(self.dims), self.batch_size, instances_for(self.num_steps),
                    ConvSpec(*self.conv) if self.conv else None, self.input_scale is not None)

    @property
    def input_scale(self) -> InputScale | None:
        return scale_of(self.input_ops)

    @property
    def input_multiplier(self) -> int:
        """k of XS = rescale(k x), derived from the statement's op and literal (0: no scaling)."""
        scale = self.input_scale
        return 0 if scale is None else scale.multiplier(self.frac_bits, self.value_bits)

    @property
    def pool_multiplier(self) -> int:
        """c = 2^s / k^2 of the average pooling after the conv (conv's 8th entry; 0: none)."""
        k = self.conv[7] if len(self.conv) == 8 else 0
        return (1 << self.frac_bits) // (k * k) if k else 0

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
        tr.absorb_u64("stmt.optimizer", self.momentum, self.weight_decay)
        tr.absorb_str("stmt.loss", self.loss)
        tr.absorb_u64("stmt.graphs", len(self.graphs))
        for graph in self.graphs:
            tr.absorb_digest("stmt.graph", graph)
        tr.absorb_u64("stmt.conv", len(self.conv), *self.conv)
        tr.absorb_str("stmt.input_ops", json.dumps(input_ops_json(self.input_ops)))
        tr.absorb_u64("stmt.steps", self.step_start, self.num_steps, self.arch.num_instances)
        tr.absorb_u64("stmt.chain_start", int(self.chain_start))
        tr.absorb_u64("stmt.pcs", self.security_bits, self.blowup)
        tr.absorb_str("stmt.run_id", self.run_id)
        tr.absorb_u64("stmt.ledger_leaves", len(self.ledger_leaves))
        for leaf in self.ledger_leaves:
            tr.absorb_digest("stmt.ledger_leaf", leaf)
        self.weights_in.absorb_into(tr, "stmt.weights_in")
        self.weights_out.absorb_into(tr, "stmt.weights_out")
        self.batch.absorb_into(tr, "stmt.batch")

    def to_json(self) -> dict:
        return {
            "format": STATEMENT_FORMAT,
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
            "run_id": self.run_id,
            "ledger_leaves": [x.hex() for x in self.ledger_leaves],
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "loss": self.loss,
            "graphs": [x.hex() for x in self.graphs],
            "conv": list(self.conv) if self.conv else None,
            "input_ops": input_ops_json(self.input_ops),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    def digest(self) -> bytes:
        return hashlib.sha256(b"lzk.statement" + self.to_bytes()).digest()

    @classmethod
    def from_json(cls, d: Any) -> TrainingStatement:
        """Parse a statement object strictly; ParameterError names the first bad field."""
        if not isinstance(d, dict):
            raise _fail("(statement)", "expected a JSON object", d)
        if d.get("format") != STATEMENT_FORMAT:
            raise _fail("format", f"expected {STATEMENT_FORMAT!r}", d.get("format"))
        version = d.get("version")
        if version != STATEMENT_VERSION or type(version) is not int:  # noqa: E721
            raise ParameterError(
                f"training statement version {version!r:.20} unsupported (this build reads "
                f"version {STATEMENT_VERSION}: version 7 has no input ops, version 6 has no "
                "graph digests, version 5 no conv "
                "field, version 4 no "
                "loss kind, version 3 no momentum and weight decay fields, older statements are "
                "not bound to their run, and version 1 has no batch commitment; re-prove the run "
                "with `lightning-zk prove RUN`)"
            )
        _exact_keys(d, _KEYS, "training statement")
        dims = d["dims"]
        if not isinstance(dims, list) or not 2 <= len(dims) <= 1024:
            raise _fail("dims", "expected a list of 2..1024 layer widths", dims)
        leaves = d["ledger_leaves"]
        if not isinstance(leaves, list):
            raise _fail("ledger_leaves", "expected a list of 64-hex-digit leaf hashes", leaves)
        run_id = d["run_id"]
        if not isinstance(run_id, str):
            raise _fail("run_id", "expected a string", run_id)
        graphs = d["graphs"]
        if not isinstance(graphs, list):
            raise _fail("graphs", "expected a list of 64-hex-digit graph digests", graphs)
        loss = d["loss"]
        if not isinstance(loss, str) or loss not in LOSS_KINDS:
            raise _fail("loss", f"expected one of {LOSS_KINDS}", loss)
        conv = d["conv"]
        if conv is not None and (not isinstance(conv, list) or len(conv) not in (7, 8)):
            raise _fail("conv", "expected null or a list [C, H, W, F, k, stride, padding] "
                        "(and the average pooling kernel as an 8th entry)", conv)
        try:
            input_ops = input_ops_from_json(d["input_ops"])
        except InputScaleError as exc:
            raise _fail("input_ops", str(exc), d["input_ops"]) from None
        return cls(
            tuple(_int({"dims": w}, "dims", 1, 1 << 24) for w in dims),
            _int(d, "batch_size", 1, 1 << 24),
            _int(d, "frac_bits", 1, 62),
            _int(d, "value_bits", 1, 62),
            _int(d, "lr", 0, _U63),
            _int(d, "mse_const", 0, _U63),
            _int(d, "step_start", 0, _U63),
            _int(d, "num_steps", 1, 1 << 24),
            _bool(d, "chain_start"),
            _com_from(d["weights_in"], "weights_in"),
            _com_from(d["weights_out"], "weights_out"),
            _com_from(d["batch"], "batch"),
            _int(d, "security_bits", 1, 1 << 16),
            _int(d, "blowup", 1, 1 << 16),
            run_id,
            tuple(_hex32(x, "ledger_leaves[]") for x in leaves),
            _int(d, "momentum", 0, _U63),
            _int(d, "weight_decay", 0, _U63),
            loss,
            tuple(_hex32(x, "graphs[]") for x in graphs),
            tuple(_int({"conv": v}, "conv", 0, 1 << 24) for v in conv or ()),
            input_ops,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainingStatement:
        """Parse statement bytes (UTF-8 JSON, at most ``MAX_STATEMENT_BYTES``)."""
        if len(data) > MAX_STATEMENT_BYTES:
            raise ParameterError(
                f"statement is {len(data)} bytes, more than the {MAX_STATEMENT_BYTES} a "
                "statement can need"
            )
        try:
            d = json.loads(data, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        except RecursionError:
            raise ParameterError("statement JSON is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParameterError(f"statement is not JSON: {exc}") from exc
        return cls.from_json(d)


_KEYS = set(
    TrainingStatement(
        (1, 1), 1, 1, 2, 0, 0, 0, 1, True, *[Commitment(bytes(32), 1, False, 1)] * 3
    ).to_json()
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a statement may hold")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out
