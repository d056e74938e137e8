"""Conv2d in fixed point: the engine's conv step against a loop-by-loop integer reference, the
tracer's convolution ops executed as the engine, refusals by name, and a Lightning CNN trained
bit-identically to the engine with every step proved and verified."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_zk import CommitCallback, ProofCallback, RunDirectory, VerifiableStrategy
from lightning_zk.audit.proofs import _read_chain, verify_run
from lightning_zk.fixed import FixedPointConfig, FixedPointMLP, WitnessTape, quantize
from lightning_zk.fixed.conv import ConvSpec, im2col
from lightning_zk.fixed.intercept import FixedPointTracer, UnsupportedOpError
from lightning_zk.fixed.softmax import onehot_targets
from lightning_zk.fixed.torch_bridge import UnsupportedModelError, mlp_from_torch, write_back
from tests.fixed_mode.models import Crash, CrashBefore
from tests.models import trainer_kwargs

S = 16


def _round(raw: int) -> int:
    """Round to nearest (ties up), as docs/fixed_point.md's rescale."""
    return (raw + (1 << (S - 1))) >> S


def _conv_reference(x, w, b, spec: ConvSpec):
    """Z1[b, f, oh, ow] by plain loops over the kernel (zero padding), rescaled."""
    n = x.shape[0]
    img = x.reshape(n, spec.channels, spec.height, spec.width)
    out = np.zeros((n, spec.filters, spec.out_height, spec.out_width), dtype=np.int64)
    for bi in range(n):
        for f in range(spec.filters):
            for oh in range(spec.out_height):
                for ow in range(spec.out_width):
                    acc = int(b[f]) << S
                    for c in range(spec.channels):
                        for kh in range(spec.kernel):
                            for kw in range(spec.kernel):
                                ih = oh * spec.stride - spec.padding + kh
                                iw = ow * spec.stride - spec.padding + kw
                                if 0 <= ih < spec.height and 0 <= iw < spec.width:
                                    acc += int(img[bi, c, ih, iw]) * int(
                                        w[f, c * spec.kernel ** 2 + kh * spec.kernel + kw])
                    out[bi, f, oh, ow] = _round(acc)
    return out


def _weight_grad_reference(x, gz, spec: ConvSpec):
    """GW1[f, (c, kh, kw)] = rescale(sum_{b, oh, ow} GZ[b, oh, ow, f] x[b, c, ih, iw])."""
    n = x.shape[0]
    img = x.reshape(n, spec.channels, spec.height, spec.width)
    g = gz.reshape(n, spec.out_height, spec.out_width, spec.filters)
    out = np.zeros((spec.filters, spec.patch), dtype=np.int64)
    for f in range(spec.filters):
        for c in range(spec.channels):
            for kh in range(spec.kernel):
                for kw in range(spec.kernel):
                    acc = 0
                    for bi in range(n):
                        for oh in range(spec.out_height):
                            for ow in range(spec.out_width):
                                ih = oh * spec.stride - spec.padding + kh
                                iw = ow * spec.stride - spec.padding + kw
                                if 0 <= ih < spec.height and 0 <= iw < spec.width:
                                    acc += int(g[bi, oh, ow, f]) * int(img[bi, c, ih, iw])
                    out[f, c * spec.kernel ** 2 + kh * spec.kernel + kw] = _round(acc)
    return out


@pytest.mark.parametrize("spec", [ConvSpec(1, 6, 6, 3, 3, 1, 1), ConvSpec(2, 6, 6, 2, 3, 2, 0),
                                  ConvSpec(1, 8, 8, 4, 3, 1, 1)])
def test_engine_conv_step_matches_loop_reference(spec):
    rng = np.random.default_rng(spec.channels + spec.height)
    ws = [rng.normal(size=(spec.filters, spec.channels, spec.kernel, spec.kernel)) * 0.5,
          rng.normal(size=(3, spec.filters * spec.positions)) * 0.3]
    bs = [rng.normal(size=spec.filters) * 0.2, rng.normal(size=3) * 0.1]
    mlp = FixedPointMLP.from_float(ws, bs, lr=0.125, conv=spec, loss="xent")
    tape = mlp.step_float(rng.normal(size=(3, spec.image)), np.array([0, 2, 1]))
    tape.validate()
    t = tape.tensors
    assert np.array_equal(t["PA"], im2col(t["x"], spec))
    z = _conv_reference(t["x"], t["W1"], t["b1"], spec)
    assert np.array_equal(t["Z1"], z.transpose(0, 2, 3, 1).reshape(-1, spec.filters))
    assert np.array_equal(t["GW1"], _weight_grad_reference(t["x"], t["GZ1"], spec))
    assert np.array_equal(t["Gb1"], t["GZ1"].sum(axis=0))
    # layer 2 reads the conv output in torch's Flatten order (f, oh, ow)
    flat = t["A1"].reshape(3, spec.positions, spec.filters).transpose(0, 2, 1).reshape(3, -1)
    raw = flat @ t["W2"].T + (t["b2"] << S)[None, :]
    assert np.array_equal(t["Z2"], (raw + (1 << (S - 1))) >> S)


def test_conv_tape_round_trip_and_older_versions(tmp_path):
    """Version-3 tapes carry the conv shape; a version-2 file (no "conv") loads without one; a
    bad conv header is refused."""
    import json

    from lightning_zk.fixed import TapeFormatError

    spec = ConvSpec(1, 4, 4, 2, 3, 1, 1)
    rng = np.random.default_rng(0)
    mlp = FixedPointMLP.from_float([rng.normal(size=(2, 1, 3, 3)), rng.normal(size=(3, 32))],
                                   [np.zeros(2), np.zeros(3)], lr=0.125, conv=spec)
    tape = mlp.step_float(rng.normal(size=(2, 16)), rng.normal(size=(2, 3)))
    tape.save(tmp_path / "c.npz")
    back = WitnessTape.load(tmp_path / "c.npz")
    assert back.conv == spec and back.header() == tape.header()

    def write(path, head, tensors):
        np.savez(path, __header__=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8),
                 **tensors)

    plain = FixedPointMLP.from_float([rng.normal(size=(4, 3))], [np.zeros(4)], lr=0.125)
    pt = plain.step_float(rng.normal(size=(2, 3)), rng.normal(size=(2, 4)))
    v2 = {k: v for k, v in pt.header().items() if k not in ("conv", "input_ops")} | {"version": 2}
    write(tmp_path / "v2.npz", v2, pt.tensors)
    assert WitnessTape.load(tmp_path / "v2.npz").conv is None
    for bad in ([1, 4, 4, 2, 3, 1], [1, 4, 4, 2, 3, 1, 5], [1, 4, 4, 2, 3, 1, "1"]):
        write(tmp_path / "b.npz", tape.header() | {"conv": bad}, tape.tensors)
        with pytest.raises(TapeFormatError, match="conv"):
            WitnessTape.load(tmp_path / "b.npz")
    write(tmp_path / "m.npz", tape.header() | {"conv": [1, 4, 4, 3, 3, 1, 1]}, tape.tensors)
    with pytest.raises(TapeFormatError):  # another filter count: the shapes disagree
        WitnessTape.load(tmp_path / "m.npz")


def _cnn(seed=0, conv=None):
    torch.manual_seed(seed)
    conv = conv or nn.Conv2d(1, 2, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 6), nn.ReLU(),
                         nn.Linear(6, 3))


def _traced(net, x, y, momentum=0.0):
    cfg = FixedPointConfig()
    engine = mlp_from_torch(net, 0.25, cfg, momentum=momentum, input_shape=tuple(x.shape[1:]))
    engine.loss = "xent"
    write_back(engine, net)
    tracer = FixedPointTracer(cfg)
    for name, p in net.named_parameters():
        tracer.leaf(f"param:{name}", p)
    tracer.leaf("batch:0", x, quantise=True)
    tracer.leaf("batch:1", y, quantise=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.25, momentum=momentum)
    with tracer:
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return engine, tracer


def test_tracer_executes_conv_forward_and_backward_as_the_engine():
    net = _cnn()
    x, y = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2])
    engine, tracer = _traced(net, x, y)
    tape = engine.step(tracer.ints(x, "batch:0"), onehot_targets(y.numpy(), 3, S))
    after = [tracer.ints(p, "check") for p in net.parameters()]
    names = ["W1n", "b1n", "W2n", "b2n", "W3n", "b3n"]
    for got, name in zip(after, names, strict=True):
        want = tape.tensors[name]
        assert np.array_equal(got.reshape(want.shape), want), name
    ops = [op["op"] for op in tracer.graph([tracer.ref(p) for p in net.parameters()])]
    assert "aten.convolution.default" in ops and "aten.convolution_backward.default" in ops


@pytest.mark.parametrize(("conv", "match"), [
    (nn.Conv2d(1, 2, 3, padding=1, bias=False), "bias"),
    (nn.Conv2d(1, 2, 3, padding=2, dilation=2), "dilation"),
    (nn.Conv2d(2, 2, 3, padding=1, groups=2), "groups"),
    (nn.Conv2d(1, 2, (3, 1), padding=(1, 0)), "square"),
])
def test_unsupported_conv_is_refused_by_name(conv, match):
    net = _cnn(conv=conv)
    with pytest.raises(UnsupportedModelError, match=match):
        mlp_from_torch(net, 0.25, input_shape=(conv.in_channels, 4, 4))
    tracer = FixedPointTracer(FixedPointConfig())
    x = torch.randn(2, conv.in_channels, 4, 4)
    with pytest.raises(UnsupportedOpError, match=match), tracer:
        conv(x)


def test_conv_input_gradient_is_refused():
    """A conv after another layer would need its input gradient (col2im): refused by name."""
    tracer = FixedPointTracer(FixedPointConfig())
    conv = nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    with pytest.raises(UnsupportedOpError, match="input gradient of a Conv2d"), tracer:
        conv(x).sum().backward()


# --- Lightning ---------------------------------------------------------------------------------
class CNN(L.LightningModule):
    def __init__(self, padding: int = 1, momentum: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=padding), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(2 * (6 - 2 + 2 * padding) ** 2, 8), nn.ReLU(),
                                 nn.Linear(8, 3))
        self.momentum = momentum

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.25, momentum=self.momentum)


def image_data(n=8, side=6) -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(torch.rand(n, 1, side, side, generator=g),
                         torch.randint(0, 3, (n,), generator=g))


def test_lightning_cnn_trains_bit_identically_and_its_proofs_verify(tmp_path):
    L.seed_everything(0, verbose=False)
    path = tmp_path / "run"
    model = CNN(padding=0, momentum=0.5)  # 6x6 images, k=3, padding 0: 4x4 outputs
    start = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"), max_steps=3,
                        callbacks=[CommitCallback(), ProofCallback()], **trainer_kwargs())
    trainer.fit(model, train_dataloaders=DataLoader(image_data(), batch_size=2, shuffle=True))
    run = RunDirectory(path)
    spec = ConvSpec(1, 6, 6, 2, 3, 1, 0)
    assert run.read_manifest()["fixed"]["conv"] == list(spec.as_tuple())
    records = run.read_steps()
    tapes = [WitnessTape.load(run.path / r.extra["tape"]) for r in records]
    assert [t.conv for t in tapes] == [spec] * 3
    # replay the whole run on a fresh engine from the initial weights and the tapes' batches
    engine = FixedPointMLP([quantize(p.double().numpy(), S).reshape(p.shape[0], -1)
                            for p in start[0::2]],
                           [quantize(p.double().numpy(), S) for p in start[1::2]],
                           tapes[0].lr, loss="xent", conv=spec, momentum=tapes[0].momentum)
    for tape in tapes:
        again = engine.step(tape.tensors["x"], tape.tensors["y"])
        for name, arr in tape.tensors.items():
            assert np.array_equal(arr, again.tensors[name]), name
    final = quantize(model.net[0].weight.detach().double().numpy(), S)
    assert np.array_equal(final.reshape(2, -1), tapes[-1].tensors["W1n"])
    report = verify_run(path)
    assert report.ok, report.problems
    assert report.steps_proven == 3 and report.ledger == "verified"
    statements, _, _ = _read_chain(run)
    assert {s.conv for s in statements} == {spec.as_tuple()}


class HalvedOutputCNN(CNN):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x) * 0.5, y)


def test_conv_step_other_than_the_template_is_not_trained(tmp_path):
    """The template graph (traced from the user's own network) includes the conv ops: a step
    that scales its logits is a different graph, refused before anything is trained."""
    from lightning_zk.strategies.fixed import NotProvableError

    L.seed_everything(0, verbose=False)
    model = HalvedOutputCNN(padding=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=1, **trainer_kwargs())
    with pytest.raises(NotProvableError, match="graph"):
        trainer.fit(model, train_dataloaders=DataLoader(image_data(), batch_size=2))
    s = FixedPointConfig().frac_bits
    for p, b in zip(model.parameters(), before, strict=True):  # rolled back: the start weights
        assert np.array_equal(quantize(p.detach().double().numpy(), s),
                              quantize(b.double().numpy(), s))


def test_conv_output_not_a_power_of_two_is_refused(tmp_path):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=1, **trainer_kwargs())
    with pytest.raises(UnsupportedModelError, match="powers of two"):
        trainer.fit(CNN(padding=1), train_dataloaders=DataLoader(image_data(), batch_size=2))


def test_resumed_cnn_run_keeps_its_conv_buffers_and_chain(tmp_path):
    """Crash before step 3, resume from the step-2 checkpoint: the conv's (F, C, k, k) momentum
    buffer is restored into the engine's flattened layout, and the chain verifies and equals the
    run trained straight through."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    run, ckpt = tmp_path / "run", tmp_path / "ckpt"

    def fit(steps, callbacks, ckpt_path=None, path=run):
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=path, mode="fixed"),
                            max_steps=steps, callbacks=callbacks,
                            **(trainer_kwargs() | {"enable_checkpointing": True}))
        trainer.fit(CNN(padding=0, momentum=0.5), train_dataloaders=DataLoader(
            image_data(), batch_size=2, shuffle=True), ckpt_path=ckpt_path)

    def callbacks(*extra):
        return [CommitCallback(), ProofCallback(every_n_steps=1), *extra,
                ModelCheckpoint(dirpath=ckpt, every_n_train_steps=2, save_top_k=-1)]

    with pytest.raises(Crash):
        fit(5, callbacks(CrashBefore(3)))
    (path,) = ckpt.glob("*step=2.ckpt")
    fit(5, callbacks(), ckpt_path=path)
    report = verify_run(run)
    assert report.ok, report.problems
    assert report.steps_proven == report.steps_committed == 5
    fit(5, [CommitCallback()], path=tmp_path / "straight")
    assert [r.extra["tape_sha256"] for r in RunDirectory(run).read_steps()] == [
        r.extra["tape_sha256"] for r in RunDirectory(tmp_path / "straight").read_steps()]


@pytest.mark.parametrize(("filters", "batch_size"), [(2, 1), (1, 4)])
def test_a_cnn_the_relations_cannot_prove_is_refused_before_training(tmp_path, filters, batch_size):
    """A batch of one image or a single filter: the conv relations' layout cannot hold it (found
    by proving such a step), so the run is refused at its start rather than failing to prove."""
    L.seed_everything(0, verbose=False)
    model = CNN(padding=0)
    model.net[0] = nn.Conv2d(1, filters, 3)
    model.net[3] = nn.Linear(filters * 16, 8)
    trainer = L.Trainer(strategy=VerifiableStrategy(run_dir=tmp_path / "run", mode="fixed"),
                        max_steps=2, **trainer_kwargs())
    with pytest.raises(UnsupportedModelError, match="batch size of 2 or more and 2 or more filters"):
        trainer.fit(model, train_dataloaders=DataLoader(image_data(), batch_size=batch_size))
    assert not (tmp_path / "run" / "steps.jsonl").exists()
