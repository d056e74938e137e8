"""Average pooling after the first Conv2d in fixed point: the pooling rescales against the
Python-int reference (random values and values at the magnitude bound), the engine's tape and
the tracer's avg_pool2d ops against both, unsupported pooling refused by name (module, ATen op
and Trainer at step 0), and a Lightning CNN with pooling trained bit-identically to the engine
with every step proved and verified."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import _read_chain, verify_run
from lightning_zk.fixed import FixedPointConfig, FixedPointMLP, WitnessTape, quantize
from lightning_zk.fixed.conv import ConvSpec, avg_pool, avg_pool_backward
from lightning_zk.fixed.intercept import FixedPointTracer, UnsupportedOpError
from lightning_zk.fixed.reference import ref_avg_pool, ref_avg_pool_backward, ref_rescale
from lightning_zk.fixed.softmax import onehot_targets
from lightning_zk.fixed.template import template_network
from lightning_zk.fixed.torch_bridge import UnsupportedModelError, mlp_from_torch, write_back
from tests.fixed_mode.test_conv import CNN, image_data
from tests.models import trainer_kwargs

S = 16
BOUND = 1 << 23  # |x| < 2^(value_bits - 1) at the default value_bits = 24


def _rows(arr: np.ndarray) -> list[list[int]]:
    return [[int(v) for v in row] for row in arr]


@pytest.mark.parametrize(("k", "side", "batch"), [(2, 4, 3), (2, 8, 2), (4, 8, 2), (4, 4, 1)])
def test_pooling_matches_the_python_int_reference(k, side, batch):
    rng = np.random.default_rng(k * side + batch)
    spec = ConvSpec(1, side, side, 3, 1, 1, 0, pool=k)
    a = rng.integers(-BOUND + 1, BOUND, size=(batch * side * side, 3))
    a[:4] = BOUND - 1  # windows at the magnitude bound, both signs
    a[-4:] = -(BOUND - 1)
    q, r = avg_pool(a, spec, S)
    want_q, want_r = ref_avg_pool(_rows(a), side, side, k, S)
    assert q.tolist() == want_q and r.tolist() == want_r
    assert np.abs(q).max() < BOUND and (r >= -(1 << (S - 1))).all() and (r < 1 << (S - 1)).all()
    g = rng.integers(-BOUND + 1, BOUND, size=(batch * (side // k) ** 2, 3))
    g[0] = BOUND - 1
    gq, gr = avg_pool_backward(g, spec, S)
    want_gq, want_gr = ref_avg_pool_backward(_rows(g), side, side, k, S)
    assert gq.tolist() == want_gq and gr.tolist() == want_gr


def test_reference_rounds_the_window_mean_half_up():
    """One window by hand: sum 6 over 4 entries is 1.5 ulp -> 2; sum -6 -> -1 (half up)."""
    q, r = ref_avg_pool([[1], [2], [1], [2]], 2, 2, 2, S)
    assert q == [[2]] and r == [[-(1 << (S - 1))]]
    q, _ = ref_avg_pool([[-1], [-2], [-1], [-2]], 2, 2, 2, S)
    assert q == [[-1]]
    assert ref_rescale(6 << (S - 2), S) == (2, -(1 << (S - 1)))


SPEC = ConvSpec(1, 4, 4, 2, 3, 1, 1, pool=2)


def _cnn(seed=0, pool: nn.Module | None = None):
    torch.manual_seed(seed)
    pool = pool if pool is not None else nn.AvgPool2d(2)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), pool, nn.Flatten(),
                         nn.Linear(2 * 4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_engine_step_pools_as_the_reference():
    rng = np.random.default_rng(4)
    mlp = FixedPointMLP.from_float(
        [rng.normal(size=(2, 1, 3, 3)) * 0.5, rng.normal(size=(6, 8)) * 0.5,
         rng.normal(size=(3, 6)) * 0.5], [np.full(2, 0.2), np.zeros(6), np.zeros(3)],
        lr=0.25, conv=SPEC, loss="xent")
    tape = mlp.step_float(rng.normal(size=(3, 16)), np.array([0, 1, 2]))
    t = tape.tensors
    q, r = ref_avg_pool(_rows(t["A1"]), 4, 4, 2, S)
    assert t["PL"].tolist() == q and t["RPL"].tolist() == r
    gq, gr = ref_avg_pool_backward(_rows(t["GPL"]), 4, 4, 2, S)
    assert t["GA1"].tolist() == gq and t["RGA1"].tolist() == gr
    assert np.count_nonzero(t["PL"]) and np.count_nonzero(t["GPL"])
    assert t["W2"].shape == (6, 8)  # fan-in F H'' W'' = 2 * 2 * 2


def test_pooled_tape_round_trips_and_its_header_is_checked(tmp_path):
    import json

    from lightning_zk.fixed.tape import TapeFormatError

    rng = np.random.default_rng(5)
    mlp = FixedPointMLP.from_float(
        [rng.normal(size=(2, 9)) * 0.5, rng.normal(size=(3, 8)) * 0.5], [np.zeros(2), np.zeros(3)],
        lr=0.25, conv=SPEC)
    tape = mlp.step_float(rng.normal(size=(2, 16)), rng.normal(size=(2, 3)))
    tape.save(tmp_path / "t.npz")
    again = WitnessTape.load(tmp_path / "t.npz")
    assert again.conv == SPEC and again.header()["conv"] == [1, 4, 4, 2, 3, 1, 1, 2]
    assert {"PL", "RPL", "GPL", "RGPL"} <= set(again.tensors)

    def write(head, tensors):
        np.savez(tmp_path / "b.npz", __header__=np.frombuffer(json.dumps(head).encode(),
                                                             dtype=np.uint8), **tensors)

    for bad in ([1, 4, 4, 2, 3, 1, 1, 0], [1, 4, 4, 2, 3, 1, 1, 3], [1, 4, 4, 2, 3, 1, 1, 8]):
        write(tape.header() | {"conv": bad}, tape.tensors)
        with pytest.raises(TapeFormatError, match="conv"):
            WitnessTape.load(tmp_path / "b.npz")
    write(tape.header() | {"conv": [1, 4, 4, 2, 3, 1, 1]}, tape.tensors)  # unpooled: extra PL...
    with pytest.raises(TapeFormatError):
        WitnessTape.load(tmp_path / "b.npz")


@pytest.mark.parametrize("spelling", ["module", "functional"])
def test_tracer_executes_pooling_as_the_engine(spelling):
    net = _cnn()
    x, y = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2])
    cfg = FixedPointConfig()
    engine = mlp_from_torch(net, 0.25, cfg, input_shape=(1, 4, 4), loss="xent")
    assert engine.conv == SPEC
    write_back(engine, net)
    tracer = FixedPointTracer(cfg)
    for i, p in enumerate(net.parameters()):
        tracer.leaf(f"param:{i}", p)
    tracer.leaf("batch:0", x, quantise=True)
    tracer.leaf("batch:1", y, quantise=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.25)
    with tracer:
        if spelling == "module":
            out = net(x)
        else:  # F.avg_pool2d(x, 2) spells the same pooling (stride defaults to the kernel)
            out = net[4:](F.avg_pool2d(net[:2](x), 2).flatten(1))
        F.cross_entropy(out, y).backward()
        opt.step()
    tape = engine.step(tracer.ints(x, "batch:0"), onehot_targets(y.numpy(), 3, S))
    for p, name in zip(net.parameters(), ["W1n", "b1n", "W2n", "b2n", "W3n", "b3n"], strict=True):
        want = tape.tensors[name]
        assert np.array_equal(tracer.ints(p, "check").reshape(want.shape), want), name
    nodes = [op for op in tracer.graph([tracer.ref(p) for p in net.parameters()])
             if "avg_pool2d" in op["op"]]
    assert [n["op"] for n in nodes] == ["aten.avg_pool2d.default",
                                        "aten.avg_pool2d_backward.default"]
    assert nodes[0]["consts"] == [2, 2, 2, 2, 0, 0, False, True, None]  # canonical either way


_BAD_POOLS = [
    (nn.AvgPool2d(3, stride=3), "power of two"),
    (nn.AvgPool2d(2, stride=1), "stride"),
    (nn.AvgPool2d(2, padding=1), "padding"),
    (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
    (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
    (nn.AvgPool2d((2, 1)), "square"),
    (nn.MaxPool2d(2), "MaxPool2d"),
]


@pytest.mark.parametrize(("pool", "match"), _BAD_POOLS)
def test_unsupported_pooling_layer_is_refused_by_name(pool, match):
    with pytest.raises(UnsupportedModelError, match=match):
        mlp_from_torch(_cnn(pool=pool), 0.25, input_shape=(1, 4, 4))


@pytest.mark.parametrize(("call", "match"), [
    (lambda x: F.avg_pool2d(x, 3), "kernel_size"),
    (lambda x: F.avg_pool2d(x, 2, stride=1), "stride"),
    (lambda x: F.avg_pool2d(x, 2, padding=1), "padding"),
    (lambda x: F.avg_pool2d(x, 2, ceil_mode=True), "ceil_mode"),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=2), "divisor_override"),
    (lambda x: F.avg_pool2d(x, 4), "whole number"),
])
def test_unsupported_pooling_op_is_refused_by_name(call, match):
    tracer = FixedPointTracer(FixedPointConfig())
    x = torch.rand(2, 2, 6, 6)
    with pytest.raises(UnsupportedOpError, match=match), tracer:
        call(x)


def test_max_pooling_that_reaches_an_update_is_refused_with_the_supported_form():
    """Max pooling is a side computation (a metric may use it); its value reaching a tensor of
    the step is refused, naming it and saying which pooling is supported."""
    tracer = FixedPointTracer(FixedPointConfig())
    w = torch.zeros(2, 2, 3, 3)
    tracer.leaf("param:w", w)
    x = torch.rand(2, 2, 6, 6)
    with pytest.raises(UnsupportedOpError, match="average pooling is supported") as err, tracer:
        w.add_(F.max_pool2d(x, 2))
    assert "aten.max_pool2d" in str(err.value) and "reaches the trained" in str(err.value)
    assert not w.any()


def test_pool_kernel_larger_than_the_conv_output_is_refused():
    with pytest.raises(UnsupportedModelError, match="AvgPool2d"):
        mlp_from_torch(_cnn(pool=nn.AvgPool2d(8)), 0.25, input_shape=(1, 4, 4))


def test_template_network_has_the_pooling():
    net = template_network((9, 2, 6, 3), SPEC.as_tuple())
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "AvgPool2d", "Flatten", "Linear",
                                               "ReLU", "Linear"]
    assert net[2].kernel_size == 2 and net[4].in_features == 8


# --- Lightning ---------------------------------------------------------------------------------
class PooledCNN(CNN):
    """test_conv's CNN (its training_step and SGD) with an average pooling after the conv, on
    4x4 images: conv 4x4, pooled 2x2."""

    def __init__(self, pool: nn.Module | None = None, momentum: float = 0.0) -> None:
        super().__init__(momentum=momentum)
        pool = pool if pool is not None else nn.AvgPool2d(2)
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), pool, nn.Flatten(),
                                 nn.Linear(2 * 4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_lightning_pooled_cnn_trains_bit_identically_and_its_proofs_verify(tmp_path):
    L.seed_everything(0, verbose=False)
    path = tmp_path / "run"
    model = PooledCNN(momentum=0.5)
    start = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=3,
                        callbacks=[CommitCallback(), ProofCallback()], **trainer_kwargs())
    trainer.fit(model, train_dataloaders=DataLoader(image_data(side=4), batch_size=2, shuffle=True))
    run = RunDirectory(path)
    assert run.read_manifest()["fixed"]["conv"] == [1, 4, 4, 2, 3, 1, 1, 2]
    tapes = [WitnessTape.load(run.path / r.extra["tape"]) for r in run.read_steps()]
    assert [t.conv for t in tapes] == [SPEC] * 3
    engine = FixedPointMLP([quantize(p.double().numpy(), S).reshape(p.shape[0], -1)
                            for p in start[0::2]],
                           [quantize(p.double().numpy(), S) for p in start[1::2]],
                           tapes[0].lr, loss="xent", conv=SPEC, momentum=tapes[0].momentum)
    for tape in tapes:  # the run replayed from its initial weights and batches
        again = engine.step(tape.tensors["x"], tape.tensors["y"])
        for name, arr in tape.tensors.items():
            assert np.array_equal(arr, again.tensors[name]), name
    report = verify_run(path)
    assert report.ok, report.problems
    assert report.steps_proven == 3 and report.ledger == "verified"
    statements, _, _ = _read_chain(run)
    assert {s.conv for s in statements} == {SPEC.as_tuple()}


@pytest.mark.parametrize(("pool", "match"), [(nn.MaxPool2d(2), "MaxPool2d"),
                                             (nn.AvgPool2d(2, stride=1), "stride"),
                                             (nn.AvgPool2d(3, stride=3),
                                              "kernel must be square, a power of two")])
def test_unsupported_pooling_is_refused_at_step_0(tmp_path, pool, match):
    L.seed_everything(0, verbose=False)
    model = PooledCNN(pool=pool)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=1, **trainer_kwargs())
    with pytest.raises(UnsupportedModelError, match=match):
        trainer.fit(model, train_dataloaders=DataLoader(image_data(side=4), batch_size=2))
    for p, b in zip(model.parameters(), before, strict=True):  # nothing was trained
        assert torch.equal(p.detach(), b)
