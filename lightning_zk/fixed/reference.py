"""Obviously-correct integer reference of one fixed-point SGD step (Python ints, plain loops).

Written independently of :mod:`.engine` (no NumPy arithmetic) so the tests can compare the
engine against it exactly. Only for small models: O(B * d^2) Python operations.
"""

from __future__ import annotations

__all__ = ["ref_rescale", "reference_step"]

Matrix = list[list[int]]


def ref_rescale(raw: int, frac_bits: int) -> tuple[int, int]:
    """q = floor((raw + 2^(s-1)) / 2^s), r = raw - 2^s q (Python's // is floor division)."""
    q = (raw + (1 << (frac_bits - 1))) // (1 << frac_bits)
    return q, raw - q * (1 << frac_bits)


def reference_step(
    weights: list[Matrix], biases: list[list[int]], x: Matrix, y: Matrix, lr: int, mse: int, s: int
) -> tuple[list[Matrix], list[list[int]], Matrix]:
    """New weights, new biases and the predictions Z_L of one step (MSE loss, SGD)."""
    L = len(weights)
    acts, zs, signs = [x], [], []
    for i in range(L):
        w, b, a = weights[i], biases[i], acts[-1]
        z = [
            [
                ref_rescale(sum(a[n][k] * w[o][k] for k in range(len(a[n]))) + b[o] * 2**s, s)[0]
                for o in range(len(w))
            ]
            for n in range(len(a))
        ]
        zs.append(z)
        if i < L - 1:
            sg = [[1 if v > 0 else 0 for v in row] for row in z]
            signs.append(sg)
            acts.append([[v if v > 0 else 0 for v in row] for row in z])
    out = zs[-1]
    gz = [
        [ref_rescale(mse * (out[n][o] - y[n][o]), s)[0] for o in range(len(out[0]))]
        for n in range(len(out))
    ]
    new_w, new_b = [None] * L, [None] * L
    for i in range(L - 1, -1, -1):
        a, w = acts[i], weights[i]
        gw = [
            [
                ref_rescale(sum(gz[n][o] * a[n][k] for n in range(len(a))), s)[0]
                for k in range(len(a[0]))
            ]
            for o in range(len(w))
        ]
        gb = [sum(gz[n][o] for n in range(len(gz))) for o in range(len(w))]
        new_w[i] = [
            [w[o][k] - ref_rescale(lr * gw[o][k], s)[0] for k in range(len(w[0]))]
            for o in range(len(w))
        ]
        new_b[i] = [biases[i][o] - ref_rescale(lr * gb[o], s)[0] for o in range(len(w))]
        if i > 0:
            ga = [
                [
                    ref_rescale(sum(gz[n][o] * w[o][k] for o in range(len(w))), s)[0]
                    for k in range(len(w[0]))
                ]
                for n in range(len(gz))
            ]
            gz = [
                [ga[n][k] * signs[i - 1][n][k] for k in range(len(ga[0]))] for n in range(len(ga))
            ]
    return new_w, new_b, out
