"""The batch commitment of a proof unit and the relation that links it to the witness.

The public statement of a unit carries ``batch``: a hiding Ligero commitment to the unit's
batch table, i.e. the inputs x and targets y of every instance, stacked over t with Wit's
conventions (instance variable t first, element bits first / code bits last, zero padding).
The *batch link* relation (one zk sumcheck with claimed sum 0) proves that the x and y blocks
inside the private witness commitment Wit equal the committed batch:

    sum_v eq(r_x, v) (Wit_x - Batch_x)(v) + alpha sum_v eq(r_y, v) (Wit_y - Batch_y)(v) = 0

over the domain (t, b, o) of each tensor (r_x, r_y: prefixes of one challenge vector r; the
shorter tensor carries eq(0, unused variables)). Its two Batch claims are masked openings of
the batch commitment (mask indices 0 and 1), opened once, batched, at the end of the unit proof;
the number of opening points (:data:`BATCH_POINTS`) is fixed by the architecture.

The batch commitment's randomness (row padding, mask rows, Merkle salts) comes from its own
32-byte seed through a SHA-256 counter-mode stream, so whoever holds the data and the seed can
recompute it (:func:`batch_commitment`, :func:`check_batch`); nobody else learns anything from
it (hiding, as every other commitment). The seed is the commitment's opening: keep it private.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ...fixed.conv import ConvSpec
from ...fixed.tape import tensor_names
from ..errors import ParameterError, VerificationError
from ..extension import Fp2
from ..field import from_signed
from ..ligero import Ligero, LigeroConfig, LigeroState
from ..pcs import Commitment
from ..randomness import ProverRng
from ..transcript import Transcript
from .layout import Arch, Layout, TensorSlot, allocate, bits_of, build_layout, instances_for
from .placement import Free
from .relations import Committed, PubEq, PubPadBox, Relation

__all__ = [
    "BATCH_POINTS",
    "SEED_BYTES",
    "BatchCheckError",
    "BatchLayout",
    "batch_layout",
    "batch_table",
    "batch_link",
    "batch_builders",
    "count_batch_claims",
    "seeded_rng",
    "commit_batch",
    "batch_commitment",
    "check_batch",
]

SEED_BYTES = 32
BATCH_POINTS = 2  # one masked opening for x, one for y (see batch_link)
_STREAM_DOMAIN = b"lightning-zk/training/batch-commitment/v1"


class BatchCheckError(VerificationError):
    """The statement's batch commitment is not the commitment of this data under this seed."""


class BatchLayout:
    """Slots of x and y (with leading instance variable t) inside the batch commitment."""

    def __init__(self, arch: Arch) -> None:
        self.arch = arch
        L, tau, nb = arch.num_layers, arch.tau, arch.nb
        axes = {
            "x": (("t", tau), ("b", nb), ("o", bits_of(arch.x_width))),
            "y": (("t", tau), ("b", nb), ("o", arch.nd(L))),
        }
        sizes = {"x": (arch.batch_size, arch.x_width), "y": (arch.batch_size, arch.dims[L])}
        self.num_vars, codes = allocate({k: sum(b for _, b in a) for k, a in axes.items()})
        self.slots = {k: TensorSlot(axes[k], codes[k], sizes[k]) for k in axes}

    def __getitem__(self, name: str) -> TensorSlot:
        return self.slots[name]


@lru_cache(maxsize=64)
def batch_layout(arch: Arch) -> BatchLayout:
    return BatchLayout(arch)


def _as_int_batch(arrs: Sequence[Any], rows: int, cols: int, what: str) -> list[np.ndarray]:
    out = []
    for t, a in enumerate(arrs):
        a = np.asarray(a)
        if a.shape != (rows, cols) or not np.issubdtype(a.dtype, np.integer):
            raise ParameterError(
                f"batch {what}[{t}]: expected integer array of shape {(rows, cols)}, "
                f"got {a.dtype} {a.shape}"
            )
        out.append(a.astype(np.int64))
    return out


def batch_table(blayout: BatchLayout, xs: Sequence[Any], ys: Sequence[Any]) -> np.ndarray:
    """Signed int64 table of the batch commitment (x and y of every instance, zero-padded)."""
    arch = blayout.arch
    T, L = arch.num_instances, arch.num_layers
    if len(xs) != len(ys) or not 1 <= len(xs) <= T:
        raise ParameterError(f"batch: {len(xs)} inputs and {len(ys)} targets for T = {T}")
    out = np.zeros(1 << blayout.num_vars, dtype=np.int64)
    for name, arrs, width in (("x", xs, arch.x_width), ("y", ys, arch.dims[L])):
        slot = blayout[name]
        block = np.zeros([T, *[1 << b for _, b in slot.axes[1:]]], dtype=np.int64)
        for t, a in enumerate(_as_int_batch(arrs, arch.batch_size, width, name)):
            block[t, : a.shape[0], : a.shape[1]] = a
        out[slot.code_int :: 1 << len(slot.code)] = block.reshape(-1)
    return out


def batch_link(layout: Layout, tr: Transcript) -> Relation:
    """Wit's x and y blocks equal the batch commitment's (every instance, padding included)."""
    arch = layout.arch
    bl = batch_layout(arch)
    mx, my = (sum(b for _, b in bl[k].axes) for k in ("x", "y"))
    n = max(mx, my)
    r = tr.challenge_ext_list("batch.r", n)
    alpha = tr.challenge_ext("batch.alpha")
    rel = Relation("batch_link", n)
    a_pad = tr.challenge_ext("batch.alpha_pad")
    x_slot = layout.wit["x"]
    (_, nb), (_, nx) = x_slot.axes[1:]
    tau = arch.tau
    ex = rel.add(PubEq(tuple(range(mx)), tuple(r[:mx])))
    pad = rel.add(PubPadBox(((tau, nb), (tau + nb, nx)), ((arch.batch_size, arch.x_width),)))
    rel.term(a_pad, ex, pad, rel.add(Committed("wit", "x", tuple(Free(i) for i in range(mx)))))
    for k, (name, m) in enumerate((("x", mx), ("y", my))):
        free = tuple(Free(i) for i in range(m))
        e = rel.add(PubEq(tuple(range(m)), tuple(r[:m])))
        sel = rel.add(PubEq(tuple(range(m, n)), (Fp2(0),) * (n - m)) if n > m else None)
        w = rel.add(Committed("wit", name, free))
        b = rel.add(Committed("batch", name, free, mask_index=k))
        coeff = Fp2(1) if k == 0 else alpha
        rel.term(coeff, e, w, sel)
        rel.term(-coeff, e, b, sel)
    return rel


def batch_builders(layout: Layout) -> list:
    """The batch relations in transcript order (appended to the unit's relation list)."""
    return [lambda tr: batch_link(layout, tr)]


def count_batch_claims(layout: Layout) -> int:
    """Number of opening points of the batch commitment (fixed by the architecture)."""
    tr = Transcript(b"lightning-zk/training/count-batch")
    return sum(
        1
        for build in batch_builders(layout)
        for f in build(tr).factors
        if isinstance(f, Committed) and f.com == "batch"
    )


class _StreamRng(ProverRng):
    """Deterministic prover randomness: SHA-256(domain | seed | counter) blocks."""

    def __init__(self, seed: bytes) -> None:
        super().__init__(None)
        self.seeded = True
        self._key = hashlib.sha256(_STREAM_DOMAIN + bytes(seed)).digest()
        self._counter = 0
        self._buf = b""

    def bytes(self, n: int) -> bytes:
        need = n - len(self._buf)
        if need > 0:
            blocks = (need + 31) // 32
            start, self._counter = self._counter, self._counter + blocks
            self._buf += b"".join(
                hashlib.sha256(self._key + c.to_bytes(8, "little")).digest()
                for c in range(start, start + blocks)
            )
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def seeded_rng(seed: bytes) -> ProverRng:
    """The batch commitment's randomness source (only ever used for that commitment)."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ParameterError(f"batch seed must be {SEED_BYTES} bytes")
    return _StreamRng(bytes(seed))


def commit_batch(
    pcs: Ligero, layout: Layout, xs: Sequence[Any], ys: Sequence[Any], seed: bytes, xp: Any = np
) -> tuple[Commitment, LigeroState, Any]:
    """Prover side: (commitment, Ligero state, field table) of the batch."""
    table = xp.asarray(from_signed(batch_table(batch_layout(layout.arch), xs, ys)))
    com, state = pcs.commit(table, num_points=count_batch_claims(layout), rng=seeded_rng(seed))
    return com, state, table


def batch_commitment(
    xs: Sequence[Any],
    ys: Sequence[Any],
    dims: Sequence[int],
    seed: bytes,
    *,
    security_bits: int = 100,
    blowup: int = 4,
    conv: Sequence[int] = (),
) -> Commitment:
    """Recompute a unit's batch commitment from its fixed-point data and the secret seed.

    Args:
        xs, ys: per step of the unit, in order, the integer (fixed-point) inputs (B, d_in) and
            targets (B, d_out), as in the witness tape (``quantize(x, frac_bits)``).
        dims: layer widths of the MLP; seed: the unit's 32-byte batch seed; conv: the
            statement's conv shape (inputs are then the flattened images (B, C H W)).
    """
    xs, ys = list(xs), list(ys)
    if not xs:
        raise ParameterError("batch_commitment: no steps")
    batch = int(np.asarray(xs[0]).shape[0])
    spec = ConvSpec(*conv) if conv else None
    xs = [np.asarray(a).reshape(batch, -1) for a in xs]
    arch = Arch(tuple(int(d) for d in dims), batch, instances_for(len(xs)), spec)
    layout = build_layout(arch, tensor_names(arch.num_layers, conv=spec is not None))
    pcs = Ligero(LigeroConfig(security_bits, blowup))
    return commit_batch(pcs, layout, xs, ys, seed)[0]


def check_batch(stmt: Any, xs: Sequence[Any], ys: Sequence[Any], seed: bytes) -> None:
    """Data-owner check: ``stmt.batch`` commits exactly to (xs, ys) under ``seed``.

    Raises:
        BatchCheckError: wrong number of steps, wrong shapes, or another commitment.
    """
    xs, ys = list(xs), list(ys)
    if len(xs) != stmt.num_steps or len(ys) != stmt.num_steps:
        raise BatchCheckError(
            "number of steps of the batch", expected=stmt.num_steps, got=(len(xs), len(ys))
        )
    if any(np.asarray(a).shape[:1] != (stmt.batch_size,) for a in xs + ys):
        raise BatchCheckError("batch size", expected=stmt.batch_size)
    try:
        got = batch_commitment(
            xs, ys, stmt.dims, seed, security_bits=stmt.security_bits, blowup=stmt.blowup,
            conv=stmt.conv,
        )
    except ParameterError as exc:
        raise BatchCheckError("batch data shape", detail=str(exc)) from exc
    if got != stmt.batch:
        raise BatchCheckError(
            f"batch commitment of steps {stmt.step_start}..{stmt.step_start + stmt.num_steps - 1}",
            expected=stmt.batch.root.hex(),
            got=got.root.hex(),
        )
