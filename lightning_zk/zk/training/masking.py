"""The small random polynomial M that masks every claim on Wit (instead of a full-size mask).

Every relation sumcheck leaves claims on Wit at points z_j; revealed plainly, Wit(z_j) would leak
the witness. Each claim is made on the masked polynomial Wit(z) + lam_j M~(z), where lam_j is
the sumcheck's hiding factor (r_1 (1 - r_1) of its hiding variable, :mod:`..sumcheck`) and M is
committed beside Wit. All claims are then reduced to one opening of Wit and one of M
(:mod:`.claims`).

M need not be as large as Wit, only large enough that the masks of all claims are jointly
uniform. Wit is partitioned into *mask blocks*: the layer stacks ``kind@g`` (element variables
t, axes..., layer l) and the global tensors. Block B gets a uniform table M_B over its first
k_B = min(K_MASK, element vars - layer vars) element variables and its layer variables, and
M(x) = M_B(pi_B(x)) for x in B (0 outside every block). The mask of a claim on block B at z is
then M_B evaluated at (z's first k_B element coordinates, z's layer coordinates): claims on
different blocks use disjoint tables; claims on one block differ in their leading element
coordinates (fresh challenges of different sumchecks, or different Boolean layer indices), so
the functionals eq(., .) over M_B are linearly independent whenever 2 x (claims on the block)
<= 2^(k_B + layer vars) (M is F_p-valued, so each F_p2 claim is two F_p functionals; at most 8
of 16 for digits, 10 of 128 for 8 x 1024), except with probability ~ claims / p^2. The revealed
values y_j are then jointly uniform (docs/zk_training.md, "What is hidden"). M has about
(#blocks x 128 x layers) entries: ~10^4 for the 8 x 1024 network against Wit's ~10^8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..extension import Fp2
from ..multilinear import eq_eval, eq_table
from .layout import GLOBAL_TENSORS, Layout, allocate, code_int

__all__ = ["K_MASK", "MaskBlock", "MaskLayout", "mask_layout", "expand_mask", "mask_weights",
           "mask_weight_eval"]

K_MASK = 7  # leading element variables per mask block: up to 128 claims per block


@dataclass(frozen=True)
class MaskBlock:
    name: str
    code: tuple[int, ...]  # its suffix code in Wit
    elem_vars: int  # element variables in Wit (t, axes..., layer)
    lam: int  # layer variables (the last element variables)
    k: int  # leading element variables M_B depends on
    mcode: tuple[int, ...]  # its suffix code in M

    @property
    def vars(self) -> int:
        return self.k + self.lam


@dataclass(frozen=True)
class MaskLayout:
    num_vars: int  # of M
    wit_vars: int
    blocks: tuple[MaskBlock, ...]


def mask_layout(layout: Layout) -> MaskLayout:
    """The mask blocks of a unit layout (public: fixed by the architecture)."""
    parts: list[tuple[str, tuple[int, ...], int, int]] = []
    for name, slot in layout.stacks.items():
        lam = sum(b for a, b in slot.axes if a == "l")
        parts.append((name, slot.code, slot.elem_vars, lam))
    for name, slot in layout.wit.items():
        if name in GLOBAL_TENSORS:
            parts.append((name, slot.code, slot.elem_vars, 0))
    sizes = {}
    for name, _, m, lam in parts:
        sizes[name] = min(K_MASK, m - lam) + lam
    n, codes = allocate(sizes)
    blocks = tuple(
        MaskBlock(name, code, m, lam, sizes[name] - lam, codes[name])
        for name, code, m, lam in parts
    )
    return MaskLayout(n, layout.wit_vars, blocks)


def _block_table(block: MaskBlock, mtable: np.ndarray, mask_vars: int) -> np.ndarray:
    """M_B expanded over B's element variables (2^elem_vars entries, B-local order)."""
    local = mtable[code_int(block.mcode) :: 1 << len(block.mcode)]  # 2^(k + lam) values
    e = np.arange(1 << block.elem_vars, dtype=np.int64)
    idx = ((e >> (block.elem_vars - block.k)) << block.lam) | (e & ((1 << block.lam) - 1))
    return local[idx]


def expand_mask(ml: MaskLayout, mtable: np.ndarray, slot_code: Sequence[int], slot_vars: int
                ) -> np.ndarray:
    """M on a Wit slot (code ``slot_code``, ``slot_vars`` element variables), slot-local order.

    The slot is a mask block, a part of one (a layer of a stack), or a union of blocks (a Theta
    stack, or all of Wit with ``slot_code = ()``).
    """
    sc = tuple(slot_code)
    out = np.zeros(1 << slot_vars, dtype=np.uint64)
    for b in ml.blocks:
        if len(sc) >= len(b.code) and sc[len(sc) - len(b.code):] == b.code:  # slot inside B
            rel = sc[: len(sc) - len(b.code)]
            return _block_table(b, mtable, ml.num_vars)[code_int(rel) :: 1 << len(rel)]
        if len(b.code) > len(sc) and b.code[len(b.code) - len(sc):] == sc:  # B inside the slot
            rel = b.code[: len(b.code) - len(sc)]
            out[code_int(rel) :: 1 << len(rel)] = _block_table(b, mtable, ml.num_vars)
        elif not sc:  # the slot is all of Wit
            out[code_int(b.code) :: 1 << len(b.code)] = _block_table(b, mtable, ml.num_vars)
    return out


class _Claim:
    """A claim point with its Boolean suffix (a tensor's code) read once as an integer."""

    __slots__ = ("point", "k", "suffix", "bits")

    def __init__(self, point: Sequence[Fp2]) -> None:
        self.point = point
        k = len(point)
        while k > 0 and point[k - 1].c1 == 0 and point[k - 1].c0 in (0, 1):
            k -= 1
        self.k, self.bits = k, len(point) - k
        self.suffix = code_int([z.c0 for z in point[k:]])

    def code_eq(self, code: tuple[int, ...]) -> Fp2:
        """eq(the point's last len(code) coordinates, code): an exact integer test on the
        Boolean coordinates, field arithmetic only for the others."""
        length = len(code)
        if length <= self.bits:
            return Fp2(int(self.suffix & ((1 << length) - 1) == code_int(code)))
        low = code[length - self.bits :]
        if self.bits and self.suffix != code_int(low):
            return Fp2(0)
        n = len(self.point)
        return eq_eval(list(self.point[n - length : self.k]), list(code[: length - self.bits]))


def _code_eq(point: Sequence[Fp2], code: tuple[int, ...]) -> Fp2:
    return _Claim(point).code_eq(code)


def _local_point(b: MaskBlock, point: Sequence[Fp2]) -> list[Fp2]:
    n = len(point)
    end = n - len(b.code)
    return list(point[: b.k]) + list(point[end - b.lam : end])


def mask_weights(ml: MaskLayout, points: Sequence[Sequence[Fp2]], weights: Sequence[Fp2]
                 ) -> np.ndarray:
    """Table (2, 2^num_vars) W with <W, M> = sum_j weights_j M~(points_j) (prover side)."""
    from ..extension import e_add, e_const, e_scale

    out = e_const(0, 1 << ml.num_vars)
    for z, w in zip(points, weights, strict=True):
        claim = _Claim(z)
        for b in ml.blocks:
            c = claim.code_eq(b.code)
            if c.is_zero():
                continue
            sl = slice(code_int(b.mcode), None, 1 << len(b.mcode))
            out[:, sl] = e_add(out[:, sl], e_scale(eq_table(_local_point(b, z)), c * w))
    return out


def mask_weight_eval(ml: MaskLayout, points: Sequence[Sequence[Fp2]], weights: Sequence[Fp2],
                     r: Sequence[Fp2]) -> Fp2:
    """W~(r) for the table of :func:`mask_weights` (verifier side, O(claims x blocks x vars))."""
    from ..extension import e_dot
    from ..multilinear import eq_eval_many

    acc = Fp2(0)
    claims = [_Claim(z) for z in points]
    suffix = np.array([c.suffix for c in claims], dtype=np.int64)
    bits = np.array([c.bits for c in claims], dtype=np.int64)
    at_r = _Claim(r)
    for b in ml.blocks:
        sel = at_r.code_eq(b.mcode)
        if sel.is_zero():
            continue
        length, code = len(b.code), code_int(b.code)
        exact = (bits >= length) & ((suffix & ((1 << length) - 1)) == code)
        locs, coeffs = [], []
        for j in np.nonzero(exact)[0]:  # claims on this block (their code ends in its code)
            locs.append(_local_point(b, points[j]))
            coeffs.append(weights[j])
        for j in np.nonzero(bits < length)[0]:  # points not on one tensor: field arithmetic
            c = claims[j].code_eq(b.code)
            if not c.is_zero():
                locs.append(_local_point(b, points[j]))
                coeffs.append(c * weights[j])
        if locs:
            eqs = eq_eval_many(locs, list(r[: b.vars]))
            weights_arr = np.array([[v.c0 for v in coeffs], [v.c1 for v in coeffs]],
                                   dtype=np.uint64)
            acc = acc + sel * e_dot(eqs, weights_arr)
    return acc

