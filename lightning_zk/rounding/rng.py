"""Device-independent random numbers for training under replay.

Every random draw inside a step (dropout masks, ``torch.rand``, ...) is taken from a counter-based
stream keyed by ``(seed, step, draw index)``: splitmix64 of the key plus the element index, computed
in NumPy on the host. The same draw therefore yields identical bits on a GPU trainer and a CPU
auditor, independent of thread counts, kernels and torch versions.

Uniforms, Bernoulli masks, integers and permutations are exact functions of those bits. Normal and
exponential draws go through float64 ``log``/``cos``, which may differ by an ulp between math
libraries, so their outputs pass through the rounding log like any transcendental op.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

import numpy as np
import torch

try:  # optional one-pass kernel (the ``fast`` extra) for Bernoulli masks; same bits as NumPy
    from ._numba_kernels import uniform_below as _uniform_below
except ImportError:  # pragma: no cover - depends on the installation
    _uniform_below = None

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


class UnsupportedRandomOpError(RuntimeError):
    """A random op the device-independent generator does not implement."""


def _splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, step: int, draw: int) -> int:
    """64-bit key of one draw: SHA-256 of the domain tag, seed, step and draw index."""
    data = b"lightning-zk/rng/v1" + struct.pack("<qqq", seed, step, draw)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def shard_stream_key(seed: int, step: int, shard: int, draw: int) -> int:
    """64-bit key of one draw of data-parallel shard ``shard`` (its own domain tag).

    Sharded steps (``VerifiableDDPStrategy``) draw each shard's dropout masks from a stream keyed by
    ``(seed, step, shard)``, so a shard draws the same masks whichever process computes it.
    """
    data = b"lightning-zk/rng/shard/v1" + struct.pack("<qqqq", seed, step, shard, draw)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def random_bits(key: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 values of stream ``key``."""
    counters = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(key) + counters * _GOLDEN
    return _splitmix(z)


def uniform01(key: int, n: int) -> np.ndarray:
    """Uniform float64 in [0, 1) with 53 random bits each (exact on every machine)."""
    return (random_bits(key, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def uniform_below(key: int, n: int, p: float) -> np.ndarray:
    """``uniform01(key, n) < p`` as a bool mask (one pass when numba is installed)."""
    if _uniform_below is not None:
        return _uniform_below(key, n, p)
    return uniform01(key, n) < p


def normal01(key: int, n: int) -> np.ndarray:
    """Standard normal draws by Box–Muller on two uniforms per element."""
    u = uniform01(key, 2 * n)
    u1, u2 = 1.0 - u[:n], u[n:]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def integers(key: int, n: int, low: int, high: int) -> np.ndarray:
    """Integers in [low, high) by 128-bit multiply-shift (Lemire), exact on every machine."""
    span = high - low
    if span <= 0:
        raise ValueError(f"random integer range is empty: [{low}, {high})")
    bits = random_bits(key, n)
    if span >= 2**32:
        return (bits % np.uint64(span)).astype(np.int64) + low
    hi = (bits >> np.uint64(32)) * np.uint64(span)
    return (hi >> np.uint64(32)).astype(np.int64) + low


def _to_torch(values: np.ndarray, like_shape: Sequence[int], dtype: torch.dtype, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(tuple(like_shape)).to(
        device=device, dtype=dtype
    )


# Schema defaults of these are enum integers, not torch objects: the samplers pick their own.
_NO_SCHEMA_DEFAULT = {"dtype", "layout", "device", "memory_format", "pin_memory"}


def _bind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict:
    """Map positional and keyword arguments to the schema's argument names."""
    bound = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value() and arg.name not in _NO_SCHEMA_DEFAULT:
            bound[arg.name] = arg.default_value
    return bound


class StepRandom:
    """Serves the random ops of one training step from the keyed stream."""

    def __init__(self, seed: int, step: int, shard: int | None = None) -> None:
        self.seed = seed
        self.step = step
        self.shard = shard  # a data-parallel shard's own stream (None: the step's stream)
        self.draws = 0

    def _key(self) -> int:
        if self.shard is None:
            key = stream_key(self.seed, self.step, self.draws)
        else:
            key = shard_stream_key(self.seed, self.step, self.shard, self.draws)
        self.draws += 1
        return key

    def _fill(self, target: torch.Tensor, values: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            target.copy_(_to_torch(values, target.shape, target.dtype, target.device))
        return target

    def call(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict):
        """Run random op ``func`` on the keyed stream; raise for ops not implemented."""
        name = func._schema.name.split("::")[-1]
        a = _bind(func, args, kwargs)
        if a.get("generator") is not None:
            raise UnsupportedRandomOpError(
                f"{func} was called with an explicit torch.Generator; under VerifiableStrategy "
                "every draw comes from the run's keyed stream. HINT: drop the generator argument."
            )
        handler = getattr(self, "_op_" + name, None)
        if handler is None:
            raise UnsupportedRandomOpError(
                f"random op {func} is not supported under VerifiableStrategy: it cannot be drawn "
                "identically on every device. Supported: dropout, bernoulli, rand/uniform_, "
                "randn/normal_, randint/random_, randperm, exponential_."
            )
        return handler(func, a)

    # --- in-place samplers -------------------------------------------------------------------
    def _op_bernoulli_(self, func, a):
        t = a["self"]
        p = a["p"]
        if not isinstance(p, torch.Tensor):
            return self._fill(t, uniform_below(self._key(), t.numel(), float(p)))
        u = uniform01(self._key(), t.numel())
        probs = p.detach().to("cpu", torch.float64).expand(t.shape).reshape(-1).numpy()
        return self._fill(t, (u < probs).astype(np.float64))

    def _op_uniform_(self, func, a):
        t = a["self"]
        lo, hi = float(a["from"]), float(a["to"])
        u = uniform01(self._key(), t.numel())
        return self._fill(t, lo + (hi - lo) * u)

    def _op_normal_(self, func, a):
        t = a["self"]
        z = normal01(self._key(), t.numel())
        return self._fill(t, float(a["mean"]) + float(a["std"]) * z)

    def _op_exponential_(self, func, a):
        t = a["self"]
        u = uniform01(self._key(), t.numel())
        return self._fill(t, -np.log1p(-u) / float(a["lambd"]))

    def _op_random_(self, func, a):
        t = a["self"]
        low = int(a.get("from", 0) or 0)
        high = a.get("to")
        if high is None:
            if t.dtype.is_floating_point:
                high = 2 ** (torch.finfo(t.dtype).nmant + 1)
            elif t.dtype == torch.bool:
                high = 2
            else:
                high = torch.iinfo(t.dtype).max
        return self._fill(t, integers(self._key(), t.numel(), low, int(high)))

    # --- functional samplers -----------------------------------------------------------------
    def _op_bernoulli(self, func, a):
        x = a["self"]
        out = torch.empty_like(x)
        p = a.get("p")
        return self._op_bernoulli_(func, {"self": out, "p": x if p is None else p})

    def _op_native_dropout(self, func, a):
        x, p, train = a["input"], float(a["p"]), a["train"]
        if not train or p == 0.0:
            return x.clone(), torch.ones_like(x, dtype=torch.bool)
        keep = uniform_below(self._key(), x.numel(), 1.0 - p)
        mask = _to_torch(keep, x.shape, torch.bool, x.device)
        # Same arithmetic as ATen's CPU decomposition: noise = bernoulli(1-p) / (1-p); x * noise.
        noise = mask.to(x.dtype).div_(1.0 - p)
        return x * noise, mask

    def _new(self, a, shape) -> tuple[torch.dtype, object]:
        dtype = a.get("dtype") or torch.get_default_dtype()
        device = a.get("device") or "cpu"
        return dtype, device

    def _op_rand(self, func, a):
        shape = list(a["size"])
        dtype, device = self._new(a, shape)
        return _to_torch(uniform01(self._key(), math.prod(shape)), shape, dtype, device)

    def _op_randn(self, func, a):
        shape = list(a["size"])
        dtype, device = self._new(a, shape)
        return _to_torch(normal01(self._key(), math.prod(shape)), shape, dtype, device)

    def _like(self, a):
        x = a["self"]
        return list(x.shape), a.get("dtype") or x.dtype, a.get("device") or x.device

    def _op_rand_like(self, func, a):
        shape, dtype, device = self._like(a)
        return _to_torch(uniform01(self._key(), math.prod(shape)), shape, dtype, device)

    def _op_randn_like(self, func, a):
        shape, dtype, device = self._like(a)
        return _to_torch(normal01(self._key(), math.prod(shape)), shape, dtype, device)

    def _op_randint(self, func, a):
        shape = list(a["size"])
        dtype = a.get("dtype") or torch.int64
        device = a.get("device") or "cpu"
        low = int(a.get("low", 0) or 0)
        values = integers(self._key(), math.prod(shape), low, int(a["high"]))
        return _to_torch(values, shape, dtype, device)

    def _op_randint_like(self, func, a):
        shape, dtype, device = self._like(a)
        low = int(a.get("low", 0) or 0)
        values = integers(self._key(), math.prod(shape), low, int(a["high"]))
        return _to_torch(values, shape, dtype, device)

    def _op_randperm(self, func, a):
        n = int(a["n"])
        dtype = a.get("dtype") or torch.int64
        device = a.get("device") or "cpu"
        order = np.argsort(random_bits(self._key(), n), kind="stable")
        return _to_torch(order, [n], dtype, device)
