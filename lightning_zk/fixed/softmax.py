"""Fixed-point softmax cross-entropy: the output gradient (softmax(Z) - onehot(y)) / B in integers.

Only the gradient changes the weights, so only the gradient is exact and proved; the loss value
is computed in float64 from the fixed-point logits and only logged (docs/fixed_point.md).
Everything is integer arithmetic with public constants, identical on every device, and every
step is a product, a sum or a rescale whose remainder the zk range check already covers, so
the circuit needs no new lookup argument (docs/zk_training.md, "Cross-entropy"). Per row b of
the logits Z (B, C), s = frac_bits:

* m_b = Z[b, j*] with a one-hot H (the first maximum); D = m - Z >= 0 (D < 2^Q);
* exp(-D / 2^s) = exp(-DQ) exp(-RD / 2^s) with D = 2^s DQ + RD (the rescale rule: DQ =
  round(D / 2^s) in [0, 2^(Q-s)], RD in [-2^(s-1), 2^(s-1)));
* exp(-DQ) from the bits of DQ = BA + 2 BB + 4 BC + 8 BD + 16 DH: ZD = [DH = 0] (exp(-16) is
  below half an ulp), FA = ZD (2^s + BA (c_0 - 2^s)), FB = rescale(FA (2^s + BB (c_1 - 2^s))),
  FC, FD alike with c_i = round(2^s exp(-2^i));
* exp(-v), v = RD / 2^s in [-1/2, 1/2), by Horner on the degree-6 Taylor polynomial:
  XA = a_5 + rescale(-a_6 RD), XB = a_4 + rescale(-RD XA), ..., XF = a_0 + rescale(-RD XE),
  a_j = round(2^s / j!);
* E = rescale(FD XF) (E = 2^s exactly at the maximum), row sums SS = sum_j E (>= 2^s);
* P = round_half_up(2^s E / SS): 2^(s+1) E + SS = 2 P SS + QP with 0 <= QP < 2 SS;
* G = rescale(c (P - Yhot)) with c = round(2^s / B) and Yhot = 2^s onehot(y) (the tape's y).

Error bounds (docs/fixed_point.md): |E - 2^s exp(-D / 2^s)| <= 1.5 in units of 2^-s (1.45
measured by :func:`exp_error_ulps` over every D < 2^24 at s = 16, Q = 24), hence
|P/2^s - softmax(Z/2^s)_j| <= (0.5 + 1.5 C) 2^-s (:func:`p_error_bound` states (0.5 + 3 C) 2^-s)
and |G/2^s - (softmax - onehot)_j / B| <= ((0.5 + 3 C) / B + 1.01) 2^-s.
"""

from __future__ import annotations

import decimal
import functools
import math

import numpy as np

from .format import FixedPointError, fixed_constant, rescale_owned

__all__ = [
    "LOSSES",
    "MAX_FRAC_BITS",
    "SOFTMAX_TENSORS",
    "SoftmaxWitnessError",
    "check_softmax_witness",
    "exp_constants",
    "exp_fixed",
    "exp_error_ulps",
    "g_error_bound",
    "max_classes",
    "onehot_targets",
    "p_error_bound",
    "softmax_witness",
    "xent_constant",
    "xent_gradient",
    "xent_loss",
]

LOSSES = ("mse", "xent")
EXP_BITS = 4  # bits of DQ used: exp(-16) 2^s < 1/2 for s <= 22, so DQ >= 16 gives 0
TAYLOR_DEGREE = 6
_HORNER = ("XA", "XB", "XC", "XD", "XE", "XF")
_BITS = ("BA", "BB", "BC", "BD")
_PRODUCTS = ("FA", "FB", "FC", "FD")
# tape tensors of the cross-entropy output gradient, all (B, C), in tape order
SOFTMAX_TENSORS = (
    "H", "D", "DQ", "RD", "DH", "ZD", "WZ", *_BITS, "FA", "FB", "RFB", "FC", "RFC", "FD",
    "RFD", "XA", "RXA", "XB", "RXB", "XC", "RXC", "XD", "RXD", "XE", "RXE", "XF", "RXF",
    "E", "RE", "SS", "P", "QP", "UP",
)
#: range classes of the softmax tensors that are not signed values or remainders (R*): the
#: ones the range check proves non-negative (value in [0, 2^Q))
SOFTMAX_NONNEGATIVE = ("D", "DH", "WZ", "QP", "UP")
MAX_FRAC_BITS = 22  # 2^s exp(-16) < 1/2: DQ >= 16 may give E = 0


def xent_constant(batch_size: int, frac_bits: int) -> int:
    """Public fixed-point constant c = round(2^s / B) of the mean cross-entropy gradient."""
    return fixed_constant(1.0 / batch_size, frac_bits)


def onehot_targets(labels: np.ndarray, classes: int, frac_bits: int) -> np.ndarray:
    """Yhot = 2^s onehot(labels) (B, C): how integer class targets enter tape and batch
    commitment (the same (B, d_L) block as an MSE target). Labels outside [0, C) are refused."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"class targets must be a 1-D integer array, got {lab.dtype} {lab.shape}")
    bad = (lab < 0) | (lab >= classes)
    if bad.any():
        raise ValueError(
            f"class target {int(lab[bad][0])} is outside [0, {classes}) (the network has "
            f"{classes} outputs); ignore_index and out-of-range labels are not supported")
    out = np.zeros((lab.shape[0], classes), dtype=np.int64)
    out[np.arange(lab.shape[0]), lab.astype(np.int64)] = 1 << frac_bits
    return out


def xent_gradient(p: np.ndarray, yhot: np.ndarray, c: int, frac_bits: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """G, RG = rescale(c (P - Yhot)): the engine's output gradient (GZ_L)."""
    return rescale_owned(c * (np.asarray(p, dtype=np.int64) - yhot), frac_bits)


def xent_loss(z: np.ndarray, yhot: np.ndarray, frac_bits: int) -> float:
    """Mean cross-entropy of the fixed-point logits, in float64: logged only, never proved."""
    v = np.asarray(z, dtype=np.float64) / float(1 << frac_bits)
    top = v.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(v - top).sum(axis=1))
    picked = (v * (np.asarray(yhot) != 0)).sum(axis=1)
    return float(np.mean(lse - picked))


def max_classes(frac_bits: int, value_bits: int) -> int:
    """Most classes C with 2 SS <= 2 C 2^s (1 + 2^-12) < 2^(Q-1): SS, 2 SS - 1 - QP stay inside
    the range check and every product P SS stays far below the field."""
    return max(0, ((1 << (value_bits - 2)) >> frac_bits) - 1)


@functools.lru_cache(maxsize=8)
def exp_constants(frac_bits: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Public constants (c_i = round(2^s exp(-2^i)) for i < 4, a_j = round(2^s / j!) for j <= 6),
    from correctly rounded decimal arithmetic: the same integers on every device."""
    ctx = decimal.Context(prec=50)
    scale = decimal.Decimal(1 << frac_bits)
    half = decimal.Decimal(1) / 2
    cs = tuple(int((ctx.multiply(ctx.exp(decimal.Decimal(-(1 << i))), scale) + half)
                   .to_integral_value(rounding=decimal.ROUND_FLOOR)) for i in range(EXP_BITS))
    fact = [math.factorial(j) for j in range(TAYLOR_DEGREE + 1)]
    a = tuple(((1 << frac_bits) * 2 + f) // (2 * f) for f in fact)
    return cs, a


def exp_fixed(d: np.ndarray, frac_bits: int) -> dict[str, np.ndarray]:
    """E ~ 2^s exp(-D / 2^s) for integers D >= 0, with every intermediate (module doc)."""
    s = frac_bits
    one = 1 << s
    cs, a = exp_constants(s)
    d = np.asarray(d, dtype=np.int64)
    t: dict[str, np.ndarray] = {"D": d}
    t["DQ"], t["RD"] = rescale_owned(d.copy(), s)
    dq = t["DQ"]
    for i, name in enumerate(_BITS):
        t[name] = (dq >> i) & 1
    t["DH"] = dq >> EXP_BITS
    t["ZD"] = (t["DH"] == 0).astype(np.int64)
    t["WZ"] = t["DH"] - 1 + t["ZD"]
    t["FA"] = t["ZD"] * (one + t["BA"] * (cs[0] - one))
    prev = "FA"
    for i, name in enumerate(_PRODUCTS[1:], start=1):
        t[name], t["R" + name] = rescale_owned(t[prev] * (one + t[_BITS[i]] * (cs[i] - one)), s)
        prev = name
    h = np.full_like(d, a[TAYLOR_DEGREE])
    for j, name in enumerate(_HORNER):
        q, r = rescale_owned(-t["RD"] * h, s)
        t[name], t["R" + name] = q + a[TAYLOR_DEGREE - 1 - j], r
        h = t[name]
    t["E"], t["RE"] = rescale_owned(t["FD"] * t["XF"], s)
    return t


def exp_error_ulps(frac_bits: int, value_bits: int, stride: int = 1) -> float:
    """max |E - 2^s exp(-D / 2^s)| over D = 0, stride, 2 stride, ... < 2^Q (units of 2^-s)."""
    d = np.arange(0, 1 << value_bits, stride, dtype=np.int64)
    worst = 0.0
    for lo in range(0, d.size, 1 << 20):
        part = d[lo: lo + (1 << 20)]
        e = exp_fixed(part, frac_bits)["E"]
        worst = max(worst, float(np.abs(e - np.exp(-part / float(1 << frac_bits))
                                        * float(1 << frac_bits)).max()))
    return worst


def softmax_witness(z: np.ndarray, frac_bits: int, value_bits: int) -> dict[str, np.ndarray]:
    """Every integer of P = softmax(Z) in fixed point (names of :data:`SOFTMAX_TENSORS`).

    Raises:
        FixedPointError: more classes than :func:`max_classes` (SS would leave the range check).
    """
    s, q = frac_bits, value_bits
    z = np.asarray(z, dtype=np.int64)
    bsz, classes = z.shape
    if s > MAX_FRAC_BITS:
        raise ValueError(f"cross-entropy needs frac_bits <= {MAX_FRAC_BITS} (got {s}): the exp "
                         "drops exp(-16) as below half an ulp")
    if classes > max_classes(s, q):
        raise FixedPointError("P (classes)", None, max_classes(s, q) + 1, classes)
    rows = np.arange(bsz)
    first = np.argmax(z, axis=1)  # the first maximum: H is unique
    h = np.zeros_like(z)
    h[rows, first] = 1
    t = {"H": h, **exp_fixed(z[rows, first][:, None] - z, s)}
    ss = np.broadcast_to(t["E"].sum(axis=1, keepdims=True), z.shape).copy()
    num = (t["E"] << (s + 1)) + ss
    p = num // (2 * ss)
    t["SS"], t["P"] = ss, p
    t["QP"] = num - 2 * p * ss
    t["UP"] = 2 * ss - 1 - t["QP"]
    return {k: t[k] for k in SOFTMAX_TENSORS}


def p_error_bound(classes: int, frac_bits: int) -> float:
    """Documented bound on |P / 2^s - softmax(Z / 2^s)| (real units)."""
    return (0.5 + 3.0 * classes) * math.ldexp(1.0, -frac_bits)


def g_error_bound(classes: int, batch_size: int, frac_bits: int) -> float:
    """Documented bound on |G / 2^s - (softmax(Z / 2^s) - onehot) / B| (real units)."""
    return ((0.5 + 3.0 * classes) / batch_size + 1.01) * math.ldexp(1.0, -frac_bits)


class SoftmaxWitnessError(ValueError):
    """A softmax witness violates one of the integer relations (the tensor and the relation)."""

    def __init__(self, tensor: str, relation: str) -> None:
        self.tensor, self.relation = tensor, relation
        super().__init__(f"softmax witness: {tensor} violates {relation}")


def check_softmax_witness(t: dict[str, np.ndarray], logits: np.ndarray, c: int, frac_bits: int,
                          value_bits: int) -> None:
    """Check the relations that pin the cross-entropy gradient to the logits, in integers.

    These are exactly the identities the proof of a cross-entropy step establishes
    (docs/zk_training.md, "Cross-entropy"), with the range check's classes: given them, G is a
    function of Z_L and y alone. ``t`` holds y (Yhot), G, RG and :data:`SOFTMAX_TENSORS`.
    Raises :class:`SoftmaxWitnessError` naming the first relation that fails.
    """
    s, q = frac_bits, value_bits
    one, half = 1 << s, 1 << (s - 1)
    cs, a = exp_constants(s)
    z = np.asarray(logits, dtype=np.int64)
    g = {k: np.asarray(v, dtype=np.int64) for k, v in t.items()}

    def need(ok: bool | np.bool_, tensor: str, relation: str) -> None:
        if not bool(ok):
            raise SoftmaxWitnessError(tensor, relation)

    def within(x: np.ndarray, lo: int, hi: int) -> bool:
        return bool(((x >= lo) & (x < hi)).all())

    def rescaled(raw: np.ndarray, quo: str, rem: str, offset: np.ndarray | int = 0) -> None:
        need(np.array_equal(raw, ((g[quo] - offset) << s) + g[rem])
             and within(g[rem] + half, 0, one), f"{quo}/{rem}", f"{quo} = rescale(...)")

    for name in SOFTMAX_TENSORS:  # the range check: signed, remainder or non-negative
        if name in SOFTMAX_NONNEGATIVE:
            need(within(g[name], 0, 1 << q), name, "value in [0, 2^Q)")
        elif not name.startswith("R"):
            need(within(g[name], -(1 << (q - 1)), 1 << (q - 1)), name, "|value| < 2^(Q-1)")
    y, h = g["y"], g["H"]
    need(np.isin(y, (0, one)).all() and (y.sum(axis=1) == one).all(), "y",
         "Yhot in {0, 2^s}, one 2^s per row")
    need(np.isin(h, (0, 1)).all(), "H", "H (1 - H) = 0")
    need((h.sum(axis=1) == 1).all(), "H", "sum_j H = 1 per row")
    need(np.array_equal(g["D"], (h * z).sum(axis=1, keepdims=True) - z), "D", "D = sum_j H Z - Z")
    rescaled(g["D"], "DQ", "RD")
    for name in (*_BITS, "ZD"):
        need(np.isin(g[name], (0, 1)).all(), name, f"{name} (1 - {name}) = 0")
    bits = sum(g[name] << i for i, name in enumerate(_BITS))
    need(np.array_equal(g["DQ"], bits + (g["DH"] << EXP_BITS)), "DQ/DH", "DQ = bits + 16 DH")
    need(not (g["ZD"] * g["DH"]).any(), "ZD", "ZD DH = 0")
    need(np.array_equal(g["WZ"], g["DH"] - 1 + g["ZD"]), "WZ", "WZ = DH - 1 + ZD")
    need(np.array_equal(g["FA"], g["ZD"] * (one + g["BA"] * (cs[0] - one))), "FA",
         "FA = ZD (2^s + BA (c_0 - 2^s))")
    for i, name in enumerate(_PRODUCTS[1:], start=1):
        prev = _PRODUCTS[i - 1]
        rescaled(g[prev] * (one + g[_BITS[i]] * (cs[i] - one)), name, "R" + name)
    prev_h: np.ndarray | int = a[TAYLOR_DEGREE]
    for j, name in enumerate(_HORNER):
        rescaled(-g["RD"] * prev_h, name, "R" + name, a[TAYLOR_DEGREE - 1 - j])
        prev_h = g[name]
    rescaled(g["FD"] * g["XF"], "E", "RE")
    need(np.array_equal(g["SS"], np.broadcast_to(g["E"].sum(axis=1, keepdims=True), z.shape)),
         "SS", "SS[b, o] = sum_j E[b, j]")
    need(np.array_equal((g["E"] << (s + 1)) + g["SS"], 2 * g["P"] * g["SS"] + g["QP"]),
         "P/QP", "2^(s+1) E + SS = 2 P SS + QP")
    need(np.array_equal(g["UP"], 2 * g["SS"] - 1 - g["QP"]), "UP", "UP = 2 SS - 1 - QP")
    rescaled(c * (g["P"] - y), "G", "RG")
