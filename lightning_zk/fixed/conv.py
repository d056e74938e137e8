"""Conv2d as a matmul over patches (im2col), the exact integer semantics of a first conv layer.

A convolution of images A (B, C, H, W) with weights (F, C, k, k), stride and zero padding is the
Linear layer Z = rescale(PA Wmat^T + 2^s b) over the patch matrix PA = im2col(A) (rows
(b, oh, ow), columns (c, kh, kw), zeros where a patch reaches into the padding) and Wmat the
weights flattened to (F, C k k). Gathering only copies values, so PA is exact; the layer then has
the forward, weight-gradient and bias-gradient relations of a Linear layer with batch axis
(b, oh, ow). The zk relation PA = Gather(A) uses the public 0/1 selection of :func:`gather_index`.

The conv's ReLU output may be average-pooled (``nn.AvgPool2d(k)``, kernel = stride = k a power
of two, no padding) before the Flatten: with c = 2^s / k^2 (an integer, k^2 <= 2^s)

    PL, RPL = rescale(c * sum_window A1)            (:func:`avg_pool`, pooled rows (b, ph, pw))
    GA1, RGA1 = spread(rescale(c * GPL))           (:func:`avg_pool_backward`)

i.e. round-to-nearest of the window mean with the one rescale rule (the quotient is
floor((sum + k^2/2) / k^2)), and the gradient of the pooled output divided by k^2 the same way
and copied to every entry of its window.

numpy only (no torch, no Lightning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import rescale_owned

__all__ = ["ConvSpec", "gather_index", "im2col", "rows_to_flat", "flat_to_rows", "avg_pool",
           "avg_pool_backward", "pool_constant", "pool_sum", "pool_spread"]


@dataclass(frozen=True)
class ConvSpec:
    """Public shape of a first Conv2d layer: input (C, H, W), F filters of k x k, stride,
    zero padding (groups 1, dilation 1, bias on), and the kernel of an average pooling after its
    ReLU (``pool``; 0: none; else a power of two >= 2 dividing H' and W', stride = kernel)."""

    channels: int
    height: int
    width: int
    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 0

    def __post_init__(self) -> None:
        vals = self.as_tuple()
        if any(type(v) is not int for v in (*vals, self.pool)):  # noqa: E721
            raise ValueError(f"ConvSpec{vals}: every field must be an int")
        if min(vals[:6]) < 1 or self.padding < 0 or self.padding >= self.kernel:
            raise ValueError(f"ConvSpec{vals}: need positive sizes and 0 <= padding < kernel")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"ConvSpec{vals}: the kernel does not fit the padded image")
        if self.pool and (self.pool < 2 or self.pool & (self.pool - 1) or self.out_height
                          % self.pool or self.out_width % self.pool):
            raise ValueError(
                f"ConvSpec{vals}: average pooling kernel {self.pool} must be a power of two >= 2 "
                f"dividing the conv's output {self.out_height}x{self.out_width}")

    def as_tuple(self) -> tuple[int, ...]:
        """(C, H, W, F, k, stride, padding), and the pooling kernel as an 8th entry when the
        conv is pooled: the statement's, the tape's and the manifest's encoding (an unpooled
        conv keeps its 7 entries, so its statements and digests are unchanged)."""
        base = (self.channels, self.height, self.width, self.filters, self.kernel, self.stride,
                self.padding)
        return (*base, self.pool) if self.pool else base

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def positions(self) -> int:
        """H' W': rows of the patch matrix per image."""
        return self.out_height * self.out_width

    @property
    def flat_positions(self) -> int:
        """Spatial positions per filter that the Flatten sees: H' W', or (H'/k)(W'/k) after an
        average pooling of kernel k (then the pooled rows (b, ph, pw))."""
        return self.positions // (self.pool * self.pool) if self.pool else self.positions

    @property
    def patch(self) -> int:
        """C k k: columns of the patch matrix (the conv layer's fan-in)."""
        return self.channels * self.kernel * self.kernel

    @property
    def image(self) -> int:
        """C H W: one flattened input image."""
        return self.channels * self.height * self.width

    @property
    def provable(self) -> bool:
        """H' and W' are powers of two: then Flatten (B, F, H', W') -> (B, F H' W') is a
        relabelling of the padded variables (docs/zk_training.md), which the relations use."""
        return all(n & (n - 1) == 0 for n in (self.out_height, self.out_width))


def gather_index(spec: ConvSpec) -> np.ndarray:
    """(H' W', C k k) int64: the flat image index (c, ih, iw) each patch entry copies, -1 in
    the zero padding. Row (oh, ow), column (c, kh, kw): torch's weight order."""
    c, kh, kw = np.meshgrid(np.arange(spec.channels), np.arange(spec.kernel),
                            np.arange(spec.kernel), indexing="ij")
    oh, ow = np.meshgrid(np.arange(spec.out_height), np.arange(spec.out_width), indexing="ij")
    ih = oh.reshape(-1, 1) * spec.stride - spec.padding + kh.reshape(1, -1)
    iw = ow.reshape(-1, 1) * spec.stride - spec.padding + kw.reshape(1, -1)
    inside = (ih >= 0) & (ih < spec.height) & (iw >= 0) & (iw < spec.width)
    flat = (c.reshape(1, -1) * spec.height + ih) * spec.width + iw
    return np.where(inside, flat, -1).astype(np.int64)


def im2col(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Patch matrix (B H' W', C k k) of images x (B, C H W) or (B, C, H, W) (exact copies)."""
    x = np.asarray(x, dtype=np.int64).reshape(-1, spec.image)
    idx = gather_index(spec)
    padded = np.concatenate([x, np.zeros((x.shape[0], 1), dtype=np.int64)], axis=1)
    return padded[:, idx].reshape(x.shape[0] * spec.positions, spec.patch)


def rows_to_flat(a: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """What the Flatten reads, in rows (B P, F) -> torch's Flatten order (B, F P), with P =
    ``spec.flat_positions`` (the conv output's H' W', or the pooled output's)."""
    p = spec.flat_positions
    b = a.shape[0] // p
    return a.reshape(b, p, -1).transpose(0, 2, 1).reshape(b, -1)


def flat_to_rows(a: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Inverse of :func:`rows_to_flat`: (B, F P) -> (B P, F)."""
    p, b = spec.flat_positions, a.shape[0]
    return a.reshape(b, -1, p).transpose(0, 2, 1).reshape(b * p, -1)


def pooling_refusal(kernel_size, stride, padding, ceil_mode: bool, divisor_override) -> str:
    """Why an average pooling is not the provable one, or "" when it is: a square kernel k, k a
    power of two >= 2, stride = kernel, no padding, no ceil_mode or divisor_override. Arguments
    as ``nn.AvgPool2d`` / ``aten.avg_pool2d`` take them (an int or a pair; a stride of None or
    [] is the kernel). The one rule for the layer check and the op check."""
    def pair(v) -> list[int]:
        out = [int(x) for x in v] if isinstance(v, (tuple, list)) else [int(v)]
        return out * 2 if len(out) == 1 else out

    kernel = pair(kernel_size)
    strides = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else pair(stride)
    k = kernel[0]
    if len(set(kernel)) != 1 or k < 2 or k & (k - 1):
        return f"kernel_size={kernel_size!r}: the kernel must be square, a power of two >= 2"
    if strides != kernel:
        return f"stride={stride!r} differs from kernel_size={kernel_size!r}"
    if any(pair(padding)):
        return f"padding={padding!r}: only padding 0"
    if ceil_mode:
        return "ceil_mode=True"
    if divisor_override is not None:
        return f"divisor_override={divisor_override!r}"
    return ""


def pool_constant(spec: ConvSpec, frac_bits: int) -> int:
    """c = 2^s / k^2, the public multiplier of both pooling rescales (k^2 <= 2^s needed)."""
    k2 = spec.pool * spec.pool
    if not spec.pool or k2 > 1 << frac_bits:
        raise ValueError(f"average pooling {spec.pool}x{spec.pool} needs k^2 <= 2^{frac_bits}")
    return (1 << frac_bits) // k2


def pool_sum(a: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Window sums of conv-shaped rows (B H' W', F) -> pooled rows (B H'' W'', F) (exact)."""
    k, f = spec.pool, a.shape[1]
    hp, wp = spec.out_height // k, spec.out_width // k
    return np.asarray(a, dtype=np.int64).reshape(-1, hp, k, wp, k, f).sum(axis=(2, 4)).reshape(-1, f)


def pool_spread(g: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Pooled rows (B H'' W'', F) copied to every entry of their window: (B H' W', F)."""
    k, f = spec.pool, g.shape[1]
    hp, wp = spec.out_height // k, spec.out_width // k
    g = np.asarray(g, dtype=np.int64).reshape(-1, hp, 1, wp, 1, f)
    return np.broadcast_to(g, (g.shape[0], hp, k, wp, k, f)).reshape(-1, f).copy()


def avg_pool(a: np.ndarray, spec: ConvSpec, frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """PL, RPL = rescale(c sum_window A1), c = 2^s / k^2 (rows (b, ph, pw))."""
    return rescale_owned(pool_constant(spec, frac_bits) * pool_sum(a, spec), frac_bits)


def avg_pool_backward(g: np.ndarray, spec: ConvSpec,
                      frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """GA1, RGA1 = spread(rescale(c GPL)): the pooled gradient over k^2, copied to its window."""
    q, r = rescale_owned(pool_constant(spec, frac_bits) * np.asarray(g, dtype=np.int64), frac_bits)
    return pool_spread(q, spec), pool_spread(r, spec)
