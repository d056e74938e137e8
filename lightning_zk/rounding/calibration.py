"""Adaptive logging threshold: measure cross-machine divergence per op, derive τ from it.

:class:`DivergenceProbe` is a dispatch mode placed *below* the rounding mode. For every op the
rounding mode would round, it computes the result a second time on the "other machine" — another
device, another thread count, or an emulated machine — and records the largest difference, in
units of the committed ulp of the result, per op overload.

Rule (:func:`policy_from_divergence`): ``τ_op = clamp(safety × measured_op, min_tau, 1/4)``; a kind's
τ is the largest τ of its measured ops; ops never measured keep the analytic default
(:func:`~lightning_zk.rounding.threshold.default_tau`). Guarantee, as for any τ: where the
trainer's and the auditor's results of an op differ by less than τ ulp, replay is exact. The
measurement bounds the divergence seen on the calibration data; the safety factor (default 16, four
bits) covers variation beyond it. For hardware you did not measure, keep the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .mode import OpInfo
from .ops import OpClass
from .precision import GridSpec
from .threshold import ThresholdPolicy, default_tau

MEASURED_KINDS = (OpClass.REDUCTION, OpClass.TRANSCENDENTAL, OpClass.FUSED, OpClass.OTHER)


def committed_ulp(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """The committed grid's spacing at each element of ``x`` (float32 range, b mantissa bits)."""
    _, exponent = torch.frexp(x)  # |x| in [2^(e-1), 2^e)
    exponent = torch.clamp(exponent - 1, min=-126)
    return torch.exp2((exponent - spec.mantissa_bits).to(x.dtype))


def _clone_args(value, device=None):
    """Copies of every tensor in ``value`` (on ``device`` if given), structure kept."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if device is None else value.detach().to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_args(v, device) for v in value)
    return value


@dataclass
class DivergenceProbe(TorchDispatchMode):
    """Measure, per op, how far a second computation of each rounded result lands from the first.

    Args:
        spec: the committed grid (the unit of the measurement).
        alternative: ``(func, args, kwargs) -> result`` computing the op on the other machine.
    """

    spec: GridSpec
    alternative: Callable
    max_divergence: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        self._ops: dict[torch._ops.OpOverload, OpInfo] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        info = self._ops.get(func)
        if info is None:
            info = self._ops[func] = OpInfo.of(func)
        kind = info.kind_of_call(args, kwargs)
        if kind not in MEASURED_KINDS or not self._has_compute_tensor(args):
            return func(*args, **kwargs)  # e.g. the rounding mode's own integer bit operations
        # The other machine runs first, on copies: in-place ops then see the same inputs.
        other_args, other_kwargs = _clone_args(args), _clone_args(kwargs)
        other = self.alternative(func, other_args, other_kwargs)
        out = func(*args, **kwargs)
        dtype = self.spec.compute_dtype
        ours = [t for t in info.targets(args, kwargs, out) if t.dtype == dtype]
        theirs = [t for t in info.targets(other_args, other_kwargs, other) if t.dtype == dtype]
        worst = 0.0
        for a, b in zip(ours, theirs, strict=False):
            b = b.to(a.device)
            finite = torch.isfinite(a) & torch.isfinite(b) & (a != 0)
            if bool(finite.any()):
                ratio = ((a - b).abs() / committed_ulp(a, self.spec))[finite]
                worst = max(worst, float(ratio.max()))
        self.max_divergence[info.name] = max(self.max_divergence.get(info.name, 0.0), worst)
        self.kinds[info.name] = kind.value
        self.calls += 1
        return out


    def _has_compute_tensor(self, args) -> bool:
        for value in args:
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if isinstance(item, torch.Tensor) and item.dtype == self.spec.compute_dtype:
                    return True
        return False


def emulated_alternative(ulps: int, seed: int) -> Callable:
    """The other machine is this one under a :class:`NondeterminismEmulator`-style perturbation."""
    from .emulator import NondeterminismEmulator

    emulator = NondeterminismEmulator(ulps=ulps, seed=seed)

    def run(func, args, kwargs):
        with emulator:
            return func(*args, **kwargs)

    return run


def threads_alternative(threads: int) -> Callable:
    """The other machine is this CPU with a different number of threads (other reduction order)."""

    def run(func, args, kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return run


def device_alternative(device: str | torch.device) -> Callable:
    """The other machine is another device (e.g. ``"cuda"`` when training on the CPU)."""

    def run(func, args, kwargs):
        return func(*_clone_args(args, device), **_clone_args(kwargs, device))

    return run


def policy_from_divergence(
    probe: DivergenceProbe,
    spec: GridSpec,
    safety: float = 16.0,
    min_tau: float = 2.0**-20,
    method: str = "",
) -> ThresholdPolicy:
    """Turn measured divergences into a :class:`ThresholdPolicy` (rule in the module doc)."""
    per_op = {
        name: min(0.25, max(min_tau, safety * div)) for name, div in probe.max_divergence.items()
    }
    per_kind: dict[str, float] = {}
    for name, tau in per_op.items():
        kind = probe.kinds[name]
        per_kind[kind] = max(per_kind.get(kind, 0.0), tau)
    return ThresholdPolicy(
        tau=default_tau(spec),
        per_kind=per_kind,
        per_op=per_op,
        calibration={
            "method": method,
            "safety": safety,
            "min_tau": min_tau,
            "ops_measured": len(per_op),
            "calls": probe.calls,
            "max_divergence_ulp": dict(sorted(probe.max_divergence.items())),
        },
    )
