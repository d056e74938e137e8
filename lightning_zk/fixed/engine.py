"""Exact integer training engine: MLP of Linear(+bias) [+ReLU], MSE or softmax cross-entropy
loss, SGD (DESIGN.md §5).

SGD may carry weight decay wd and momentum mu (public fixed-point constants, as torch's
``SGD(momentum=mu, weight_decay=wd)`` with dampening 0, no Nesterov): per parameter P with
gradient G and momentum buffer V (0 before step 0, so step 0's buffer is G', as torch's clone)

    G' = G + rescale(wd P),   V' = rescale(mu V) + G',   P' = P - rescale(lr V')

(without momentum P' = P - rescale(lr G')).

Every op is int64 arithmetic with the single rounding rule of :func:`.format.rescale`, so a run
is bit-identical on every device without any rounding log. Each :meth:`FixedPointMLP.step`
returns the :class:`WitnessTape` the zk prover consumes and updates the weights in place.

Example::

    >>> import numpy as np
    >>> from lightning_zk.fixed import FixedPointMLP
    >>> rng = np.random.default_rng(0)
    >>> mlp = FixedPointMLP.from_float(
    ...     [rng.normal(size=(3, 4)) * 0.3, rng.normal(size=(2, 3)) * 0.3],
    ...     [np.zeros(3), np.zeros(2)], lr=0.125)
    >>> tape = mlp.step_float(rng.normal(size=(4, 4)), rng.normal(size=(4, 2)))
    >>> tape.step, sorted(tape.tensors)[:3]
    (0, ['A1', 'G', 'GA1'])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .conv import (
    ConvSpec,
    avg_pool,
    avg_pool_backward,
    flat_to_rows,
    im2col,
    pool_constant,
    rows_to_flat,
)
from .exact import exact_matmul
from .format import (
    FixedPointConfig,
    check_bound,
    dequantize,
    fixed_constant,
    optimizer_constant,
    quantize,
    rescale,
    rescale_owned,
)
from .scaling import InputOp, scale_of, view_of
from .softmax import (
    LOSSES,
    onehot_targets,
    softmax_witness,
    xent_constant,
    xent_gradient,
)
from .tape import WitnessTape

__all__ = ["FixedPointMLP", "mse_constant", "loss_constant"]

# tensors that are range-checked as signed values |x| < 2^(value_bits-1) (sign witness V too)
_UNSIGNED = ("S", "V")


def mse_constant(batch_size: int, out_dim: int, frac_bits: int) -> int:
    """Public fixed-point constant c = round(2^s * 2 / (B k)) of the MSE gradient."""
    return fixed_constant(2.0 / (batch_size * out_dim), frac_bits)


def loss_constant(loss: str, batch_size: int, out_dim: int, frac_bits: int) -> int:
    """The public loss-gradient constant of a tape or statement (``mse_const``): MSE's
    round(2^s 2/(B k)) or cross-entropy's round(2^s / B)."""
    if loss == "xent":
        return xent_constant(batch_size, frac_bits)
    return mse_constant(batch_size, out_dim, frac_bits)


class FixedPointMLP:
    """Integer MLP: layers ``W[l] (d_l, d_{l-1})``, ``b[l] (d_l,)``; ReLU between layers.

    Args:
        weights, biases: int64 fixed-point arrays (scale 2^frac_bits).
        lr: learning rate as a fixed-point integer (public constant).
        config: scale and magnitude bound.
        step: index of the next step.
        momentum, weight_decay: SGD's momentum and weight decay as fixed-point integers in
            [0, 2^frac_bits) (0: off).
        velocity: the momentum buffers (``VW``, ``Vb`` per layer) before ``step``; None: zero
            (a run's first step, or torch's buffers not created yet).
        loss: ``"mse"`` (targets y (B, d_L)) or ``"xent"`` (softmax cross-entropy, mean over the
            batch; targets Yhot = 2^s onehot(labels), :func:`.softmax.onehot_targets`).
        input_ops: what the step does to its batch input before the network (:mod:`.scaling`):
            a view (the batch (B, *sample) is flattened to (B, d0) first, the tape's x) and/or
            a scaling by a public constant (``net(x / 16)``): XS = rescale(k x) feeds layer 1,
            x stays the committed batch. (): the network reads x.
    Raises:
        ValueError: inconsistent shapes, or a fan-in that could overflow.
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        lr: int,
        config: FixedPointConfig | None = None,
        step: int = 0,
        momentum: int = 0,
        weight_decay: int = 0,
        velocity: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
        loss: str = "mse",
        conv: ConvSpec | None = None,
        input_ops: Sequence[InputOp] = (),
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"FixedPointMLP(loss={loss!r}): supported losses are {LOSSES}")
        self.loss = loss
        self.config = config or FixedPointConfig()
        self.weights = [np.asarray(w, dtype=np.int64).copy() for w in weights]
        self.biases = [np.asarray(b, dtype=np.int64).copy() for b in biases]
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError("FixedPointMLP: need one bias per weight matrix and >= 1 layer")
        self.conv = conv
        self.input_ops = tuple(input_ops)
        if conv is not None and (len(self.weights) < 2 or self.weights[0].shape != (
                conv.filters, conv.patch)):
            raise ValueError(f"FixedPointMLP: conv {conv} needs weights[0] of shape "
                             f"({conv.filters}, {conv.patch}) and a Linear layer after it")
        if conv is not None and conv.pool:
            pool_constant(conv, self.config.frac_bits)  # c = 2^s / k^2 must be an integer
        dims = [self.weights[0].shape[1]]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2 or w.shape[1] != dims[-1] * self.spatial(i) or b.shape != (
                    w.shape[0],):
                raise ValueError(f"FixedPointMLP: layer {i + 1} has shapes {w.shape}, {b.shape}")
            dims.append(w.shape[0])
        self.dims = tuple(int(d) for d in dims)
        if not 0 < int(lr) < self.config.scale:
            raise ValueError(f"FixedPointMLP(lr={lr}): need 0 < lr < 2^frac_bits (lr < 1.0)")
        self.lr = int(lr)
        self.step_index = int(step)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            check_bound(f"W{i + 1}", w, self.config.bound, self.step_index)
            check_bound(f"b{i + 1}", b, self.config.bound, self.step_index)
        self.momentum, self.weight_decay = int(momentum), int(weight_decay)
        for what, k in (("momentum", self.momentum), ("weight_decay", self.weight_decay)):
            if not 0 <= k < self.config.scale:
                raise ValueError(f"FixedPointMLP({what}={k}): need 0 <= {what} < 2^frac_bits")
        self.velocity_w: list[np.ndarray] = []
        self.velocity_b: list[np.ndarray] = []
        if self.momentum:
            self.set_velocity(velocity)
        elif velocity is not None:
            raise ValueError("FixedPointMLP: momentum buffers given without momentum")

    def set_velocity(
        self, velocity: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None
    ) -> None:
        """Set the momentum buffers (None: zero, the buffer before a run's first step)."""
        if velocity is None:
            velocity = ([np.zeros_like(w) for w in self.weights],
                        [np.zeros_like(b) for b in self.biases])
        vw = [np.asarray(v, dtype=np.int64).copy() for v in velocity[0]]
        vb = [np.asarray(v, dtype=np.int64).copy() for v in velocity[1]]
        if [v.shape for v in vw] != [w.shape for w in self.weights] or [
                v.shape for v in vb] != [b.shape for b in self.biases]:
            raise ValueError("FixedPointMLP: momentum buffers do not have the weights' shapes")
        for i, (w, b) in enumerate(zip(vw, vb, strict=True)):
            check_bound(f"VW{i + 1}", w, self.config.bound, self.step_index)
            check_bound(f"Vb{i + 1}", b, self.config.bound, self.step_index)
        self.velocity_w, self.velocity_b = vw, vb

    @classmethod
    def from_float(
        cls,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        lr: float,
        config: FixedPointConfig | None = None,
        step: int = 0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        loss: str = "mse",
        conv: ConvSpec | None = None,
        input_ops: Sequence[InputOp] = (),
    ) -> FixedPointMLP:
        """Quantise float weights (round to nearest) and the SGD constants (as the lr); with
        ``conv``, weights[0] is the conv weight (F, C, k, k) or (F, C k k)."""
        cfg = config or FixedPointConfig()
        s = cfg.frac_bits
        weights = [np.asarray(w).reshape(w.shape[0], -1) for w in weights]
        return cls(
            [quantize(w, s) for w in weights],
            [quantize(b, s) for b in biases],
            fixed_constant(lr, s),
            cfg,
            step,
            optimizer_constant("momentum", momentum, s),
            optimizer_constant("weight_decay", weight_decay, s),
            loss=loss,
            conv=conv,
            input_ops=input_ops,
        )

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def spatial(self, i: int) -> int:
        """H' W' for the Linear layer (0-based index i) right after the conv (its Flatten
        multiplies the fan-in), else 1."""
        return self.conv.flat_positions if self.conv is not None and i == 1 else 1

    def _layer_input(self, a: np.ndarray, i: int) -> np.ndarray:
        """Layer i's (0-based) input matrix: the conv's patches, the Flatten of its output
        (an exact permutation), or the previous activation."""
        if self.conv is not None and i == 0:
            return im2col(a, self.conv)
        if self.conv is not None and i == 1:
            if self.conv.pool:
                a, _ = avg_pool(a, self.conv, self.config.frac_bits)
            return rows_to_flat(a, self.conv)
        return a

    def float_weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        s = self.config.frac_bits
        return [dequantize(w, s) for w in self.weights], [dequantize(b, s) for b in self.biases]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Fixed-point predictions (no tape, no update)."""
        s, a = self.config.frac_bits, np.asarray(x, dtype=np.int64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z, _ = rescale(exact_matmul(self._layer_input(a, i), w.T) + (b << s)[None, :], s)
            a = z * (z > 0) if i < self.num_layers - 1 else z
        return a

    def step_float(self, x: np.ndarray, y: np.ndarray) -> WitnessTape:
        """A step on float inputs; y is float targets (MSE) or integer class labels (xent)."""
        s = self.config.frac_bits
        if self.loss == "xent":
            return self.step(quantize(x, s), onehot_targets(y, self.dims[-1], s))
        return self.step(quantize(x, s), quantize(y, s))

    def step(self, x: np.ndarray, y: np.ndarray) -> WitnessTape:
        """One exact SGD step on the fixed-point batch (x, y); returns its witness tape.

        Every tensor is bound-checked as soon as it exists (in tape order, so the first tensor
        named by an error is the same as checking them all at the end); the measured max |x|
        then sizes the exact BLAS matmuls (:func:`.exact.exact_matmul`). The tape takes over
        the arrays of the weights before the step (the engine only ever replaces its arrays).

        Raises:
            FixedPointError: some tensor leaves |x| < 2^(value_bits-1) (nothing is updated).
        """
        cfg, s, L = self.config, self.config.frac_bits, self.num_layers
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        bsz = x.shape[0]
        conv = self.conv
        width = self.dims[0] if conv is None else conv.image
        if (conv is not None and x.ndim == 4) or view_of(self.input_ops) is not None:
            x = x.reshape(bsz, -1)  # the images / the step's view: row-major, a relabelling
        if x.shape != (bsz, width) or y.shape != (bsz, self.dims[-1]):
            raise ValueError(f"step: batch shapes {x.shape}, {y.shape} do not fit dims {self.dims}")
        rows = bsz * conv.positions if conv is not None else bsz
        if self.loss == "xent" and not (np.isin(y, (0, 1 << s)).all()
                                        and (y.sum(axis=1) == 1 << s).all()):
            raise ValueError("step: cross-entropy targets must be Yhot = 2^s onehot(labels)")
        fans = [w.shape[1] for w in self.weights]
        for fan_in in (*fans, bsz, rows, *self.dims[1:]):
            cfg.check_fan_in(fan_in)
        t: dict[str, np.ndarray] = {}
        top: dict[str, int] = {}  # max |tensor| of the checked signed tensors

        def put(name: str, arr: np.ndarray) -> None:
            t[name] = arr
            if name[0] != "R" and name[0] not in _UNSIGNED:
                top[name] = check_bound(name, arr, cfg.bound, self.step_index)

        def matmul(a: str, b: str, ta: bool = False, tb: bool = False) -> np.ndarray:
            """Exact product of two checked tape tensors (optionally transposed), sized by their
            measured max |x| (exact whatever the bound, see :mod:`.exact`)."""
            ma, mb = t[a].T if ta else t[a], t[b].T if tb else t[b]
            return exact_matmul(ma, mb, bound_a=top[a], bound_b=top[b])

        put("x", x)
        put("y", y)
        acts = ["x"]
        scale = scale_of(self.input_ops)
        if scale is not None:  # the step's own x * c or x / c, exact (.scaling)
            k = scale.multiplier(s, cfg.value_bits)
            xs, rxs = rescale_owned(k * x, s)
            put("XS", xs)
            put("RXS", rxs)
            acts = ["XS"]
        if conv is not None:  # the patch matrix: layer 1 is a Linear layer over its rows
            put("PA", im2col(t[acts[0]], conv))
            acts = ["PA"]

        def inputs(i: int) -> str:
            """Layer i's input on the tape; the Flatten after the conv (or after its pooling,
            PL) as a temporary view."""
            if conv is not None and i == 2:
                src = "PL" if conv.pool else "A1"
                t["_X2"] = rows_to_flat(t[src], conv)
                top["_X2"] = top[src]
                return "_X2"
            return acts[i - 1]

        for i in range(1, L + 1):
            put(f"W{i}", self.weights[i - 1])
            put(f"b{i}", self.biases[i - 1])
            raw = matmul(inputs(i), f"W{i}", tb=True)
            raw += self.biases[i - 1][None, :] << s
            z, rz = rescale_owned(raw, s)
            put(f"Z{i}", z)
            put(f"RZ{i}", rz)
            if i < L:
                sign = (z > 0).astype(np.int64)
                put(f"S{i}", sign)
                put(f"V{i}", 2 * sign * z - z - sign)
                put(f"A{i}", z * sign)
                acts.append(f"A{i}")
                if conv is not None and conv.pool and i == 1:  # PL = rescale(c sum_window A1)
                    pl, rpl = avg_pool(t["A1"], conv, s)
                    put("PL", pl)
                    put("RPL", rpl)
        if self.loss == "xent":  # softmax witness: unsigned or remainder-like, checked by design
            t.update(softmax_witness(t[f"Z{L}"], s, cfg.value_bits))
            c = xent_constant(bsz, s)
            g, rg = xent_gradient(t["P"], y, c, s)
        else:
            c = mse_constant(bsz, self.dims[-1], s)
            g, rg = rescale_owned(c * (t[f"Z{L}"] - y), s)
        put("G", g)
        put("RG", rg)
        gz = "G"
        for i in range(L, 0, -1):
            gw, rgw = rescale_owned(matmul(gz, inputs(i), ta=True), s)
            put(f"GW{i}", gw)
            put(f"RGW{i}", rgw)
            put(f"Gb{i}", t[gz].sum(axis=0))
            if i > 1:
                ga, rga = rescale_owned(matmul(gz, f"W{i}"), s)
                if conv is not None and i == 2:  # back to the conv's rows (exact permutation)
                    ga, rga = flat_to_rows(ga, conv), flat_to_rows(rga, conv)
                    if conv.pool:  # the pooled output's gradient, / k^2 and spread
                        put("GPL", ga)
                        put("RGPL", rga)
                        ga, rga = avg_pool_backward(ga, conv, s)
                put(f"GA{i - 1}", ga)
                put(f"RGA{i - 1}", rga)
                put(f"GZ{i - 1}", ga * t[f"S{i - 1}"])
                gz = f"GZ{i - 1}"
        for i in range(1, L + 1):
            if self.momentum or self.weight_decay:
                self._optimizer_terms(i, put, t)
                continue
            uw, ruw = rescale_owned(self.lr * t[f"GW{i}"], s)
            put(f"UW{i}", uw)
            put(f"RUW{i}", ruw)
            ub, rub = rescale_owned(self.lr * t[f"Gb{i}"], s)
            put(f"Ub{i}", ub)
            put(f"RUb{i}", rub)
            put(f"W{i}n", t[f"W{i}"] - uw)
            put(f"b{i}n", t[f"b{i}"] - ub)
        t.pop("_X2", None)
        tape = WitnessTape(
            step=self.step_index,
            dims=self.dims,
            frac_bits=s,
            value_bits=cfg.value_bits,
            lr=self.lr,
            mse_const=c,
            batch_size=bsz,
            tensors=t,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            loss=self.loss,
            conv=conv,
            input_ops=self.input_ops,
        )
        for i in range(1, L + 1):
            self.weights[i - 1], self.biases[i - 1] = t[f"W{i}n"].copy(), t[f"b{i}n"].copy()
            if self.momentum:
                self.velocity_w[i - 1] = t[f"VW{i}n"].copy()
                self.velocity_b[i - 1] = t[f"Vb{i}n"].copy()
        self.step_index += 1
        return tape

    def _optimizer_terms(self, i: int, put, t: dict[str, np.ndarray]) -> None:
        """Layer i's update with weight decay and/or momentum (module docstring), W then b, in
        torch's order: G' = G + rescale(wd P); V' = rescale(mu V) + G'; P' = P - rescale(lr V')."""
        s, cfg = self.config.frac_bits, self.config
        for p, velocity in (("W", self.velocity_w), ("b", self.velocity_b)):
            grad = t[f"G{p}{i}"]
            if self.weight_decay:
                d, rd = rescale_owned(self.weight_decay * t[f"{p}{i}"], s)
                put(f"D{p}{i}", d)
                put(f"RD{p}{i}", rd)
                grad = grad + d
                check_bound(f"G{p}{i}+D{p}{i}", grad, cfg.bound, self.step_index)
            if self.momentum:
                put(f"V{p}{i}", velocity[i - 1])
                m, rm = rescale_owned(self.momentum * velocity[i - 1], s)
                put(f"M{p}{i}", m)
                put(f"RM{p}{i}", rm)
                put(f"V{p}{i}n", m + grad)
                grad = t[f"V{p}{i}n"]
            u, ru = rescale_owned(self.lr * grad, s)
            put(f"U{p}{i}", u)
            put(f"RU{p}{i}", ru)
            put(f"{p}{i}n", t[f"{p}{i}"] - u)

