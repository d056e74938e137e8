"""Where each witness tensor lives inside the committed multilinear polynomials.

Every tensor of a proof unit is stacked over the unit's T = 2^tau steps (instance variable t,
always the *first* variable, so every sumcheck sums over it and the commitment's round-1 mask
applies; see docs/zk_training.md) and zero-padded to power-of-two axes. Tensors share one
commitment ``Wit`` of 2^n entries: a tensor of 2^m entries gets a code c of n - m bits and
element e sits at index (e << (n - m)) | c, i.e. *element bits first, code bits last*, so an
opening point's first coordinate is always a challenge (never a constant 0/1, which would
cancel the hiding mask). Codes come from an aligned buddy allocation, bit-reversed, which
makes them suffix-free (no two tensors overlap).

The weights of all layers form the parameter layout Theta; Wit holds two Theta super-blocks
(weights before and after each step), and the boundary commitments B hold Theta with a leading
hiding variable h: B(0, .) = Theta, B(1, .) = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arch", "TensorSlot", "Layout", "allocate", "build_layout", "bits_of"]


def bits_of(n: int) -> int:
    """Number of variables of an axis of length n (padded to a power of two, >= 1)."""
    return max(1, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class Arch:
    """Public architecture of a proof unit: layer widths, true batch size, steps stacked."""

    dims: tuple[int, ...]
    batch_size: int
    num_instances: int  # T, a power of two >= 2

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
        out = 0
        for bit in self.code:
            out = (out << 1) | bit
        return out


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


def _sizes(name: str, arch: Arch) -> tuple[int, ...]:
    """True axis lengths of a tape tensor (same naming rules as :func:`_axes`)."""
    L, d = arch.num_layers, arch.dims
    stem = name[:-1] if name[-1] == "n" and name[0] in "Wb" else name
    digits = "".join(c for c in stem if c.isdigit())
    layer = int(digits) if digits else L
    kind = stem[: len(stem) - len(digits)]
    if name == "x":
        return (arch.batch_size, d[0])
    if name in ("y", "G", "RG"):
        return (arch.batch_size, d[L])
    if kind in ("W", "GW", "RGW", "UW", "RUW"):
        return (d[layer], d[layer - 1])
    if kind in ("b", "Gb", "Ub", "RUb"):
        return (d[layer],)
    return (arch.batch_size, d[layer])


def _axes(name: str, arch: Arch) -> tuple[tuple[str, int], ...]:
    L = arch.num_layers
    stem = name[:-1] if name[-1] == "n" and name[0] in "Wb" else name
    digits = "".join(c for c in stem if c.isdigit())
    layer = int(digits) if digits else L
    kind = stem[: len(stem) - len(digits)]
    if name == "x":
        return (("b", arch.nb), ("o", arch.nd(0)))
    if name in ("y", "G", "RG"):
        return (("b", arch.nb), ("o", arch.nd(L)))
    if kind in ("W", "GW", "RGW", "UW", "RUW"):
        return (("o", arch.nd(layer)), ("k", arch.nd(layer - 1)))
    if kind in ("b", "Gb", "Ub", "RUb"):
        return (("o", arch.nd(layer)),)
    return (("b", arch.nb), ("o", arch.nd(layer)))


@dataclass
class Layout:
    """Slots of every tensor in Wit (stacked, with leading t) and in the boundary B."""

    arch: Arch
    wit_vars: int
    theta_vars: int
    wit: dict[str, TensorSlot]
    theta: dict[str, TensorSlot]  # inside B: leading ("h", 1) axis

    @property
    def b_vars(self) -> int:
        return 1 + self.theta_vars


def theta_names(num_layers: int) -> list[str]:
    return [f"{k}{i}" for i in range(1, num_layers + 1) for k in ("W", "b")]


def build_layout(arch: Arch, names: list[str]) -> Layout:
    """Allocate Theta, then Wit = {Theta-in, Theta-out super-blocks} + every other tensor."""
    tau, L = arch.tau, arch.num_layers
    th = theta_names(L)
    th_axes = {n: _axes(n, arch) for n in th}
    n_theta, th_codes = allocate({n: sum(b for _, b in a) for n, a in th_axes.items()})
    after = {n + "n" for n in th}
    others = [n for n in names if n not in th and n not in after]
    sizes = {"THETA_IN": tau + n_theta, "THETA_OUT": tau + n_theta}
    axes = {n: (("t", tau), *_axes(n, arch)) for n in others}
    sizes.update({n: sum(b for _, b in a) for n, a in axes.items()})
    n_wit, codes = allocate(sizes)
    wit = {n: TensorSlot(axes[n], codes[n], _sizes(n, arch)) for n in others}
    for block, suffix in (("THETA_IN", ""), ("THETA_OUT", "n")):
        wit[block] = TensorSlot((("t", tau), ("theta", n_theta)), codes[block])
        for n in th:
            wit[n + suffix] = TensorSlot(
                (("t", tau), *th_axes[n]), th_codes[n] + codes[block], _sizes(n, arch)
            )
    theta = {n: TensorSlot((("h", 1), *th_axes[n]), th_codes[n]) for n in th}
    theta["THETA"] = TensorSlot((("h", 1), ("theta", n_theta)), ())
    return Layout(arch, n_wit, n_theta, wit, theta)
