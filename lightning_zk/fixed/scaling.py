"""What the user's ``training_step`` does to its batch input before the network: a view to the
network's (B, d0) (``x.view(x.size(0), -1)``, ``x.flatten(1)``, ``nn.Flatten()``: all trace as one
``aten.view``) and a scaling by a public constant, in either order.

A view of a contiguous batch keeps the row-major order of its entries, so the flattened batch the
proofs commit (x, (B, d0)) is the network's input as is: nothing to prove, only the graph
differs, and the statement carries the view's size list and the sample shape so the verifier
rebuilds that graph.

``net(x / 16)`` or ``net(x * 0.0625)`` (pixel values to [0, 1], the most common preprocessing
inside a training step) is a product with a public constant, executed as every such product in
fixed point (:mod:`.intercept`): XS = rescale(k x) with k the multiplier on the 2^-s grid, k = c
for ``x * c`` and k = 1/c for ``x / c`` (refused unless exact at 2^-s). The traced graph records
the op and the literal c as the code spelled it (a Python int, a Python float, or a 0-d tensor:
three canonical forms), so a statement carries exactly that triple and the verifier derives k
(:meth:`InputScale.multiplier`) and the graph (``.template``) from it itself, never from a proof.

numpy-free and torch-free: the zk layer uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["InputScale", "InputView", "InputOp", "InputScaleError", "SCALE_OPS",
           "check_input_ops", "input_ops_from_graph", "input_ops_json", "input_ops_from_json",
           "scale_of", "view_of"]

# the traced ops of ``x * c`` / ``x / c`` (Python scalars and 0-d tensors alike), by spelling
SCALE_OPS = {"mul": "aten.mul.Tensor", "div": "aten.div.Tensor"}
# how the literal c reaches the op, as the graph records it: a Python int (consts [c]), a Python
# float (consts [{"fixed": c 2^s}]) or a 0-d tensor (input "const", consts [c 2^s])
LITERAL_FORMS = ("int", "float", "tensor")


class InputScaleError(ValueError):
    """An input scaling the proofs cannot express (inexact, zero, too large, unknown op)."""


@dataclass(frozen=True)
class InputScale:
    """``x * c`` (op ``"mul"``) or ``x / c`` (op ``"div"``) with ``const`` = c 2^s and the
    ``form`` the literal had in the code (:data:`LITERAL_FORMS`)."""

    op: str
    const: int
    form: str = "float"

    def __post_init__(self) -> None:
        if self.op not in SCALE_OPS:
            raise InputScaleError(f"input scaling op {self.op!r} is not one of {sorted(SCALE_OPS)}")
        if type(self.const) is not int or self.const == 0:  # noqa: E721 - bool is no int here
            raise InputScaleError(f"input scaling constant {self.const!r} must be a nonzero int")
        if self.form not in LITERAL_FORMS:
            raise InputScaleError(f"input scaling form {self.form!r} is not one of {LITERAL_FORMS}")

    def multiplier(self, frac_bits: int, value_bits: int) -> int:
        """k on the 2^-s grid: XS = rescale(k x). Refused unless exact (k 2^-s equals c, or 1/c
        for a division), different from 1 (x * 1 is no op of the graph) and |k| < 2^(Q-1) (so
        k x stays far from the field's modulus and is a value like any other)."""
        s = frac_bits
        if self.form == "int" and self.const % (1 << s):
            raise InputScaleError(f"input scaling: an int literal {self.const} / 2^{s} is no int")
        if self.op == "mul":
            k = self.const
        else:
            num, den = 1 << (2 * s), abs(self.const)
            if num % den:
                raise InputScaleError(
                    f"x / {self.const / (1 << s)!r}: 1/c is not exact at 2^-{s}, so the step "
                    "cannot compute it exactly (divide by a power of two, or multiply by c)")
            k = (num // den) * (1 if self.const > 0 else -1)
        if k == 1 << s or not 0 < abs(k) < 1 << (value_bits - 1):
            raise InputScaleError(
                f"input scaling {self.describe(s)} has multiplier {k} on the 2^-{s} grid; need "
                f"k != 2^{s} (no scaling) and 0 < |k| < 2^{value_bits - 1}")
        return k

    def describe(self, frac_bits: int) -> str:
        """``x / 16.0`` or ``x * 0.0625``, for messages."""
        return f"x {'*' if self.op == 'mul' else '/'} {self.const / (1 << frac_bits)!r}"

    def literal(self, frac_bits: int) -> Any:
        """c as the code spelled it (int, float or 0-d float64 tensor is the caller's wrap)."""
        if self.form == "int":
            return self.const >> frac_bits
        return self.const / float(1 << frac_bits)

    def as_list(self) -> list[Any]:
        """The statement's and the tape's JSON encoding: [op, const, form]."""
        return [self.op, self.const, self.form]

    @classmethod
    def from_list(cls, v: Any) -> InputScale:
        if not isinstance(v, list) or len(v) != 3 or not all(isinstance(v[i], str) for i in (0, 2)):
            raise InputScaleError(f"input scaling must be [op, const, form], got {v!r:.80}")
        return cls(v[0], v[1], v[2])

    @classmethod
    def from_node(cls, node: Mapping[str, Any], source: str, frac_bits: int) -> InputScale | None:
        """``source * c`` or ``source / c`` with one recorded literal, or None."""
        op = next((k for k, v in SCALE_OPS.items() if v == node.get("op")), None)
        consts, inputs = node.get("consts"), node.get("in")
        if op is None or not isinstance(consts, list) or len(consts) != 1:
            return None
        c = consts[0]
        if inputs == [source, "const"] and _is_int(c):
            return cls(op, c, "tensor") if c else None
        if inputs == [source] and isinstance(c, dict) and _is_int(c.get("fixed")):
            return cls(op, c["fixed"], "float") if c["fixed"] else None
        if inputs == [source] and _is_int(c) and 0 < abs(c) < 1 << 40:
            return cls(op, c << frac_bits, "int")
        return None


VIEW_OP = "aten.view.default"  # x.view, x.reshape, x.flatten, torch.flatten, nn.Flatten alike
_MAX_SAMPLE_DIMS = 8


@dataclass(frozen=True)
class InputView:
    """``x.view(*sizes)`` of batch inputs of shape (B, *sample) to the network's (B, d0)."""

    sizes: tuple[int, ...]
    sample: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes, sample = tuple(self.sizes), tuple(self.sample)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "sample", sample)
        if (not 1 <= len(sample) <= _MAX_SAMPLE_DIMS or not all(_is_int(d) and d > 0 for d in sample)
                or len(sizes) != 2 or not all(_is_int(d) and (d > 0 or d == -1) for d in sizes)
                or sizes.count(-1) > 1):
            raise InputScaleError(f"input view {list(sizes)} of samples {list(sample)}: need 2 "
                                  "sizes (positive or one -1) and a sample shape of positive sizes")

    def check(self, batch_size: int, width: int) -> None:
        """The view must take (B, *sample) to exactly (B, width) (row-major: a relabelling)."""
        total = batch_size
        for d in self.sample:
            total *= d
        rows, cols = self.sizes
        if rows == -1:
            rows = total // cols if total % cols == 0 else -1
        elif cols == -1:
            cols = total // rows if total % rows == 0 else -1
        if (rows, cols) != (batch_size, width) or rows * cols != total:
            raise InputScaleError(
                f"x.view({', '.join(map(str, self.sizes))}) of a batch ({batch_size}, "
                f"{', '.join(map(str, self.sample))}) is not the network's ({batch_size}, {width})")

    def as_list(self) -> list[Any]:
        return ["view", list(self.sizes), list(self.sample)]


InputOp = InputScale | InputView


def input_ops_from_graph(graph: Sequence[Mapping[str, Any]], frac_bits: int,
                         sample: Sequence[int]) -> tuple[InputOp, ...]:
    """What a traced step does to ``batch:0`` before anything else reads it: at most one view
    and one scaling, in order (each op reads the previous one's output); () if nothing."""
    ops: list[InputOp] = []
    source = "batch:0"
    for i, node in enumerate(graph):
        if source not in node.get("in", ()):
            continue
        scale = InputScale.from_node(node, source, frac_bits)
        consts = node.get("consts")
        if scale is not None and not any(isinstance(o, InputScale) for o in ops):
            ops.append(scale)
        elif (node.get("op") == VIEW_OP and node.get("in") == [source]
              and not any(isinstance(o, InputView) for o in ops) and isinstance(consts, list)
              and len(consts) == 2 and all(_is_int(c) for c in consts)):
            try:  # (a scaling before it keeps the sample shape)
                ops.append(InputView(tuple(consts), tuple(sample)))
            except InputScaleError:
                break
        else:
            break
        source = f"n{i}"
    return tuple(ops)


def input_ops_json(ops: Sequence[InputOp]) -> list[list[Any]]:
    """The statement's and the tape's encoding: [[op, ...], ...] in execution order."""
    return [op.as_list() for op in ops]


def input_ops_from_json(v: Any) -> tuple[InputOp, ...]:
    """Strict inverse of :func:`input_ops_json` (how many of each: :func:`check_input_ops`)."""
    if not isinstance(v, list) or len(v) > 2:
        raise InputScaleError(f"input ops must be a list of at most 2 ops, got {v!r:.80}")
    ops: list[InputOp] = []
    for item in v:
        if isinstance(item, list) and len(item) == 3 and item[0] == "view":
            if not isinstance(item[1], list) or not isinstance(item[2], list):
                raise InputScaleError(f"input view must be ['view', sizes, sample], got {item!r:.80}")
            ops.append(InputView(tuple(item[1]), tuple(item[2])))
        else:
            ops.append(InputScale.from_list(item))
    return tuple(ops)


def check_input_ops(ops: Sequence[InputOp], frac_bits: int, value_bits: int, batch_size: int,
                    width: int, conv: bool) -> None:
    """Raise InputScaleError unless the ops are at most one view (to exactly (B, width), not in
    front of a conv, which reads the images) and one exact scaling."""
    kinds = [type(op) for op in ops]
    if len(ops) > 2 or len(set(kinds)) != len(kinds):
        raise InputScaleError("input ops: at most one view and one scaling")
    for op in ops:
        if isinstance(op, InputScale):
            op.multiplier(frac_bits, value_bits)
        else:
            if conv:
                raise InputScaleError("a view of the batch in front of a Conv2d is not provable "
                                      "(the conv reads the images as the dataset holds them)")
            op.check(batch_size, width)


def scale_of(ops: Sequence[InputOp]) -> InputScale | None:
    return next((op for op in ops if isinstance(op, InputScale)), None)


def view_of(ops: Sequence[InputOp]) -> InputView | None:
    return next((op for op in ops if isinstance(op, InputView)), None)


def _is_int(v: Any) -> bool:
    return type(v) is int  # noqa: E721 - a bool is no literal here
