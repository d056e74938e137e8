"""Which unrounded values could reach the committed state: taint tracking for the rounding mode.

The mode rounds every hardware-dependent result in the compute dtype. A result in another floating
dtype (a float16 ``.half()``, a float32 metric state created outside the step) is left as it is, so
its last bits may differ on other hardware. That is harmless as long as the value never feeds the
committed state — an accuracy, a running metric or a logged number do not. So instead of warning at
every such op, the mode marks its outputs *tainted* (with the user's line that produced them),
propagates the mark through every op that reads a tainted tensor (autograd's backward ops read the
tensors saved in the forward pass, so a gradient that depends on a tainted value is tainted too),
and warns once per origin when

- an op writes a tainted value into a committed tensor (parameter, buffer, gradient, optimizer
  state), or
- a tainted value becomes a Python number inside the step (``.item()``, ``float()``, ``if t:``),
  where it can steer the computation.

Tracking costs nothing until the first tainted value exists.
"""

from __future__ import annotations

import linecache
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

# Frames of these packages are library code; the user's line is the innermost frame outside them.
_LIBRARIES = frozenset({
    "torch", "lightning", "lightning_fabric", "lightning_utilities", "lightning_zk", "torchmetrics",
    "contextlib", "functools", "typing", "abc", "pytorch_lightning",
})
# Ops that overwrite their target completely: an untainted source clears the mark.
_OVERWRITES = frozenset({"aten.copy_.default", "aten.fill_.Scalar", "aten.fill_.Tensor", "aten.zero_.default"})
_SCALAR_OPS = frozenset({"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default"})


class UnroundedValueWarning(UserWarning):
    """A value computed outside the committed precision can reach the committed state."""


@dataclass(frozen=True)
class TaintOrigin:
    op: str
    dtype: str
    where: str  # "file:line (function): source"


def user_location() -> str:
    """The innermost stack frame outside torch, Lightning and lightning-zk, as file:line."""
    frame = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if module not in _LIBRARIES:
            code = frame.f_code
            source = linecache.getline(code.co_filename, frame.f_lineno).strip()
            return f"{code.co_filename}:{frame.f_lineno} ({code.co_name}): {source}"
        frame = frame.f_back
    return "an unknown location"


def tensors_in(value) -> Iterable[torch.Tensor]:
    """Every tensor in a (nested) argument: tensors, lists, tuples, dict values."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)


class TaintTracker:
    """Marks unrounded results, follows them through ops, warns when they reach the state.

    Args:
        committed: returns the committed tensors by name (set by the training session; without it
            only the escape of a tainted value into a Python number is reported).
    """

    def __init__(self, committed: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None) -> None:
        self.committed = committed
        self._marks: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._warned: set[tuple[str, str]] = set()

    def __bool__(self) -> bool:
        return len(self._marks) > 0

    def mark(self, tensors: Iterable[torch.Tensor], op: str) -> None:
        """``tensors`` were computed by ``op`` outside the committed precision."""
        origin = None
        for t in tensors:
            origin = origin or TaintOrigin(op, str(t.dtype).removeprefix("torch."), user_location())
            self._marks[t] = origin

    def follow(self, op: str, args: tuple, kwargs: dict, written: list[torch.Tensor], out) -> None:
        """Propagate marks from the inputs of ``op`` to what it wrote; warn if that is state."""
        read = args[1:] if op in _OVERWRITES else args  # an overwrite does not read its target
        origin = next((self._marks[t] for t in tensors_in((read, kwargs)) if t in self._marks), None)
        if origin is None:
            if op in _OVERWRITES:
                for t in written:
                    self._marks.pop(t, None)
            return
        for t in (*written, *tensors_in(out)):
            self._marks[t] = origin
        if op in _SCALAR_OPS:
            self._warn(origin, f"becomes a Python number at {user_location()}, where it can steer "
                               "the computation")
            return
        state = self._state_names(written)
        if state:
            self._warn(origin, f"flows into the committed state ({', '.join(state[:3])}, written by {op})")

    def _state_names(self, written: list[torch.Tensor]) -> list[str]:
        if not written or self.committed is None:
            return []
        ids = {id(t): name for name, t in self.committed()}
        names = []
        for t in written:
            for candidate in (t, t._base):
                if candidate is not None and id(candidate) in ids:
                    names.append(ids[id(candidate)])
                    break
        return names

    def _warn(self, origin: TaintOrigin, what: str) -> None:
        key = (origin.op, origin.where)
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"{origin.op} computed a {origin.dtype} result at {origin.where}. It is outside the "
            f"compute dtype, so it is not rounded to the committed grid and its last bits may differ "
            f"on other hardware; it {what}, so the run may not replay bit-exactly. HINT: keep that "
            "computation in the compute dtype (drop the explicit .half()/.to(dtype), or create the "
            "tensor inside the step or as a registered buffer).",
            UnroundedValueWarning,
            stacklevel=2,
        )
