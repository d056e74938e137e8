"""The relations of one proof unit, each proved by one zero-knowledge sumcheck.

Every relation is an identity over the Boolean hypercube (all steps t of the unit, all tensor
indices); the verifier draws a random point r and the sumcheck proves sum_x eq(r, x) E(x) = 0,
which for a nonzero E fails except with probability (#vars)/p^2 (Schwartz-Zippel over F_p2).
Inner products (matmuls) contract one axis inside the same sumcheck: terms over different
index sets share one domain (t, y) and each term is padded by eq(0, unused y) selectors, so
the claimed sum is the public constant 0 and every committed value leaves the sumcheck as a
masked opening claim (nothing is revealed in the clear). Every sumcheck has a hiding variable
(:mod:`..sumcheck`): each committed factor is masked on its own variables, Wit by the small
block mask M (:mod:`.masking`), a Ligero commitment by its evaluation mask.

Relations per layer l (stacked over t and over the layers of a layer group, see
:func:`.layout.layer_groups`; s = frac_bits, c = MSE constant, lr = learning rate):

* forward:   sum_k A_{l-1}[b,k] W_l[o,k] + 2^s ind(b) b_l[o] - 2^s Z_l[b,o] - RZ_l[b,o] = 0
* activation (l < L): A = Z S;  V = 2 S Z - Z - S;  GZ = GA S;  S (1 - S) = 0
  output (l = L):     c (Z_L - y) - 2^s G - RG = 0 (MSE), or c (P - y) - 2^s G - RG = 0 with
                      P the fixed-point softmax of Z_L (cross-entropy: :mod:`.softmax`)
* weight grad: sum_b GZ_l[b,o] A_{l-1}[b,k] - 2^s GW - RGW = 0;  sum_b GZ_l[b,o] - Gb = 0
* input grad (l >= 2): sum_o GZ_l[b,o] W_l[o,k] - 2^s GA_{l-1}[b,k] - RGA_{l-1} = 0
* update: lr GW - 2^s UW - RUW = 0;  W' = W - UW;  same for the bias
  with weight decay wd / momentum mu (:func:`_update_sgd`): wd W - 2^s DW - RDW = 0;
  mu VW - 2^s MW - RMW = 0;  VW' = MW + GW + DW;  lr VW' - 2^s UW - RUW = 0 (lr (GW + DW)
  without momentum);  W' = W - UW;  same for the bias
* im2col (first Conv2d, :func:`_im2col`): PA(r) = sum_{b, i} eq(r_b, b) Sel(r_p, r_k, i) x(b, i)
  with Sel the public 0/1 patch selection; the conv is then layer 1 over PA's rows (b, oh, ow),
  and layer 2 reads A1 through the Flatten (a relabelling of variables, :meth:`_Ctx.flat`)
* average pooling after the conv's ReLU (:func:`_pool_forward`, :func:`_pool_backward`;
  c = 2^s / k^2): c sum_window A1 - 2^s PL - RPL = 0 (window sums as sums over A1's window
  variables kh, kw); c GPL(pooled(x)) - 2^s GA1(x) - RGA1(x) = 0; layer 2 then reads PL through
  the Flatten and its input gradient is GPL, RGPL
* chain: Theta_out(t) = Theta_in(t+1) inside the unit; Theta_in(0) = B_in; Theta_out(last) = B_out
  (Theta: weights, biases and, with momentum, the momentum buffers, which are 0 before step 0)
* zero padding: every tensor is 0 outside its true shape (and an unused layer slot entirely),
  checked inside the relation that covers the tensor's whole index space (a random combination
  of the tensors of that shape times the public padding indicator); without it a prover could
  hide extra batch rows or hidden units in the padding.

Every value of Wit is range-checked by :mod:`.ranges` (one lookup over Wit itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...fixed.conv import gather_index
from ...fixed.softmax import SOFTMAX_NONNEGATIVE, SOFTMAX_TENSORS
from ..extension import Fp2
from ..multilinear import eq_eval
from ..sumcheck import SumcheckSpec, Term
from ..transcript import Transcript
from .layout import Layout, TensorSlot, bits_of
from .placement import Free, Var, small_mle
from .statement import TrainingStatement

__all__ = [
    "Committed",
    "PubEq",
    "PubSmall",
    "PubPadBox",
    "Relation",
    "relation_builders",
    "tensor_class",
]


@dataclass(frozen=True)
class Committed:
    """A committed tensor placed on the sumcheck; ``com`` in wit | bin | bout | batch."""

    com: str
    slot: str
    assign: tuple[Var, ...]
    mask_index: int | None = None  # the commitment's mask; None: the next Wit claim


@dataclass(frozen=True)
class PubEq:
    """eq(point, y[vars]) (public; O(len) to evaluate)."""

    vars: tuple[int, ...]
    point: tuple[Fp2, ...]


@dataclass(frozen=True)
class PubSmall:
    """A small public table over y[vars] (instance selectors, batch indicator)."""

    vars: tuple[int, ...]
    values: tuple[Fp2, ...]


@dataclass(frozen=True)
class PubPadBox:
    """1 - [y in the tensor's true box]: 0 on real entries, 1 on padding (and unused layers).

    ``axes`` are (first sumcheck variable, bits) of each element axis and ``sizes`` the true
    lengths of those axes, one tuple per layer of a stack (layers of one group share their
    padded widths, not their true ones); ``layer`` is (first variable, bits) of the stack's
    layer axis, or None for a single tensor (one tuple of sizes).
    """

    axes: tuple[tuple[int, int], ...]
    sizes: tuple[tuple[int, ...], ...]
    layer: tuple[int, int] | None = None


def _ind(bits: int, size: int) -> list[int]:
    return [1] * size + [0] * ((1 << bits) - size)


Factor = Committed | PubEq | PubSmall | PubPadBox


@dataclass
class Relation:
    name: str
    num_vars: int
    factors: list[Factor] = field(default_factory=list)
    terms: list[tuple[Fp2, tuple[int, ...]]] = field(default_factory=list)
    claimed: Fp2 = field(default_factory=lambda: Fp2(0))  # public claimed sum (0 but global)

    def add(self, f: Factor | None) -> int | None:
        if f is None:
            return None
        self.factors.append(f)
        return len(self.factors) - 1

    def term(self, coeff: Fp2 | int, *idx: int | None) -> None:
        self.terms.append((Fp2.lift(coeff), tuple(i for i in idx if i is not None)))

    def rescaled(
        self, coeff: Fp2 | int, s: int, q: int | None, r: int | None, *f: int | None
    ) -> None:
        """Terms -coeff (2^s q + r) prod(f): minus the rescaled value (raw = 2^s q + r) of every
        fixed-point rescale, whose raw side the caller adds."""
        self.term(Fp2.lift(coeff) * -(1 << s), *f, q)
        self.term(-Fp2.lift(coeff), *f, r)

    def spec(self) -> SumcheckSpec:
        """A zk sumcheck with a hiding variable in front of the relation's ``num_vars``."""
        masked = tuple(isinstance(f, Committed) for f in self.factors)
        terms = tuple(Term(c, f) for c, f in self.terms)
        return SumcheckSpec(self.num_vars + 1, len(self.factors), terms, True, masked, (), True)


def public_value(f: Factor, point: Sequence[Fp2]) -> Fp2:
    """The verifier's own evaluation of a public factor at the sumcheck's final point."""
    if isinstance(f, PubEq):
        return eq_eval(list(f.point), [point[i] for i in f.vars])
    if isinstance(f, PubSmall):
        return small_mle(list(f.values), [point[i] for i in f.vars])
    if isinstance(f, PubPadBox):
        return 1 - _box(f, point)
    raise TypeError(f"not a public factor: {f!r}")


def _box(f: PubPadBox, point: Sequence[Fp2]) -> Fp2:
    """[inside the true box of the layer at ``point``'s layer coordinates] (MLE)."""
    total = Fp2(0)
    for pos, sizes in enumerate(f.sizes):
        inside = Fp2(1)
        for (start, bits), size in zip(f.axes, sizes, strict=True):
            inside = inside * small_mle(_ind(bits, size), list(point[start : start + bits]))
        if f.layer is not None:
            start, bits = f.layer
            inside = inside * eq_eval(list(point[start : start + bits]), _bits(pos, bits))
        total = total + inside
    return total


def tensor_class(name: str) -> str:
    """Range class of a Wit tensor: remainder | sign | vwit | signed."""
    stem = name.rstrip("0123456789")
    if name in SOFTMAX_NONNEGATIVE:  # proved >= 0 (value in [0, 2^Q)) like V
        return "vwit"
    if name.startswith("R"):
        return "remainder"
    if stem == "S":
        return "sign"
    if stem == "V":
        return "vwit"
    return "signed"


class _Ctx:
    def __init__(self, layout: Layout, stmt: TrainingStatement) -> None:
        self.lay, self.st, self.arch = layout, stmt, layout.arch
        self.tau = layout.arch.tau

    def wit(self, name: str, **axes: int | Sequence[Fp2]) -> Committed:
        """Place Wit tensor (or ``kind@group`` stack) ``name``: axis=start var or a bound point."""
        slot: TensorSlot = self.lay.slot(name)
        assign: list[Var] = []
        for ax, bits in slot.axes:
            v = axes.get(ax, 0 if ax == "t" else None)
            if v is None:
                raise KeyError(f"axis {ax} of {name} not placed")
            if isinstance(v, int):
                assign += [Free(v + i) for i in range(bits)]
            else:
                assign += list(v)
        return Committed("wit", name, tuple(assign))

    @staticmethod
    def eq(start: int, point: Sequence[Fp2]) -> PubEq | None:
        return PubEq(tuple(range(start, start + len(point))), tuple(point)) if point else None

    @staticmethod
    def zero(start: int, stop: int) -> PubEq | None:
        return (
            PubEq(tuple(range(start, stop)), (Fp2(0),) * (stop - start)) if stop > start else None
        )

    @staticmethod
    def select(start: int, r_l: Sequence[Fp2], positions: Sequence[int]) -> PubSmall | None:
        """eq(r_l, l) restricted to the layer slots ``positions`` (None: no layer variables)."""
        lam = len(r_l)
        if lam == 0:
            return None
        keep = set(positions)
        vals = tuple(
            eq_eval(list(r_l), _bits(p, lam)) if p in keep else Fp2(0) for p in range(1 << lam)
        )
        return PubSmall(tuple(range(start, start + lam)), vals)

    def pad(self, name: str, **starts: int) -> PubPadBox:
        """Padding indicator of Wit slot ``name`` placed with axis -> first free variable."""
        slot = self.lay.slot(name)
        axes = tuple((starts[ax], bits) for ax, bits in slot.axes if ax not in ("t", "l"))
        if "@" not in name:
            return PubPadBox(axes, (self.lay.wit[name].sizes,))
        kind, g = name.split("@")
        from .layout import layer_name

        sizes = tuple(self.lay.wit[layer_name(kind, i)].sizes for i in self.lay.groups[int(g)])
        lam = sum(b for a, b in slot.axes if a == "l")
        return PubPadBox(axes, sizes, (starts["l"], lam) if lam else None)

    def padded(self, rel: Relation, tr: Transcript, eq: int | None, names: Sequence[str],
               **starts: int) -> None:
        """Terms alpha_i eq pad_i T_i: each tensor is zero on its padding (fresh alphas)."""
        names = [n for n in names if n in self.lay.stacks or n in self.lay.wit]
        alphas = tr.challenge_ext_list(f"{rel.name}.pad", len(names))
        pads: dict[PubPadBox, int | None] = {}
        for a, name in zip(alphas, names, strict=True):
            box = self.pad(name, **starts)
            if box not in pads:
                pads[box] = rel.add(box)
            axes = {k: v for k, v in starts.items() if k in {ax for ax, _ in self.lay.slot(name).axes}}
            rel.term(a, eq, pads[box], rel.add(self.wit(name, **axes)))

    def stack(self, kind: str, g: int) -> str:
        """Name of the stacked slot of ``kind`` in group ``g`` (the output gradient is global)."""
        if kind == "GZ" and self.arch.num_layers in self.lay.groups[g]:
            return "G"
        return f"{kind}@{g}"

    def act(self, layer: int) -> str:
        """Layer ``layer``'s activation; layer 0's is the network's input: the batch x, or XS
        when the step scales it."""
        if layer == 0:
            return "XS" if self.arch.scaled else "x"
        return f"A{layer}"

    def layer_input(self, i: int, b: int | Sequence[Fp2], k: int | Sequence[Fp2]) -> Committed:
        """Layer i's input matrix [b, k] placed: PA for a conv layer 1, A1 through the Flatten
        for layer 2 after a conv, else the previous activation (b, k: start var or point)."""
        if self.arch.conv is not None and i == 1:
            return self.wit("PA", b=b, o=k)
        if self.arch.conv is not None and i == 2:
            return self.flat("PL" if self.arch.pool else "A1", b, k)
        return self.wit(self.act(i - 1), b=b, o=k)

    def flat(self, name: str, b: int | Sequence[Fp2], k: int | Sequence[Fp2]) -> Committed:
        """A conv-shaped tensor (rows (b, p), column f) seen as torch's Flatten (b, (f, p)):
        with H' W' = 2^m its row bits are (b, p) and the flat column bits (f, p), so the
        Flatten is a relabelling of variables (no relation, nothing to prove). With an average
        pooling the Flatten reads the pooled tensors (rows (b, ph, pw), H'' W'' = 2^m)."""
        nb, nf = self.arch.nb, self.arch.nd(1)
        m = (self.arch.prows if self.arch.pool else self.arch.nrows(1)) - nb

        def spec(v: int | Sequence[Fp2], bits: int) -> list[Var]:
            return [Free(v + j) for j in range(bits)] if isinstance(v, int) else list(v)

        bv, kv = spec(b, nb), spec(k, nf + m)
        assign = [Free(j) for j in range(self.tau)] + bv + kv[nf:] + kv[:nf]
        return Committed("wit", name, tuple(assign))

    def nb(self, g: int) -> int:
        """Row bits of group g's activations (B, or B H' W' for the conv layer)."""
        return self.arch.nrows(self.lay.groups[g][0])

    def group(self, g: int) -> tuple[tuple[int, ...], int, int, int, int]:
        """(layers, layer vars lam, fan-in bits K, width bits no, first var y after t and l)."""
        layers, lam = self.lay.groups[g], self.lay.group_bits(g)
        i0 = layers[0]
        return layers, lam, self.arch.nk(i0), self.arch.nd(i0), self.tau + lam


def _label(layers: Sequence[int]) -> str:
    return str(layers[0]) if len(layers) == 1 else ",".join(map(str, layers))


def _forward(c: _Ctx, tr: Transcript, g: int) -> Relation:
    layers, lam, K, no, y = c.group(g)
    tau, nb, s = c.tau, c.nb(g), c.st.frac_bits
    r_t, r_l = tr.challenge_ext_list("fwd.r_t", tau), tr.challenge_ext_list("fwd.r_l", lam)
    r_b, r_o = tr.challenge_ext_list("fwd.r_b", nb), tr.challenge_ext_list("fwd.r_o", no)
    n = y + max(K, nb + no)
    rel = Relation(f"forward{_label(layers)}", n)
    et, el = rel.add(c.eq(0, r_t)), rel.add(c.eq(tau, r_l))
    w = rel.add(c.wit(c.stack("W", g), o=r_o, k=y, l=tau))
    sk = rel.add(c.zero(y + K, n))
    for pos, i in enumerate(layers):
        sel = rel.add(c.select(tau, r_l, [pos]))
        a = rel.add(c.layer_input(i, b=r_b, k=y))
        rel.term(1, et, sel, a, w, sk)
    ebo = rel.add(c.eq(y, r_b + r_o))
    z = rel.add(c.wit(c.stack("Z", g), b=y, o=y + nb, l=tau))
    rz = rel.add(c.wit(c.stack("RZ", g), b=y, o=y + nb, l=tau))
    sbo = rel.add(c.zero(y + nb + no, n))
    eo = rel.add(c.eq(y, r_o))
    bias = rel.add(c.wit(c.stack("b", g), o=y, l=tau))
    so = rel.add(c.zero(y + no, n))
    bsz = c.arch.rows(layers[0])
    ind = small_mle([1] * bsz + [0] * ((1 << nb) - bsz), r_b)
    rel.rescaled(1, s, z, rz, et, el, ebo, sbo)
    rel.term(ind * (1 << s), et, el, eo, bias, so)
    return rel


def _elementwise(c: _Ctx, tr: Transcript, g: int) -> Relation:
    layers, lam, _, no, y = c.group(g)
    tau, nb, s = c.tau, c.nb(g), c.st.frac_bits
    n = y + nb + no
    r = tr.challenge_ext_list("elem.r", n)
    a1, a2 = tr.challenge_ext_list("elem.alpha", 2)
    rel = Relation(f"elementwise{_label(layers)}", n)
    eq = rel.add(c.eq(0, r))

    def t(name: str) -> int | None:
        return rel.add(c.wit(name, b=y, o=y + nb, l=tau))

    if c.arch.num_layers not in layers:
        A, Z, S, V, GZ, GA = (t(c.stack(k, g)) for k in ("A", "Z", "S", "V", "GZ", "GA"))
        a3 = tr.challenge_ext("elem.alpha_sign")
        rel.term(1, eq, A)
        rel.term(-1, eq, Z, S)
        rel.term(a1, eq, V)
        rel.term(a1 * -2, eq, S, Z)
        rel.term(a1, eq, Z)
        rel.term(a1, eq, S)
        rel.term(a2, eq, GZ)
        rel.term(-a2, eq, GA, S)
        rel.term(a3, eq, S)  # S (1 - S) = 0: the sign is a bit
        rel.term(-a3, eq, S, S)
        kinds = ("A", "Z", "S", "V", "GZ", "GA", "RGA", "RZ")
        c.padded(rel, tr, eq, [f"{k}@{g}" for k in kinds], b=y, o=y + nb, l=tau)
    elif c.st.loss == "xent":  # the softmax identities (.softmax) replace c (Z_L - y)
        from .softmax import xent_output_terms

        xent_output_terms(c, tr, rel, t, eq, g, y)
        names = [f"Z@{g}", f"RZ@{g}", "y", "G", "RG", *SOFTMAX_TENSORS]
        c.padded(rel, tr, eq, names, b=y, o=y + nb, l=tau)
    else:
        Z, Y, G, RG = t(c.stack("Z", g)), t("y"), t("G"), t("RG")
        rel.term(c.st.mse_const, eq, Z)
        rel.term(-c.st.mse_const, eq, Y)
        rel.rescaled(1, s, G, RG, eq)
        c.padded(rel, tr, eq, [f"Z@{g}", f"RZ@{g}", "y", "G", "RG"], b=y, o=y + nb, l=tau)
    return rel


def _weight_grad(c: _Ctx, tr: Transcript, g: int) -> Relation:
    layers, lam, K, no, y = c.group(g)
    tau, nb, s = c.tau, c.nb(g), c.st.frac_bits
    r_t, r_l = tr.challenge_ext_list("wgrad.r_t", tau), tr.challenge_ext_list("wgrad.r_l", lam)
    r_o, r_k = tr.challenge_ext_list("wgrad.r_o", no), tr.challenge_ext_list("wgrad.r_k", K)
    gamma = tr.challenge_ext("wgrad.gamma")
    n = y + max(nb, no + K)
    rel = Relation(f"weight_grad{_label(layers)}", n)
    et, el = rel.add(c.eq(0, r_t)), rel.add(c.eq(tau, r_l))
    gz = rel.add(c.wit(c.stack("GZ", g), b=y, o=r_o, l=tau))
    sb = rel.add(c.zero(y + nb, n))
    for pos, i in enumerate(layers):
        sel = rel.add(c.select(tau, r_l, [pos]))
        a = rel.add(c.layer_input(i, b=y, k=r_k))
        rel.term(1, et, sel, gz, a, sb)
    eok = rel.add(c.eq(y, r_o + r_k))
    gw = rel.add(c.wit(c.stack("GW", g), o=y, k=y + no, l=tau))
    rgw = rel.add(c.wit(c.stack("RGW", g), o=y, k=y + no, l=tau))
    sok = rel.add(c.zero(y + no + K, n))
    eo = rel.add(c.eq(y, r_o))
    gb = rel.add(c.wit(c.stack("Gb", g), o=y, l=tau))
    so = rel.add(c.zero(y + no, n))
    rel.rescaled(1, s, gw, rgw, et, el, eok, sok)
    rel.term(gamma, et, el, gz, sb)
    rel.term(-gamma, et, el, eo, gb, so)
    return rel


def _input_grad(c: _Ctx, tr: Transcript, g: int) -> Relation:
    layers, lam, K, no, y = c.group(g)
    tau, nb, s = c.tau, c.nb(g), c.st.frac_bits
    r_t, r_l = tr.challenge_ext_list("igrad.r_t", tau), tr.challenge_ext_list("igrad.r_l", lam)
    r_b, r_k = tr.challenge_ext_list("igrad.r_b", nb), tr.challenge_ext_list("igrad.r_k", K)
    n = y + max(no, nb + K)
    rel = Relation(f"input_grad{_label(layers)}", n)
    et = rel.add(c.eq(0, r_t))
    inner = [pos for pos, i in enumerate(layers) if i >= 2]  # layer 1 has no input gradient
    gz = rel.add(c.wit(c.stack("GZ", g), b=r_b, o=y, l=tau))
    w = rel.add(c.wit(c.stack("W", g), o=y, k=r_k, l=tau))
    so = rel.add(c.zero(y + no, n))
    rel.term(1, et, rel.add(c.select(tau, r_l, inner)), gz, w, so)
    ebk = rel.add(c.eq(y, r_b + r_k))
    sbk = rel.add(c.zero(y + nb + K, n))
    for pos in inner:
        i = layers[pos]
        sel = rel.add(c.select(tau, r_l, [pos]))
        if c.arch.conv is not None and i == 2:  # GA1 has the conv's rows: via the Flatten
            g_, r_ = ("GPL", "RGPL") if c.arch.pool else ("GA1", "RGA1")  # (pooled: its input)
            ga, rga = rel.add(c.flat(g_, y, y + nb)), rel.add(c.flat(r_, y, y + nb))
        else:
            ga = rel.add(c.wit(f"GA{i - 1}", b=y, o=y + nb))
            rga = rel.add(c.wit(f"RGA{i - 1}", b=y, o=y + nb))
        rel.rescaled(1, s, ga, rga, et, sel, ebk, sbk)
    return rel


def _update(c: _Ctx, tr: Transcript, g: int) -> Relation:
    layers, lam, K, no, y = c.group(g)
    tau, s, lr = c.tau, c.st.frac_bits, c.st.lr
    n = y + no + K
    r = tr.challenge_ext_list("update.r", n)
    a1, a2, a3 = tr.challenge_ext_list("update.alpha", 3)
    rel = Relation(f"update{_label(layers)}", n)
    ew = rel.add(c.eq(0, r))
    eb = rel.add(c.eq(0, r[: y + no]))
    sk = rel.add(c.zero(y + no, n))

    def mat(kind: str) -> int | None:
        return rel.add(c.wit(c.stack(kind, g), o=y, k=y + no, l=tau))

    def vec(kind: str) -> int | None:
        return rel.add(c.wit(c.stack(kind, g), o=y, l=tau))

    W, GW, UW, RUW, Wn = (mat(k) for k in ("W", "GW", "UW", "RUW", "Wn"))
    b, bn, Gb, Ub, RUb = (vec(k) for k in ("b", "bn", "Gb", "Ub", "RUb"))
    rel.term(lr, ew, GW)
    rel.rescaled(1, s, UW, RUW, ew)
    rel.term(a1, ew, Wn)
    rel.term(-a1, ew, W)
    rel.term(a1, ew, UW)
    rel.term(a2 * lr, eb, sk, Gb)
    rel.rescaled(a2, s, Ub, RUb, eb, sk)
    rel.term(a3, eb, sk, bn)
    rel.term(-a3, eb, sk, b)
    rel.term(a3, eb, sk, Ub)
    mats = [f"{k}@{g}" for k in ("W", "GW", "RGW", "UW", "RUW", "Wn")]
    c.padded(rel, tr, ew, mats, o=y, k=y + no, l=tau)
    vecs = [f"{k}@{g}" for k in ("b", "Gb", "Ub", "RUb", "bn")]
    c.padded(rel, tr, eb, vecs, o=y, l=tau)  # (bias terms: the zero selector sk is implied)
    return rel


def _update_sgd(c: _Ctx, tr: Transcript, g: int) -> Relation:
    """The update of SGD with weight decay wd and/or momentum mu (public constants), per
    parameter P (W, then b) with gradient G, buffers V (before) and V' (after):

        wd P - 2^s D - RD = 0,   mu V - 2^s M - RM = 0,   V' - M - G - D = 0,
        lr V' - 2^s U - RU = 0 (lr (G + D) without momentum),   P' - P + U = 0

    (D, RD only with weight decay; V, M, RM, V' only with momentum), each identity with its own
    challenge, and every tensor 0 outside its true box. Plain SGD keeps :func:`_update`.
    """
    layers, lam, K, no, y = c.group(g)
    tau, s, lr = c.tau, c.st.frac_bits, c.st.lr
    mu, wd = c.st.momentum, c.st.weight_decay
    n = y + no + K
    r = tr.challenge_ext_list("update.r", n)
    per_param = 2 + (1 if wd else 0) + (2 if mu else 0)
    alphas = iter([Fp2(1), *tr.challenge_ext_list("update.alpha", 2 * per_param - 1)])
    rel = Relation(f"update{_label(layers)}", n)
    ew = rel.add(c.eq(0, r))
    eb = rel.add(c.eq(0, r[: y + no]))
    sk = rel.add(c.zero(y + no, n))

    def mat(kind: str) -> int | None:
        return rel.add(c.wit(c.stack(kind, g), o=y, k=y + no, l=tau))

    def vec(kind: str) -> int | None:
        return rel.add(c.wit(c.stack(kind, g), o=y, l=tau))

    for p, place, sel in (("W", mat, (ew,)), ("b", vec, (eb, sk))):
        P, Pn, U, RU = place(p), place(f"{p}n"), place(f"U{p}"), place(f"RU{p}")
        direction = [place(f"G{p}")]  # the factors whose sum lr multiplies
        if wd:
            a = next(alphas)
            D, RD = place(f"D{p}"), place(f"RD{p}")
            rel.term(a * wd, *sel, P)
            rel.rescaled(a, s, D, RD, *sel)
            direction.append(D)
        if mu:
            a = next(alphas)
            V, M, RM, Vn = place(f"V{p}"), place(f"M{p}"), place(f"RM{p}"), place(f"V{p}n")
            rel.term(a * mu, *sel, V)
            rel.rescaled(a, s, M, RM, *sel)
            a = next(alphas)
            rel.term(a, *sel, Vn)
            for f in (M, *direction):
                rel.term(-a, *sel, f)
            direction = [Vn]
        a = next(alphas)
        for f in direction:
            rel.term(a * lr, *sel, f)
        rel.rescaled(a, s, U, RU, *sel)
        a = next(alphas)
        rel.term(a, *sel, Pn)
        rel.term(-a, *sel, P)
        rel.term(a, *sel, U)
    extra = ("D", "RD", "V", "M", "RM")
    mats = [f"{k}@{g}" for k in ("W", "GW", "RGW", "UW", "RUW", "Wn", *(e + "W" for e in extra),
                                 "VWn")]
    c.padded(rel, tr, ew, mats, o=y, k=y + no, l=tau)
    vecs = [f"{k}@{g}" for k in ("b", "Gb", "Ub", "RUb", "bn", *(e + "b" for e in extra), "Vbn")]
    c.padded(rel, tr, eb, vecs, o=y, l=tau)
    return rel


def _bits(v: int, width: int) -> list[int]:
    return [(v >> (width - 1 - j)) & 1 for j in range(width)]


def _chain(c: _Ctx, tr: Transcript) -> Relation:
    """Wn(t) = W(t + 1) for the unit's real steps; W(0) = B_in; Wn(last) = B_out, for every
    weight block (W|b of each layer group), with B = Theta the chain's boundary commitments.

    The relation runs over (t, Theta's variables). Wit holds each weight block on its own, so a
    block k enters as ``sel_k(high) * Wit_k(t, low)``: its element variables are Theta's low
    variables and ``sel_k`` is the public indicator of its code in the high ones. Summed over the
    blocks this is exactly the Theta-shaped polynomial of the weights before (or after) each step,
    and B enters once, as one factor over Theta's variables.
    """
    tau, nth = c.tau, c.lay.theta_vars
    T, Tr = c.arch.num_instances, c.st.num_steps
    n = tau + nth
    r_t = tr.challenge_ext_list("chain.r_t", tau)
    r_th = tr.challenge_ext_list("chain.r_theta", nth)
    a1, a2 = tr.challenge_ext_list("chain.alpha", 2)
    # SGD momentum buffers are 0 before a run's first step (torch has none yet)
    zero_start = c.st.chain_start and c.st.step_start == 0 and "VW" in c.lay.theta_kinds
    a0 = tr.challenge_ext("chain.alpha_zero") if zero_start else None
    eqs = [eq_eval(r_t, _bits(t, tau)) for t in range(T)]
    e1 = [eqs[t] if t < Tr - 1 else Fp2(0) for t in range(T)]
    e2 = [eqs[t - 1] if 1 <= t <= Tr - 1 else Fp2(0) for t in range(T)]
    d0 = [Fp2(int(t == 0)) for t in range(T)]
    dl = [Fp2(int(t == Tr - 1)) for t in range(T)]
    tv = tuple(range(tau))
    rel = Relation("chain", n)
    f1 = f2 = None
    if Tr > 1:
        f1, f2 = rel.add(PubSmall(tv, tuple(e1))), rel.add(PubSmall(tv, tuple(e2)))
    g0, gl = rel.add(PubSmall(tv, tuple(d0))), rel.add(PubSmall(tv, tuple(dl)))
    for g in range(len(c.lay.groups)):
        for k in c.lay.theta_kinds:
            block = c.lay.theta[f"{k}@{g}"]
            m = block.elem_vars
            # eq(r_theta, x) * sel_k(x_high) = eq(r_high, code) * eq(r_low, x_low) * sel_k(x_high)
            scale = eq_eval(r_th[m:], [int(b) for b in block.code])
            elow = rel.add(c.eq(tau, r_th[:m]))
            sel = rel.add(PubEq(tuple(range(tau + m, n)), tuple(Fp2(b) for b in block.code))
                          if m < nth else None)
            vars_ = tuple(Free(i) for i in range(tau + m))
            w_in = rel.add(Committed("wit", f"{k}@{g}", vars_))
            w_out = rel.add(Committed("wit", f"{k}n@{g}", vars_))
            if Tr > 1:
                rel.term(scale, elow, sel, f1, w_out)
                rel.term(-scale, elow, sel, f2, w_in)
            rel.term(a1 * scale, elow, sel, g0, w_in)
            rel.term(a2 * scale, elow, sel, gl, w_out)
            if a0 is not None and k in ("VW", "Vb"):
                rel.term(a0 * scale, elow, sel, g0, w_in)
    eth = rel.add(c.eq(tau, r_th))
    bfree = tuple(Free(tau + j) for j in range(nth))
    b_in = rel.add(Committed("bin", "THETA", bfree, mask_index=1))
    b_out = rel.add(Committed("bout", "THETA", bfree, mask_index=0))
    rel.term(-a1, eth, g0, b_in)
    rel.term(-a2, eth, gl, b_out)
    return rel


def gather_table(c: _Ctx, r_p: Sequence[Fp2], r_k: Sequence[Fp2]) -> tuple[Fp2, ...]:
    """Sel(r_p, r_k, i) for every flat image index i (padded to 2^bits): the MLE of the public
    0/1 im2col selection at the relation's point, sum over the patch entries (p, j) that copy
    pixel i of eq(r_p, p) eq(r_k, j). O(H' W' C k k) field operations: fine for small images;
    prover and verifier compute it alike."""
    conv = c.arch.conv
    idx = gather_index(conv)
    ep = [eq_eval(list(r_p), _bits(p, len(r_p))) for p in range(idx.shape[0])]
    ek = [eq_eval(list(r_k), _bits(j, len(r_k))) for j in range(idx.shape[1])]
    out = [Fp2(0)] * (1 << bits_of(conv.image))
    for p in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            i = int(idx[p, j])
            if i >= 0:
                out[i] = out[i] + ep[p] * ek[j]
    return tuple(out)


def _im2col(c: _Ctx, tr: Transcript) -> Relation:
    """PA = Gather(x): at a random point (r_t, r_b, r_p, r_k) of PA (rows (b, p = oh W' + ow),
    columns j = (c, kh, kw)),  PA(r) = sum_{b, i} eq(r_b, b) Sel(r_p, r_k, i) x(b, i),  one
    sumcheck over (t, b, i). Sel is 0 for padding columns and at the zero padding of the image, so
    PA is fixed entirely (its padding too) by x, whose own padding the batch relation zeroes."""
    tau, nb = c.tau, c.arch.nb
    nr, nk, nx = c.arch.nrows(1), c.arch.nd(0), bits_of(c.arch.x_width)
    r_t = tr.challenge_ext_list("im2col.r_t", tau)
    r_r = tr.challenge_ext_list("im2col.r_rows", nr)
    r_k = tr.challenge_ext_list("im2col.r_k", nk)
    y = tau
    n = y + max(nb + nx, nr + nk)
    rel = Relation("im2col", n)
    et = rel.add(c.eq(0, r_t))
    eb = rel.add(c.eq(y, r_r[:nb]))
    sel = rel.add(PubSmall(tuple(range(y + nb, y + nb + nx)), gather_table(c, r_r[nb:], r_k)))
    x = rel.add(c.wit(c.act(0), b=y, o=y + nb))
    rel.term(1, et, eb, sel, x, rel.add(c.zero(y + nb + nx, n)))
    epa = rel.add(c.eq(y, r_r + r_k))
    pa = rel.add(c.wit("PA", b=y, o=y + nr))
    rel.term(-1, et, epa, pa, rel.add(c.zero(y + nr + nk, n)))
    return rel


def _input_scale(c: _Ctx, tr: Transcript) -> Relation:
    """XS = rescale(k x), the step's ``x * c`` or ``x / c``: at a random point r of (t, b, i),
    k x(r) - 2^s XS(r) - RXS(r) = 0 (with RXS range-checked as a remainder and XS as a value,
    this is the rescale exactly), and XS, RXS are zero on x's padding. k is derived from the
    statement's op and literal (:attr:`TrainingStatement.input_multiplier`), x is the batch the
    batch commitment binds."""
    tau, nb, nx = c.tau, c.arch.nb, bits_of(c.arch.x_width)
    n = tau + nb + nx
    r = tr.challenge_ext_list("scale.r", n)
    rel = Relation("input_scale", n)
    eq = rel.add(c.eq(0, r))

    def t(name: str) -> int | None:
        return rel.add(c.wit(name, b=tau, o=tau + nb))

    rel.term(c.st.input_multiplier, eq, t("x"))
    rel.rescaled(1, c.st.frac_bits, t("XS"), t("RXS"), eq)
    c.padded(rel, tr, eq, ["XS", "RXS"], b=tau, o=tau + nb)
    return rel


def _pool_vars(c: _Ctx) -> tuple[list[int], list[int], int]:
    """The variables of A1's sumcheck domain (t, rows (b, ph, kh, pw, kw), f) split into the
    pooled ones (t, b, ph, pw, f: the pooled tensors' variables, in their order) and the window
    ones (kh, kw); H' = 2^a, W' = 2^w, k = 2^mu with row index ((b H' + oh) W' + ow), oh = ph k
    + kh, ow = pw k + kw. Returns (pooled vars, window vars, number of variables)."""
    conv, mu, tau = c.arch.conv, c.arch.pool_bits, c.tau
    a, w = conv.out_height.bit_length() - 1, conv.out_width.bit_length() - 1
    nr, nf = c.arch.nrows(1), c.arch.nd(1)
    b0 = tau + nr - a - w  # first variable of oh
    rows_pooled = list(range(tau, b0)) + list(range(b0, b0 + a - mu)) + list(
        range(b0 + a, b0 + a + w - mu))
    window = list(range(b0 + a - mu, b0 + a)) + list(range(b0 + a + w - mu, b0 + a + w))
    pooled = list(range(tau)) + rows_pooled + list(range(tau + nr, tau + nr + nf))
    return pooled, window, tau + nr + nf


def _pool_forward(c: _Ctx, tr: Transcript) -> Relation:
    """PL = rescale(c sum_window A1), c = 2^s / k^2 (the average pooling after the conv's ReLU):
    at a random point r of the pooled domain (t, b, ph, pw, f), one sumcheck over A1's domain,

        sum_x eq(r, pooled(x)) (c A1(x) - eq(0, window(x)) (2^s PL + RPL)(pooled(x))) = 0,

    i.e. c sum_window A1 - 2^s PL - RPL = 0 at r. RPL is range-checked as a remainder and PL as
    a value, so PL is the rounded window mean exactly; on padding (A1 = 0 there) the identity
    forces PL = RPL = 0, so they need no padding term."""
    pooled, window, n = _pool_vars(c)
    r = tr.challenge_ext_list("pool.r", len(pooled))
    rel = Relation("pool_forward", n)
    eq = rel.add(PubEq(tuple(pooled), tuple(r)))
    a1 = rel.add(Committed("wit", "A1", tuple(Free(i) for i in range(n))))
    on = tuple(Free(i) for i in pooled)
    zw = rel.add(PubEq(tuple(window), (Fp2(0),) * len(window)))
    pl = rel.add(Committed("wit", "PL", on))
    rpl = rel.add(Committed("wit", "RPL", on))
    rel.term(c.st.pool_multiplier, eq, a1)
    rel.rescaled(1, c.st.frac_bits, pl, rpl, eq, zw)
    return rel


def _pool_backward(c: _Ctx, tr: Transcript) -> Relation:
    """GA1 = spread(rescale(c GPL)): at a random point r of A1's domain,

        sum_x eq(r, x) (c GPL(pooled(x)) - 2^s GA1(x) - RGA1(x)) = 0,

    so every entry of a window gets the pooled gradient's rescale (RGA1 range-checked as a
    remainder, GA1 as a value); GA1 and RGA1 are zero on their padding by the elementwise
    relation, GPL and RGPL by the input-gradient relation of layer 2 that defines them."""
    pooled, _, n = _pool_vars(c)
    r = tr.challenge_ext_list("pool_back.r", n)
    rel = Relation("pool_backward", n)
    eq = rel.add(c.eq(0, r))
    full = tuple(Free(i) for i in range(n))
    gpl = rel.add(Committed("wit", "GPL", tuple(Free(i) for i in pooled)))
    ga = rel.add(Committed("wit", "GA1", full))
    rga = rel.add(Committed("wit", "RGA1", full))
    rel.term(c.st.pool_multiplier, eq, gpl)
    rel.rescaled(1, c.st.frac_bits, ga, rga, eq)
    return rel


Builder = Callable[[Transcript], Relation]


def relation_builders(layout: Layout, stmt: TrainingStatement) -> list[Builder]:
    """The unit's relations in transcript order; prover and verifier call the same list."""
    c = _Ctx(layout, stmt)
    out: list[Builder] = []
    if layout.arch.scaled:
        out.append(lambda tr: _input_scale(c, tr))
    if layout.arch.conv is not None:
        out.append(lambda tr: _im2col(c, tr))
    if layout.arch.pool:  # (the pooling relations read A1 and GA1 of the conv layer)
        out.append(lambda tr: _pool_forward(c, tr))
        out.append(lambda tr: _pool_backward(c, tr))
    for g, layers in enumerate(layout.groups):
        out.append(lambda tr, g=g: _forward(c, tr, g))
        out.append(lambda tr, g=g: _elementwise(c, tr, g))
        if stmt.loss == "xent" and layout.arch.num_layers in layers:
            from .softmax import softmax_rows  # softmax.py builds on this module

            out.append(lambda tr, g=g: softmax_rows(c, tr, g))
        out.append(lambda tr, g=g: _weight_grad(c, tr, g))
        if max(layers) >= 2:
            out.append(lambda tr, g=g: _input_grad(c, tr, g))
        if stmt.momentum or stmt.weight_decay:
            out.append(lambda tr, g=g: _update_sgd(c, tr, g))
        else:
            out.append(lambda tr, g=g: _update(c, tr, g))
    out.append(lambda tr: _chain(c, tr))
    from .batch import batch_builders  # batch.py builds on this module

    out.extend(batch_builders(layout))  # Wit's x, y = the statement's batch commitment
    return out


def count_wit_claims(layout: Layout, stmt: TrainingStatement) -> int:
    """Number of Wit opening points (fixed by the architecture, not by challenges)."""
    tr = Transcript(b"lightning-zk/training/count")
    return sum(
        1
        for build in relation_builders(layout, stmt)
        for f in build(tr).factors
        if isinstance(f, Committed) and f.com == "wit"
    )
