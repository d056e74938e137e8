"""A public constant the user's ``training_step`` scales its batch input by, before the network.

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

__all__ = ["InputScale", "InputScaleError", "SCALE_OPS"]

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
    def from_graph(cls, graph: Sequence[Mapping[str, Any]], frac_bits: int) -> InputScale | None:
        """The scaling of the batch input a traced step starts with, or None: the first op that
        reads ``batch:0`` is ``x * c`` or ``x / c`` with one recorded literal."""
        for node in graph:
            inputs = node.get("in", ())
            if "batch:0" not in inputs:
                continue
            op = next((k for k, v in SCALE_OPS.items() if v == node.get("op")), None)
            consts = node.get("consts")
            if op is None or not isinstance(consts, list) or len(consts) != 1:
                return None
            c = consts[0]
            if inputs == ["batch:0", "const"] and _is_int(c):
                return cls(op, c, "tensor") if c else None
            if inputs == ["batch:0"] and isinstance(c, dict) and _is_int(c.get("fixed")):
                return cls(op, c["fixed"], "float") if c["fixed"] else None
            if inputs == ["batch:0"] and _is_int(c) and 0 < abs(c) < 1 << 40:
                return cls(op, c << frac_bits, "int")
            return None
        return None


def _is_int(v: Any) -> bool:
    return type(v) is int  # noqa: E721 - a bool is no literal here
