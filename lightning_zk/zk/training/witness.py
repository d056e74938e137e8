"""From witness tapes to the integer tables the prover commits, plus a strict witness check.

The strict check recomputes every relation of docs/zk_training.md in exact integers before any
cryptography, so an inconsistent tape fails fast with an error naming the relation, tensor and
step (the verifier would reject the proof anyway; this gives a clear message and saves time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...fixed.conv import im2col, pool_constant, pool_spread, pool_sum, rows_to_flat
from ...fixed.engine import loss_constant
from ...fixed.softmax import SoftmaxWitnessError, check_softmax_witness
from ...fixed.tape import WitnessTape
from .layout import Layout, TensorSlot, theta_names
from .relations import tensor_class

__all__ = ["WitnessError", "check_witness", "wit_table", "theta_table"]


class WitnessError(ValueError):
    """A tape does not satisfy a relation (the prover refuses to prove it)."""

    def __init__(self, relation: str, tensor: str, step: int) -> None:
        self.relation, self.tensor, self.step = relation, tensor, step
        super().__init__(
            f"witness tape of step {step} violates relation {relation!r} at tensor {tensor!r}"
        )


def _stack(tapes: Sequence[WitnessTape], name: str, slot: TensorSlot, T: int) -> np.ndarray:
    shape = [1 << b for _, b in slot.axes[1:]]
    out = np.zeros([T, *shape], dtype=np.int64)
    for t, tape in enumerate(tapes):
        arr = tape.tensors[name]
        out[(t, *[slice(0, d) for d in arr.shape])] = arr
    return out


def _scatter(out: np.ndarray, slot: TensorSlot, data: np.ndarray) -> None:
    out[slot.code_int :: 1 << len(slot.code)] = data.reshape(-1)


def wit_table(layout: Layout, tapes: Sequence[WitnessTape]) -> np.ndarray:
    """Signed int64 table of Wit (2^wit_vars entries)."""
    T = layout.arch.num_instances
    out = np.zeros(1 << layout.wit_vars, dtype=np.int64)
    for name in tapes[0].names():
        slot = layout.wit[name]
        _scatter(out, slot, _stack(tapes, name, slot, T))
    for name, _ in layout.theta_leaves():
        slot = layout.wit[name + "n"]
        _scatter(out, slot, _stack(tapes, name + "n", slot, T))
    return out


def theta_table(layout: Layout, params: dict[str, np.ndarray]) -> np.ndarray:
    """Signed int64 table of a boundary commitment B = Theta (zero outside the weights)."""
    out = np.zeros(1 << layout.b_vars, dtype=np.int64)
    for name, slot in layout.theta_leaves():
        shape = [1 << b for _, b in slot.axes]
        data = np.zeros(shape, dtype=np.int64)
        arr = params[name]
        data[tuple(slice(0, d) for d in arr.shape)] = arr
        _scatter(out, slot, data)
    return out


def _rescaled(raw: np.ndarray, q: np.ndarray, r: np.ndarray, s: int) -> bool:
    return bool(np.array_equal(raw, (q << s) + r))


def _sgd_direction(tp: WitnessTape, p: str, i: int, fail) -> np.ndarray:
    """The tensor SGD scales by lr for parameter kind ``p`` of layer i, checking the weight decay
    (G' = G + rescale(wd P)) and momentum (V' = rescale(mu V) + G') relations on the way."""
    t, s = tp.tensors, tp.frac_bits
    grad = t[f"G{p}{i}"]
    if tp.weight_decay:
        if not _rescaled(tp.weight_decay * t[f"{p}{i}"], t[f"D{p}{i}"], t[f"RD{p}{i}"], s):
            fail("weight decay", f"D{p}{i}")
        grad = grad + t[f"D{p}{i}"]
    if tp.momentum:
        if not _rescaled(tp.momentum * t[f"V{p}{i}"], t[f"M{p}{i}"], t[f"RM{p}{i}"], s):
            fail("momentum", f"M{p}{i}")
        if not np.array_equal(t[f"V{p}{i}n"], t[f"M{p}{i}"] + grad):
            fail("momentum", f"V{p}{i}n")
        grad = t[f"V{p}{i}n"]
    return grad


def check_witness(tapes: Sequence[WitnessTape], prev_params: dict[str, np.ndarray] | None) -> None:
    """Raise WitnessError unless every relation holds exactly on every tape (and the chain)."""
    for u, tp in enumerate(tapes):
        t, s, L, st = tp.tensors, tp.frac_bits, tp.num_layers, tp.step
        half, bound = 1 << (s - 1), 1 << (tp.value_bits - 1)

        def fail(rel: str, name: str, st: int = st) -> None:
            raise WitnessError(rel, name, st)

        if tp.mse_const != loss_constant(tp.loss, tp.batch_size, tp.dims[-1], s):
            fail("loss-gradient constant", "mse_const")
        for name, arr in t.items():
            kind = tensor_class(name)
            if kind == "remainder" and (arr.min(initial=0) < -half or arr.max(initial=0) >= half):
                fail("remainder range", name)
            if kind == "signed" and (arr.min(initial=0) < -bound or arr.max(initial=0) >= bound):
                fail("magnitude bound", name)
        acts = [t["x"]]
        if tp.input_scale is not None:  # the step's x * c or x / c: XS = rescale(k x)
            k = tp.input_scale.multiplier(s, tp.value_bits)
            if not _rescaled(k * t["x"], t["XS"], t["RXS"], s):
                fail("input scaling", "XS")
            acts = [t["XS"]]
        if tp.conv is not None:  # layer 1 over the patch matrix, layer 2 through the Flatten
            if not np.array_equal(t["PA"], im2col(acts[0], tp.conv)):
                fail("im2col", "PA")
            acts = [t["PA"]]

        pool = tp.conv is not None and tp.conv.pool != 0

        def layer_in(i: int, acts: list[np.ndarray] = acts, tp: WitnessTape = tp) -> np.ndarray:
            if tp.conv is not None and i == 2:  # through the Flatten (of the pooled output)
                return rows_to_flat(tp.tensors["PL"] if tp.conv.pool else acts[1], tp.conv)
            return acts[i - 1]

        if pool:  # PL = rescale(c sum_window A1); GA1 = spread(rescale(c GPL)), c = 2^s / k^2
            c = pool_constant(tp.conv, s)
            if not _rescaled(c * pool_sum(t["A1"], tp.conv), t["PL"], t["RPL"], s):
                fail("pool forward", "PL")
            if not _rescaled(c * pool_spread(t["GPL"], tp.conv), t["GA1"], t["RGA1"], s):
                fail("pool backward", "GA1")
        for i in range(1, L + 1):
            raw = layer_in(i) @ t[f"W{i}"].T + (t[f"b{i}"] << s)[None, :]
            if not _rescaled(raw, t[f"Z{i}"], t[f"RZ{i}"], s):
                fail("forward", f"Z{i}")
            if i < L:
                z, sg = t[f"Z{i}"], t[f"S{i}"]
                if not np.array_equal(sg, (z > 0).astype(np.int64)):
                    fail("relu sign", f"S{i}")
                if not np.array_equal(t[f"V{i}"], 2 * sg * z - z - sg):
                    fail("relu sign witness", f"V{i}")
                if not np.array_equal(t[f"A{i}"], z * sg):
                    fail("relu", f"A{i}")
                if not np.array_equal(t[f"GZ{i}"], t[f"GA{i}"] * sg):
                    fail("backward mask", f"GZ{i}")
                acts.append(t[f"A{i}"])
        if tp.loss == "xent":
            try:
                check_softmax_witness(t, t[f"Z{L}"], tp.mse_const, s, tp.value_bits)
            except SoftmaxWitnessError as err:
                fail(f"cross-entropy gradient: {err.relation}", err.tensor)
        elif not _rescaled(tp.mse_const * (t[f"Z{L}"] - t["y"]), t["G"], t["RG"], s):
            fail("output gradient", "G")
        for i in range(1, L + 1):
            gz = t["G"] if i == L else t[f"GZ{i}"]
            if not _rescaled(gz.T @ layer_in(i), t[f"GW{i}"], t[f"RGW{i}"], s):
                fail("weight gradient", f"GW{i}")
            if not np.array_equal(gz.sum(axis=0), t[f"Gb{i}"]):
                fail("bias gradient", f"Gb{i}")
            ga, rga = t[f"GA{i - 1}"] if i >= 2 else None, t[f"RGA{i - 1}"] if i >= 2 else None
            if tp.conv is not None and i == 2:  # (pooled: the pooled output's gradient)
                ga, rga = (t["GPL"], t["RGPL"]) if pool else (ga, rga)
                ga, rga = rows_to_flat(ga, tp.conv), rows_to_flat(rga, tp.conv)
            if i >= 2 and not _rescaled(gz @ t[f"W{i}"], ga, rga, s):
                fail("input gradient", "GPL" if pool and i == 2 else f"GA{i - 1}")
            for u_, r_, p_ in (("UW", "RUW", "W"), ("Ub", "RUb", "b")):
                direction = _sgd_direction(tp, p_, i, fail)
                if not _rescaled(tp.lr * direction, t[f"{u_}{i}"], t[f"{r_}{i}"], s):
                    fail("update", f"{u_}{i}")
                if not np.array_equal(t[f"{p_}{i}n"], t[f"{p_}{i}"] - t[f"{u_}{i}"]):
                    fail("update", f"{p_}{i}n")
        before = prev_params
        if u > 0:
            before = {k: tapes[u - 1].tensors[f"{k}n"] for k in theta_names(L, tp.momentum != 0)}
        elif before is None and tp.momentum and tp.step == 0:  # zero before the first step
            for name in [f"{k}{i}" for i in range(1, L + 1) for k in ("VW", "Vb")]:
                if np.any(t[name]):
                    fail("chain", name)
        if before is not None:
            for k, arr in before.items():
                if not np.array_equal(arr, t[k]):
                    fail("chain", k)
