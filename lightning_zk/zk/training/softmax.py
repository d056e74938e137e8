"""The relations of a cross-entropy unit: the output gradient from the fixed-point softmax.

A unit whose statement says ``loss = "xent"`` replaces MSE's output identity
c (Z_L - y) - 2^s G - RG = 0 by c (P - Y) - 2^s G - RG = 0 and pins P to the logits Z_L with
the identities of :mod:`lightning_zk.fixed.softmax` (docs/zk_training.md, "Cross-entropy").
They use only products, sums and rescales with the range classes the unit's one range check
already proves (every softmax tensor is a Wit block: signed, remainder, or non-negative
D, DH, WZ, QP, UP in [0, 2^Q)), so no further lookup argument, commitment or opening is needed;
the exp of the softmax is an arithmetic circuit (bits and a Horner polynomial) instead of a
tlookup table. Two parts:

* elementwise, added to the output group's elementwise sumcheck (every (t, b, o), fresh alpha
  per identity; ``act`` = [t < T_real][(b, o) in the true box], a public factor);
* rows, one sumcheck over (t, b, j): the row maximum, the one-hot of H and of Y, the row sums
  SS. For a random (r_t, r_b, r_o), with eq over (t, b) and the public I_o(r_o) = MLE of
  [o < C]:  (D + Z)~(r) - I_o(r_o) sum_j eq(r_tb, .) H Z = 0, sum_j eq(r_tb, .) H = act~(r_tb),
  sum_j eq(r_tb, .) Y = 2^s act~(r_tb), SS~(r) - I_o(r_o) sum_j eq(r_tb, .) E = 0. Each is the
  multilinear extension of a function that vanishes on the hypercube iff the identity holds
  (the row functions are 0 on padded rows because H, Z, Y, E are), so Schwartz-Zippel applies
  as in every relation: (n + 4)/p^2 for the point and the gammas, plus the sumcheck.

Why these pin G to (Z_L, y): H binary with row sum 1 selects one j*; D = Z[j*] - Z with D >= 0
makes Z[j*] the row maximum m; D = 2^s DQ + RD, DQ = bits + 16 DH (bits binary, DH >= 0),
ZD = [DH = 0] (ZD binary, ZD DH = 0, WZ = DH - 1 + ZD >= 0), the products FA..FD, the Horner
chain XA..XF and E = rescale(FD XF) are each a rescale with a range-checked remainder, hence
unique; 2^(s+1) E + SS = 2 P SS + QP with 0 <= QP (QP >= 0) and QP < 2 SS (UP = 2 SS - 1 - QP
>= 0) makes P = round(2^s E / SS) unique; all values are far below p (|x| < 2^Q, products
< 2^(2Q+1)), so every identity mod p holds over the integers. Zero knowledge is that of every
other Wit tensor: the softmax tensors are Wit blocks with their own mask blocks in M.
"""

from __future__ import annotations

from ...fixed.softmax import exp_constants
from ..extension import Fp2
from ..transcript import Transcript
from .placement import small_mle
from .relations import PubSmall, Relation

__all__ = ["xent_output_terms", "softmax_rows"]

_BITS = ("BA", "BB", "BC", "BD")
_PRODUCTS = ("FA", "FB", "FC", "FD")
_HORNER = ("XA", "XB", "XC", "XD", "XE", "XF")


def _instances(c, first: int) -> PubSmall | None:
    """[t < T_real] over the instance variables (None for a single step: always 1)."""
    tau, real = c.tau, c.st.num_steps
    if tau == 0:
        return None
    vals = tuple(Fp2(int(t < real)) for t in range(1 << tau))
    return PubSmall(tuple(range(first, first + tau)), vals)


def xent_output_terms(c, tr: Transcript, rel: Relation, place, eq: int | None, g: int,
                      y: int) -> None:
    """The output group's elementwise identities of a cross-entropy unit (module doc)."""
    s, nb = c.st.frac_bits, c.arch.nb
    one = 1 << s
    cs, a = exp_constants(s)
    al = tr.challenge_ext_list("elem.xent.alpha", 25)
    T = {k: place(k) for k in ("y", "G", "RG", "H", "D", "DQ", "RD", "DH", "ZD", "WZ", *_BITS,
                               *_PRODUCTS, "RFB", "RFC", "RFD", *_HORNER,
                               *("R" + h for h in _HORNER), "E", "RE", "SS", "P", "QP", "UP")}
    inst = rel.add(_instances(c, 0))
    box = rel.add(c.pad("P", b=y, o=y + nb))

    def act(coeff: Fp2 | int) -> None:
        """coeff * [t real][(b, o) in the true box] = coeff * inst * (1 - pad)."""
        rel.term(coeff, eq, inst)
        rel.term(-Fp2.lift(coeff), eq, inst, box)

    k = iter(al)
    w = next(k)  # c (P - Y) = 2^s G + RG
    rel.term(w * c.st.mse_const, eq, T["P"])
    rel.term(-w * c.st.mse_const, eq, T["y"])
    rel.rescaled(w, s, T["G"], T["RG"], eq)
    w = next(k)  # H binary
    rel.term(w, eq, T["H"])
    rel.term(-w, eq, T["H"], T["H"])
    w = next(k)  # D = 2^s DQ + RD
    rel.term(w, eq, T["D"])
    rel.rescaled(w, s, T["DQ"], T["RD"], eq)
    w = next(k)  # DQ = BA + 2 BB + 4 BC + 8 BD + 16 DH
    rel.term(w, eq, T["DQ"])
    for i, name in enumerate(_BITS):
        rel.term(-w * (1 << i), eq, T[name])
    rel.term(-w * (1 << len(_BITS)), eq, T["DH"])
    for name in (*_BITS, "ZD"):  # bits
        w = next(k)
        rel.term(w, eq, T[name])
        rel.term(-w, eq, T[name], T[name])
    w = next(k)  # ZD DH = 0
    rel.term(w, eq, T["ZD"], T["DH"])
    w = next(k)  # WZ = DH - 1 + ZD on real entries
    rel.term(w, eq, T["WZ"])
    rel.term(-w, eq, T["DH"])
    rel.term(-w, eq, T["ZD"])
    act(w)
    w = next(k)  # FA = ZD (2^s + BA (c_0 - 2^s))
    rel.term(w, eq, T["FA"])
    rel.term(-w * one, eq, T["ZD"])
    rel.term(-w * (cs[0] - one), eq, T["ZD"], T["BA"])
    for i in range(1, len(_PRODUCTS)):  # F_i = rescale(F_{i-1} (2^s + B_i (c_i - 2^s)))
        w = next(k)
        prev, name = T[_PRODUCTS[i - 1]], _PRODUCTS[i]
        rel.term(w * one, eq, prev)
        rel.term(w * (cs[i] - one), eq, prev, T[_BITS[i]])
        rel.rescaled(w, s, T[name], T["R" + name], eq)
    prev_h: int | None = None  # Horner: X_j = a_{5-j} + rescale(-RD X_{j-1}), X_{-1} = a_6
    for j, name in enumerate(_HORNER):
        w = next(k)
        if prev_h is None:
            rel.term(-w * a[6], eq, T["RD"])
        else:
            rel.term(-w, eq, T["RD"], prev_h)
        rel.rescaled(w, s, T[name], T["R" + name], eq)
        act(w * one * a[5 - j])
        prev_h = T[name]
    w = next(k)  # E = rescale(FD XF)
    rel.term(w, eq, T["FD"], T["XF"])
    rel.rescaled(w, s, T["E"], T["RE"], eq)
    w = next(k)  # 2^(s+1) E + SS = 2 P SS + QP
    rel.term(w * (2 * one), eq, T["E"])
    rel.term(w, eq, T["SS"])
    rel.term(-w * 2, eq, T["P"], T["SS"])
    rel.term(-w, eq, T["QP"])
    w = next(k)  # UP = 2 SS - 1 - QP on real entries
    rel.term(w, eq, T["UP"])
    rel.term(-w * 2, eq, T["SS"])
    rel.term(w, eq, T["QP"])
    act(w)
    w = next(k)  # Y in {0, 2^s}
    rel.term(w * one, eq, T["y"])
    rel.term(-w, eq, T["y"], T["y"])
    if next(k, None) is not None:  # every alpha drawn is used (prover and verifier alike)
        raise AssertionError("xent_output_terms: alpha count out of step with the identities")


def softmax_rows(c, tr: Transcript, g: int) -> Relation:
    """Row maximum, one-hot H and Y, row sums SS: one sumcheck over (t, b, j) (module doc)."""
    tau, nb, s = c.tau, c.arch.nb, c.st.frac_bits
    no = c.arch.nd(c.arch.num_layers)
    classes, bsz = c.arch.dims[-1], c.arch.batch_size
    r_t, r_b = tr.challenge_ext_list("rows.r_t", tau), tr.challenge_ext_list("rows.r_b", nb)
    r_o = tr.challenge_ext_list("rows.r_o", no)
    g1, g2, g3 = tr.challenge_ext_list("rows.gamma", 3)
    n = tau + nb + no
    rel = Relation("softmax_rows", n)
    eqf = rel.add(c.eq(0, r_t + r_b + r_o))
    eqtb = rel.add(c.eq(0, r_t + r_b))
    zall = rel.add(c.zero(0, n))
    i_o = small_mle([1] * classes + [0] * ((1 << no) - classes), r_o)
    inst = [Fp2(int(t < c.st.num_steps)) for t in range(1 << tau)]
    act = small_mle(inst, r_t) if tau else Fp2(1)
    act = act * small_mle([1] * bsz + [0] * ((1 << nb) - bsz), r_b)

    def t(name: str) -> int | None:
        return rel.add(c.wit(name, b=tau, o=tau + nb))

    D, Z, H, Y = t("D"), t(f"Z@{g}"), t("H"), t("y")
    SS, E = t("SS"), t("E")
    rel.term(1, eqf, D)
    rel.term(1, eqf, Z)
    rel.term(-i_o, eqtb, H, Z)
    rel.term(g1, eqtb, H)
    rel.term(-g1 * act, zall)
    rel.term(g2, eqtb, Y)
    rel.term(-g2 * act * (1 << s), zall)
    rel.term(g3, eqf, SS)
    rel.term(-g3 * i_o, eqtb, E)
    return rel
