"""Where each witness tensor lives inside the committed multilinear polynomials.

Every tensor of a proof unit is stacked over the unit's T = 2^tau steps (instance variable t,
the first element variable; T = 1 for a single step: no instance variable, no zero instance)
and zero-padded to power-of-two axes. Tensors share one commitment ``Wit`` of 2^n entries: a
tensor of 2^m entries gets a code c of n - m bits and element e sits at index
(e << (n - m)) | c, i.e. *element bits first, code bits last*. Codes come from an aligned buddy
allocation, bit-reversed, which makes them suffix-free (no two tensors overlap). The space no
tensor occupies is zero by definition: :meth:`Layout.wit_support` tells the commitment which
columns can hold data, so unallocated space is never committed (docs/zk_training.md).

Layers of one *layer group* (same padded shape and role) are stacked too: each tensor kind of
a group is one block whose last element variables are the layer index l, so a relation proves
all the group's layers in one sumcheck (FAC4DNN).

The weights of all layers form the parameter layout Theta, which the boundary commitments B
hold; inside Wit the weight blocks (before and after each step) are allocated like any other.
With SGD momentum, Theta holds the momentum buffers too (kinds ``VW``, ``Vb``): they are state
that the next step reads, so the chain binds them like the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...fixed.conv import ConvSpec
from ...fixed.softmax import SOFTMAX_TENSORS
from ..ligero import ColumnSupport

__all__ = [
    "Arch",
    "TensorSlot",
    "Layout",
    "allocate",
    "build_layout",
    "bits_of",
    "code_int",
    "instances_for",
    "layer_groups",
    "split_name",
]


def code_int(code: tuple[int, ...] | list[int]) -> int:
    """A code's bits (most significant first) as the integer offset of its block's entry 0."""
    out = 0
    for bit in code:
        out = (out << 1) | bit
    return out


def instances_for(steps: int) -> int:
    """T for a unit of ``steps`` steps: the next power of two (1 for a single step)."""
    if steps < 1:
        raise ValueError(f"a proof unit has >= 1 step, got {steps}")
    return 1 << (steps - 1).bit_length()


def bits_of(n: int) -> int:
    """Number of variables of an axis of length n (padded to a power of two, >= 1)."""
    return max(1, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class Arch:
    """Public architecture of a proof unit: layer widths, true batch size, steps stacked."""

    dims: tuple[int, ...]
    batch_size: int
    num_instances: int  # T, a power of two (1: a single step)
    conv: ConvSpec | None = None  # a first Conv2d: layer 1 over its patch rows (b, oh, ow)
    scaled: bool = False  # the step scales its input: XS = rescale(k x) is the network's input

    def rows(self, layer: int) -> int:
        """Rows of layer ``layer``'s activations: B, or B H' W' for the conv layer."""
        return self.batch_size * (self.conv.positions if self.conv and layer == 1 else 1)

    def nrows(self, layer: int) -> int:
        """Bits of the row axis (b, then oh ow for the conv: H', W' are powers of two)."""
        return bits_of(self.rows(layer))

    def fan(self, layer: int) -> int:
        """Fan-in of layer ``layer``'s weight: the Flatten after the conv (or after its
        pooling) multiplies it."""
        return self.dims[layer - 1] * (self.conv.flat_positions if self.conv and layer == 2
                                       else 1)

    @property
    def pool(self) -> int:
        """The average pooling kernel after the conv (0: none)."""
        return self.conv.pool if self.conv is not None else 0

    @property
    def pool_bits(self) -> int:
        """log2 k of the pooling kernel (0: none)."""
        return self.pool.bit_length() - 1 if self.pool else 0

    @property
    def prows(self) -> int:
        """Row bits of the pooled tensors PL RPL GPL RGPL (b, ph, pw): the conv rows' bits less
        the 2 log2 k window bits."""
        return self.nrows(1) - 2 * self.pool_bits

    def nk(self, layer: int) -> int:
        return bits_of(self.fan(layer))

    @property
    def x_width(self) -> int:
        """Columns of the batch input x: d0, or the flattened image C H W."""
        return self.conv.image if self.conv else self.dims[0]

    @property
    def num_layers(self) -> int:
        return len(self.dims) - 1

    @property
    def tau(self) -> int:
        return self.num_instances.bit_length() - 1

    @property
    def nb(self) -> int:
        return bits_of(self.batch_size)

    def nd(self, layer: int) -> int:
        return bits_of(self.dims[layer])


@dataclass(frozen=True)
class TensorSlot:
    """A tensor's element axes [(name, bits)] and its code bits inside a commitment."""

    axes: tuple[tuple[str, int], ...]
    code: tuple[int, ...]
    sizes: tuple[int, ...] = ()  # true axis lengths after t (padding beyond them must be 0)

    @property
    def elem_vars(self) -> int:
        return sum(b for _, b in self.axes)

    @property
    def code_int(self) -> int:
        return code_int(self.code)


def allocate(sizes: dict[str, int]) -> tuple[int, dict[str, tuple[int, ...]]]:
    """Suffix-free codes for items of 2^m entries; returns (total vars n, name -> code bits)."""
    total = sum(1 << m for m in sizes.values())
    n = max(1, (total - 1).bit_length())
    offset, codes = 0, {}
    for name in sorted(sizes, key=lambda k: (-sizes[k], k)):
        m = sizes[name]
        length = n - m
        top = offset >> m  # aligned: offset is a multiple of 2^m (sizes descending)
        bits = [(top >> (length - 1 - j)) & 1 for j in range(length)]
        codes[name] = tuple(reversed(bits))
        offset += 1 << m
    return n, codes


_OPT_W = ("DW", "RDW", "VW", "MW", "RMW")  # momentum / weight decay tensors shaped like W
_OPT_B = ("Db", "RDb", "Vb", "Mb", "RMb")  # ... like b
STATE_KINDS = ("W", "b", "VW", "Vb")  # kinds of state a step reads and writes (Theta, chain)


def _sizes(name: str, arch: Arch) -> tuple[int, ...]:
    """True axis lengths of a tape tensor (same naming rules as :func:`_axes`)."""
    L, d = arch.num_layers, arch.dims
    stem = name[:-1] if name[-1] == "n" and name[0] in "WbV" else name
    digits = "".join(c for c in stem if c.isdigit())
    layer = int(digits) if digits else L
    kind = stem[: len(stem) - len(digits)]
    if name in ("x", "XS", "RXS"):
        return (arch.batch_size, arch.x_width)
    if name == "PA":
        return (arch.rows(1), d[0])
    if name in POOL_TENSORS:
        return (arch.batch_size * arch.conv.flat_positions, d[1])
    if name in ("y", "G", "RG"):
        return (arch.batch_size, d[L])
    if kind in ("W", "GW", "RGW", "UW", "RUW", *_OPT_W):
        return (d[layer], arch.fan(layer))
    if kind in ("b", "Gb", "Ub", "RUb", *_OPT_B):
        return (d[layer],)
    return (arch.rows(layer), d[layer])


def _axes(name: str, arch: Arch) -> tuple[tuple[str, int], ...]:
    L = arch.num_layers
    stem = name[:-1] if name[-1] == "n" and name[0] in "WbV" else name
    digits = "".join(c for c in stem if c.isdigit())
    layer = int(digits) if digits else L
    kind = stem[: len(stem) - len(digits)]
    if name in ("x", "XS", "RXS"):
        return (("b", arch.nb), ("o", bits_of(arch.x_width)))
    if name == "PA":
        return (("b", arch.nrows(1)), ("o", arch.nd(0)))
    if name in POOL_TENSORS:
        return (("b", arch.prows), ("o", arch.nd(1)))
    if name in ("y", "G", "RG"):
        return (("b", arch.nb), ("o", arch.nd(L)))
    if kind in ("W", "GW", "RGW", "UW", "RUW", *_OPT_W):
        return (("o", arch.nd(layer)), ("k", arch.nk(layer)))
    if kind in ("b", "Gb", "Ub", "RUb", *_OPT_B):
        return (("o", arch.nd(layer)),)
    return (("b", arch.nrows(layer)), ("o", arch.nd(layer)))


# the average pooling after a first conv: pooled activations, their gradient, both remainders
POOL_TENSORS = ("PL", "RPL", "GPL", "RGPL")
# tensors outside any layer group: the batch, the output gradient, the (B, d_L) softmax
# witness of a cross-entropy unit, the scaled input, the patch matrix of a first conv layer and
# its pooling tensors
GLOBAL_TENSORS = ("x", "y", "G", "RG", "XS", "RXS", "PA", *POOL_TENSORS, *SOFTMAX_TENSORS)


def split_name(name: str) -> tuple[str, int | None]:
    """Tape tensor name -> (kind, layer): ``"RGW3"`` -> ("RGW", 3), ``"W2n"`` -> ("Wn", 2)."""
    if name in GLOBAL_TENSORS:
        return name, None
    if name[-1] == "n" and name[0] in "WbV":  # state after the step: W1n, b1n, VW1n, Vb1n
        stem = name[:-1].rstrip("0123456789")
        return stem + "n", int(name[len(stem) : -1])
    stem = name.rstrip("0123456789")
    return stem, int(name[len(stem) :])


def layer_name(kind: str, layer: int) -> str:
    """Inverse of :func:`split_name` for per-layer tensors."""
    return f"{kind[:-1]}{layer}n" if kind in ("Wn", "bn", "VWn", "Vbn") else f"{kind}{layer}"


def layer_groups(arch: Arch) -> tuple[tuple[int, ...], ...]:
    """Layers stacked into the same relations (FAC4DNN): equal padded (in, out) widths and role.

    The output layer (its loss gradient differs) is always alone; the others group by
    (bits of fan-in, bits of width), in order of first appearance. Layers of one group need not
    be consecutive.
    """
    groups: dict[tuple[int, int, bool, int], list[int]] = {}
    L = arch.num_layers
    for i in range(1, L + 1):  # (a conv layer's rows differ: it is alone too)
        groups.setdefault((arch.nk(i), arch.nd(i), i == L, arch.nrows(i)), []).append(i)
    return tuple(tuple(g) for g in groups.values())


def _lbits(pos: int, lam: int) -> tuple[int, ...]:
    return tuple((pos >> (lam - 1 - j)) & 1 for j in range(lam))


@dataclass
class Layout:
    """Slots of every tensor in Wit (stacked, with leading t) and in the boundary B.

    ``stacks`` holds, per layer group g and tensor kind k, the slot ``"k@g"`` of all the group's
    layers at once (axes t, element axes, then the layer axis l); the per-layer slots in ``wit``
    are its sub-slots with l fixed. ``unused`` are the sub-slots of padding layers (a group of
    3 layers has 4 layer slots), which the padding terms of the elementwise and update relations
    force to zero.
    """

    arch: Arch
    wit_vars: int
    theta_vars: int
    wit: dict[str, TensorSlot]
    theta: dict[str, TensorSlot]  # inside B: per layer, per (group, W|b) stack "W@g", "THETA"
    groups: tuple[tuple[int, ...], ...] = ()
    stacks: dict[str, TensorSlot] = field(default_factory=dict)
    unused: tuple[TensorSlot, ...] = ()

    @property
    def b_vars(self) -> int:
        return self.theta_vars

    def leaf_blocks(self) -> list[tuple[str, TensorSlot]]:
        """The tensors that hold data (per-layer slots of real layers, global tensors): every
        allocated entry lies in exactly one."""
        return list(self.wit.items())

    def wit_support(self) -> ColumnSupport:
        """Where Wit can be nonzero (its public column support, :class:`ColumnSupport`)."""
        return ColumnSupport(tuple(sorted((s.code_int, len(s.code)) for _, s in self.leaf_blocks())))

    def theta_support(self) -> ColumnSupport:
        """Where a boundary commitment B (Theta) can be nonzero."""
        return ColumnSupport(tuple(sorted(
            (s.code_int, len(s.code)) for _, s in self.theta_leaves())))

    @property
    def theta_kinds(self) -> tuple[str, ...]:
        """The state kinds Theta holds: W, b (and VW, Vb with SGD momentum)."""
        return tuple(k for k in STATE_KINDS if f"{k}@0" in self.theta)

    def theta_leaves(self) -> list[tuple[str, TensorSlot]]:
        """The per-layer weight slots of B (every entry of Theta that can be nonzero lies in one)."""
        return [(n, s) for n, s in self.theta.items() if "@" not in n and n != "THETA"]

    def group_bits(self, g: int) -> int:
        """Number of layer variables of group ``g``."""
        return (len(self.groups[g]) - 1).bit_length()

    def slot(self, name: str) -> TensorSlot:
        """A per-layer/global slot or a stacked ``kind@group`` slot of Wit."""
        return self.stacks[name] if "@" in name else self.wit[name]


def theta_names(num_layers: int, momentum: bool = False) -> list[str]:
    """The state tensors of Theta: weights and biases (and momentum buffers)."""
    kinds = STATE_KINDS if momentum else STATE_KINDS[:2]
    return [f"{k}{i}" for i in range(1, num_layers + 1) for k in kinds]


def _group_kinds(names: list[str], layers: tuple[int, ...]) -> list[str]:
    """Tensor kinds that every layer of the group has (same role, hence the same kinds)."""
    first = [split_name(n)[0] for n in names if split_name(n)[1] == layers[0]]
    return sorted(set(first))


def build_layout(arch: Arch, names: list[str]) -> Layout:
    """Allocate Theta (the boundary commitments' layout), then Wit: one block per (layer group,
    tensor kind), the weights before (W, b) and after (Wn, bn) included, and the global tensors.

    Each (group, kind) gets one aligned block whose last element variables are the layer index
    inside the group, so a group's tensors of one kind form one multilinear polynomial. Wit has
    no Theta super-block: the chain relation compares Wit's weight blocks with B block by block,
    so Wit's size is the sum of its blocks' (rounded once), not of two rounded Theta copies.
    """
    tau, L = arch.tau, arch.num_layers
    groups = layer_groups(arch)
    lam = [(len(g) - 1).bit_length() for g in groups]
    rep = {gi: g[0] for gi, g in enumerate(groups)}

    def elem_axes(kind: str, gi: int) -> tuple[tuple[str, int], ...]:
        return _axes(layer_name(kind, rep[gi]), arch)

    def block_bits(kind: str, gi: int) -> int:
        return sum(b for _, b in elem_axes(kind, gi)) + lam[gi]

    # Theta: one block per (group, state kind): W|b, and VW|Vb with momentum
    th_kinds = tuple(k for k in STATE_KINDS if f"{k}1" in names)
    th_blocks = {f"{k}@{gi}": block_bits(k, gi) for gi in range(len(groups)) for k in th_kinds}
    n_theta, th_codes = allocate(th_blocks)
    # Wit: one block per (group, kind), the global tensors
    kinds = {gi: _group_kinds(names, g) for gi, g in enumerate(groups)}
    sizes = {f"{k}@{gi}": tau + block_bits(k, gi) for gi, ks in kinds.items() for k in ks}
    glob = [n for n in names if split_name(n)[1] is None]
    sizes.update({n: tau + sum(b for _, b in _axes(n, arch)) for n in glob})
    n_wit, codes = allocate(sizes)

    wit = {n: TensorSlot((("t", tau), *_axes(n, arch)), codes[n], _sizes(n, arch)) for n in glob}
    stacks: dict[str, TensorSlot] = {}
    unused: list[TensorSlot] = []
    for gi, g in enumerate(groups):
        for k in kinds[gi]:
            axes = (("t", tau), *elem_axes(k, gi))
            code = codes[f"{k}@{gi}"]
            layer_axis = (("l", lam[gi]),) if lam[gi] else ()
            stacks[f"{k}@{gi}"] = TensorSlot(axes + layer_axis, code)
            for pos in range(1 << lam[gi]):
                sub = _lbits(pos, lam[gi]) + code
                if pos < len(g):
                    name = layer_name(k, g[pos])
                    wit[name] = TensorSlot(axes, sub, _sizes(name, arch))
                else:
                    unused.append(TensorSlot(axes, sub, tuple(0 for _ in axes[1:])))
    theta: dict[str, TensorSlot] = {}
    for gi, g in enumerate(groups):
        for k in th_kinds:
            layer_axis = (("l", lam[gi]),) if lam[gi] else ()
            theta[f"{k}@{gi}"] = TensorSlot(elem_axes(k, gi) + layer_axis, th_codes[f"{k}@{gi}"])
            for pos, i in enumerate(g):
                theta[f"{k}{i}"] = TensorSlot(
                    elem_axes(k, gi), _lbits(pos, lam[gi]) + th_codes[f"{k}@{gi}"]
                )
    theta["THETA"] = TensorSlot((("theta", n_theta),), ())
    missing = [n for n in names if n not in wit]
    if missing or L < 1:
        raise ValueError(f"build_layout: tensors without a slot: {missing}")
    return Layout(arch, n_wit, n_theta, wit, theta, groups, stacks, tuple(unused))
