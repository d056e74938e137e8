"""Make this machine behave like different hardware: perturb reduction results by a few ulps.

Real accelerators differ from each other (and from CPUs) in the order of floating-point
reductions, in fused multiply-adds and in their math libraries; the results of matmuls,
convolutions, sums, norms, softmax and transcendental functions then differ in the last few bits.
:class:`NondeterminismEmulator` reproduces that on one machine, reproducibly: every such op result
is moved by a seeded random number of units in the last place (of its own dtype), in
``[-ulps, ulps]``. Two emulators with different seeds act like two different machines.

Use it to check that a model is replayable before an audit::

    with NondeterminismEmulator(ulps=4, seed=1):
        trainer.fit(model, data)           # "machine A"
    with NondeterminismEmulator(ulps=4, seed=2):
        report = replay(run_dir, model, data)   # "machine B"
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .mode import OpInfo
from .ops import OpClass

DEFAULT_KINDS = (OpClass.REDUCTION, OpClass.TRANSCENDENTAL, OpClass.FUSED)
_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}


class NondeterminismEmulator(TorchDispatchMode):
    """Perturb hardware-dependent op results by up to ``ulps`` ulps, seeded.

    Args:
        ulps: largest perturbation, in units in the last place of each result's dtype (≥ 0).
        seed: which "machine" to emulate; equal seeds perturb identically.
        kinds: op classes to perturb (default: reductions, transcendental and fused ops).
    """

    def __init__(self, ulps: int = 4, seed: int = 0, kinds=DEFAULT_KINDS) -> None:
        super().__init__()
        if not isinstance(ulps, int) or ulps < 0:
            raise ValueError(f"NondeterminismEmulator(ulps={ulps!r}): ulps must be an int >= 0")
        self.ulps = ulps
        self.seed = seed
        self.kinds = frozenset(OpClass(k) for k in kinds)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._ops: dict[torch._ops.OpOverload, OpInfo] = {}
        self.perturbed_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.ulps == 0:
            return out
        info = self._ops.get(func)
        if info is None:
            info = self._ops[func] = OpInfo.of(func)
        if info.kind_of_call(args, kwargs) not in self.kinds:
            return out
        with torch.no_grad():
            for t in info.targets(args, kwargs, out):
                if t.dtype in _INT_VIEW and t.numel():
                    self._perturb(t)
        return out

    def _perturb(self, t: torch.Tensor) -> None:
        steps = self._rng.integers(-self.ulps, self.ulps + 1, size=t.numel(), dtype=np.int64)
        delta = torch.from_numpy(steps).to(device=t.device).reshape(t.shape)
        bits = t.contiguous().view(_INT_VIEW[t.dtype])
        moved = (bits + delta.to(bits.dtype)).view(t.dtype)
        # Keep zeros, infinities and NaNs as they are; never let a step cross into NaN/inf.
        keep = (t == 0) | ~torch.isfinite(t) | ~torch.isfinite(moved)
        t.copy_(torch.where(keep, t, moved))
        self.perturbed_ops += 1
