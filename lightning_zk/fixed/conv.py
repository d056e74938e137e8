"""Conv2d as a matmul over patches (im2col), the exact integer semantics of a first conv layer.

A convolution of images A (B, C, H, W) with weights (F, C, k, k), stride and zero padding is the
Linear layer Z = rescale(PA Wmat^T + 2^s b) over the patch matrix PA = im2col(A) (rows
(b, oh, ow), columns (c, kh, kw), zeros where a patch reaches into the padding) and Wmat the
weights flattened to (F, C k k). Gathering only copies values, so PA is exact; the layer then has
the forward, weight-gradient and bias-gradient relations of a Linear layer with batch axis
(b, oh, ow). The zk relation PA = Gather(A) uses the public 0/1 selection of :func:`gather_index`.

numpy only (no torch, no Lightning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ConvSpec", "gather_index", "im2col", "rows_to_flat", "flat_to_rows"]


@dataclass(frozen=True)
class ConvSpec:
    """Public shape of a first Conv2d layer: input (C, H, W), F filters of k x k, stride,
    zero padding (groups 1, dilation 1, bias on)."""

    channels: int
    height: int
    width: int
    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        vals = self.as_tuple()
        if any(type(v) is not int for v in vals):  # noqa: E721
            raise ValueError(f"ConvSpec{vals}: every field must be an int")
        if min(vals[:6]) < 1 or self.padding < 0 or self.padding >= self.kernel:
            raise ValueError(f"ConvSpec{vals}: need positive sizes and 0 <= padding < kernel")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"ConvSpec{vals}: the kernel does not fit the padded image")

    def as_tuple(self) -> tuple[int, ...]:
        """(C, H, W, F, k, stride, padding): the statement's and the manifest's encoding."""
        return (self.channels, self.height, self.width, self.filters, self.kernel, self.stride,
                self.padding)

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
    """Conv output in patch rows (B H' W', F) -> torch's Flatten order (B, F H' W')."""
    b = a.shape[0] // spec.positions
    return a.reshape(b, spec.positions, -1).transpose(0, 2, 1).reshape(b, -1)


def flat_to_rows(a: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Inverse of :func:`rows_to_flat`: (B, F H' W') -> (B H' W', F)."""
    b = a.shape[0]
    return a.reshape(b, -1, spec.positions).transpose(0, 2, 1).reshape(b * spec.positions, -1)
