"""Op-level interception: round every hardware-dependent result, record or replay the log.

:class:`RoundingMode` is a ``TorchDispatchMode``: it sees each ATen op after autograd, so forward
ops, functional ops inside modules, autograd's backward ops, parameter gradients and the optimizer
update are all covered (module hooks miss the last three). Per op call it:

1. serves random ops from the device-independent stream (:mod:`.rng`);
2. runs the op;
3. rounds every floating output and every mutated argument to the committed grid (unless the op
   only moves or selects values), logging elements within τ of a midpoint (recording), or forcing
   the logged elements the trainer's way (replaying). Single IEEE operations (add, mul, div, sqrt)
   are rounded with τ = 0: their result is the same on every device, so they never need a log.

Rounded outputs are numbered per step (``op_seq``) in execution order; a replay must run the same
sequence of rounded ops, which it checks against the op names stored in the log.

Two rewrites keep user code that names dtypes working in the compute dtype:

- **float32 is the committed dtype inside the compute dtype.** A conversion or factory asking for
  float32 (``x.float()``, ``.to(torch.float32)``, ``torch.zeros(..., dtype=torch.float32)``) yields
  the same float32 values held in the compute dtype, and a reduction asked to accumulate in float32
  (``sum(dtype=torch.float32)``) accumulates in the compute dtype and is rounded like any other.
- **Fused elementwise ops are decomposed** into single IEEE operations (:mod:`.decompose`), whose
  compute-dtype result is the same on every device: rounded with τ = 0, never logged.

Results in other floating dtypes are left unrounded and tracked (:mod:`.taint`): a warning names
the user's line only when such a value can reach the committed state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .decompose import Decomposition, decomposition
from .log import LogEntry, StepLog, StepLogBuilder
from .ops import OpClass, classify
from .precision import (
    GridSpec,
    in_place_rounder,
    logged_directions,
    place_directions_,
    round_to_grid,
)
from .rng import StepRandom
from .taint import TaintTracker
from .threshold import ResolvedThresholds


class ReplayDivergenceError(RuntimeError):
    """The replay did not run the ops the trainer's log describes, or the log cannot be honest."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(f"step {step}: {message}")
        self.step = step


@dataclass
class ReplayStats:
    """What replaying one step's log did."""

    corrections: int = 0  # logged elements whose forced direction differs from local rounding
    logged: int = 0
    max_distance: float = 0.0  # largest local distance of a logged element from its midpoint (ulp)


@dataclass
class _StepState:
    step: int
    random: StepRandom
    builder: StepLogBuilder | None
    replay: Iterator[LogEntry] | None
    pending: LogEntry | None = None
    op_seq: int = 0
    ops_rounded: int = 0
    elements_rounded: int = 0
    stats: ReplayStats = field(default_factory=ReplayStats)


def _tensors_of(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, torch.Tensor):
                yield item


@dataclass(frozen=True)
class OpInfo:
    """What the mode needs to know about an op overload, computed once per overload."""

    name: str
    kind: OpClass
    has_alpha: bool
    accumulate_at: int | None  # position of an ``accumulate`` flag (index_put: exact unless set)
    mutated: tuple[tuple[int, str], ...]  # (position, name) of arguments the op writes
    n_returns: int
    fresh_returns: tuple[int, ...]  # returns that do not alias an input
    dtype_at: int | None = None  # position of a ``dtype`` argument
    decompose: Decomposition | None = None  # single-IEEE-op form of a fused elementwise op
    # the common shape of a call, decided once: writes nothing but one fresh return
    single_fresh: bool = False
    # every call has the op's own kind (no ``alpha``, no ``accumulate`` flag), asks for no dtype,
    # is not decomposed and draws nothing: dispatched without the per-call checks
    plain: bool = False

    @classmethod
    def of(cls, func: torch._ops.OpOverload) -> OpInfo:
        schema = func._schema
        mutated = tuple(
            (i, a.name) for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        )
        fresh = tuple(i for i, r in enumerate(schema.returns) if r.alias_info is None)
        kind = classify(func, {})
        has_alpha = any(a.name == "alpha" for a in schema.arguments)
        accumulate_at = next(
            (i for i, a in enumerate(schema.arguments) if a.name == "accumulate"), None
        )
        dtype_at = next((i for i, a in enumerate(schema.arguments) if a.name == "dtype"), None)
        decompose = decomposition(func)
        return cls(
            single_fresh=not mutated and len(schema.returns) == 1 and fresh == (0,),
            plain=(not has_alpha and accumulate_at is None and dtype_at is None
                   and decompose is None and kind is not OpClass.RANDOM),
            name=str(func),
            kind=kind,
            has_alpha=has_alpha,
            accumulate_at=accumulate_at,
            mutated=mutated,
            n_returns=len(schema.returns),
            fresh_returns=fresh,
            dtype_at=dtype_at,
            decompose=decompose,
        )

    def requested_dtype(self, args: tuple, kwargs: dict) -> torch.dtype | None:
        if self.dtype_at is None:
            return None
        return args[self.dtype_at] if self.dtype_at < len(args) else kwargs.get("dtype")

    def kind_of_call(self, args: tuple, kwargs: dict) -> OpClass:
        if self.has_alpha and self.kind is OpClass.IEEE and kwargs.get("alpha", 1) != 1:
            return OpClass.FUSED  # a + alpha*b may be one FMA on a GPU
        if self.accumulate_at is not None:
            i = self.accumulate_at
            accumulate = args[i] if i < len(args) else kwargs.get("accumulate", False)
            if not accumulate:
                return OpClass.EXACT  # index_put without accumulation only places values
        return self.kind

    def targets(self, args: tuple, kwargs: dict, out) -> list[torch.Tensor]:
        """Mutated arguments (schema ``a!``) then fresh outputs: every tensor the op wrote."""
        if self.single_fresh and type(out) is torch.Tensor:  # most ops: one fresh output
            return [out]
        found: list[torch.Tensor] = []
        seen: set[int] = set()
        values = [args[i] if i < len(args) else kwargs.get(name) for i, name in self.mutated]
        if self.fresh_returns:
            # One declared return may itself be a list (``Tensor[]`` of the _foreach ops).
            outs = (out,) if self.n_returns == 1 else tuple(out)
            values += [outs[i] for i in self.fresh_returns]
        for value in values:
            for t in _tensors_of(value):
                if id(t) not in seen:
                    seen.add(id(t))
                    found.append(t)
        return found


class RoundingMode(TorchDispatchMode):
    """Rounds hardware-dependent op results to the committed grid; records or replays the log.

    Args:
        spec: compute dtype and kept mantissa bits.
        thresholds: τ per op (:meth:`ThresholdPolicy.resolve`).
        seed: key of the device-independent random stream.

    Use :meth:`begin_step` / :meth:`end_step` around a training step and :meth:`active` around the
    code to intercept (it may be entered several times per step, e.g. for forward and optimizer).
    """

    def __init__(self, spec: GridSpec, thresholds: ResolvedThresholds, seed: int) -> None:
        super().__init__()
        self.spec = spec
        self.thresholds = thresholds
        self.seed = seed
        self._state: _StepState | None = None
        self._step_random: StepRandom | None = None  # the step's stream while a shard draws
        self._depth = 0
        self._paused = 0
        self.taint = TaintTracker()  # its ``committed`` callback is set by the training session
        self._ops: dict[torch._ops.OpOverload, OpInfo] = {}
        # decided once (``spec`` and ``thresholds`` are fixed for the mode's life): per op call
        # these were attribute chains and dict lookups
        self._compute_dtype = spec.compute_dtype
        self._widens = spec.compute_dtype != torch.float32
        self._taus: dict[tuple[str, OpClass], float] = {}
        self._rounder = in_place_rounder(spec)  # the one-pass kernel, or None

    # --- step lifecycle ----------------------------------------------------------------------
    def begin_step(self, step: int, replay_log: StepLog | None = None) -> None:
        """Start step ``step``: record a new log, or replay ``replay_log`` (the trainer's)."""
        if self._state is not None:
            raise RuntimeError(f"begin_step({step}) while step {self._state.step} is open")
        replay = None
        if replay_log is not None:
            if replay_log.step != step:
                raise ReplayDivergenceError(step, f"log file is for step {replay_log.step}")
            replay = iter(replay_log.entries)
        self._state = _StepState(
            step=step,
            random=StepRandom(self.seed, step),
            builder=None if replay is not None else StepLogBuilder(step),
            replay=replay,
        )
        if replay is not None:
            self._state.pending = next(replay, None)

    def end_step(self) -> tuple[StepLog | None, ReplayStats]:
        """Close the step: the recorded log (``None`` when replaying) and the replay statistics."""
        state = self._require_state()
        self._state = None
        if state.replay is not None:
            if state.pending is not None:
                e = state.pending
                raise ReplayDivergenceError(
                    state.step,
                    f"the log has an entry for rounded op #{e.op_seq} ({e.op_name}) but the "
                    f"replay ran only {state.op_seq} rounded ops",
                )
            return None, state.stats
        assert state.builder is not None
        return state.builder.build(), state.stats

    def end_step_discard(self) -> None:
        """Abandon the open step (an exception interrupted it): nothing is returned or kept."""
        self._state = None

    @property
    def in_step(self) -> bool:
        return self._state is not None

    # --- data-parallel shards ----------------------------------------------------------------
    def position(self) -> tuple[int, int]:
        """``(rounded ops, rounded elements)`` of the open step so far: where a shard begins."""
        state = self._require_state()
        return state.op_seq, state.elements_rounded

    def begin_shard(self, shard: int) -> None:
        """Serve the following random draws from shard ``shard``'s stream ``(seed, step, shard)``.

        A sharded step (``VerifiableDDPStrategy``) runs each shard's forward and backward pass
        under its own stream, so a shard draws the same dropout masks on any process.
        """
        state = self._require_state()
        if state.random.shard is None:
            self._step_random = state.random
        state.random = StepRandom(self.seed, state.step, shard)

    def end_shards(self) -> None:
        """Back to the step's own stream (where it left off) for the rest of the step."""
        state = self._require_state()
        if state.random.shard is not None:
            state.random = self._step_random

    def _require_state(self) -> _StepState:
        if self._state is None:
            raise RuntimeError("RoundingMode used outside begin_step()/end_step()")
        return self._state

    @contextmanager
    def active(self) -> Iterator[None]:
        """Intercept ops in this block (re-entrant: nested uses are no-ops)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._require_state()
        self._depth = 1
        try:
            with self:
                yield
        finally:
            self._depth = 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run ops untouched and unnumbered: for side computations (metric logging) whose ops
        depend on framework state rather than on the training step, and never feed the state."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # --- rounding ----------------------------------------------------------------------------
    def round_named(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Round state tensors in place (parameters, buffers, optimizer state) as logged ops."""
        tau = self.thresholds.tau("state", "state")
        state = self._require_state()
        with torch.no_grad():
            for name, t in named:
                if t.is_floating_point() and t.dtype == self._compute_dtype:
                    self._round_into(state, f"state:{name}", 0, t, tau)

    def _round_into(self, state: _StepState, op_name: str, index: int, t: torch.Tensor,
                    tau: float) -> None:
        seq = state.op_seq
        state.op_seq = seq + 1
        state.ops_rounded += 1
        numel = t.numel()
        state.elements_rounded += numel
        pending = state.pending
        builder = state.builder
        if pending is not None and pending.op_seq == seq and state.replay is not None:
            with torch.no_grad():
                rounded = self._replay_entry(state, op_name, index, t, pending, tau)
            state.pending = next(state.replay, None)
        else:
            if builder is None:
                tau = 0.0
            # the one-pass kernel where it applies: in place, logged elements as numpy arrays
            fast = self._rounder(t, tau) if self._rounder is not None else None
            if fast is not None:
                if builder is not None:
                    builder.ops_rounded += 1  # count_rounded(numel), numel being an int
                    builder.elements_rounded += numel
                    if fast[0].size:
                        builder.add(seq, op_name, index, numel, fast[0], fast[1], owned=True)
                return
            result = round_to_grid(t, self.spec, tau, in_place=True)
            rounded = result.rounded
            if builder is not None:
                builder.count_rounded(numel)
                if result.positions.numel():
                    builder.add(
                        seq, op_name, index, numel,
                        result.positions.cpu().numpy().astype(np.int64), result.away.cpu().numpy(),
                        owned=True,
                    )
        if rounded is not t:
            with torch.no_grad():
                t.copy_(rounded)

    def _replay_entry(
        self, state: _StepState, op_name: str, index: int, t: torch.Tensor, entry: LogEntry,
        tau: float,
    ) -> torch.Tensor:
        if entry.op_name != op_name or entry.output_index != index or entry.numel != t.numel():
            raise ReplayDivergenceError(
                state.step,
                f"rounded op #{entry.op_seq}: the log expects {entry.op_name} output "
                f"{entry.output_index} with {entry.numel} elements, the replay ran {op_name} "
                f"output {index} with {t.numel()} elements",
            )
        positions = torch.tensor(entry.positions, device=t.device)
        away = torch.tensor(entry.away, device=t.device)
        forced, distance, natural = logged_directions(t, self.spec, positions, away)
        ulp_units = float(1 << self.spec.dropped_bits)
        worst = float(distance.max()) / ulp_units if distance.numel() else 0.0
        # An honest trainer logs only elements within τ of a midpoint; hardware divergence moves
        # this machine's value by less than τ, so anything beyond 2τ cannot come from honest logs.
        limit = 2 * tau
        if worst >= max(limit, 2.0 ** -self.spec.dropped_bits):
            raise ReplayDivergenceError(
                state.step,
                f"rounded op #{entry.op_seq} ({op_name}): a logged element lies {worst:.3g} ulp "
                f"from its rounding midpoint here, beyond 2τ = {limit:.3g}: the log is not the "
                "trainer's honest record (tampered log or different computation)",
            )
        rounded = place_directions_(t, self.spec, positions, forced)
        state.stats.logged += int(positions.numel())
        state.stats.corrections += int((natural != away).sum())
        state.stats.max_distance = max(state.stats.max_distance, worst)
        return rounded

    # --- dispatch ----------------------------------------------------------------------------
    def _info(self, func) -> OpInfo:
        info = self._ops.get(func)
        if info is None:
            info = self._ops[func] = OpInfo.of(func)
        return info

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        state = self._state
        if state is None or self._paused:
            return func(*args, **kwargs)
        info = self._ops.get(func)
        if info is None:
            info = self._ops[func] = OpInfo.of(func)
        if info.plain:  # most calls: what the general path below does for them, without checks
            kind = info.kind
            out = func(*args, **kwargs)
            if kind is OpClass.EXACT:
                return self._exact(info, args, kwargs, out)
        else:
            kind, args, kwargs, out = self._general_call(state, func, info, args, kwargs)
            if kind is None:
                return out
        # IEEE results are identical on every device: rounded onto the grid, never logged.
        if kind is OpClass.IEEE:
            tau = 0.0
        else:
            tau = self._taus.get((info.name, kind))
            if tau is None:
                tau = self._taus[(info.name, kind)] = self.thresholds.tau(info.name, kind)
        written = info.targets(args, kwargs, out)
        unrounded = []
        compute_dtype = self._compute_dtype
        for index, t in enumerate(written):
            if t.dtype != compute_dtype:
                if t.is_floating_point() and kind is not OpClass.IEEE:
                    unrounded.append(t)  # (IEEE results are device-independent anyway)
                continue
            self._round_into(state, info.name, index, t, tau)
        if self.taint:
            self.taint.follow(info.name, args, kwargs, written, out)
        if unrounded:
            self.taint.mark(unrounded, info.name)
        return out

    def _general_call(self, state: _StepState, func, info: OpInfo, args: tuple, kwargs: dict):
        """Run a call that may widen a float32 request, draw random numbers or be decomposed:
        ``(kind, args, kwargs, out)``, with kind ``None`` when ``out`` needs no rounding."""
        kind = info.kind_of_call(args, kwargs)
        if self._widens and info.requested_dtype(args, kwargs) is torch.float32:
            if kind is OpClass.EXACT:  # a conversion or factory: float32 values, compute dtype
                out = self._exact(info, args, kwargs, _widened(func(*args, **kwargs), self.spec))
                return None, args, kwargs, out
            kwargs = {**kwargs, "dtype": self.spec.compute_dtype}  # accumulate in the compute dtype
            if info.dtype_at is not None and info.dtype_at < len(args):
                args = (*args[: info.dtype_at], self.spec.compute_dtype, *args[info.dtype_at + 1:])
                kwargs.pop("dtype")
        if kind is OpClass.RANDOM:
            out = state.random.call(func, args, kwargs)
        elif (kind is not OpClass.IEEE and info.decompose is not None
              and info.decompose.applies_to(bound := info.decompose.bind(args, kwargs),
                                            self._compute_dtype)):
            out = info.decompose.call(bound)
            kind = OpClass.IEEE  # single IEEE operations: the same result on every device
        else:
            out = func(*args, **kwargs)
            if kind is OpClass.EXACT:
                return None, args, kwargs, self._exact(info, args, kwargs, out)
        return kind, args, kwargs, out

    def _exact(self, info: OpInfo, args: tuple, kwargs: dict, out):
        if self.taint:
            self.taint.follow(info.name, args, kwargs, info.targets(args, kwargs, out), out)
        return out


def _widened(out, spec: GridSpec):
    """A float32 result held in the compute dtype (exact: float32 values are float64 values)."""
    if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
        return out.to(spec.compute_dtype)
    return out
