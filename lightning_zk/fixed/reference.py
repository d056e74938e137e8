"""Obviously-correct integer reference of one fixed-point SGD step (Python ints, plain loops).

Written independently of :mod:`.engine` (no NumPy arithmetic) so the tests can compare the
engine against it exactly. Only for small models: O(B * d^2) Python operations.
"""

from __future__ import annotations

__all__ = ["ref_rescale", "reference_step", "reference_sgd_step", "ref_sgd_update", "ref_avg_pool",
           "ref_avg_pool_backward"]

Matrix = list[list[int]]


def ref_rescale(raw: int, frac_bits: int) -> tuple[int, int]:
    """q = floor((raw + 2^(s-1)) / 2^s), r = raw - 2^s q (Python's // is floor division)."""
    q = (raw + (1 << (frac_bits - 1))) // (1 << frac_bits)
    return q, raw - q * (1 << frac_bits)


def ref_sgd_update(p: int, g: int, v: int, lr: int, mu: int, wd: int, s: int) -> tuple[int, int]:
    """One parameter entry: g' = g + rescale(wd p); v' = rescale(mu v) + g' (v' = g' without
    momentum, mu = 0); returns (p - rescale(lr v'), v')."""
    g = g + ref_rescale(wd * p, s)[0]
    v = ref_rescale(mu * v, s)[0] + g
    return p - ref_rescale(lr * v, s)[0], v


def reference_step(
    weights: list[Matrix], biases: list[list[int]], x: Matrix, y: Matrix, lr: int, mse: int, s: int
) -> tuple[list[Matrix], list[list[int]], Matrix]:
    """New weights, new biases and the predictions Z_L of one step (MSE loss, SGD)."""
    new_w, new_b, out, _, _ = reference_sgd_step(weights, biases, x, y, lr, mse, s)
    return new_w, new_b, out


def reference_sgd_step(
    weights: list[Matrix], biases: list[list[int]], x: Matrix, y: Matrix, lr: int, mse: int, s: int,
    momentum: int = 0, weight_decay: int = 0,
    velocity: tuple[list[Matrix], list[list[int]]] | None = None,
) -> tuple[list[Matrix], list[list[int]], Matrix, list[Matrix], list[list[int]]]:
    """One step of SGD with momentum / weight decay (fixed-point integers; ``velocity`` the
    buffers before the step, None: zero): new weights, biases, Z_L, new buffers (the update
    direction g' itself when there is no momentum)."""
    L = len(weights)
    if velocity is None:
        velocity = ([[[0] * len(r) for r in w] for w in weights], [[0] * len(b) for b in biases])
    vw_in, vb_in = velocity
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
    new_w, new_b, new_vw, new_vb = [None] * L, [None] * L, [None] * L, [None] * L
    mu, wd = momentum, weight_decay
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
        upd_w = [
            [ref_sgd_update(w[o][k], gw[o][k], vw_in[i][o][k], lr, mu, wd, s)
             for k in range(len(w[0]))]
            for o in range(len(w))
        ]
        upd_b = [ref_sgd_update(biases[i][o], gb[o], vb_in[i][o], lr, mu, wd, s)
                 for o in range(len(w))]
        new_w[i] = [[pv[0] for pv in row] for row in upd_w]
        new_vw[i] = [[pv[1] for pv in row] for row in upd_w]
        new_b[i] = [pv[0] for pv in upd_b]
        new_vb[i] = [pv[1] for pv in upd_b]
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
    return new_w, new_b, out, new_vw, new_vb


def ref_avg_pool(a: Matrix, height: int, width: int, k: int, s: int) -> tuple[Matrix, Matrix]:
    """Average pooling of conv rows a[(b, oh, ow)][f] (H' = ``height``, W' = ``width``) with
    kernel = stride = k (a power of two, k^2 <= 2^s): per window, (q, r) = rescale((2^s / k^2)
    * sum of its k^2 entries), pooled rows (b, ph, pw). Returns (q rows, r rows)."""
    c = (1 << s) // (k * k)
    hp, wp, f = height // k, width // k, len(a[0])
    out_q: Matrix = []
    out_r: Matrix = []
    for b in range(len(a) // (height * width)):
        for ph in range(hp):
            for pw in range(wp):
                qs, rs = [], []
                for j in range(f):
                    total = 0
                    for kh in range(k):
                        for kw in range(k):
                            total += a[(b * height + ph * k + kh) * width + pw * k + kw][j]
                    q, r = ref_rescale(c * total, s)
                    qs.append(q)
                    rs.append(r)
                out_q.append(qs)
                out_r.append(rs)
    return out_q, out_r


def ref_avg_pool_backward(g: Matrix, height: int, width: int, k: int,
                          s: int) -> tuple[Matrix, Matrix]:
    """The pooling's backward: every conv row (b, oh, ow) gets rescale((2^s / k^2) *
    g[(b, oh // k, ow // k)]) (quotient rows, remainder rows)."""
    c = (1 << s) // (k * k)
    hp, wp = height // k, width // k
    out_q: Matrix = []
    out_r: Matrix = []
    for b in range(len(g) // (hp * wp)):
        for oh in range(height):
            for ow in range(width):
                row = g[(b * hp + oh // k) * wp + ow // k]
                pairs = [ref_rescale(c * v, s) for v in row]
                out_q.append([q for q, _ in pairs])
                out_r.append([r for _, r in pairs])
    return out_q, out_r
